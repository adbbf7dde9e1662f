//! Audio in and out for the speech tools, with no model in sight: decode
//! what a caller sends (WAV, FLAC, MP3, OGG Vorbis), check it against the
//! configured limits, downmix and resample it (16 kHz mono is what speech
//! models hear), measure it, and write WAV.
//!
//! Samples are `f32` in [-1, 1], interleaved by channel.

mod analyze;
mod decode;
mod resample;
mod wav;

pub use analyze::{Analysis, Span, SpanKind, analyze};
pub use decode::{Limits, decode};
pub use wav::{decode_streamed_wav, encode_wav};

/// The rate speech models take.
pub const SPEECH_RATE: u32 = 16_000;

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("not audio this server reads (WAV, FLAC, MP3 or OGG Vorbis): {0}")]
    Unsupported(String),
    #[error("the audio is damaged: {0}")]
    Damaged(String),
    #[error(
        "the audio is truncated: its header announces {announced_secs:.2} s, the data holds {held_secs:.2} s"
    )]
    Truncated { announced_secs: f64, held_secs: f64 },
    #[error("the audio holds no samples")]
    Empty,
    #[error(
        "the audio is {secs:.1} s long; this server takes at most {max_secs:.1} s (compute.audio.max_seconds)"
    )]
    TooLong { secs: f64, max_secs: f64 },
    #[error("{0}")]
    Invalid(String),
}

/// Decoded audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub rate: u32,
    pub channels: u16,
    /// Interleaved by channel.
    pub samples: Vec<f32>,
}

impl Audio {
    pub fn mono(rate: u32, samples: Vec<f32>) -> Self {
        Self {
            rate,
            channels: 1,
            samples,
        }
    }

    /// Samples per channel.
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.channels.max(1))
    }

    pub fn duration_secs(&self) -> f64 {
        self.frames() as f64 / f64::from(self.rate.max(1))
    }

    /// One channel, the mean of all.
    pub fn downmix(&self) -> Audio {
        let channels = usize::from(self.channels.max(1));
        if channels == 1 {
            return self.clone();
        }
        let samples = self
            .samples
            .chunks_exact(channels)
            .map(|frame| frame.iter().sum::<f32>() / channels as f32)
            .collect();
        Audio::mono(self.rate, samples)
    }

    /// The same sound at `rate` samples per second.
    pub fn resample(&self, rate: u32) -> Result<Audio, AudioError> {
        resample::to_rate(self, rate)
    }

    /// What speech models take: mono at [`SPEECH_RATE`].
    pub fn for_speech(&self) -> Result<Vec<f32>, AudioError> {
        Ok(self.downmix().resample(SPEECH_RATE)?.samples)
    }
}
