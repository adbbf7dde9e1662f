//! Whisper's input: the log-mel spectrogram, as OpenAI's
//! `log_mel_spectrogram` (and faster-whisper) compute it: a centred STFT
//! (reflect padding, periodic Hann window), power through mel filters,
//! log10, floored at 8 below the peak and scaled. The filters are computed
//! rather than shipped (the model packages carry none): Slaney's mel scale
//! and area normalization, as librosa's defaults and OpenAI's filters are.

use candle_core::{Device, Tensor};
use realfft::RealFftPlanner;
use realfft::num_complex::Complex;

/// Samples between frames (10 ms at 16 kHz).
pub const HOP: usize = 160;
/// Samples per FFT (25 ms at 16 kHz).
pub const N_FFT: usize = 400;
/// What log10 of a power floors at (OpenAI's clamp).
const FLOOR: f32 = 1e-10;

/// The log-mel spectrogram of `samples` followed by `padding` samples of
/// silence, `(n_mels, frames)` with `frames = (samples + padding) / HOP`,
/// row after row. `filters` is [`filters`]' output.
pub fn log_mel(
    samples: &[f32],
    padding: usize,
    filters: &[f32],
    n_mels: usize,
) -> candle_core::Result<Tensor> {
    let bins = N_FFT / 2 + 1;
    let frames = (samples.len() + padding) / HOP;
    // Frames that see audio; the rest see only the padding's silence, whose
    // power is 0 (their log is the floor's, without an FFT).
    let heard = frames.min(samples.len().div_ceil(HOP) + N_FFT / HOP + 1);
    let power = power_spectrum(samples, heard, frames);
    let power = Tensor::from_vec(power, (bins, heard), &Device::Cpu)?;
    let filters = Tensor::from_slice(filters, (n_mels, bins), &Device::Cpu)?;
    let heard_mel = filters.matmul(&power)?.to_vec2::<f32>()?;
    let silent = FLOOR.log10();
    let mut mel = Vec::with_capacity(n_mels * frames);
    for row in &heard_mel {
        mel.extend(row.iter().map(|p| p.max(FLOOR).log10()));
        mel.extend(std::iter::repeat_n(silent, frames - heard));
    }
    let peak = mel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for value in &mut mel {
        *value = (value.max(peak - 8.0) + 4.0) / 4.0;
    }
    Tensor::from_vec(mel, (n_mels, frames), &Device::Cpu)
}

/// |STFT|² of the first `heard` frames, `(bins, heard)`: frame `t` is
/// centred on sample `t * HOP` of the audio padded with silence to
/// `frames * HOP` samples, and reflected at both ends, as `torch.stft`
/// with `center=True` does.
fn power_spectrum(samples: &[f32], heard: usize, frames: usize) -> Vec<f32> {
    let half = N_FFT / 2;
    let padded_len = frames * HOP;
    let at = |i: isize| -> f32 {
        // Reflect (without repeating the edge) at both ends of the padded audio.
        let n = padded_len as isize;
        let i = if i < 0 { -i } else { i };
        let i = if i >= n { 2 * (n - 1) - i } else { i };
        samples.get(i as usize).copied().unwrap_or(0.0)
    };
    let window: Vec<f32> = (0..N_FFT)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos() as f32)
        .collect();
    let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
    let bins = half + 1;
    let mut input = fft.make_input_vec();
    let mut spectrum = fft.make_output_vec();
    let mut scratch = fft.make_scratch_vec();
    let mut power = vec![0.0f32; bins * heard];
    for t in 0..heard {
        let start = (t * HOP) as isize - half as isize;
        for (k, slot) in input.iter_mut().enumerate() {
            *slot = at(start + k as isize) * window[k];
        }
        fft.process_with_scratch(&mut input, &mut spectrum, &mut scratch)
            .expect("buffers made by the plan");
        for (bin, c) in spectrum.iter().enumerate() {
            power[bin * heard + t] = Complex::norm_sqr(c);
        }
    }
    power
}

