//! Pictures in, for the vision tools: decode the formats callers send
//! (PNG, JPEG, WebP, GIF, BMP; pure Rust, no C library) within pixel and
//! memory limits checked before the pixels are decoded, turned upright by
//! their EXIF orientation; measure them ([`properties`]); and prepare a
//! model's input ([`prepare`]).

pub mod geometry;
pub mod prepare;
pub mod properties;

use std::io::Cursor;

pub use image::RgbImage;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use serde::Serialize;

pub use properties::{Properties, properties};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImageError {
    #[error("not an image this server reads (PNG, JPEG, WebP, GIF or BMP){0}")]
    NotAnImage(String),
    #[error("the image is damaged or truncated: {0}")]
    Damaged(String),
    #[error(
        "the image is {width}x{height} = {pixels} pixels; this server takes at most {max} \
         ({setting})"
    )]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        max: u64,
        setting: &'static str,
    },
    #[error("the image has no pixels ({width}x{height})")]
    Empty { width: u32, height: u32 },
}

/// How large a picture may be decoded.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_pixels: u64,
    /// The setting `max_pixels` comes from, named in the error.
    pub setting: &'static str,
}

/// A decoded picture, upright, as 8-bit RGB.
#[derive(Debug, Clone)]
pub struct Picture {
    pub rgb: RgbImage,
    pub format: &'static str,
    /// The EXIF orientation that was applied (`none` when there was none).
    pub orientation: &'static str,
    /// Whether the file had an alpha channel (composited onto black).
    pub had_alpha: bool,
    /// The encoded size.
    pub bytes: usize,
}

impl Picture {
    pub fn width(&self) -> u32 {
        self.rgb.width()
    }

    pub fn height(&self) -> u32 {
        self.rgb.height()
    }

    pub fn summary(&self) -> PictureSummary {
        PictureSummary {
            width: self.width(),
            height: self.height(),
            format: self.format,
            orientation: self.orientation,
            had_alpha: self.had_alpha,
            bytes: self.bytes,
        }
    }
}

/// What a result says of the picture it was given.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PictureSummary {
    pub width: u32,
    pub height: u32,
    pub format: &'static str,
    pub orientation: &'static str,
    pub had_alpha: bool,
    pub bytes: usize,
}

/// Decode `bytes`, its format read from its first bytes (not trusted from a
/// name or MIME type). The pixel count is checked from the header before
/// any pixel is decoded, so a small file claiming a huge picture costs
/// nothing. An animated GIF gives its first frame.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Picture, ImageError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Damaged(e.to_string()))?;
    let format = match reader.format() {
        Some(format) => format_name(format)?,
        None => return Err(ImageError::NotAnImage(String::new())),
    };
    let mut decoder_limits = image::Limits::default();
    // The decoder's own allocation cap: the pixels allowed, as 16-bit RGBA
    // (the widest it produces from these formats), and some room to work.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(1 << 24));
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(damaged)?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, limits)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(damaged)?;
    image.apply_orientation(orientation);
    let had_alpha = image.color().has_alpha();
    Ok(Picture {
        rgb: to_rgb(image),
        format,
        orientation: orientation_name(orientation),
        had_alpha,
        bytes: bytes.len(),
    })
}

fn check_size(width: u32, height: u32, limits: &Limits) -> Result<(), ImageError> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(ImageError::Empty { width, height });
    }
    if pixels > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            width,
            height,
            pixels,
            max: limits.max_pixels,
            setting: limits.setting,
        });
    }
    Ok(())
}

fn format_name(format: ImageFormat) -> Result<&'static str, ImageError> {
    match format {
        ImageFormat::Png => Ok("png"),
        ImageFormat::Jpeg => Ok("jpeg"),
        ImageFormat::WebP => Ok("webp"),
        ImageFormat::Gif => Ok("gif"),
        ImageFormat::Bmp => Ok("bmp"),
        other => Err(ImageError::NotAnImage(format!(
            ": it is {}",
            other.extensions_str().first().unwrap_or(&"another format")
        ))),
    }
}

