//! Matrices stored as IEEE half-precision values, for matrix-vector
//! products bound by memory: a decoder step reads its output projection
//! once per token (Whisper tiny's: 51864 × 384), and half the bytes is
//! nearly half the time. Only built where the values are halves already
//! (a model shipped in f16 and widened at load: no rounding) and the CPU
//! converts halves in hardware (x86-64 F16C); elsewhere the caller keeps
//! its f32 matrix.

/// A row-major matrix of f16 values (their bits).
pub struct HalfMatrix {
    bits: Vec<u16>,
    columns: usize,
}

impl HalfMatrix {
    /// `values` (row-major, `columns` wide) as halves: `None` if one of them
    /// is not exactly a half, or this CPU cannot convert halves in hardware.
    pub fn exact(values: &[f32], columns: usize) -> Option<Self> {
        if !hardware_conversion() || columns == 0 || !values.len().is_multiple_of(columns) {
            return None;
        }
        let bits = values
            .iter()
            .map(|v| exact_half(*v))
            .collect::<Option<Vec<u16>>>()?;
        Some(Self { bits, columns })
    }

    pub fn rows(&self) -> usize {
        self.bits.len() / self.columns
    }

    pub fn columns(&self) -> usize {
        self.columns
    }

    /// Row `i` as f32 values (a token's embedding).
    pub fn row(&self, i: usize) -> Option<Vec<f32>> {
        let row = self.bits.get(i * self.columns..(i + 1) * self.columns)?;
        Some(row.iter().map(|h| half_to_f32(*h)).collect())
    }

    /// `self · vector`, the rows split among rayon's threads.
    ///
    /// # Panics
    /// If `vector` is not `columns` long.
    pub fn matvec(&self, vector: &[f32]) -> Vec<f32> {
        assert_eq!(vector.len(), self.columns, "HalfMatrix::matvec: width");
        crate::vector::per_row(&self.bits, self.columns, |row| dot(row, vector))
    }
}

fn hardware_conversion() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn dot(row: &[u16], vector: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a HalfMatrix exists only where AVX2, FMA and F16C were
    // detected (`hardware_conversion`); the lengths are equal (matvec).
    unsafe {
        x86::dot(row, vector)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        row.iter()
            .zip(vector)
            .map(|(h, v)| half_to_f32(*h) * v)
            .sum()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2, FMA and F16C are present; `row` and `vector` are as long.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(row: &[u16], vector: &[f32]) -> f32 {
        let whole = row.len() / 16 * 16;
        // SAFETY: every load reads 8 or 16 values below `whole`, within both slices.
        unsafe {
            let (mut sum_low, mut sum_high) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for at in (0..whole).step_by(16) {
                let halves = row.as_ptr().add(at) as *const __m128i;
                let low = _mm256_cvtph_ps(_mm_loadu_si128(halves));
                let high = _mm256_cvtph_ps(_mm_loadu_si128(halves.add(1)));
                let v = vector.as_ptr().add(at);
                sum_low = _mm256_fmadd_ps(low, _mm256_loadu_ps(v), sum_low);
                sum_high = _mm256_fmadd_ps(high, _mm256_loadu_ps(v.add(8)), sum_high);
            }
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(sum_low, sum_high));
            let tail: f32 = row[whole..]
                .iter()
                .zip(&vector[whole..])
                .map(|(h, v)| super::half_to_f32(*h) * v)
                .sum();
            lanes.iter().sum::<f32>() + tail
        }
    }
}

/// The half with exactly the value `v`, if there is one.
fn exact_half(v: f32) -> Option<u16> {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let magnitude = v.abs();
    if magnitude == 0.0 {
        return Some(sign);
    }
    if magnitude.is_infinite() {
        return Some(sign | 0x7c00);
    }
    if magnitude.is_nan() {
        return None;
    }
    let exponent = ((bits >> 23) & 0xff) as i32 - 127;
    let mantissa = bits & 0x7f_ffff;
    if (-14..=15).contains(&exponent) && mantissa & 0x1fff == 0 {
        return Some(sign | (((exponent + 15) as u16) << 10) | (mantissa >> 13) as u16);
    }
    // Subnormal halves: a whole number of 2^-24 below 2^-14.
    let scaled = magnitude * 16_777_216.0;
    (scaled < 1024.0 && scaled.fract() == 0.0).then_some(sign | scaled as u16)
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = (h >> 10) & 0x1f;
    let mantissa = (h & 0x3ff) as u32;
    match exponent {
        0 => sign * mantissa as f32 / 16_777_216.0,
        31 if mantissa == 0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => {
            let bits =
                ((h as u32 & 0x8000) << 16) | ((exponent as u32 + 112) << 23) | (mantissa << 13);
            f32::from_bits(bits)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_round_trip_and_others_are_refused() {
        for v in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            65504.0,
            6.103_515_6e-5,
            5.960_464_5e-8,
            -3.0e-6,
        ] {
            let h = exact_half(v);
            // -3.0e-6 is not a whole number of 2^-24.
            if v == -3.0e-6 {
                assert_eq!(h, None);
                continue;
            }
            let h = h.unwrap_or_else(|| panic!("{v} is a half"));
            assert_eq!(half_to_f32(h).to_bits(), v.to_bits(), "{v}");
        }
        assert_eq!(exact_half(1.0 + 1.0 / 4096.0), None);
        assert_eq!(exact_half(65536.0), None);
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xfc00), f32::NEG_INFINITY);
    }

    #[test]
    fn the_product_equals_the_f32_one() {
        let (rows, columns) = (2100, 45);
        let values: Vec<f32> = (0..rows * columns)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        let vector: Vec<f32> = (0..columns).map(|i| 1.0 - i as f32 / 16.0).collect();
        let Some(matrix) = HalfMatrix::exact(&values, columns) else {
            assert!(!hardware_conversion(), "these values are all halves");
            return;
        };
        assert_eq!(matrix.row(3).unwrap(), &values[3 * columns..4 * columns]);
        assert_eq!(matrix.row(rows), None);
        for (r, got) in matrix.matvec(&vector).iter().enumerate() {
            let want: f32 = values[r * columns..][..columns]
                .iter()
                .zip(&vector)
                .map(|(a, b)| a * b)
                .sum();
            assert!((got - want).abs() < 1e-4, "{r}: {got} {want}");
        }
        let mut inexact = values.clone();
        inexact[7] = 0.1;
        assert!(HalfMatrix::exact(&inexact, columns).is_none());
    }
}