/// `n_mels` triangular filters over the `n_fft / 2 + 1` bins of a real FFT
/// at `rate`, row after row.
pub fn filters(n_mels: usize, n_fft: usize, rate: f64) -> Vec<f32> {
    let bins = n_fft / 2 + 1;
    let bin_hz: Vec<f64> = (0..bins).map(|k| k as f64 * rate / n_fft as f64).collect();
    let top = hz_to_mel(rate / 2.0);
    let edges: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(top * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut out = vec![0.0f32; n_mels * bins];
    for m in 0..n_mels {
        let (low, mid, high) = (edges[m], edges[m + 1], edges[m + 2]);
        let area = 2.0 / (high - low);
        for (k, hz) in bin_hz.iter().enumerate() {
            let rising = (hz - low) / (mid - low);
            let falling = (high - hz) / (high - mid);
            out[m * bins + k] = (rising.min(falling).max(0.0) * area) as f32;
        }
    }
    out
}

/// Slaney: linear below 1 kHz, logarithmic above.
const LINEAR_HZ_PER_MEL: f64 = 200.0 / 3.0;
const LOG_FROM_HZ: f64 = 1000.0;
const LOG_FROM_MEL: f64 = LOG_FROM_HZ / LINEAR_HZ_PER_MEL;

fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

fn hz_to_mel(hz: f64) -> f64 {
    match hz < LOG_FROM_HZ {
        true => hz / LINEAR_HZ_PER_MEL,
        false => LOG_FROM_MEL + (hz / LOG_FROM_HZ).ln() / log_step(),
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    match mel < LOG_FROM_MEL {
        true => mel * LINEAR_HZ_PER_MEL,
        false => LOG_FROM_HZ * (log_step() * (mel - LOG_FROM_MEL)).exp(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f32, secs: f32) -> Vec<f32> {
        (0..(16_000.0 * secs) as usize)
            .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / 16_000.0).sin())
            .collect()
    }

    #[test]
    fn a_tone_lights_its_mel_band_and_the_padding_is_the_floor() {
        let filters = filters(80, N_FFT, 16_000.0);
        let mel = log_mel(&sine(1_000.0, 1.0), 16_000, &filters, 80).unwrap();
        assert_eq!(mel.dims(), &[80, 200]);
        let rows = mel.to_vec2::<f32>().unwrap();
        let at = |frame: usize| -> Vec<f32> { rows.iter().map(|r| r[frame]).collect() };
        let middle = at(50);
        let loudest = (0..80)
            .max_by(|a, b| middle[*a].total_cmp(&middle[*b]))
            .unwrap();
        // The band centred nearest 1 kHz (its centre is edge m + 1 of 82).
        let top = hz_to_mel(8_000.0);
        let centre = |m: usize| mel_to_hz(top * (m + 1) as f64 / 81.0);
        let nearest = (0..80)
            .min_by(|a, b| {
                (centre(*a) - 1e3)
                    .abs()
                    .total_cmp(&(centre(*b) - 1e3).abs())
            })
            .unwrap();
        assert!(loudest.abs_diff(nearest) <= 1, "{loudest} {nearest}");
        // Silence sits at the floor, 8 below the peak (2 after scaling).
        let peak = rows.iter().flatten().copied().fold(f32::MIN, f32::max);
        assert!(
            at(190).iter().all(|v| (v - (peak - 2.0)).abs() < 1e-5),
            "{:?}",
            &at(190)[..4]
        );
    }

    #[test]
    fn the_stft_is_centred_and_reflected_as_torch_computes_it() {
        // One impulse at sample 800, frame 5's centre: frame 5 sees it in the
        // window's middle (weight 1, a flat spectrum); frames 3 and 7 (400
        // samples wide, 160 apart) do not reach it.
        let mut samples = vec![0.0f32; 1600];
        samples[800] = 1.0;
        let power = power_spectrum(&samples, 10, 10);
        let bins = N_FFT / 2 + 1;
        let frame = |t: usize| -> Vec<f32> { (0..bins).map(|b| power[b * 10 + t]).collect() };
        assert!(
            frame(5).iter().all(|p| (p - 1.0).abs() < 1e-5),
            "{:?}",
            &frame(5)[..3]
        );
        assert!(frame(3).iter().all(|p| *p < 1e-9));
        assert!(frame(0).iter().all(|p| *p == 0.0));
    }

    #[test]
    fn the_scale_round_trips() {
        for hz in [0.0, 440.0, 1000.0, 3000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-6);
        }
    }

    #[test]
    fn filters_match_librosa() {
        // librosa.filters.mel(sr=16000, n_fft=400, n_mels=80), whisper's
        // filters: row 0 peaks at bin 1 with 0.02486259; row 79 is centred
        // at 7.70 kHz, bin 192 (40 Hz a bin), and ends at 8 kHz.
        let f = filters(80, 400, 16_000.0);
        assert_eq!(f.len(), 80 * 201);
        assert!((f[1] - 0.024_862_59).abs() < 1e-6, "{}", f[1]);
        assert_eq!(f[0], 0.0);
        let last = &f[79 * 201..];
        let (peak, value) =
            last.iter().enumerate().fold(
                (0, 0.0f32),
                |best, (k, v)| if *v > best.1 { (k, *v) } else { best },
            );
        assert_eq!(peak, 192);
        assert!(value > 0.003 && value < 0.0033, "{value}");
        assert_eq!(last[200], 0.0);
    }
}
