//! PaddleOCR's two-stage text reader (PP-OCRv4, as RapidOCR ships it): a DB
//! (differentiable binarization) network marks the pixels that belong to
//! text; each region's smallest rectangle, grown by the margin DB shrinks
//! regions by, is cut out upright and read by a CRNN recognizer whose output
//! is CTC-decoded with the character list in its own metadata.
//!
//! A model is a directory with `det.onnx` and `rec.onnx`. Both take images
//! of any size (tract plans each size apart: [`super::tract`]).

use jetsonmind_image::RgbImage;
use jetsonmind_image::geometry::{self, RotatedRect};
use jetsonmind_image::prepare::{self, ChannelOrder, Normalization};

use super::Runtime;
use super::graph::Graph;
use crate::engine::image::{ImageEngine, ImageTask, PixelBox, ReadOptions, TextLine};
use crate::engine::{EngineError, ModelDir, ModelInfo};

pub const DETECTOR_FILE: &str = "det.onnx";
pub const RECOGNIZER_FILE: &str = "rec.onnx";

/// PaddleOCR's pixels: 0..255 to -1..1, in OpenCV's channel order.
const PADDLE: Normalization = Normalization {
    mean: [127.5; 3],
    scale: [127.5; 3],
    order: ChannelOrder::Bgr,
};
/// The detector's input: the longer side at most this, both sides padded to
/// a multiple of [`SIZE_STEP`] (its feature pyramid halves the picture five
/// times, so a multiple of 32 at least).
const DETECT_MAX_SIDE: u32 = 960;
/// Input sides (the detector's, the recognizer's width) come in these
/// steps: on tract each size is a plan of its own, so few serve all pictures.
const SIZE_STEP: u32 = 160;
/// The detector's sides are resized to multiples of this (its pyramid halves
/// the picture five times), keeping the aspect, then padded.
const DETECT_STRIDE: u32 = 32;
/// A pixel is text above this probability (DB's binarization threshold).
const TEXT_PIXEL: f32 = 0.3;
/// A region is kept when its pixels' mean probability reaches this.
const REGION_SCORE: f32 = 0.5;
/// DB shrinks each text region when training; the margin given back is
/// area x this / perimeter (PaddleOCR's `unclip_ratio`).
const UNCLIP_RATIO: f64 = 1.6;
/// Regions thinner than this, in detector pixels, are noise.
const MIN_REGION_SIDE: f64 = 3.0;
const MAX_REGIONS: usize = 1000;
/// The recognizer reads lines 48 pixels high, at least 320 wide, padded to
/// a multiple of [`SIZE_STEP`].
const LINE_HEIGHT: u32 = 48;
const LINE_MIN_WIDTH: u32 = 320;
/// Longer lines are squeezed to this width (40 characters' height).
const LINE_MAX_WIDTH: u32 = 48 * 40;
/// A space the recognizer gave this probability between two characters is
/// kept even where the blank won (see [`ctc_decode`]).
const SPACE_HINT: f32 = 0.02;
/// Lines whose tops are this close (picture pixels) are one row, read left
/// to right.
const SAME_ROW: f64 = 10.0;

pub struct TextReader {
    detector: Stage,
    recognizer: Stage,
    /// By CTC class: 0 is the blank, then the model's characters, then a space.
    characters: Vec<String>,
    info: ModelInfo,
}

/// One network of the two, named in its errors.
struct Stage {
    file: &'static str,
    graph: Box<dyn Graph>,
}

impl Stage {
    fn load(dir: &ModelDir, file: &'static str, runtime: &Runtime) -> Result<Self, EngineError> {
        let graph = runtime
            .load(dir.path(file)?)
            .map_err(|e| dir.fail(format!("{file} is {e}")))?;
        Ok(Self { file, graph })
    }

    /// Run on one planar image: the first output's shape and values.
    fn run(
        &self,
        planar: Vec<f32>,
        height: u32,
        width: u32,
    ) -> Result<(Vec<usize>, Vec<f32>), EngineError> {
        self.graph
            .run(planar, height, width)
            .map_err(|e| EngineError::Inference(format!("{} at {width}x{height}: {e}", self.file)))
    }

