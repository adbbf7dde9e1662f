use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use crate::{Audio, AudioError};

/// Frames per chunk the FFT resampler works in.
const CHUNK: usize = 1024;

/// `audio` at `rate`, by rubato's synchronous FFT resampler (band-limited:
/// no aliasing when going down to speech's 16 kHz).
pub(crate) fn to_rate(audio: &Audio, rate: u32) -> Result<Audio, AudioError> {
    if rate == 0 {
        return Err(AudioError::Invalid("a sample rate must be above 0".into()));
    }
    if audio.rate == rate || audio.samples.is_empty() {
        return Ok(Audio {
            rate,
            ..audio.clone()
        });
    }
    let channels = usize::from(audio.channels.max(1));
    let failed = |e: String| AudioError::Invalid(format!("cannot resample: {e}"));
    let mut resampler = Fft::<f32>::new(
        audio.rate as usize,
        rate as usize,
        CHUNK,
        channels,
        FixedSync::Input,
    )
    .map_err(|e| failed(e.to_string()))?;
    let frames_in = audio.frames();
    let capacity = resampler.process_all_needed_output_len(frames_in);
    let mut out = vec![0.0f32; capacity * channels];
    let input = InterleavedSlice::new(&audio.samples, channels, frames_in)
        .map_err(|e| failed(e.to_string()))?;
    let mut output = InterleavedSlice::new_mut(&mut out, channels, capacity)
        .map_err(|e| failed(e.to_string()))?;
    let (_, frames_out) = resampler
        .process_all_into_buffer(&input, &mut output, frames_in, None)
        .map_err(|e| failed(e.to_string()))?;
    out.truncate(frames_out * channels);
    Ok(Audio {
        rate,
        channels: audio.channels,
        samples: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f32, secs: f32) -> Audio {
        let n = (rate as f32 * secs) as usize;
        let samples = (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5)
            .collect();
        Audio::mono(rate, samples)
    }

    #[test]
    fn keeps_duration_and_pitch() {
        let down = tone(44_100, 440.0, 1.0).resample(16_000).unwrap();
        assert_eq!(down.rate, 16_000);
        assert!(
            (down.frames() as i64 - 16_000).abs() <= 2,
            "{}",
            down.frames()
        );
        // 440 Hz still crosses zero about 880 times a second.
        let crossings = down
            .samples
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        assert!((860..=900).contains(&crossings), "{crossings}");
    }

    #[test]
    fn removes_what_the_new_rate_cannot_hold() {
        // 10 kHz cannot exist at 16 kHz (Nyquist 8 kHz): it must go, not fold to 6 kHz.
        let down = tone(48_000, 10_000.0, 0.5).resample(16_000).unwrap();
        let middle = &down.samples[2000..6000];
        let peak = middle.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!(peak < 0.01, "aliasing left a peak of {peak}");
    }

    #[test]
    fn a_zero_rate_is_refused() {
        assert!(tone(8000, 100.0, 0.1).resample(0).is_err());
    }
}
