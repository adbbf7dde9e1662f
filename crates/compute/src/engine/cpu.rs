//! The engines' layers on the CPU, between candle's tensors and
//! `jetsonmind-kernels`: linear layers with packed weights, layer norms,
//! in-place activations and softmax on tensors, matrix-vector products and
//! single-query attention for decoder steps.

use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor};
use rayon::prelude::*;

use jetsonmind_kernels::{Strided, attend_query, layer_norm, matmul::PackedMatrix};
pub use jetsonmind_kernels::{gelu, map_in_place, softmax};

/// An operation on a contiguous f32 tensor's values in place, given them
/// and the tensor's row width: no second tensor the size of the first (a
/// 30 s Whisper window's attention scores are 9 MB a head).
struct InPlace<F> {
    name: &'static str,
    apply: F,
}

impl<F: Fn(&mut [f32], usize) + Send + Sync> InplaceOp1 for InPlace<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("{}: a contiguous f32 tensor only", self.name);
        };
        let width = layout.dims().last().copied().unwrap_or(1).max(1);
        (self.apply)(&mut data[start..end], width);
        Ok(())
    }
}

/// `x` (a fresh, contiguous f32 tensor), GELU applied in place; `x` back.
pub fn gelu_in_place(x: Tensor) -> candle_core::Result<Tensor> {
    x.inplace_op1(&InPlace {
        name: "gelu-in-place",
        apply: |values: &mut [f32], _| map_in_place(values, gelu),
    })?;
    Ok(x)
}

/// `scores` (contiguous, f32) replaced by their softmax along the last
/// dimension, the rows in parallel.
pub fn softmax_last_dim_in_place(scores: &Tensor) -> candle_core::Result<()> {
    scores.inplace_op1(&InPlace {
        name: "softmax-rows",
        apply: |values: &mut [f32], width| values.par_chunks_mut(width).for_each(softmax),
    })
}

/// `matrix · vector` for a row-major `(rows, vector.len())` matrix, the
/// rows split among the threads. At one token a step a decoder's output
/// projection is this product, bound by reading the matrix from memory
/// (gemm runs it on one thread).
pub fn matvec(matrix: &Tensor, vector: &[f32]) -> candle_core::Result<Vec<f32>> {
    with_data(matrix, |rows| matvec_rows(rows, matrix.dims(), vector))?
}

/// `f` on the data of `tensor`, a contiguous f32 tensor on the CPU.
pub(crate) fn with_data<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let (storage, layout) = tensor.storage_and_layout();
    let (candle_core::Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    else {
        candle_core::bail!("a contiguous f32 tensor on the CPU only");
    };
    Ok(f(&data[start..end]))
}

fn matvec_rows(rows: &[f32], dims: &[usize], vector: &[f32]) -> candle_core::Result<Vec<f32>> {
    let width = vector.len();
    if width == 0 || !rows.len().is_multiple_of(width) {
        candle_core::bail!(
            "matvec: rows of {} do not match a vector of {width}",
            dims.last().unwrap_or(&0)
        );
    }
    Ok(jetsonmind_kernels::matvec(rows, vector))
}

