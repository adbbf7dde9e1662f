//! Small numeric kernels the candle-based engines share, written so that
//! the compiler vectorizes them for the CPU it builds for
//! (`.cargo/config.toml`): several running sums instead of one (a single
//! sum's adds must stay in order), and no calls or branches per element.

use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor};
use rayon::prelude::*;

const LANES: usize = 8;

/// `a · b`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; LANES];
    let (a8, b8) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for ((sum, x), y) in sums.iter_mut().zip(x).zip(y) {
            *sum += x * y;
        }
    }
    sums.iter().sum::<f32>() + tail
}

fn sum(values: &[f32]) -> f32 {
    let mut sums = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (sum, v) in sums.iter_mut().zip(chunk) {
            *sum += v;
        }
    }
    sums.iter().sum::<f32>() + tail
}

fn max(values: &[f32]) -> f32 {
    let mut maxes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (m, v) in maxes.iter_mut().zip(chunk) {
            *m = if *v > *m { *v } else { *m };
        }
    }
    maxes.iter().copied().fold(tail, f32::max)
}

/// e^x within about one unit in the last place, branch-free (libm's `expf`
/// is a call per element, which keeps a loop from vectorizing). Beyond
/// ±87 the result saturates at the smallest normal or a large finite value.
#[inline]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and taking away 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.3);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // e^r on |r| <= ln(2) / 2: Taylor to r^6, error below 2e-7 relative.
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r / 720.0)))));
    // 2^n from `shifted`'s low bits, which hold n: no float-to-integer
    // conversion (Rust's saturating `as` is a branch per element).
    p * f32::from_bits(shifted.to_bits().wrapping_sub(ROUND.to_bits() - 127) << 23)
}

/// erf(x) within 1e-6 (Abramowitz and Stegun 7.1.26 on [`exp`]: 1.5e-7,
/// plus f32 rounding),
/// branch-free: libm's is a call per element, and a model's activation
/// (exact GELU) takes one per hidden value.
#[inline]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// GELU as BERT and Whisper define it: `x * Φ(x)`, with erf (not the tanh
/// approximation).
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

struct GeluInPlace;

impl InplaceOp1 for GeluInPlace {
    fn name(&self) -> &'static str {
        "gelu-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("gelu-in-place: a contiguous f32 tensor only");
        };
        data[start..end].par_chunks_mut(4096).for_each(|chunk| {
            for v in chunk {
                *v = gelu(*v);
            }
        });
        Ok(())
    }
}

/// `x` (a fresh, contiguous f32 tensor), GELU applied in place; `x` back.
pub fn gelu_in_place(x: Tensor) -> candle_core::Result<Tensor> {
    x.inplace_op1(&GeluInPlace)?;
    Ok(x)
}

/// `values` in place as their softmax.
pub fn softmax(values: &mut [f32]) {
    let top = max(values);
    for v in values.iter_mut() {
        *v = exp(*v - top);
    }
    let scale = 1.0 / sum(values);
    for v in values.iter_mut() {
        *v *= scale;
    }
}

/// Softmax over the last dimension of a contiguous f32 tensor, in place,
/// its rows in parallel: no second tensor the size of the scores (a 30 s
/// Whisper window's are 9 MB a head).
struct SoftmaxRows;

impl InplaceOp1 for SoftmaxRows {
    fn name(&self) -> &'static str {
        "softmax-rows"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("softmax-rows: a contiguous f32 tensor only");
        };
        let width = layout.dims().last().copied().unwrap_or(1).max(1);
        data[start..end].par_chunks_mut(width).for_each(softmax);
        Ok(())
    }
}

/// `scores` (contiguous, f32) replaced by their softmax along the last dimension.
pub fn softmax_last_dim_in_place(scores: &Tensor) -> candle_core::Result<()> {
    scores.inplace_op1(&SoftmaxRows)
}

/// `matrix · vector` for a row-major `(rows, vector.len())` matrix, the
/// rows split among the threads. At one token a step a decoder's output
/// projection is this product, bound by reading the matrix from memory
/// (gemm runs it on one thread).
pub fn matvec(matrix: &Tensor, vector: &[f32]) -> candle_core::Result<Vec<f32>> {
    with_data(matrix, |rows| matvec_rows(rows, matrix.dims(), vector))?
}

/// `f` on the data of `tensor`, a contiguous f32 tensor on the CPU.
fn with_data<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
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
    let mut out = vec![0.0f32; rows.len() / width];
    const ROWS_PER_TASK: usize = 1024;
    out.par_chunks_mut(ROWS_PER_TASK)
        .zip(rows.par_chunks(ROWS_PER_TASK * width))
        .for_each(|(out, rows)| {
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(width)) {
                *o = dot(row, vector);
            }
        });
    Ok(out)
}