fn orientation_name(orientation: image::metadata::Orientation) -> &'static str {
    use image::metadata::Orientation::*;
    match orientation {
        NoTransforms => "none",
        Rotate90 => "rotated 90",
        Rotate180 => "rotated 180",
        Rotate270 => "rotated 270",
        FlipHorizontal => "flipped horizontally",
        FlipVertical => "flipped vertically",
        Rotate90FlipH => "rotated 90, flipped",
        Rotate270FlipH => "rotated 270, flipped",
    }
}

/// 8-bit RGB; transparent parts composited onto black, as a model trained
/// on photographs sees nothing there.
fn to_rgb(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let over = |c: u8| ((u16::from(c) * u16::from(a) + 127) / 255) as u8;
        image::Rgb([over(r), over(g), over(b)])
    })
}

fn damaged(error: image::ImageError) -> ImageError {
    match error {
        image::ImageError::Unsupported(e) => ImageError::NotAnImage(format!(": {e}")),
        image::ImageError::Limits(e) => ImageError::Damaged(format!(
            "decoding it would take more memory than its pixel limit allows ({e})"
        )),
        other => ImageError::Damaged(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb, Rgba, RgbaImage};

    const LIMITS: Limits = Limits {
        max_pixels: 1_000_000,
        setting: "compute.vision.max_pixels",
    };

    pub(crate) fn png(image: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(
                image.as_raw(),
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
        out
    }

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| Rgb([x as u8, y as u8, 128]))
    }

    #[test]
    fn decodes_png_and_jpeg_by_content() {
        let source = gradient(40, 30);
        let picture = decode(&png(&source), &LIMITS).unwrap();
        assert_eq!(
            (picture.width(), picture.height(), picture.format),
            (40, 30, "png")
        );
        assert_eq!(picture.rgb, source);
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&source)
            .unwrap();
        let picture = decode(&jpeg, &LIMITS).unwrap();
        assert_eq!(
            (picture.width(), picture.height(), picture.format),
            (40, 30, "jpeg")
        );
    }

    #[test]
    fn exif_orientation_turns_the_picture_upright() {
        // A TIFF block with one entry: Orientation (0x0112) = 6, "rotate 90 clockwise".
        let exif = [
            b"II*\0\x08\0\0\0\x01\0".as_slice(),
            &[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0],
            &[0, 0, 0, 0],
        ]
        .concat();
        let mut jpeg = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95);
        encoder.set_exif_metadata(exif).unwrap();
        encoder.encode_image(&gradient(40, 30)).unwrap();
        let picture = decode(&jpeg, &LIMITS).unwrap();
        assert_eq!((picture.width(), picture.height()), (30, 40));
        assert_eq!(picture.orientation, "rotated 90");
    }

    #[test]
    fn alpha_is_composited_onto_black() {
        let rgba = RgbaImage::from_fn(2, 1, |x, _| {
            Rgba([200, 100, 50, if x == 0 { 255 } else { 0 }])
        });
        let mut bytes = Vec::new();
        image::codecs::png::PngEncoder::new(&mut bytes)
            .write_image(rgba.as_raw(), 2, 1, image::ExtendedColorType::Rgba8)
            .unwrap();
        let picture = decode(&bytes, &LIMITS).unwrap();
        assert!(picture.had_alpha);
        assert_eq!(picture.rgb.get_pixel(0, 0).0, [200, 100, 50]);
        assert_eq!(picture.rgb.get_pixel(1, 0).0, [0, 0, 0]);
    }

    #[test]
    fn too_many_pixels_is_refused_from_the_header() {
        let limits = Limits {
            max_pixels: 100,
            ..LIMITS
        };
        let error = decode(&png(&gradient(20, 10)), &limits).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the image is 20x10 = 200 pixels; this server takes at most 100 (compute.vision.max_pixels)"
        );
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let error = decode(b"hello, not an image", &LIMITS).unwrap_err();
        assert!(matches!(error, ImageError::NotAnImage(_)), "{error}");
        let whole = png(&gradient(64, 64));
        for cut in [8, 40, whole.len() / 2, whole.len() - 12] {
            let error = decode(&whole[..cut], &LIMITS).unwrap_err();
            assert!(matches!(error, ImageError::Damaged(_)), "{cut}: {error}");
        }
        // A TIFF header: a format the image crate knows, not one offered here.
        let error = decode(b"II*\0\x08\0\0\0", &LIMITS).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("not an image this server reads"),
            "{error}"
        );
    }
}
