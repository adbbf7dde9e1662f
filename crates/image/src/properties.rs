//! What can be measured of a picture without a model: colour statistics,
//! dominant colours, sharpness and exposure.

use image::imageops::{self, FilterType};
use image::{GrayImage, RgbImage};
use serde::Serialize;

/// Sharpness is measured at this size (longest side), so that the figure
/// says the same of a picture at any resolution.
const SHARPNESS_SIDE: u32 = 512;
/// At most this many pixels are sampled for the colour figures.
const COLOUR_SAMPLES: u64 = 262_144;
const DOMINANT_COLOURS: usize = 5;
/// Luma at or below this is a clipped shadow, at or above 255 minus it a
/// clipped highlight.
const CLIPPED: u8 = 5;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Properties {
    pub width: u32,
    pub height: u32,
    pub megapixels: f64,
    pub aspect_ratio: f64,
    /// Mean of each channel, 0 to 255.
    pub mean_rgb: [f64; 3],
    pub std_rgb: [f64; 3],
    /// Mean luma (Rec. 601), 0 to 255.
    pub brightness: f64,
    /// Standard deviation of luma.
    pub contrast: f64,
    /// Hasler and Süsstrunk's colourfulness: 0 is grey, above 100 very colourful.
    pub colourfulness: f64,
    pub grayscale: bool,
    /// The most common colours (pixels grouped by 3 bits per channel), most
    /// common first, each with its share of the picture.
    pub dominant_colours: Vec<DominantColour>,
    /// Variance of the Laplacian of luma at 512 pixels: higher is sharper.
    pub sharpness: f64,
    /// `sharp`, `soft` or `blurry`.
    pub focus: &'static str,
    pub exposure: Exposure,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DominantColour {
    pub hex: String,
    /// A plain name for it (`dark red`, `grey`, `light blue`...).
    pub name: String,
    pub rgb: [u8; 3],
    pub share: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Exposure {
    /// Share of pixels that are black (clipped shadows).
    pub shadows_clipped: f64,
    /// Share of pixels that are white (clipped highlights).
    pub highlights_clipped: f64,
    /// `underexposed`, `overexposed`, `high contrast` or `balanced`.
    pub verdict: &'static str,
}

pub fn properties(rgb: &RgbImage) -> Properties {
    let (width, height) = rgb.dimensions();
    let colour = ColourStats::of(rgb);
    let sharpness = laplacian_variance(&luma_at(rgb, SHARPNESS_SIDE));
    let exposure = colour.exposure();
    Properties {
        width,
        height,
        megapixels: round(f64::from(width) * f64::from(height) / 1e6, 3),
        aspect_ratio: round(f64::from(width) / f64::from(height.max(1)), 3),
        mean_rgb: colour.mean.map(|m| round(m, 2)),
        std_rgb: colour.std.map(|s| round(s, 2)),
        brightness: round(colour.luma_mean, 2),
        contrast: round(colour.luma_std, 2),
        colourfulness: round(colour.colourfulness, 2),
        grayscale: colour.colourfulness < 1.0,
        dominant_colours: colour.dominant,
        sharpness: round(sharpness, 1),
        focus: match sharpness {
            s if s < 60.0 => "blurry",
            s if s < 150.0 => "soft",
            _ => "sharp",
        },
        exposure,
    }
}

struct ColourStats {
    mean: [f64; 3],
    std: [f64; 3],
    luma_mean: f64,
    luma_std: f64,
    colourfulness: f64,
    shadows: f64,
    highlights: f64,
    dominant: Vec<DominantColour>,
}

impl ColourStats {
    /// Over every pixel, or an even sample of them in a large picture.
    fn of(rgb: &RgbImage) -> Self {
        let pixels = u64::from(rgb.width()) * u64::from(rgb.height());
        let step = pixels.div_ceil(COLOUR_SAMPLES).max(1) as usize;
        let mut sum = [0f64; 3];
        let mut squares = [0f64; 3];
        let (mut luma_sum, mut luma_squares) = (0f64, 0f64);
        // Opponent channels, for colourfulness: rg = R - G, yb = (R + G) / 2 - B.
        let (mut rg, mut rg2, mut yb, mut yb2) = (0f64, 0f64, 0f64, 0f64);
        let (mut shadows, mut highlights) = (0u64, 0u64);
        let mut bins = vec![(0u64, [0u64; 3]); 512];
        let mut count = 0u64;
        for pixel in rgb.pixels().step_by(step) {
            let [r, g, b] = pixel.0;
            let c = [f64::from(r), f64::from(g), f64::from(b)];
            for i in 0..3 {
                sum[i] += c[i];
                squares[i] += c[i] * c[i];
            }
            let luma = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
            luma_sum += luma;
            luma_squares += luma * luma;
            let (d1, d2) = (c[0] - c[1], (c[0] + c[1]) / 2.0 - c[2]);
            (rg, rg2, yb, yb2) = (rg + d1, rg2 + d1 * d1, yb + d2, yb2 + d2 * d2);
            shadows += u64::from(luma <= f64::from(CLIPPED));
            highlights += u64::from(luma >= f64::from(255 - CLIPPED));
            let bin = &mut bins
                [usize::from(r >> 5) << 6 | usize::from(g >> 5) << 3 | usize::from(b >> 5)];
            bin.0 += 1;
            for i in 0..3 {
                bin.1[i] += u64::from(pixel.0[i]);
            }
            count += 1;
        }
        let n = count.max(1) as f64;
        let mean = sum.map(|s| s / n);
        let std = [0, 1, 2].map(|i| spread(squares[i], mean[i], n));
        let luma_mean = luma_sum / n;
        let (rg_mean, yb_mean) = (rg / n, yb / n);
        let colourfulness =
            spread(rg2, rg_mean, n).hypot(spread(yb2, yb_mean, n)) + 0.3 * rg_mean.hypot(yb_mean);
        Self {
            mean,
            std,
            luma_mean,
            luma_std: spread(luma_squares, luma_mean, n),
            colourfulness,
            shadows: shadows as f64 / n,
            highlights: highlights as f64 / n,
            dominant: dominant(bins, n),
        }
    }

    fn exposure(&self) -> Exposure {
        let verdict = match (self.shadows, self.highlights, self.luma_mean) {
            (s, h, _) if s > 0.1 && h > 0.1 => "high contrast",
            (_, h, mean) if h > 0.1 || mean > 200.0 => "overexposed",
            (s, _, mean) if s > 0.1 || mean < 50.0 => "underexposed",
            _ => "balanced",
        };
        Exposure {
            shadows_clipped: round(self.shadows, 4),
            highlights_clipped: round(self.highlights, 4),
            verdict,
        }
    }
}

/// Standard deviation from a sum of squares and the mean.
fn spread(squares: f64, mean: f64, n: f64) -> f64 {
    (squares / n - mean * mean).max(0.0).sqrt()
}

/// A plain colour name from hue, saturation and lightness: words a
/// language model (or a person) can use where a hex code means nothing.
pub fn colour_name(rgb: [u8; 3]) -> String {
    let [r, g, b] = rgb.map(|c| f64::from(c) / 255.0);
    let (max, min) = (r.max(g).max(b), r.min(g).min(b));
    let lightness = (max + min) / 2.0;
    let chroma = max - min;
    let saturation = match chroma {
        0.0 => 0.0,
        _ => chroma / (1.0 - (2.0 * lightness - 1.0).abs()).max(1e-9),
    };
    let shade = |name: &str| match lightness {
        l if l < 0.3 => format!("dark {name}"),
        l if l > 0.7 => format!("light {name}"),
        _ => name.to_string(),
    };
    if lightness < 0.12 {
        return "black".into();
    }
    if lightness > 0.92 {
        return "white".into();
    }
    if saturation < 0.15 || chroma < 0.08 {
        return shade("grey");
    }
    let hue = match max {
        m if m == r => 60.0 * ((g - b) / chroma).rem_euclid(6.0),
        m if m == g => 60.0 * ((b - r) / chroma + 2.0),
        _ => 60.0 * ((r - g) / chroma + 4.0),
    };
    let name = match hue {
        h if !(15.0..345.0).contains(&h) => "red",
        h if h < 40.0 && lightness < 0.45 => "brown",
        h if h < 40.0 => "orange",
        h if h < 70.0 => "yellow",
        h if h < 165.0 => "green",
        h if h < 195.0 => "cyan",
        h if h < 255.0 => "blue",
        h if h < 290.0 => "purple",
        _ => "pink",
    };
    shade(name)
}

fn dominant(bins: Vec<(u64, [u64; 3])>, n: f64) -> Vec<DominantColour> {
    let mut bins: Vec<_> = bins.into_iter().filter(|(count, _)| *count > 0).collect();
    bins.sort_by_key(|bin| std::cmp::Reverse(bin.0));
    bins.into_iter()
        .take(DOMINANT_COLOURS)
        .filter(|(count, _)| *count as f64 / n >= 0.01)
        .map(|(count, sums)| {
            let rgb = sums.map(|s| (s as f64 / count as f64).round() as u8);
            DominantColour {
                hex: format!("#{:02x}{:02x}{:02x}", rgb[0], rgb[1], rgb[2]),
                name: colour_name(rgb),
                rgb,
                share: round(count as f64 / n, 4),
            }
        })
        .collect()
}

/// Luma, scaled down so that the longest side is at most `side`.
fn luma_at(rgb: &RgbImage, side: u32) -> GrayImage {
    let gray = imageops::grayscale(rgb);
    let (w, h) = gray.dimensions();
    let longest = w.max(h);
    if longest <= side {
        return gray;
    }
    let scale = f64::from(side) / f64::from(longest);
    let size = |n: u32| ((f64::from(n) * scale).round() as u32).max(1);
    imageops::resize(&gray, size(w), size(h), FilterType::Triangle)
}

/// Variance of the 4-neighbour Laplacian over the inner pixels.
fn laplacian_variance(gray: &GrayImage) -> f64 {
    let (w, h) = gray.dimensions();
    if w < 3 || h < 3 {
        return 0.0;
    }
    let at = |x: u32, y: u32| f64::from(gray.get_pixel(x, y).0[0]);
    let (mut sum, mut squares, mut n) = (0f64, 0f64, 0f64);
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let l = at(x - 1, y) + at(x + 1, y) + at(x, y - 1) + at(x, y + 1) - 4.0 * at(x, y);
            sum += l;
            squares += l * l;
            n += 1.0;
        }
    }
    let mean = sum / n;
    squares / n - mean * mean
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn checkerboard(side: u32, cell: u32) -> RgbImage {
        RgbImage::from_fn(side, side, |x, y| match (x / cell + y / cell) % 2 {
            0 => Rgb([0, 0, 0]),
            _ => Rgb([255, 255, 255]),
        })
    }

    #[test]
    fn a_flat_colour_is_that_colour_and_not_sharp() {
        let red = RgbImage::from_pixel(64, 32, Rgb([200, 30, 30]));
        let p = properties(&red);
        assert_eq!(p.mean_rgb, [200.0, 30.0, 30.0]);
        assert_eq!(p.std_rgb, [0.0, 0.0, 0.0]);
        assert_eq!(p.aspect_ratio, 2.0);
        assert_eq!(p.dominant_colours.len(), 1);
        assert_eq!(p.dominant_colours[0].hex, "#c81e1e");
        assert_eq!(p.dominant_colours[0].name, "red");
        assert_eq!(p.dominant_colours[0].share, 1.0);
        assert_eq!((p.sharpness, p.focus), (0.0, "blurry"));
        assert!(
            p.colourfulness > 50.0 && !p.grayscale,
            "{}",
            p.colourfulness
        );
    }

    #[test]
    fn blurring_lowers_sharpness() {
        let sharp = checkerboard(256, 8);
        let blurred = imageops::blur(&sharp, 4.0);
        let (a, b) = (properties(&sharp), properties(&blurred));
        assert_eq!(a.focus, "sharp");
        assert!(
            b.sharpness < a.sharpness / 10.0,
            "{} vs {}",
            b.sharpness,
            a.sharpness
        );
        assert!(a.grayscale);
        assert_eq!(a.exposure.verdict, "high contrast");
        assert_eq!(a.dominant_colours.len(), 2);
        assert_eq!(
            a.dominant_colours[0].share + a.dominant_colours[1].share,
            1.0
        );
    }

    #[test]
    fn dark_and_bright_pictures_say_so() {
        let dark = RgbImage::from_pixel(10, 10, Rgb([2, 2, 2]));
        let bright = RgbImage::from_pixel(10, 10, Rgb([253, 253, 253]));
        let mid = RgbImage::from_fn(10, 10, |x, _| Rgb([(60 + x * 10) as u8, 120, 120]));
        assert_eq!(properties(&dark).exposure.verdict, "underexposed");
        assert_eq!(properties(&bright).exposure.verdict, "overexposed");
        assert_eq!(properties(&mid).exposure.verdict, "balanced");
    }

    #[test]
    fn colours_get_plain_names() {
        let named = |rgb| colour_name(rgb);
        assert_eq!(named([0, 0, 0]), "black");
        assert_eq!(named([255, 255, 255]), "white");
        assert_eq!(named([128, 128, 128]), "grey");
        assert_eq!(named([200, 30, 30]), "red");
        assert_eq!(named([100, 0, 0]), "dark red");
        assert_eq!(named([150, 90, 30]), "brown");
        assert_eq!(named([240, 150, 30]), "orange");
        assert_eq!(named([30, 160, 40]), "green");
        assert_eq!(named([150, 190, 250]), "light blue");
    }
}