/// `out += a · b` for row-major `a` (`m × k`), `b` (`k × n`) and `out`
/// (`m × n`), on the threads (gemm splits the product; splitting the rows
/// into a product per thread measured slower).
fn matmul_add(out: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    assert!(
        out.len() == m * n && a.len() == m * k && b.len() == k * n,
        "matmul_add: shapes"
    );
    let parallelism = match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        threads => gemm::Parallelism::Rayon(threads),
    };
    // SAFETY: the three slices hold exactly the elements the sizes and
    // row-major strides reach (checked above), and `out` is borrowed
    // mutably, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            true,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A linear layer on plain rows: its weight transposed, `(inputs,
/// outputs)` row-major, so that the product is one matrix product that adds
/// into rows already holding the bias (and the residual, where there is one).
pub struct Linear {
    weight: Vec<f32>,
    bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
}

impl Linear {
    pub fn load(
        vb: &candle_nn::VarBuilder,
        inputs: usize,
        outputs: usize,
    ) -> candle_core::Result<Self> {
        let weight = vb.get((outputs, inputs), "weight")?.t()?.contiguous()?;
        Ok(Self {
            weight: weight.flatten_all()?.to_vec1()?,
            bias: vb.get(outputs, "bias")?.to_vec1()?,
            inputs,
            outputs,
        })
    }

    /// Layers that read the same input, as one: their outputs side by side.
    pub fn fused(parts: &[Linear]) -> Self {
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

    /// `rows` rows of `x` through the layer, plus `residual` (as many rows,
    /// `outputs` wide) where given.
    pub fn apply(&self, x: &[f32], rows: usize, residual: Option<&[f32]>) -> Vec<f32> {
        let mut out = match residual {
            Some(residual) => {
                let mut out = residual.to_vec();
                for row in out.chunks_exact_mut(self.outputs) {
                    for (o, b) in row.iter_mut().zip(&self.bias) {
                        *o += b;
                    }
                }
                out
            }
            None => self.bias.repeat(rows),
        };
        matmul_add(&mut out, x, &self.weight, rows, self.inputs, self.outputs);
        out
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
                let mean = sum(row) / width as f32;
                let mut squares = [0.0f32; LANES];
                for chunk in row.chunks(LANES) {
                    for (s, v) in squares.iter_mut().zip(chunk) {
                        *s += (v - mean) * (v - mean);
                    }
                }
                let variance = squares.iter().sum::<f32>() / width as f32;
                let scale = 1.0 / (variance + self.eps).sqrt();
                for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                    *v = (*v - mean) * scale * w + b;
                }
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
                    let mut weights: Vec<f32> = keys
                        .chunks_exact(head_size)
                        .map(|key| dot(query, key) * scale)
                        .collect();
                    softmax(&mut weights);
                    for (w, value) in weights.iter().zip(values.chunks_exact(head_size)) {
                        for (o, v) in out.iter_mut().zip(value) {
                            *o += w * v;
                        }
                    }
                });
        })
    })??;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_library_within_a_few_ulp() {
        let mut worst = 0.0f32;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max((ours - libm).abs() / libm);
        }
        assert!(worst < 1e-6, "{worst}");
        assert_eq!(exp(-1000.0), exp(-87.3));
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn erf_and_gelu_match_the_library() {
        let mut worst = 0.0f32;
        for i in -6_000..=6_000 {
            let x = i as f32 / 1000.0;
            worst = worst.max((erf(x) - libm::erf(x as f64) as f32).abs());
        }
        assert!(worst < 1e-6, "{worst}");
        assert_eq!(gelu(0.0), 0.0);
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6, "{}", gelu(1.0));
        assert!((gelu(-3.0) - -0.004_049_6).abs() < 1e-6, "{}", gelu(-3.0));
        let t = Tensor::from_vec(vec![-1.0f32, 0.0, 2.0], 3, &candle_core::Device::Cpu).unwrap();
        let t = gelu_in_place(t).unwrap();
        let want = [gelu(-1.0), 0.0, gelu(2.0)];
        assert_eq!(t.to_vec1::<f32>().unwrap(), want);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut v: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 20.0).collect();
        let before = v.clone();
        softmax(&mut v);
        assert!((v.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let top = |x: &[f32]| (0..x.len()).max_by(|a, b| x[*a].total_cmp(&x[*b])).unwrap();
        assert_eq!(top(&v), top(&before));
        let denominator: f64 = before.iter().map(|x| (*x as f64).exp()).sum();
        for (p, x) in v.iter().zip(&before) {
            assert!((*p as f64 - (*x as f64).exp() / denominator).abs() < 1e-6);
        }
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
        let both = Linear::fused(&[a, Linear::load(&vb.pp("b"), 3, 1).unwrap()]);
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