/// A linear layer's numbers as a model stores them, before they are laid
/// out for [`Linear`]: the weight transposed, `(inputs, outputs)`
/// row-major, and the bias.
pub struct LinearWeights {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl LinearWeights {
    pub fn load(
        vb: &candle_nn::VarBuilder,
        inputs: usize,
        outputs: usize,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            bias: vb.get(outputs, "bias")?.to_vec1()?,
            ..Self::load_without_bias(vb, inputs, outputs)?
        })
    }

    /// A layer saved without a bias (Whisper's key projection): zeros.
    pub fn load_without_bias(
        vb: &candle_nn::VarBuilder,
        inputs: usize,
        outputs: usize,
    ) -> candle_core::Result<Self> {
        let weight = vb.get((outputs, inputs), "weight")?.t()?.contiguous()?;
        Ok(Self {
            weight: weight.flatten_all()?.to_vec1()?,
            bias: vec![0.0; outputs],
            inputs,
            outputs,
        })
    }

    /// The same layer with its output multiplied by `factor`.
    pub fn scaled(mut self, factor: f32) -> Self {
        self.weight.iter_mut().for_each(|w| *w *= factor);
        self.bias.iter_mut().for_each(|b| *b *= factor);
        self
    }

    /// Layers that read the same input, as one: their outputs side by side.
    pub fn fused(parts: &[LinearWeights]) -> Self {
        let inputs = parts.first().map_or(0, |p| p.inputs);
        let outputs = parts.iter().map(|p| p.outputs).sum();
        let mut weight = Vec::with_capacity(inputs * outputs);
        for row in 0..inputs {
            for part in parts {
                weight.extend_from_slice(&part.weight[row * part.outputs..][..part.outputs]);
            }
        }
        Self {
            weight,
            bias: parts.iter().flat_map(|p| p.bias.iter().copied()).collect(),
            inputs,
            outputs,
        }
    }
}

/// A linear layer on plain rows, its weight packed for [`PackedMatrix`]:
/// the product is one matrix product that adds into rows already holding
/// the bias (and the residual, where there is one).
pub struct Linear {
    weight: PackedMatrix,
    bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
}

impl From<LinearWeights> for Linear {
    fn from(w: LinearWeights) -> Self {
        Self {
            weight: PackedMatrix::new(&w.weight, w.inputs, w.outputs),
            bias: w.bias,
            inputs: w.inputs,
            outputs: w.outputs,
        }
    }
}

impl Linear {
    pub fn load(
        vb: &candle_nn::VarBuilder,
        inputs: usize,
        outputs: usize,
    ) -> candle_core::Result<Self> {
        Ok(LinearWeights::load(vb, inputs, outputs)?.into())
    }

    /// `rows` rows of `x` through the layer, plus `residual` (as many rows,
    /// `outputs` wide) where given.
    pub fn apply(&self, x: &[f32], rows: usize, residual: Option<&[f32]>) -> Vec<f32> {
        let width = self.outputs;
        assert!(
            residual.is_none_or(|r| r.len() == rows * width),
            "Linear::apply: the residual is not {rows} rows of {width}"
        );
        let mut out = vec![0.0f32; rows * width];
        self.weight
            .multiply_from(&mut out, x, rows, |first_row, block| {
                let residual = residual.map(|r| &r[first_row * width..][..block.len()]);
                for (i, row) in block.chunks_exact_mut(width).enumerate() {
                    match residual {
                        Some(r) => {
                            for ((o, r), b) in row.iter_mut().zip(&r[i * width..]).zip(&self.bias) {
                                *o = r + b;
                            }
                        }
                        None => row.copy_from_slice(&self.bias),
                    }
                }
            });
        out
    }

    /// [`Linear::apply`] on the rows of `x`, a `(rows, inputs)` tensor.
    pub fn forward(&self, x: &Tensor, residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (rows, inputs) = x.dims2()?;
        let wrong_residual = residual.is_some_and(|r| r.dims() != [rows, self.outputs]);
        if inputs != self.inputs || wrong_residual {
            candle_core::bail!(
                "linear layer {} → {}: input {:?}, residual {:?}",
                self.inputs,
                self.outputs,
                x.dims(),
                residual.map(|r| r.dims())
            );
        }
        let out = with_data(x, |x| match residual {
            Some(residual) => with_data(residual, |r| self.apply(x, rows, Some(r))),
            None => Ok(self.apply(x, rows, None)),
        })??;
        Tensor::from_vec(out, (rows, self.outputs), x.device())
    }
}

