//! Sentence embeddings from a BERT model directory (`model.safetensors`,
//! `tokenizer.json`, `config.json`), as sentence-transformers computes
//! them: the token vectors' mean over the real (unpadded) tokens, scaled
//! to unit length.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::embedding::{Embedded, EmbeddingEngine};
use super::{EngineError, ModelDir, ModelInfo};

/// Tokens per text beyond which the rest is cut (sentence-transformers'
/// `max_seq_length` of the MiniLM models; a config may say otherwise).
const DEFAULT_MAX_TOKENS: usize = 256;

pub struct BertEngine {
    info: ModelInfo,
    model: BertModel,
    tokenizer: Tokenizer,
    dimensions: usize,
}

#[derive(serde::Deserialize)]
struct SentenceConfig {
    max_seq_length: Option<usize>,
}

impl BertEngine {
    pub fn load(dir: &ModelDir) -> Result<Self, EngineError> {
        let fail = |e: &dyn std::fmt::Display| dir.fail(e);
        let config: Config = dir.json("config.json")?;
        let max_tokens = dir
            .json::<SentenceConfig>("sentence_bert_config.json")
            .ok()
            .and_then(|c| c.max_seq_length)
            .unwrap_or(DEFAULT_MAX_TOKENS)
            .min(config.max_position_embeddings);
        let weights = dir.read("model.safetensors")?;
        let size_bytes = weights.len() as u64;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|e| fail(&e))?;
        let model = BertModel::load(vb, &config).map_err(|e| fail(&e))?;
        let mut tokenizer = Tokenizer::from_file(dir.path("tokenizer.json")?)
            .map_err(|e| fail(&format!("tokenizer.json: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| fail(&format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: config.pad_token_id as u32,
            ..Default::default()
        }));
        Ok(Self {
            info: ModelInfo {
                id: dir.id.to_string(),
                architecture: Some("bert".into()),
                parameters: size_bytes / 4,
                size_bytes,
                context_train: max_tokens as u32,
                has_chat_template: false,
                supports_fill_in_middle: false,
            },
            model,
            tokenizer,
            dimensions: config.hidden_size,
        })
    }
}

impl EmbeddingEngine for BertEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn embed(&self, texts: &[String]) -> Result<Embedded, EngineError> {
        if texts.is_empty() {
            return Ok(Embedded {
                vectors: Vec::new(),
                tokens: Vec::new(),
            });
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EngineError::Inference(format!("tokenizing: {e}")))?;
        let rows = |pick: &dyn Fn(&tokenizers::Encoding) -> Vec<u32>| {
            let data: Vec<Vec<u32>> = encodings.iter().map(pick).collect();
            Tensor::new(data, &Device::Cpu)
        };
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = rows(&|e| e.get_ids().to_vec())?;
            let mask = rows(&|e| e.get_attention_mask().to_vec())?;
            let types = ids.zeros_like()?;
            let hidden = self.model.forward(&ids, &types, Some(&mask))?;
            // Mean over the real tokens: padding must not pull the vector.
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
            let mean = summed.broadcast_div(&counts)?;
            let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
            mean.broadcast_div(&norms)?.to_vec2::<f32>()
        };
        let vectors = run().map_err(|e| EngineError::Inference(e.to_string()))?;
        let tokens = encodings
            .iter()
            .map(|e| e.get_attention_mask().iter().filter(|m| **m == 1).count())
            .collect();
        Ok(Embedded { vectors, tokens })
    }
}
