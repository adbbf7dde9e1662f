//! A linear layer laid out for inference on the CPU.

use candle_core::Tensor;
use candle_nn::VarBuilder;

/// A linear layer with its weight stored transposed, `(in, out)`, so that
/// `x · W` is one contiguous matrix product.
pub(crate) struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    pub fn load(vb: &VarBuilder, inputs: usize, outputs: usize) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get((outputs, inputs), "weight")?.t()?.contiguous()?,
            bias: vb.get(outputs, "bias")?,
        })
    }

    /// A layer saved without a bias (Whisper's key projection).
    pub fn load_without_bias(
        vb: &VarBuilder,
        inputs: usize,
        outputs: usize,
    ) -> candle_core::Result<Self> {
        let weight = vb.get((outputs, inputs), "weight")?.t()?.contiguous()?;
        let bias = Tensor::zeros(outputs, weight.dtype(), weight.device())?;
        Ok(Self { weight, bias })
    }

    /// The same layer with its output multiplied by `factor`.
    pub fn scaled(self, factor: f64) -> candle_core::Result<Self> {
        Ok(Self {
            weight: (self.weight * factor)?,
            bias: (self.bias * factor)?,
        })
    }

    /// Query, key and value as one layer: `(in, 3 * out)`.
    pub fn fused(parts: [Dense; 3]) -> candle_core::Result<Self> {
        Ok(Self {
            weight: Tensor::cat(&parts.iter().map(|d| &d.weight).collect::<Vec<_>>(), 1)?,
            bias: Tensor::cat(&parts.iter().map(|d| &d.bias).collect::<Vec<_>>(), 0)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight)?.broadcast_add(&self.bias)
    }
}
