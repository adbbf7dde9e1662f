//! Sentence embeddings from a BERT model directory (`model.safetensors`,
//! `tokenizer.json`, `config.json`), as sentence-transformers computes
//! them: the token vectors' mean over each text's tokens, scaled to unit
//! length.
//!
//! The texts of a batch are packed, not padded: every layer but attention
//! works token by token, so the batch's tokens are the rows of one matrix
//! (one large matrix product per layer instead of a small one per text, and
//! no work on padding), and attention runs within each text's rows.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::{Tokenizer, TruncationParams};

use jetsonmind_kernels::attend_packed;

use super::cpu::{Linear, LinearWeights, Norm, gelu, map_in_place};
use super::embedding::{Embedded, EmbeddingEngine};
use super::{EngineError, ModelDir, ModelInfo};

/// Tokens per text beyond which the rest is cut (sentence-transformers'
/// `max_seq_length` of the MiniLM models; a config may say otherwise).
const DEFAULT_MAX_TOKENS: usize = 256;

pub struct BertEngine {
    info: ModelInfo,
    model: Encoder,
    tokenizer: Tokenizer,
    dimensions: usize,
}

/// What a BERT model's `config.json` (Hugging Face's) says of its shape;
/// the rest of it (dropout, initializers) is for training.
#[derive(Debug, serde::Deserialize)]
struct Config {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    hidden_act: HiddenAct,
    max_position_embeddings: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
}

/// The feed-forward layer's activation, as `config.json` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
enum HiddenAct {
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation of GELU.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluApproximate,
    #[serde(rename = "relu")]
    Relu,
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
        let model = Encoder::load(vb, &config).map_err(|e| fail(&e))?;
        let mut tokenizer = Tokenizer::from_file(dir.path("tokenizer.json")?)
            .map_err(|e| fail(&format!("tokenizer.json: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| fail(&format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
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
        let texts: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        let vectors = self
            .model
            .embed(&texts)
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        let tokens = texts.iter().map(|t| t.len()).collect();
        Ok(Embedded { vectors, tokens })
    }
}

struct Layer {
    query_key_value: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    up: Linear,
    down: Linear,
    output_norm: Norm,
}

impl Layer {
    fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let hidden = config.hidden_size;
        let inner = config.intermediate_size;
        let eps = config.layer_norm_eps as f32;
        let attention = vb.pp("attention");
        let own = attention.pp("self");
        Ok(Self {
            query_key_value: LinearWeights::fused(&[
                LinearWeights::load(&own.pp("query"), hidden, hidden)?,
                LinearWeights::load(&own.pp("key"), hidden, hidden)?,
                LinearWeights::load(&own.pp("value"), hidden, hidden)?,
            ])
            .into(),
            attention_out: Linear::load(&attention.pp("output.dense"), hidden, hidden)?,
            attention_norm: Norm::load(&attention.pp("output.LayerNorm"), hidden, eps)?,
            up: Linear::load(&vb.pp("intermediate.dense"), hidden, inner)?,
            down: Linear::load(&vb.pp("output.dense"), inner, hidden)?,
            output_norm: Norm::load(&vb.pp("output.LayerNorm"), hidden, eps)?,
        })
    }

    /// `x`, a row per token, `hidden` wide, through the layer.
    fn forward(&self, x: &[f32], spans: &Spans, heads: usize, activation: HiddenAct) -> Vec<f32> {
        let rows = spans.tokens;
        let hidden = self.attention_out.outputs;
        let qkv = self.query_key_value.apply(x, rows, None);
        let attended = attend_packed(&qkv, &spans.ranges, heads, hidden / heads);
        let mut x = self.attention_out.apply(&attended, rows, Some(x));
        self.attention_norm.apply(&mut x);
        let mut inner = self.up.apply(&x, rows, None);
        activate(&mut inner, activation);
        let mut out = self.down.apply(&inner, rows, Some(&x));
        self.output_norm.apply(&mut out);
        out
    }
}

fn activate(values: &mut [f32], activation: HiddenAct) {
    match activation {
        HiddenAct::Gelu => map_in_place(values, gelu),
        HiddenAct::GeluApproximate => map_in_place(values, |x| {
            let inner = (2.0 / std::f32::consts::PI).sqrt() * (x + 0.044_715 * x * x * x);
            0.5 * x * (1.0 + inner.tanh())
        }),
        HiddenAct::Relu => map_in_place(values, |x| x.max(0.0)),
    }
}

/// BERT's encoder over packed texts, on plain rows of numbers: each layer
/// is three matrix products that add their bias (and residual) as they
/// go, attention within each text, and two layer norms in place.
struct Encoder {
    /// Row per token id, `hidden` wide.
    words: Vec<f32>,
    positions: Vec<f32>,
    /// Token type 0's vector: every text here is one segment.
    segment: Vec<f32>,
    norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    activation: HiddenAct,
}

impl Encoder {
    fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        // Saved from a `BertModel` the names start at `embeddings`; from a
        // task model, under `bert.`.
        let vb = match vb.contains_tensor("embeddings.word_embeddings.weight") {
            true => vb,
            false => vb.pp("bert"),
        };
        let hidden = config.hidden_size;
        if config.num_attention_heads == 0 || !hidden.is_multiple_of(config.num_attention_heads) {
            candle_core::bail!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {}",
                config.num_attention_heads
            );
        }
        let embeddings = vb.pp("embeddings");
        let table = |name: &str, rows: usize| -> candle_core::Result<Vec<f32>> {
            rows_of(&embeddings.pp(name).get((rows, hidden), "weight")?)
        };
        let segments = table("token_type_embeddings", config.type_vocab_size)?;
        Ok(Self {
            words: table("word_embeddings", config.vocab_size)?,
            positions: table("position_embeddings", config.max_position_embeddings)?,
            segment: segments[..hidden].to_vec(),
            norm: Norm::load(
                &embeddings.pp("LayerNorm"),
                hidden,
                config.layer_norm_eps as f32,
            )?,
            layers: (0..config.num_hidden_layers)
                .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), config))
                .collect::<candle_core::Result<_>>()?,
            hidden,
            heads: config.num_attention_heads,
            activation: config.hidden_act,
        })
    }

    /// Each text's mean token vector, unit length.
    fn embed(&self, texts: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let spans = Spans::of(texts);
        let mut x = self.embeddings(texts)?;
        for layer in &self.layers {
            x = layer.forward(&x, &spans, self.heads, self.activation);
        }
        let hidden = self.hidden;
        Ok(spans
            .ranges
            .iter()
            .map(|&(start, len)| mean_unit(&x[start * hidden..(start + len) * hidden], hidden))
            .collect())
    }

    /// Word, position and segment vectors summed, normalized: a row per token.
    fn embeddings(&self, texts: &[&[u32]]) -> candle_core::Result<Vec<f32>> {
        let hidden = self.hidden;
        let mut x = Vec::with_capacity(texts.iter().map(|t| t.len()).sum::<usize>() * hidden);
        fn row(table: &[f32], i: usize, hidden: usize) -> Option<&[f32]> {
            table.get(i * hidden..(i + 1) * hidden)
        }
        for text in texts {
            for (position, id) in text.iter().enumerate() {
                let (Some(word), Some(place)) = (
                    row(&self.words, *id as usize, hidden),
                    row(&self.positions, position, hidden),
                ) else {
                    candle_core::bail!("token {id} at {position} is outside the model's tables");
                };
                x.extend(
                    word.iter()
                        .zip(place)
                        .zip(&self.segment)
                        .map(|((w, p), s)| w + p + s),
                );
            }
        }
        self.norm.apply(&mut x);
        Ok(x)
    }
}

