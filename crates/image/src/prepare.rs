//! A picture as a model's input: cropped, resized or letterboxed, then
//! normalized into planar (NCHW) floats.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::imageops;
use image::{Rgb, RgbImage};

/// The centre square of `rgb` with side `fraction` of its shorter side (the
/// crop ImageNet classifiers are evaluated with, 0.875 being 224 of 256).
pub fn centre_crop(rgb: &RgbImage, fraction: f64) -> RgbImage {
    let (w, h) = rgb.dimensions();
    let side = ((f64::from(w.min(h)) * fraction.clamp(0.0, 1.0)).round() as u32).max(1);
    let (x, y) = ((w - side.min(w)) / 2, (h - side.min(h)) / 2);
    imageops::crop_imm(rgb, x, y, side.min(w), side.min(h)).to_image()
}

/// Resized with bicubic (Catmull-Rom) interpolation.
pub fn resize(rgb: &RgbImage, width: u32, height: u32) -> RgbImage {
    if rgb.dimensions() == (width, height) {
        return rgb.clone();
    }
    resized(rgb, width, height, FilterType::CatmullRom)
}

/// `rgb` at `width` x `height` through `filter`, widened by the scale when
/// shrinking (Pillow's convolution resampling), with the CPU's SIMD.
fn resized(rgb: &RgbImage, width: u32, height: u32, filter: FilterType) -> RgbImage {
    let mut out = RgbImage::new(width, height);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
    match Resizer::new().resize(rgb, &mut out, &options) {
        Ok(()) => out,
        // Only an empty picture is refused; image's resize takes one.
        Err(_) => imageops::resize(rgb, width, height, imageops::FilterType::Triangle),
    }
}

/// Turned a quarter to the left (counter-clockwise).
pub fn turn_left(rgb: &RgbImage) -> RgbImage {
    imageops::rotate270(rgb)
}

/// A picture scaled to fit a `width` x `height` canvas, aspect kept,
/// centred on `fill`: what a detector sees.
pub struct Letterboxed {
    pub image: RgbImage,
    /// Canvas pixels per picture pixel.
    pub scale: f64,
    pub left: u32,
    pub top: u32,
}

impl Letterboxed {
    /// A point on the canvas, in the picture's own pixels.
    pub fn to_picture(&self, x: f64, y: f64) -> (f64, f64) {
        (
            (x - f64::from(self.left)) / self.scale,
            (y - f64::from(self.top)) / self.scale,
        )
    }
}

pub fn letterbox(rgb: &RgbImage, width: u32, height: u32, fill: [u8; 3]) -> Letterboxed {
    let (w, h) = rgb.dimensions();
    let scale = (f64::from(width) / f64::from(w)).min(f64::from(height) / f64::from(h));
    let fit = |n: u32, limit: u32| ((f64::from(n) * scale).round() as u32).clamp(1, limit);
    let (fw, fh) = (fit(w, width), fit(h, height));
    let resized = resized(rgb, fw, fh, FilterType::Bilinear);
    let mut image = RgbImage::from_pixel(width, height, Rgb(fill));
    let (left, top) = ((width - fw) / 2, (height - fh) / 2);
    imageops::replace(&mut image, &resized, i64::from(left), i64::from(top));
    Letterboxed {
        image,
        scale,
        left,
        top,
    }
}

/// How a model wants its pixels: `(value - mean) / scale` per channel, on
/// 0..255 values, channels in `order`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub scale: [f32; 3],
    pub order: ChannelOrder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    Rgb,
    /// OpenCV's order, which models trained with it expect.
    Bgr,
}

/// Planar floats, channel after channel (one NCHW batch item).
pub fn to_planar(rgb: &RgbImage, normalization: &Normalization) -> Vec<f32> {
    let plane = rgb.width() as usize * rgb.height() as usize;
    let mut out = vec![0f32; 3 * plane];
    let source = match normalization.order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    for (i, pixel) in rgb.pixels().enumerate() {
        for (c, &from) in source.iter().enumerate() {
            out[c * plane + i] =
                (f32::from(pixel.0[from]) - normalization.mean[c]) / normalization.scale[c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centre_crop_takes_the_middle_square() {
        let rgb = RgbImage::from_fn(400, 200, |x, _| Rgb([(x / 2) as u8, 0, 0]));
        let crop = centre_crop(&rgb, 0.5);
        assert_eq!(crop.dimensions(), (100, 100));
        assert_eq!(crop.get_pixel(0, 0).0[0], 75);
    }

    #[test]
    fn letterbox_keeps_the_aspect_and_maps_back() {
        let rgb = RgbImage::from_pixel(200, 100, Rgb([255, 0, 0]));
        let boxed = letterbox(&rgb, 320, 320, [114, 114, 114]);
        assert_eq!((boxed.scale, boxed.left, boxed.top), (1.6, 0, 80));
        assert_eq!(boxed.image.get_pixel(10, 10).0, [114, 114, 114]);
        assert_eq!(boxed.image.get_pixel(10, 160).0, [255, 0, 0]);
        assert_eq!(boxed.to_picture(160.0, 160.0), (100.0, 50.0));
    }

    #[test]
    fn planar_in_either_channel_order() {
        let rgb = RgbImage::from_fn(2, 1, |x, _| Rgb([10 * x as u8 + 1, 2, 3]));
        let rgb_order = Normalization {
            mean: [1.0, 0.0, 0.0],
            scale: [1.0, 2.0, 1.0],
            order: ChannelOrder::Rgb,
        };
        assert_eq!(to_planar(&rgb, &rgb_order), [0.0, 10.0, 1.0, 1.0, 3.0, 3.0]);
        let bgr = Normalization {
            order: ChannelOrder::Bgr,
            ..rgb_order
        };
        assert_eq!(to_planar(&rgb, &bgr), [2.0, 2.0, 1.0, 1.0, 1.0, 11.0]);
    }
}