    /// Run on a blank picture (at load: a network the runtime cannot run
    /// fails its load, not a call): the output's shape.
    fn try_blank(
        &self,
        dir: &ModelDir,
        height: u32,
        width: u32,
    ) -> Result<Vec<usize>, EngineError> {
        self.graph.output_shape_at(height, width).map_err(|e| {
            dir.fail(format!(
                "{} does not run at {width}x{height}: {e}",
                self.file
            ))
        })
    }
}

impl TextReader {
    pub(super) fn load(dir: &ModelDir, runtime: &Runtime) -> Result<Self, EngineError> {
        let detector = Stage::load(dir, DETECTOR_FILE, runtime)?;
        let recognizer = Stage::load(dir, RECOGNIZER_FILE, runtime)?;
        detector.try_blank(dir, SIZE_STEP, SIZE_STEP)?;
        let recognized = recognizer.try_blank(dir, LINE_HEIGHT, LINE_MIN_WIDTH)?;
        let metadata = &recognizer.graph.info().metadata;
        let listed = metadata.get("character").ok_or_else(|| {
            dir.fail("rec.onnx has no `character` metadata (the characters it reads)")
        })?;
        let characters: Vec<String> = std::iter::once(String::new())
            .chain(listed.split('\n').map(str::to_string))
            .chain(std::iter::once(" ".to_string()))
            .collect();
        let classes = recognized.last().copied();
        if classes != Some(characters.len()) {
            return Err(dir.fail(format!(
                "rec.onnx scores {classes:?} classes, but its metadata lists {} characters \
                 (with the CTC blank and a space, {} were expected)",
                characters.len() - 2,
                characters.len()
            )));
        }
        let size_bytes = [DETECTOR_FILE, RECOGNIZER_FILE]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.files.get(*f)?).ok())
            .map(|m| m.len())
            .sum();
        let architecture = format!(
            "onnx text reader (DB + CRNN) on {}",
            detector.graph.info().runs_on
        );
        Ok(Self {
            detector,
            recognizer,
            characters,
            info: ModelInfo {
                id: dir.id.to_string(),
                architecture: Some(architecture),
                parameters: size_bytes / 4,
                size_bytes,
                context_train: 0,
                has_chat_template: false,
                supports_fill_in_middle: false,
            },
        })
    }

    /// Text regions as rectangles in the picture's pixels, with scores.
    fn regions(&self, image: &RgbImage) -> Result<Vec<(RotatedRect, f32)>, EngineError> {
        let (width, height) = detector_size(image.width(), image.height());
        let sized = prepare::resize(image, width, height);
        let (canvas_width, canvas_height) = (
            width.next_multiple_of(SIZE_STEP),
            height.next_multiple_of(SIZE_STEP),
        );
        let planar = prepare::to_planar(&sized, &PADDLE);
        let planar = pad(&planar, (width, height), (canvas_width, canvas_height));
        let (shape, map) = self.detector.run(planar, canvas_height, canvas_width)?;
        if shape.iter().product::<usize>() != (canvas_width * canvas_height) as usize {
            return Err(EngineError::Inference(format!(
                "the text detector's output is {shape:?} for a {canvas_width}x{canvas_height} input"
            )));
        }
        // The map's padding (grey, no text) is left in: regions come from text.
        let sx = f64::from(image.width()) / f64::from(width);
        let sy = f64::from(image.height()) / f64::from(height);
        Ok(
            text_regions(&map, canvas_width as usize, canvas_height as usize)
                .into_iter()
                .map(|(rect, score)| (rect.scaled(sx, sy), score))
                .collect(),
        )
    }

    /// The text in `rect`, with the mean probability of its characters.
    fn read_line(
        &self,
        image: &RgbImage,
        rect: &RotatedRect,
    ) -> Result<(String, f32), EngineError> {
        let (w, h) = (rect.width.round().max(1.0), rect.height.round().max(1.0));
        let mut line = geometry::cut_out(image, rect, w as u32, h as u32);
        // Vertical text: read it turned a quarter left, as PaddleOCR does.
        if h / w >= 1.5 {
            line = prepare::turn_left(&line);
        }
        let ratio = f64::from(line.width()) / f64::from(line.height());
        let fitted = ((f64::from(LINE_HEIGHT) * ratio).ceil() as u32).clamp(1, LINE_MAX_WIDTH);
        let canvas = fitted.next_multiple_of(SIZE_STEP).max(LINE_MIN_WIDTH);
        let sized = prepare::resize(&line, fitted, LINE_HEIGHT);
        let planar = pad(
            &prepare::to_planar(&sized, &PADDLE),
            (fitted, LINE_HEIGHT),
            (canvas, LINE_HEIGHT),
        );
        let (shape, scores) = self.recognizer.run(planar, LINE_HEIGHT, canvas)?;
        let classes = self.characters.len();
        match shape.as_slice() {
            [1, _, c] if *c == classes => Ok(ctc_decode(&scores, &self.characters)),
            other => Err(EngineError::Inference(format!(
                "the text recognizer's output is {other:?}, not [1, steps, {classes}]"
            ))),
        }
    }
}