/// A tensor's numbers, row after row.
fn rows_of(tensor: &Tensor) -> candle_core::Result<Vec<f32>> {
    tensor.flatten_all()?.to_vec1::<f32>()
}

/// Where each text's tokens are among the packed rows.
struct Spans {
    /// `(first row, rows)` per text.
    ranges: Vec<(usize, usize)>,
    tokens: usize,
}

impl Spans {
    fn of(texts: &[&[u32]]) -> Self {
        let mut start = 0;
        let ranges = texts
            .iter()
            .map(|t| {
                let range = (start, t.len());
                start += t.len();
                range
            })
            .collect();
        Self {
            ranges,
            tokens: start,
        }
    }
}

/// The mean of `rows` (each `width` long), scaled to unit length.
fn mean_unit(rows: &[f32], width: usize) -> Vec<f32> {
    let count = (rows.len() / width).max(1) as f32;
    let mut mean = vec![0.0f32; width];
    for row in rows.chunks_exact(width) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= count);
    let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    mean.iter_mut().for_each(|m| *m /= norm);
    mean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_is_over_the_texts_rows_and_unit_length() {
        let v = mean_unit(&[3.0, 0.0, 3.0, 8.0], 2);
        assert!(
            (v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6,
            "{v:?}"
        );
    }

    #[test]
    fn activations_read_by_their_config_names_and_others_are_refused() {
        let read = |name: &str| serde_json::from_value::<HiddenAct>(serde_json::json!(name));
        assert_eq!(read("gelu").unwrap(), HiddenAct::Gelu);
        assert_eq!(read("gelu_new").unwrap(), HiddenAct::GeluApproximate);
        assert_eq!(
            read("gelu_pytorch_tanh").unwrap(),
            HiddenAct::GeluApproximate
        );
        assert_eq!(read("relu").unwrap(), HiddenAct::Relu);
        let unknown = read("swish").unwrap_err().to_string();
        assert!(unknown.contains("swish"), "{unknown}");
    }
}
