//! An ONNX classifier: centre crop, resize, normalize, softmax, top k.

use jetsonmind_image::RgbImage;
use jetsonmind_image::prepare::{self, ChannelOrder, Normalization};

use super::{Network, labels};
use crate::engine::image::{ClassScore, ImageEngine, ImageTask};
use crate::engine::{EngineError, ModelDir, ModelInfo};

/// torchvision's ImageNet statistics, on 0..255 values: what a classifier
/// without `pixel_mean`/`pixel_scale` metadata is assumed to expect.
const IMAGENET: Normalization = Normalization {
    mean: [123.675, 116.28, 103.53],
    scale: [58.395, 57.12, 57.375],
    order: ChannelOrder::Rgb,
};
/// 224 of 256: the usual evaluation crop.
const DEFAULT_CROP: f64 = 0.875;

pub struct Classifier {
    network: Network,
    info: ModelInfo,
    labels: Vec<String>,
    normalization: Normalization,
    crop: f64,
}

impl Classifier {
    pub(super) fn new(
        network: Network,
        dir: &ModelDir,
        info: ModelInfo,
    ) -> Result<Self, EngineError> {
        let classes = match network.output_shape.as_slice() {
            [1, classes] => *classes,
            other => {
                return Err(dir.fail(format!(
                    "a classifier's output is [1, classes], not {other:?}"
                )));
            }
        };
        let labels = labels(&network, dir)?
            .unwrap_or_else(|| (0..classes).map(|i| format!("class {i}")).collect());
        if labels.len() != classes {
            return Err(dir.fail(format!("{} labels for {classes} classes", labels.len())));
        }
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3], EngineError> {
            match network.metadata().get(key) {
                Some(json) => serde_json::from_str(json)
                    .map_err(|e| dir.fail(format!("its {key} metadata is not three numbers: {e}"))),
                None => Ok(default),
            }
        };
        let normalization = Normalization {
            mean: triple("pixel_mean", IMAGENET.mean)?,
            scale: triple("pixel_scale", IMAGENET.scale)?,
            order: ChannelOrder::Rgb,
        };
        if normalization.scale.iter().any(|s| *s <= 0.0) {
            return Err(dir.fail("its pixel_scale metadata has a value that is not above 0"));
        }
        let crop = match network.metadata().get("crop") {
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|c| *c > 0.0 && *c <= 1.0)
                .ok_or_else(|| {
                    dir.fail(format!(
                        "its crop metadata `{text}` is not a fraction in (0, 1]"
                    ))
                })?,
            None => DEFAULT_CROP,
        };
        Ok(Self {
            network,
            info,
            labels,
            normalization,
            crop,
        })
    }
}

impl ImageEngine for Classifier {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn task(&self) -> ImageTask {
        ImageTask::Classify
    }

    fn classify(&self, image: &RgbImage, top_k: usize) -> Result<Vec<ClassScore>, EngineError> {
        let cropped = prepare::centre_crop(image, self.crop);
        let sized = prepare::resize(&cropped, self.network.width, self.network.height);
        let scores = self
            .network
            .run(prepare::to_planar(&sized, &self.normalization))?;
        let probabilities = probabilities(&scores);
        let mut ranked: Vec<usize> = (0..probabilities.len()).collect();
        ranked.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
        Ok(ranked
            .into_iter()
            .take(top_k)
            .map(|i| ClassScore {
                class_id: i,
                label: self.labels[i].clone(),
                score: probabilities[i],
            })
            .collect())
    }
}

/// Softmax of logits; scores that already are probabilities (a model that
/// ends in its own softmax) are kept.
fn probabilities(scores: &[f32]) -> Vec<f32> {
    let sum: f32 = scores.iter().sum();
    if scores.iter().all(|s| (0.0..=1.0).contains(s)) && (sum - 1.0).abs() < 1e-3 {
        return scores.to_vec();
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_become_probabilities_and_probabilities_stay() {
        let p = probabilities(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[2] > p[1] && p[1] > p[0]);
        assert_eq!(probabilities(&[0.25, 0.75]), [0.25, 0.75]);
    }
}