impl ImageEngine for TextReader {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn task(&self) -> ImageTask {
        ImageTask::ReadText
    }

    fn read_text(
        &self,
        image: &RgbImage,
        options: &ReadOptions,
    ) -> Result<Vec<TextLine>, EngineError> {
        let mut regions = self.regions(image)?;
        in_reading_order(&mut regions);
        let (width, height) = (image.width() as f32, image.height() as f32);
        let mut lines = Vec::new();
        for (rect, region_score) in regions.into_iter().take(options.max_lines) {
            let (text, confidence) = self.read_line(image, &rect)?;
            if text.trim().is_empty() || confidence < options.min_confidence {
                continue;
            }
            let [left, top, right, bottom] = rect.bounds().map(|v| v as f32);
            let (left, top) = (left.clamp(0.0, width), top.clamp(0.0, height));
            let (right, bottom) = (right.clamp(0.0, width), bottom.clamp(0.0, height));
            lines.push(TextLine {
                text,
                confidence,
                region_score,
                bounds: PixelBox {
                    x: left,
                    y: top,
                    width: right - left,
                    height: bottom - top,
                },
                corners: rect.corners().map(|[x, y]| [x as f32, y as f32]),
            });
        }
        Ok(lines)
    }
}

/// The detector's input size for a `width` x `height` picture: scaled down
/// to [`DETECT_MAX_SIDE`], each side rounded to a multiple of 32.
fn detector_size(width: u32, height: u32) -> (u32, u32) {
    let scale = (f64::from(DETECT_MAX_SIDE) / f64::from(width.max(height))).min(1.0);
    let side = |n: u32| {
        let scaled = f64::from(n) * scale / f64::from(DETECT_STRIDE);
        (scaled.round() as u32).max(1) * DETECT_STRIDE
    };
    // (Each side is padded to a multiple of SIZE_STEP after this.)
    (side(width), side(height))
}

/// DB's post-processing on a `width` x `height` probability map: text pixels
/// (dilated by one, as PaddleOCR does, to join the strokes of a line), their
/// 8-connected regions, each region's smallest rectangle grown by the unclip
/// margin, kept when its pixels score [`REGION_SCORE`] on average.
fn text_regions(map: &[f32], width: usize, height: usize) -> Vec<(RotatedRect, f32)> {
    let mask = dilated(map, width, height);
    let mut seen = vec![false; mask.len()];
    let mut regions = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] || regions.len() == MAX_REGIONS {
            continue;
        }
        let pixels = component(&mask, &mut seen, start, width, height);
        let score = pixels.iter().map(|&i| map[i]).sum::<f32>() / pixels.len() as f32;
        let Some(rect) = geometry::min_area_rect(&row_ends(&pixels, width)) else {
            continue;
        };
        if rect.shorter_side() < MIN_REGION_SIDE || score < REGION_SCORE {
            continue;
        }
        let perimeter = 2.0 * (rect.width + rect.height);
        let grown = rect.grown(rect.area() * UNCLIP_RATIO / perimeter);
        if grown.shorter_side() < MIN_REGION_SIDE + 2.0 {
            continue;
        }
        regions.push((grown, score));
    }
    regions
}

/// Text pixels, each also marking its right, lower and lower-right
/// neighbours (a 2 x 2 dilation).
fn dilated(map: &[f32], width: usize, height: usize) -> Vec<bool> {
    let mut mask = vec![false; map.len()];
    for y in 0..height {
        for x in 0..width {
            if map[y * width + x] > TEXT_PIXEL {
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    if x + dx < width && y + dy < height {
                        mask[(y + dy) * width + x + dx] = true;
                    }
                }
            }
        }
    }
    mask
}

