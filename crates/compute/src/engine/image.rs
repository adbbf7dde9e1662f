//! Image analysis, behind a trait: the tools know [`ImageEngine`], not
//! tract or the networks. A model does one task (its ONNX metadata or its
//! outputs say which); asked for another, it says what it does instead.

use jetsonmind_image::RgbImage;
use serde::Serialize;

use super::{EngineError, ModelInfo};

/// What an image model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageTask {
    /// Scores for a fixed set of classes (ImageNet's thousand, or the labels
    /// that come with the model).
    Classify,
    /// Boxes around objects, each with a class and a score.
    Detect,
    /// Lines of text with their boxes (OCR).
    ReadText,
}

impl std::fmt::Display for ImageTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageTask::Classify => "classifier",
            ImageTask::Detect => "object detector",
            ImageTask::ReadText => "text reader (OCR)",
        })
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassScore {
    pub class_id: usize,
    pub label: String,
    /// Softmax probability, 0 to 1.
    pub score: f32,
}

/// A box in the picture's own pixels, corners inclusive of the top left.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct PixelBox {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

impl PixelBox {
    pub fn area(&self) -> f32 {
        self.width.max(0.0) * self.height.max(0.0)
    }

    /// Intersection over union.
    pub fn iou(&self, other: &PixelBox) -> f32 {
        let left = self.x.max(other.x);
        let top = self.y.max(other.y);
        let right = (self.x + self.width).min(other.x + other.width);
        let bottom = (self.y + self.height).min(other.y + other.height);
        let overlap = (right - left).max(0.0) * (bottom - top).max(0.0);
        let union = self.area() + other.area() - overlap;
        if union <= 0.0 { 0.0 } else { overlap / union }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Detection {
    pub class_id: usize,
    pub label: String,
    pub score: f32,
    #[serde(rename = "box")]
    pub bounds: PixelBox,
}

/// What a detection call keeps.
#[derive(Debug, Clone, Copy)]
pub struct DetectOptions {
    /// Boxes scoring below are dropped.
    pub min_score: f32,
    /// Of two boxes of one class overlapping more than this, the lower
    /// scoring goes (non-maximum suppression).
    pub max_overlap: f32,
    pub max_detections: usize,
}

/// A line of text read in a picture.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TextLine {
    pub text: String,
    /// The recognizer's mean probability over the line's characters.
    pub confidence: f32,
    /// The detector's mean probability over the region's pixels.
    pub region_score: f32,
    /// Axis-aligned bounds, within the picture.
    #[serde(rename = "box")]
    pub bounds: PixelBox,
    /// The line's rectangle as read: top left, top right, bottom right,
    /// bottom left (it may be turned).
    pub corners: [[f32; 2]; 4],
}

/// What a text-reading call keeps.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    /// Lines read with a lower confidence are dropped.
    pub min_confidence: f32,
    pub max_lines: usize,
}

/// A loaded image model. Calls block: run them off the async runtime.
pub trait ImageEngine: Send + Sync {
    fn info(&self) -> &ModelInfo;

    fn task(&self) -> ImageTask;

    /// The `top_k` most likely classes, most likely first.
    fn classify(&self, image: &RgbImage, top_k: usize) -> Result<Vec<ClassScore>, EngineError> {
        let _ = (image, top_k);
        Err(self.cannot(ImageTask::Classify))
    }

    /// Objects found, best first.
    fn detect(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
    ) -> Result<Vec<Detection>, EngineError> {
        let _ = (image, options);
        Err(self.cannot(ImageTask::Detect))
    }

    /// Lines of text in reading order.
    fn read_text(
        &self,
        image: &RgbImage,
        options: &ReadOptions,
    ) -> Result<Vec<TextLine>, EngineError> {
        let _ = (image, options);
        Err(self.cannot(ImageTask::ReadText))
    }

    fn cannot(&self, wanted: ImageTask) -> EngineError {
        EngineError::NotSupported(format!(
            "model `{}` is an image {}, not an image {wanted}",
            self.info().id,
            self.task()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_of_boxes() {
        let a = PixelBox {
            x: 0.0,
            y: 0.0,
            width: 10.0,
            height: 10.0,
        };
        let b = PixelBox {
            x: 5.0,
            y: 0.0,
            width: 10.0,
            height: 10.0,
        };
        let far = PixelBox {
            x: 50.0,
            y: 50.0,
            width: 1.0,
            height: 1.0,
        };
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(a.iou(&far), 0.0);
        assert_eq!(a.iou(&a), 1.0);
    }
}