/// Layer normalization over each row, in place.
pub struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl Norm {
    pub fn load(vb: &candle_nn::VarBuilder, width: usize, eps: f32) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(width, "weight")?.to_vec1()?,
            bias: vb.get(width, "bias")?.to_vec1()?,
            eps,
        })
    }

    pub fn apply(&self, rows: &mut [f32]) {
        let width = self.weight.len();
        rows.par_chunks_mut(width * 16).for_each(|block| {
            for row in block.chunks_exact_mut(width) {
                layer_norm(row, &self.weight, &self.bias, self.eps);
            }
        });
    }
}

/// One query's scaled dot-product attention over `keys` and `values`,
/// `(1, heads, length, head_size)` each, every head (in parallel): the
/// heads' results side by side, `heads * head_size` wide. A decoder step's
/// attention, where the product of a single query is not worth a gemm.
pub fn attend_one(query: &[f32], keys: &Tensor, values: &Tensor) -> candle_core::Result<Vec<f32>> {
    let (_, heads, length, head_size) = keys.dims4()?;
    if values.dims() != keys.dims() || query.len() != heads * head_size {
        candle_core::bail!(
            "attend_one: a query of {} over keys {:?} and values {:?}",
            query.len(),
            keys.dims(),
            values.dims()
        );
    }
    let scale = 1.0 / (head_size as f32).sqrt();
    let mut out = vec![0.0f32; heads * head_size];
    with_data(keys, |keys| {
        with_data(values, |values| {
            let per_head = length * head_size;
            out.par_chunks_mut(head_size)
                .enumerate()
                .for_each(|(head, out)| {
                    let query = &query[head * head_size..][..head_size];
                    let keys = &keys[head * per_head..][..per_head];
                    let values = &values[head * per_head..][..per_head];
                    let over = Strided {
                        keys,
                        values,
                        stride: head_size,
                        len: length,
                    };
                    attend_query(query, over, scale, &mut Vec::new(), out);
                });
        })
    })??;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use jetsonmind_kernels::dot;

    use super::*;

    #[test]
    fn gelu_in_place_is_gelu_on_each_value() {
        let t = Tensor::from_vec(vec![-1.0f32, 0.0, 2.0], 3, &candle_core::Device::Cpu).unwrap();
        let t = gelu_in_place(t).unwrap();
        let want = [gelu(-1.0), 0.0, gelu(2.0)];
        assert_eq!(t.to_vec1::<f32>().unwrap(), want);
    }

    #[test]
    fn dot_and_matvec_agree_with_the_plain_sums() {
        let a: Vec<f32> = (0..45).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..45).map(|i| 1.0 - i as f32 * 0.25).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-3);
        let rows = 2500;
        let m: Vec<f32> = (0..rows * 45)
            .map(|i| ((i * 7 % 13) as f32) - 6.0)
            .collect();
        let matrix = Tensor::from_vec(m.clone(), (rows, 45), &candle_core::Device::Cpu).unwrap();
        let got = matvec(&matrix, &b).unwrap();
        assert_eq!(got.len(), rows);
        for (r, g) in got.iter().enumerate() {
            let want: f32 = m[r * 45..(r + 1) * 45]
                .iter()
                .zip(&b)
                .map(|(x, y)| x * y)
                .sum();
            assert!((g - want).abs() < 1e-3, "{r}: {g} {want}");
        }
        assert!(matvec(&matrix, &b[..44]).is_err());
    }

    #[test]
    fn one_querys_attention_is_the_softmax_weighted_values_per_head() {
        let device = &candle_core::Device::Cpu;
        let (heads, length, size) = (2, 5, 4);
        let data = |seed: usize| -> Vec<f32> {
            (0..heads * length * size)
                .map(|i| ((i * seed % 11) as f32 - 5.0) / 3.0)
                .collect()
        };
        let (k, v) = (data(7), data(5));
        let keys = Tensor::from_vec(k.clone(), (1, heads, length, size), device).unwrap();
        let values = Tensor::from_vec(v.clone(), (1, heads, length, size), device).unwrap();
        let query: Vec<f32> = (0..heads * size).map(|i| i as f32 / 4.0 - 1.0).collect();
        let got = attend_one(&query, &keys, &values).unwrap();
        for h in 0..heads {
            let q = &query[h * size..][..size];
            let scores: Vec<f64> = (0..length)
                .map(|j| {
                    let key = &k[(h * length + j) * size..][..size];
                    q.iter().zip(key).map(|(a, b)| (a * b) as f64).sum::<f64>() / 2.0
                })
                .collect();
            let total: f64 = scores.iter().map(|s| s.exp()).sum();
            for d in 0..size {
                let want: f64 = (0..length)
                    .map(|j| scores[j].exp() / total * v[(h * length + j) * size + d] as f64)
                    .sum();
                assert!((got[h * size + d] as f64 - want).abs() < 1e-5);
            }
        }
        assert!(attend_one(&query[1..], &keys, &values).is_err());
    }

    #[test]
    fn a_linear_layer_adds_bias_and_residual_and_fuses() {
        let device = &candle_core::Device::Cpu;
        // y = x W^T + b with W (outputs 2, inputs 3).
        let mut tensors = std::collections::HashMap::new();
        let put = |t: &mut std::collections::HashMap<String, Tensor>,
                   name: &str,
                   v: Vec<f32>,
                   shape: &[usize]| {
            t.insert(
                name.to_string(),
                Tensor::from_vec(v, shape, device).unwrap(),
            );
        };
        put(
            &mut tensors,
            "a.weight",
            vec![1.0, 0.0, 2.0, 0.0, 1.0, -1.0],
            &[2, 3],
        );
        put(&mut tensors, "a.bias", vec![0.5, -0.5], &[2]);
        put(&mut tensors, "b.weight", vec![1.0, 1.0, 1.0], &[1, 3]);
        put(&mut tensors, "b.bias", vec![10.0], &[1]);
        let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, device);
        let a = Linear::load(&vb.pp("a"), 3, 2).unwrap();
        let x = [1.0, 2.0, 3.0, -1.0, 0.0, 1.0];
        assert_eq!(a.apply(&x, 2, None), vec![7.5, -1.5, 1.5, -1.5]);
        assert_eq!(
            a.apply(&x, 2, Some(&[1.0, 1.0, 2.0, 2.0])),
            vec![8.5, -0.5, 3.5, 0.5]
        );
        let both = Linear::from(LinearWeights::fused(&[
            LinearWeights::load(&vb.pp("a"), 3, 2).unwrap(),
            LinearWeights::load(&vb.pp("b"), 3, 1).unwrap(),
        ]));
        assert_eq!(
            both.apply(&x, 2, None),
            vec![7.5, -1.5, 16.0, 1.5, -1.5, 10.0]
        );
    }

    #[test]
    fn layer_norm_centres_and_scales_each_row() {
        let norm = Norm {
            weight: vec![1.0, 2.0, 1.0, 1.0],
            bias: vec![0.0, 0.0, 0.0, 1.0],
            eps: 0.0,
        };
        let mut rows = vec![1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0 + 4.0];
        norm.apply(&mut rows);
        let s = 1.0 / 1.25f32.sqrt();
        let want = [-1.5 * s, -0.5 * s * 2.0, 0.5 * s, 1.5 * s + 1.0];
        for (r, w) in rows[..4].iter().zip(want) {
            assert!((r - w).abs() < 1e-5, "{rows:?}");
        }
        // Row two: mean 6, variance 3; its last value is sqrt(3) above the mean.
        assert!((rows[7] - (3.0f32.sqrt() + 1.0)).abs() < 1e-5, "{rows:?}");
    }

    #[test]
    fn in_place_softmax_works_row_by_row() {
        let t = Tensor::from_vec(
            vec![0.0f32, 0.0, 1.0, 1.0, 5.0, 5.0],
            (3, 2),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        softmax_last_dim_in_place(&t).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap(), vec![vec![0.5, 0.5]; 3]);
    }
}