/// The 8-connected region of `mask` holding `start`, as pixel indices.
fn component(
    mask: &[bool],
    seen: &mut [bool],
    start: usize,
    width: usize,
    height: usize,
) -> Vec<usize> {
    let mut pixels = Vec::new();
    let mut stack = vec![start];
    seen[start] = true;
    while let Some(i) = stack.pop() {
        pixels.push(i);
        let (x, y) = (i % width, i / width);
        for dy in -1i64..=1 {
            for dx in -1i64..=1 {
                let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                if nx < 0 || ny < 0 || nx >= width as i64 || ny >= height as i64 {
                    continue;
                }
                let n = ny as usize * width + nx as usize;
                if mask[n] && !seen[n] {
                    seen[n] = true;
                    stack.push(n);
                }
            }
        }
    }
    pixels
}

/// The leftmost and rightmost pixel centre of each row of a region: all a
/// convex hull needs of it.
fn row_ends(pixels: &[usize], width: usize) -> Vec<[f64; 2]> {
    let mut ends: std::collections::BTreeMap<usize, (usize, usize)> = Default::default();
    for &i in pixels {
        let (x, y) = (i % width, i / width);
        let end = ends.entry(y).or_insert((x, x));
        *end = (end.0.min(x), end.1.max(x));
    }
    ends.into_iter()
        .flat_map(|(y, (left, right))| [[left as f64, y as f64], [right as f64, y as f64]])
        .collect()
}

