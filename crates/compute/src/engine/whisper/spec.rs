//! Whisper's fixed numbers (16 kHz audio, heard 30 s at a time as 3000 mel
//! frames), its special tokens, and a model's dimensions.

use super::mel;

pub const SAMPLE_RATE: usize = 16_000;
/// Samples in one 30 s window.
pub const N_SAMPLES: usize = 30 * SAMPLE_RATE;
/// Mel frames in one window.
pub const N_FRAMES: usize = N_SAMPLES / mel::HOP;

pub const SOT_TOKEN: &str = "<|startoftranscript|>";
pub const TRANSCRIBE_TOKEN: &str = "<|transcribe|>";
pub const NO_TIMESTAMPS_TOKEN: &str = "<|notimestamps|>";
pub const EOT_TOKEN: &str = "<|endoftext|>";
/// The token whose probability says "no speech here": its name changed
/// between Whisper's releases.
pub const NO_SPEECH_TOKENS: [&str; 2] = ["<|nocaptions|>", "<|nospeech|>"];

/// A Whisper model's dimensions (read off its tensors).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub num_mel_bins: usize,
    /// Audio positions the encoder has: 1500 for 30 s.
    pub max_source_positions: usize,
    pub d_model: usize,
    pub encoder_attention_heads: usize,
    pub encoder_layers: usize,
    pub vocab_size: usize,
    /// Text positions the decoder has: the most tokens in a window.
    pub max_target_positions: usize,
    pub decoder_attention_heads: usize,
    pub decoder_layers: usize,
}
