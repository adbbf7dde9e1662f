//! Whisper's text decoder with a key/value cache for self-attention: each
//! step runs the new token only, not every token so far (candle's decoder
//! caches only the audio's keys and values, so a step cost grew with the
//! prompt and the text; with a window prompted by up to 223 tokens of the
//! text before, that was most of the time). Same weights, same arithmetic
//! as OpenAI's model (exact GELU).

use candle_core::{D, IndexOp, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use jetsonmind_kernels::half::HalfMatrix;

use super::spec;
use crate::engine::cpu;

struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn load(state: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            query: candle_nn::linear(state, state, vb.pp("q_proj"))?,
            key: candle_nn::linear_no_bias(state, state, vb.pp("k_proj"))?,
            value: candle_nn::linear(state, state, vb.pp("v_proj"))?,
            out: candle_nn::linear(state, state, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// (batch, length, state) as (batch, heads, length, state / heads).
    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (batch, length, state) = x.dims3()?;
        x.reshape((batch, length, self.heads, state / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.split(&linear(&self.key, x)?)?,
            self.split(&linear(&self.value, x)?)?,
        ))
    }

    /// Attention of `x`'s queries over `keys` and `values` (already split
    /// into heads); `mask` is added to the scores.
    fn attend(
        &self,
        x: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let query = linear(&self.query, x)?;
        if query.dim(1)? == 1 && mask.is_none() {
            let query = query.flatten_all()?.to_vec1::<f32>()?;
            let merged = cpu::attend_one(&query, keys, values)?;
            let state = merged.len();
            return linear(
                &self.out,
                &Tensor::from_vec(merged, (1, 1, state), x.device())?,
            );
        }
        let q = self.split(&query)?;
        let head = q.dim(D::Minus1)?;
        let mut scores = (q.matmul(&keys.t()?)? / (head as f64).sqrt())?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let merged = weights.matmul(values)?.transpose(1, 2)?.flatten_from(2)?;
        self.out.forward(&merged)
    }
}

/// `layer` on `x`, `(1, tokens, in)`. For one token (each step after the
/// prompt), a matrix-vector product split among the threads: gemm runs
/// those on one thread, and at a token a step they are bound by reading
/// the weights from memory.
fn linear(layer: &Linear, x: &Tensor) -> Result<Tensor> {
    if x.dims3()?.1 != 1 {
        return layer.forward(x);
    }
    let mut y = cpu::matvec(layer.weight(), &x.flatten_all()?.to_vec1::<f32>()?)?;
    if let Some(bias) = layer.bias() {
        for (y, b) in y.iter_mut().zip(bias.to_vec1::<f32>()?) {
            *y += b;
        }
    }
    let width = y.len();
    Tensor::from_vec(y, (1, 1, width), x.device())
}

struct Block {
    self_attention: Attention,
    self_norm: LayerNorm,
    cross_attention: Attention,
    cross_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    mlp_norm: LayerNorm,
}

impl Block {
    fn load(state: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let norm = |name: &str| candle_nn::layer_norm(state, 1e-5, vb.pp(name));
        Ok(Self {
            self_attention: Attention::load(state, heads, vb.pp("self_attn"))?,
            self_norm: norm("self_attn_layer_norm")?,
            cross_attention: Attention::load(state, heads, vb.pp("encoder_attn"))?,
            cross_norm: norm("encoder_attn_layer_norm")?,
            fc1: candle_nn::linear(state, state * 4, vb.pp("fc1"))?,
            fc2: candle_nn::linear(state * 4, state, vb.pp("fc2"))?,
            mlp_norm: norm("final_layer_norm")?,
        })
    }
}

pub(super) struct Decoder {
    tokens: TokenTable,
    positions: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

/// One window's decoding: the audio's keys and values per block, computed
/// once, and the keys and values of the tokens so far.
pub(super) struct DecodeState {
    audio: Vec<(Tensor, Tensor)>,
    text: Vec<Option<(Tensor, Tensor)>>,
    length: usize,
}

impl Decoder {
    pub fn load(vb: VarBuilder, config: &spec::Config) -> Result<Self> {
        let state = config.d_model;
        let heads = config.decoder_attention_heads;
        Ok(Self {
            tokens: TokenTable::load(vb.pp("embed_tokens"), config.vocab_size, state)?,
            positions: vb.get(
                (config.max_target_positions, state),
                "embed_positions.weight",
            )?,
            blocks: (0..config.decoder_layers)
                .map(|i| Block::load(state, heads, vb.pp(format!("layers.{i}"))))
                .collect::<Result<_>>()?,
            norm: candle_nn::layer_norm(state, 1e-5, vb.pp("layer_norm"))?,
        })
    }

    /// A fresh state for the window whose encoded audio is `features`.
    pub fn start(&self, features: &Tensor) -> Result<DecodeState> {
        Ok(DecodeState {
            audio: self
                .blocks
                .iter()
                .map(|b| b.cross_attention.keys_values(features))
                .collect::<Result<_>>()?,
            text: vec![None; self.blocks.len()],
            length: 0,
        })
    }

    /// Feed `tokens` (the prompt at first, then one token a step): the
    /// logits of the token after the last of them.
    pub fn step(&self, state: &mut DecodeState, tokens: &[u32]) -> Result<Vec<f32>> {
        let count = tokens.len();
        let mut x = self
            .tokens
            .embed(tokens)?
            .broadcast_add(&self.positions.narrow(0, state.length, count)?)?
            .unsqueeze(0)?;
        let mask = causal_mask(count, state.length, x.device())?;
        for (i, block) in self.blocks.iter().enumerate() {
            let normed = block.self_norm.forward(&x)?;
            let (k, v) = block.self_attention.keys_values(&normed)?;
            let (k, v) = match state.text[i].take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            x = (&x
                + block
                    .self_attention
                    .attend(&normed, &k, &v, mask.as_ref())?)?;
            state.text[i] = Some((k, v));
            let (ak, av) = &state.audio[i];
            let normed = block.cross_norm.forward(&x)?;
            x = (&x + block.cross_attention.attend(&normed, ak, av, None)?)?;
            let hidden = linear(&block.fc1, &block.mlp_norm.forward(&x)?)?.gelu_erf()?;
            x = (&x + linear(&block.fc2, &hidden)?)?;
        }
        state.length += count;
        let last = self.norm.forward(&x.i((0, count - 1..))?)?;
        self.tokens.logits(&last.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// The token embedding, which is also the output projection (transposed),
/// read once per token at each step: kept in f16 where the model's values
/// are halves and the CPU converts them in hardware (half the bytes to read
/// per step; Whisper's model.bin ships f16), else in f32.
enum TokenTable {
    Half(HalfMatrix),
    Full(Tensor),
}

impl TokenTable {
    fn load(vb: VarBuilder, vocabulary: usize, state: usize) -> Result<Self> {
        let table = vb.get((vocabulary, state), "weight")?;
        Ok(
            match cpu::with_data(&table, |values| HalfMatrix::exact(values, state))? {
                Some(half) => Self::Half(half),
                None => Self::Full(table),
            },
        )
    }

    /// The tokens' vectors, `(tokens, state)`.
    fn embed(&self, tokens: &[u32]) -> Result<Tensor> {
        match self {
            Self::Full(table) => {
                let ids = Tensor::new(tokens, table.device())?;
                table.index_select(&ids, 0)
            }
            Self::Half(half) => {
                let mut values = Vec::with_capacity(tokens.len() * half.columns());
                for &token in tokens {
                    let Some(row) = half.row(token as usize) else {
                        candle_core::bail!("token {token} is outside the vocabulary");
                    };
                    values.extend(row);
                }
                Tensor::from_vec(
                    values,
                    (tokens.len(), half.columns()),
                    &candle_core::Device::Cpu,
                )
            }
        }
    }

    /// The logits of the token after `last`, the final hidden state.
    fn logits(&self, last: &[f32]) -> Result<Vec<f32>> {
        match self {
            Self::Full(table) => cpu::matvec(table, last),
            Self::Half(half) if half.columns() == last.len() => Ok(half.matvec(last)),
            Self::Half(half) => {
                candle_core::bail!(
                    "a state of {} for a table {} wide",
                    last.len(),
                    half.columns()
                )
            }
        }
    }
}

/// Each of `count` new tokens sees the `before` earlier ones and itself and
/// those new ones before it; none for a single token.
fn causal_mask(
    count: usize,
    before: usize,
    device: &candle_core::Device,
) -> Result<Option<Tensor>> {
    if count == 1 {
        return Ok(None);
    }
    let total = before + count;
    let values: Vec<f32> = (0..count)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > before + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(Tensor::from_vec(values, (count, total), device)?))
}
