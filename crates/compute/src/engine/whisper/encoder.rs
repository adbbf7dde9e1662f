//! Whisper's audio encoder, as OpenAI's (exact GELU, the model's own
//! positions), laid out for the CPU: the query, key and value projections
//! as one matrix product, the query pre-scaled, attention a head at a time
//! on views of that product (no copies into heads and back), so a 30 s
//! window's 1500 frames hold one head's scores at a time.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, LayerNorm, VarBuilder};

use super::spec;
use crate::engine::cpu::{Linear, LinearWeights, gelu_in_place, softmax_last_dim_in_place};

struct Block {
    attention_norm: LayerNorm,
    query_key_value: Linear,
    attention_out: Linear,
    mlp_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn load(state: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let norm = |name: &str| candle_nn::layer_norm(state, 1e-5, vb.pp(name));
        let attention = vb.pp("self_attn");
        // OpenAI scales query and key by head_size^-1/4 each: the query by
        // head_size^-1/2 is the same product.
        let scale = 1.0 / ((state / heads) as f32).sqrt();
        Ok(Self {
            attention_norm: norm("self_attn_layer_norm")?,
            query_key_value: LinearWeights::fused(&[
                LinearWeights::load(&attention.pp("q_proj"), state, state)?.scaled(scale),
                LinearWeights::load_without_bias(&attention.pp("k_proj"), state, state)?,
                LinearWeights::load(&attention.pp("v_proj"), state, state)?,
            ])
            .into(),
            attention_out: Linear::load(&attention.pp("out_proj"), state, state)?,
            mlp_norm: norm("final_layer_norm")?,
            fc1: Linear::load(&vb.pp("fc1"), state, state * 4)?,
            fc2: Linear::load(&vb.pp("fc2"), state * 4, state)?,
        })
    }

    /// `x`: `(frames, state)`.
    fn forward(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        let state = x.dim(1)?;
        let head_size = state / heads;
        let qkv = self
            .query_key_value
            .forward(&self.attention_norm.forward(x)?, None)?;
        let per_head = (0..heads)
            .map(|h| {
                let part = |p: usize| qkv.narrow(1, p * state + h * head_size, head_size);
                let scores = part(0)?.matmul(&part(1)?.t()?)?;
                softmax_last_dim_in_place(&scores)?;
                scores.matmul(&part(2)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let attended = Tensor::cat(&per_head, 1)?;
        let x = self.attention_out.forward(&attended, Some(x))?;
        let hidden = gelu_in_place(self.fc1.forward(&self.mlp_norm.forward(&x)?, None)?)?;
        self.fc2.forward(&hidden, Some(&x))
    }
}

pub(super) struct Encoder {
    conv1: Conv1d,
    conv2: Conv1d,
    positions: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    heads: usize,
}

impl Encoder {
    pub fn load(vb: VarBuilder, config: &spec::Config) -> Result<Self> {
        let state = config.d_model;
        let conv = |name: &str, inputs: usize, stride: usize| -> Result<Conv1d> {
            let vb = vb.pp(name);
            let config = Conv1dConfig {
                padding: 1,
                stride,
                ..Default::default()
            };
            Ok(Conv1d::new(
                vb.get((state, inputs, 3), "weight")?,
                Some(vb.get(state, "bias")?),
                config,
            ))
        };
        Ok(Self {
            conv1: conv("conv1", config.num_mel_bins, 1)?,
            conv2: conv("conv2", state, 2)?,
            positions: vb.get(
                (config.max_source_positions, state),
                "embed_positions.weight",
            )?,
            blocks: (0..config.encoder_layers)
                .map(|i| {
                    Block::load(
                        state,
                        config.encoder_attention_heads,
                        vb.pp(format!("layers.{i}")),
                    )
                })
                .collect::<Result<_>>()?,
            norm: candle_nn::layer_norm(state, 1e-5, vb.pp("layer_norm"))?,
            heads: config.encoder_attention_heads,
        })
    }

    /// A window's mel frames, `(1, mels, frames)`, as the decoder attends
    /// to them: `(1, frames / 2, state)`.
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        let x = gelu_in_place(self.conv1.forward(mel)?)?;
        let x = gelu_in_place(self.conv2.forward(&x)?)?;
        let x = x.squeeze(0)?.t()?.contiguous()?;
        let frames = x.dim(0)?;
        let mut x = (x + self.positions.narrow(0, 0, frames)?)?;
        for block in &self.blocks {
            x = block.forward(&x, self.heads)?;
        }
        self.norm.forward(&x)?.unsqueeze(0)
    }
}