/// Top to bottom; regions whose tops are within [`SAME_ROW`] left to right.
fn in_reading_order(regions: &mut [(RotatedRect, f32)]) {
    let top_left = |r: &(RotatedRect, f32)| r.0.corners()[0];
    regions.sort_by(|a, b| {
        let (a, b) = (top_left(a), top_left(b));
        a[1].total_cmp(&b[1]).then(a[0].total_cmp(&b[0]))
    });
    for i in 0..regions.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            let (upper, lower) = (top_left(&regions[j]), top_left(&regions[j + 1]));
            if (lower[1] - upper[1]).abs() < SAME_ROW && lower[0] < upper[0] {
                regions.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
}

/// A planar 3-channel `(width, height)` image on a larger `canvas`, at its
/// top left; zeros (grey, in PaddleOCR's normalization) around it.
fn pad(planar: &[f32], (width, height): (u32, u32), canvas: (u32, u32)) -> Vec<f32> {
    let (width, height) = (width as usize, height as usize);
    let (canvas_width, canvas_height) = (canvas.0 as usize, canvas.1 as usize);
    if (width, height) == (canvas_width, canvas_height) {
        return planar.to_vec();
    }
    let mut out = vec![0f32; 3 * canvas_width * canvas_height];
    for (row, chunk) in planar.chunks_exact(width).enumerate() {
        let (channel, y) = (row / height, row % height);
        let at = (channel * canvas_height + y) * canvas_width;
        out[at..at + width].copy_from_slice(chunk);
    }
    out
}

/// Greedy CTC decoding of per-step class probabilities: the best class per
/// step, repeats merged, blanks dropped; the confidence is the mean
/// probability of the characters kept.
///
/// PP-OCR's recognizer (trained mostly on Chinese, which has no spaces)
/// often lets the blank win over a narrow space between Latin words, while
/// still giving the space some probability there. A space is kept where
/// the steps between two characters gave it at least [`SPACE_HINT`]: on the
/// rendered test lines every missed space had 5% or more and every
/// non-space under 0.5%.
fn ctc_decode(scores: &[f32], characters: &[String]) -> (String, f32) {
    let space = characters.len() - 1;
    let mut text = String::new();
    let mut kept = Vec::new();
    let mut previous = 0;
    // How likely a space was on the steps since the last character.
    let mut space_since = 0f32;
    for step in scores.chunks_exact(characters.len()) {
        let (best, p) = step
            .iter()
            .copied()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        if best == 0 {
            space_since = space_since.max(step[space]);
        } else if best != previous {
            let between_words = !text.is_empty() && !text.ends_with(' ') && best != space;
            if between_words && space_since >= SPACE_HINT {
                text.push(' ');
            }
            text.push_str(&characters[best]);
            kept.push(p);
            space_since = 0.0;
        }
        previous = best;
    }
    let confidence = match kept.len() {
        0 => 0.0,
        n => kept.iter().sum::<f32>() / n as f32,
    };
    (text, confidence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detector_sizes_are_multiples_of_32_within_the_limit() {
        assert_eq!(detector_size(640, 480), (640, 480));
        assert_eq!(detector_size(1920, 1080), (960, 544));
        assert_eq!(detector_size(100, 10), (96, 32));
    }

    #[test]
    fn ctc_merges_repeats_and_drops_blanks() {
        let characters: Vec<String> = ["", "a", "b", " "].map(String::from).to_vec();
        // Steps: a a blank a b space b.
        let steps = [1, 1, 0, 1, 2, 3, 2];
        let scores: Vec<f32> = steps
            .iter()
            .flat_map(|&best| {
                (0..4).map(move |c| match c {
                    c if c == best => 0.8,
                    3 => 0.001,
                    _ => 0.05,
                })
            })
            .collect();
        let (text, confidence) = ctc_decode(&scores, &characters);
        assert_eq!(text, "aab b");
        assert!((confidence - 0.8).abs() < 1e-6);
        assert_eq!(
            ctc_decode(&[0.9, 0.1, 0.0, 0.0], &characters),
            (String::new(), 0.0)
        );
    }

    #[test]
    fn a_likely_space_between_words_is_kept_where_the_blank_won() {
        let characters: Vec<String> = ["", "a", "b", " "].map(String::from).to_vec();
        let step = |p: [f32; 4]| p.to_vec();
        let decode = |space: f32| {
            let scores: Vec<f32> = [
                step([0.0, 0.9, 0.0, 0.1]),
                step([0.95 - space, 0.05, 0.0, space]),
                step([0.0, 0.0, 0.9, 0.1]),
            ]
            .concat();
            ctc_decode(&scores, &characters).0
        };
        assert_eq!(decode(0.1), "a b");
        assert_eq!(decode(0.001), "ab");
    }

    #[test]
    fn one_bar_of_text_pixels_is_one_grown_region() {
        let (width, height) = (40, 20);
        let mut map = vec![0f32; width * height];
        for y in 8..12 {
            for x in 5..35 {
                map[y * width + x] = 0.9;
            }
        }
        // A lone speck is too thin to be text.
        map[2 * width + 2] = 0.9;
        let regions = text_regions(&map, width, height);
        assert_eq!(regions.len(), 1, "{regions:?}");
        let (rect, score) = regions[0];
        assert!(score > 0.5);
        // 30 x 4 pixels, dilated to 31 x 5 (centres 30 x 4 apart), grown.
        assert!(rect.width > 30.0 && rect.height > 4.0, "{rect:?}");
        assert!((rect.centre[0] - 20.0).abs() < 1.0 && (rect.centre[1] - 10.0).abs() < 1.0);
    }

    #[test]
    fn regions_are_read_top_to_bottom_and_left_to_right_within_a_row() {
        let at = |x: f64, y: f64| {
            (
                RotatedRect {
                    centre: [x, y],
                    axis: [1.0, 0.0],
                    width: 10.0,
                    height: 4.0,
                },
                1.0,
            )
        };
        let mut regions = vec![at(100.0, 52.0), at(20.0, 10.0), at(30.0, 50.0)];
        in_reading_order(&mut regions);
        let centres: Vec<[f64; 2]> = regions.iter().map(|r| r.0.centre).collect();
        assert_eq!(centres, [[20.0, 10.0], [30.0, 50.0], [100.0, 52.0]]);
    }

    #[test]
    fn padding_keeps_rows_and_channels_apart() {
        let planar: Vec<f32> = (1..=12).map(|v| v as f32).collect(); // 3 x 2 x 2
        let padded = pad(&planar, (2, 2), (3, 3));
        assert_eq!(padded.len(), 27);
        assert_eq!(&padded[..9], &[1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&padded[9..12], &[5.0, 6.0, 0.0]);
        assert_eq!(pad(&planar, (2, 2), (2, 2)), planar);
    }
}
