//! Speech to text, behind a trait as text generation is: the tools know
//! [`SpeechEngine`], not whisper.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde::Serialize;

use super::{EngineError, Flow, ModelInfo};

#[derive(Debug, Clone)]
pub struct TranscribeRequest {
    /// Mono samples at 16 kHz.
    pub samples: Vec<f32>,
    /// Text the speech is likely to continue (names, spellings, style).
    pub initial_prompt: Option<String>,
    /// 0 decodes greedily; a window whose text looks wrong is decoded again
    /// hotter, up to 1.
    pub temperature: f32,
    pub cancel: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Segment {
    pub start_secs: f64,
    pub end_secs: f64,
    pub text: String,
    /// Mean log-probability of its tokens: near 0 is confident.
    pub avg_logprob: f64,
    /// How likely the window held no speech at all.
    pub no_speech_prob: f64,
    /// The temperature this window was decoded at (above the requested one
    /// when it was decoded again).
    pub temperature: f32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Transcript {
    pub text: String,
    pub segments: Vec<Segment>,
    pub language: String,
    pub duration_secs: f64,
}

/// A window of audio done: where transcription stands.
#[derive(Debug, Clone, Copy)]
pub struct WindowDone {
    pub done_secs: f64,
    pub total_secs: f64,
}

/// A loaded speech-to-text model. Calls block: run them off the async runtime.
pub trait SpeechEngine: Send + Sync {
    fn info(&self) -> &ModelInfo;

    /// Transcribe, 30 s window after window; `on_window` hears each window
    /// done and may cancel.
    fn transcribe(
        &self,
        request: &TranscribeRequest,
        on_window: &mut dyn FnMut(WindowDone) -> Flow,
    ) -> Result<Transcript, EngineError>;
}
