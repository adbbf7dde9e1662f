//! Kernels on single values and vectors, written so that the compiler
//! vectorizes them for the CPU it builds for (`.cargo/config.toml`):
//! several running sums instead of one (a single sum's adds must stay in
//! order), and no calls or branches per element.

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

pub fn sum(values: &[f32]) -> f32 {
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

/// `matrix · vector` for a row-major matrix of `vector.len()` columns, the
/// rows split among rayon's threads: at one token a step a decoder's layers
/// are this product, bound by reading the matrix from memory.
///
/// # Panics
/// If the matrix's length is not a whole number of rows.
pub fn matvec(matrix: &[f32], vector: &[f32]) -> Vec<f32> {
    per_row(matrix, vector.len(), |row| dot(row, vector))
}

/// `f` of each row of a row-major matrix `width` wide, the rows split
/// among rayon's threads: the loop of every matrix-vector product here,
/// whatever the matrix holds.
///
/// # Panics
/// If `width` is 0 or the matrix's length is not a whole number of rows.
pub(crate) fn per_row<T: Sync>(
    matrix: &[T],
    width: usize,
    f: impl Fn(&[T]) -> f32 + Sync,
) -> Vec<f32> {
    assert!(
        width > 0 && matrix.len().is_multiple_of(width),
        "per_row: {} values in rows of {width}",
        matrix.len()
    );
    const ROWS_PER_TASK: usize = 1024;
    let mut out = vec![0.0f32; matrix.len() / width];
    out.par_chunks_mut(ROWS_PER_TASK)
        .zip(matrix.par_chunks(ROWS_PER_TASK * width))
        .for_each(|(out, rows)| {
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(width)) {
                *o = f(row);
            }
        });
    out
}

/// `f` on every value, in parallel; generic, so `f` is inlined into the
/// loop (through a function pointer it would be a call per value).
pub fn map_in_place(values: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    values.par_chunks_mut(4096).for_each(|chunk| {
        for v in chunk {
            *v = f(*v);
        }
    });
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

/// `row` normalized to mean 0 and variance 1 (`eps` added to the
/// variance), then scaled by `weight` and shifted by `bias`, per column.
pub fn layer_norm(row: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let width = row.len() as f32;
    let mean = sum(row) / width;
    let mut squares = [0.0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for chunk in chunks {
        for (s, v) in squares.iter_mut().zip(chunk) {
            *s += (v - mean) * (v - mean);
        }
    }
    let variance = (squares.iter().sum::<f32>() + tail) / width;
    let scale = 1.0 / (variance + eps).sqrt();
    for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
        *v = (*v - mean) * scale * w + b;
    }
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
    }

    #[test]
    fn layer_norm_matches_the_formula() {
        let row: Vec<f32> = (0..37)
            .map(|i| (i as f32 * 0.61).cos() * 3.0 + 1.5)
            .collect();
        let weight: Vec<f32> = (0..37).map(|i| 0.5 + i as f32 / 37.0).collect();
        let bias: Vec<f32> = (0..37).map(|i| i as f32 / 10.0 - 1.0).collect();
        let mut got = row.clone();
        layer_norm(&mut got, &weight, &bias, 1e-5);
        let mean = row.iter().map(|v| *v as f64).sum::<f64>() / 37.0;
        let variance = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / 37.0;
        for i in 0..37 {
            let want = (row[i] as f64 - mean) / (variance + 1e-5).sqrt() * weight[i] as f64
                + bias[i] as f64;
            assert!(
                (got[i] as f64 - want).abs() < 1e-5,
                "{i}: {} {want}",
                got[i]
            );
        }
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
}
