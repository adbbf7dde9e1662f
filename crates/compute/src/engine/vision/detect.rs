//! A YOLO-layout ONNX detector (Ultralytics YOLOv8 and YOLO11 exports):
//! letterbox, one output of `4 + classes` rows (box centre, size, then a
//! score per class) by candidate, and per-class non-maximum suppression.

use jetsonmind_image::RgbImage;
use jetsonmind_image::prepare::{self, ChannelOrder, Letterboxed, Normalization};

use super::{Network, labels};
use crate::engine::image::{DetectOptions, Detection, ImageEngine, ImageTask, PixelBox};
use crate::engine::{EngineError, ModelDir, ModelInfo};

/// Ultralytics' letterbox grey and 0..1 pixels.
const FILL: [u8; 3] = [114, 114, 114];
const UNIT: Normalization = Normalization {
    mean: [0.0; 3],
    scale: [255.0; 3],
    order: ChannelOrder::Rgb,
};

pub struct Detector {
    network: Network,
    info: ModelInfo,
    labels: Vec<String>,
    /// Whether the output is [1, candidates, 4 + classes] rather than
    /// Ultralytics' [1, 4 + classes, candidates].
    transposed: bool,
}

impl Detector {
    pub(super) fn new(
        network: Network,
        dir: &ModelDir,
        info: ModelInfo,
    ) -> Result<Self, EngineError> {
        let (rows, columns) = match network.output_shape.as_slice() {
            [1, rows, columns] => (*rows, *columns),
            other => {
                return Err(dir.fail(format!(
                    "a YOLO detector's output is [1, 4 + classes, candidates], not {other:?}"
                )));
            }
        };
        let labels = labels(&network, dir)?;
        let classes = labels.as_ref().map(Vec::len);
        let transposed = match classes {
            Some(n) if rows == 4 + n => false,
            Some(n) if columns == 4 + n => true,
            Some(n) => {
                return Err(dir.fail(format!(
                    "{n} class names, but its output {:?} has room for neither {n} nor \
                     the other way round",
                    network.output_shape
                )));
            }
            // Without names: there are more candidates than classes.
            None => columns < rows,
        };
        let features = if transposed { columns } else { rows };
        if features <= 4 {
            return Err(dir.fail(format!(
                "its output {:?} has no class scores",
                network.output_shape
            )));
        }
        let labels =
            labels.unwrap_or_else(|| (0..features - 4).map(|i| format!("class {i}")).collect());
        Ok(Self {
            network,
            info,
            labels,
            transposed,
        })
    }

    /// Every candidate scoring at least `min_score` in its best class.
    fn candidates(
        &self,
        output: &[f32],
        boxed: &Letterboxed,
        image: &RgbImage,
        min_score: f32,
    ) -> Vec<Detection> {
        let features = 4 + self.labels.len();
        let count = output.len() / features;
        let at = |feature: usize, candidate: usize| match self.transposed {
            false => output[feature * count + candidate],
            true => output[candidate * features + feature],
        };
        let (width, height) = (image.width() as f32, image.height() as f32);
        (0..count)
            .filter_map(|c| {
                let (class_id, score) = (0..self.labels.len())
                    .map(|k| (k, at(4 + k, c)))
                    .max_by(|a, b| a.1.total_cmp(&b.1))?;
                if score < min_score {
                    return None;
                }
                let (cx, cy, w, h) = (at(0, c), at(1, c), at(2, c), at(3, c));
                let (left, top) =
                    boxed.to_picture(f64::from(cx - w / 2.0), f64::from(cy - h / 2.0));
                let (right, bottom) =
                    boxed.to_picture(f64::from(cx + w / 2.0), f64::from(cy + h / 2.0));
                let (left, top) = (
                    (left as f32).clamp(0.0, width),
                    (top as f32).clamp(0.0, height),
                );
                let (right, bottom) = (
                    (right as f32).clamp(0.0, width),
                    (bottom as f32).clamp(0.0, height),
                );
                Some(Detection {
                    class_id,
                    label: self.labels[class_id].clone(),
                    score,
                    bounds: PixelBox {
                        x: left,
                        y: top,
                        width: right - left,
                        height: bottom - top,
                    },
                })
            })
            .filter(|d| d.bounds.area() > 0.0)
            .collect()
    }
}

impl ImageEngine for Detector {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn task(&self) -> ImageTask {
        ImageTask::Detect
    }

    fn detect(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
    ) -> Result<Vec<Detection>, EngineError> {
        let boxed = prepare::letterbox(image, self.network.width, self.network.height, FILL);
        let output = self.network.run(prepare::to_planar(&boxed.image, &UNIT))?;
        let candidates = self.candidates(&output, &boxed, image, options.min_score);
        Ok(suppress(
            candidates,
            options.max_overlap,
            options.max_detections,
        ))
    }
}

/// Greedy non-maximum suppression per class: best first, each box kept
/// unless it overlaps a kept box of its class by more than `max_overlap`.
fn suppress(mut candidates: Vec<Detection>, max_overlap: f32, limit: usize) -> Vec<Detection> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for candidate in candidates {
        if kept.len() == limit {
            break;
        }
        let overlaps = kept.iter().any(|k| {
            k.class_id == candidate.class_id && k.bounds.iou(&candidate.bounds) > max_overlap
        });
        if !overlaps {
            kept.push(candidate);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection(class_id: usize, score: f32, x: f32) -> Detection {
        Detection {
            class_id,
            label: format!("{class_id}"),
            score,
            bounds: PixelBox {
                x,
                y: 0.0,
                width: 10.0,
                height: 10.0,
            },
        }
    }

    #[test]
    fn suppression_keeps_the_best_of_overlapping_boxes_per_class() {
        let kept = suppress(
            vec![
                detection(0, 0.5, 1.0),
                detection(0, 0.9, 0.0),
                detection(1, 0.4, 0.0),
                detection(0, 0.3, 40.0),
            ],
            0.45,
            10,
        );
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, [0.9, 0.4, 0.3]);
        assert_eq!(suppress(kept, 0.45, 2).len(), 2);
    }
}
