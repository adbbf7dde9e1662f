//! Whisper's input: log-mel spectrogram filters, computed rather than
//! shipped (the model packages carry none). Slaney's mel scale and area
//! normalization, as librosa's defaults and OpenAI's filters are.

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
