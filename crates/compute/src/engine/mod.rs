//! Inference engines, behind small traits (one per kind of work) so another
//! engine can be added without touching the tools: text generation
//! ([`TextEngine`]: llama.cpp), speech to text ([`SpeechEngine`]: whisper
//! on candle), embeddings ([`EmbeddingEngine`]: BERT on candle) and image
//! analysis ([`ImageEngine`]: ONNX classifiers and detectors on tract).

pub mod bert;
mod cpu;
pub mod embedding;
pub mod image;
pub mod llama;
pub mod runtimes;
pub mod simulated;
pub mod speech;
pub mod vision;
pub mod whisper;

pub use embedding::EmbeddingEngine;
pub use image::ImageEngine;
pub use speech::SpeechEngine;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde::Serialize;

use crate::schema::ChatRole;
pub use jetsonmind_contract::calibration::{FlashAttention, Trial, TrialFigures};

/// How a text engine runs a model: threads, context limit, GPU offload,
/// batching. A model loaded with other settings is loaded again when idle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextSettings {
    /// CPU threads for each decode step (at least 1).
    pub threads: usize,
    /// Largest context (prompt and answer) of one sequence.
    pub context_size: u32,
    pub gpu_layers: u32,
    /// Sequences decoded together, each with its own slot in the context.
    pub slots: u32,
    /// Most tokens in one decode step: the generating sequences' next tokens
    /// and chunks of the prompts being read.
    pub batch_size: u32,
    /// Most tokens computed at once within a step; 0: `batch_size`.
    pub ubatch_size: u32,
    pub flash_attention: FlashAttention,
    /// Reuse the KV of the longest prompt prefix a slot holds.
    pub prefix_cache: bool,
}

impl TextSettings {
    /// The micro-batch of a context whose batch is `batch`.
    pub fn ubatch_for(&self, batch: u32) -> u32 {
        match self.ubatch_size {
            0 => batch,
            ubatch => ubatch.min(batch),
        }
    }
}

/// What to feed the model.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Chat turns, rendered with the model's own chat template.
    Chat(Vec<(ChatRole, String)>),
    /// Fill-in-the-middle: generate what goes between `prefix` and `suffix`.
    FillInMiddle { prefix: String, suffix: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy: always the most likely token.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means no top-k cut.
    pub top_k: u32,
    pub seed: u32,
}

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub max_tokens: u32,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    /// Set when the call goes away: the engine stops at its next step, even
    /// while it is still reading the prompt (no token to answer yet).
    pub cancel: Arc<AtomicBool>,
}

/// Where generation stands, passed to the caller after each token.
pub struct Partial<'a> {
    pub text: &'a str,
    pub completion_tokens: u32,
    pub prompt_tokens: u32,
}

/// The caller's answer to a [`Partial`]: go on, or stop now (cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of generation token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Timings {
    pub prompt_ms: f64,
    pub generation_ms: f64,
    pub prompt_tokens_per_second: f64,
    pub generation_tokens_per_second: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV was reused from a common prefix, not read again.
    pub cached_prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: FinishReason,
    pub timings: Timings,
}

/// Facts about a loaded model that the tools need.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub architecture: Option<String>,
    pub parameters: u64,
    pub size_bytes: u64,
    pub context_train: u32,
    pub has_chat_template: bool,
    pub supports_fill_in_middle: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model {path}: {reason}")]
    Load { path: String, reason: String },
    #[error(
        "prompt too long: {prompt_tokens} prompt tokens + max_tokens {max_tokens} exceed the context of {context} tokens; \
         shorten the prompt or lower max_tokens"
    )]
    ContextOverflow {
        prompt_tokens: u32,
        max_tokens: u32,
        context: u32,
    },
    #[error("the prompt is empty after tokenization")]
    EmptyPrompt,
    #[error("this model cannot do fill-in-the-middle")]
    NoFillInMiddle,
    #[error("the chat template of this model failed: {0}")]
    Template(String),
    #[error("cancelled")]
    Cancelled,
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("not supported: {0}")]
    NotSupported(String),
    #[error("model `{model}` is a {is} model; this needs a {wanted} model")]
    WrongKind {
        model: String,
        is: EngineKind,
        wanted: EngineKind,
    },
}

impl EngineError {
    /// Refuse a call whose prompt and answer cannot both fit in `context` tokens.
    pub fn unless_it_fits(prompt_tokens: u32, max_tokens: u32, context: u32) -> Result<(), Self> {
        match prompt_tokens.saturating_add(max_tokens) > context {
            true => Err(EngineError::ContextOverflow {
                prompt_tokens,
                max_tokens,
                context,
            }),
            false => Ok(()),
        }
    }
}

/// What a calibration run hears of the rest of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// No real call runs or waits.
    Quiet,
    /// Real calls run or wait: the run gives way.
    Calls,
    /// The calibration itself was cancelled.
    Cancelled,
}

/// A loaded model that generates text. Calls block: run them off the async runtime.
pub trait TextEngine: Send + Sync {
    fn info(&self) -> &ModelInfo;

    fn generate(
        &self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(&Partial) -> Flow,
    ) -> Result<Generation, EngineError>;

    /// Measure `trial` on this model, beside the running engine (which
    /// keeps its own settings). The run gives way whenever `traffic` says
    /// real calls are waiting or running, and is measured again after them.
    fn calibrate(
        &self,
        trial: &Trial,
        traffic: &(dyn Fn() -> Traffic + Sync),
    ) -> Result<TrialFigures, EngineError> {
        let _ = (trial, traffic);
        Err(EngineError::NotSupported(
            "this engine cannot be calibrated".into(),
        ))
    }
}

/// A directory model's files by name, as an engine loads them: a file that
/// is missing, unreadable or not what it should be is a load error naming
/// the model and the file.
pub struct ModelDir<'a> {
    pub id: &'a str,
    pub files: &'a BTreeMap<String, PathBuf>,
}

impl ModelDir<'_> {
    pub fn fail(&self, reason: impl std::fmt::Display) -> EngineError {
        EngineError::Load {
            path: self.id.to_string(),
            reason: reason.to_string(),
        }
    }

    pub fn path(&self, name: &str) -> Result<&Path, EngineError> {
        self.files
            .get(name)
            .map(PathBuf::as_path)
            .ok_or_else(|| self.fail(format!("the model directory has no {name}")))
    }

    pub fn read(&self, name: &str) -> Result<Vec<u8>, EngineError> {
        std::fs::read(self.path(name)?).map_err(|e| self.fail(format!("{name}: {e}")))
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, EngineError> {
        serde_json::from_slice(&self.read(name)?).map_err(|e| self.fail(format!("{name}: {e}")))
    }
}

/// What a model does, by its engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    Text,
    Speech,
    Embedding,
    Image,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineKind::Text => "text generation",
            EngineKind::Speech => "speech to text",
            EngineKind::Embedding => "embedding",
            EngineKind::Image => "image analysis",
        })
    }
}

/// A loaded model, whichever its kind. Clones share it: every clone beyond
/// the registry's own is a call running on it.
#[derive(Clone)]
pub enum Engine {
    Text(Arc<dyn TextEngine>),
    Speech(Arc<dyn SpeechEngine>),
    Embedding(Arc<dyn EmbeddingEngine>),
    Image(Arc<dyn ImageEngine>),
}

impl Engine {
    pub fn kind(&self) -> EngineKind {
        match self {
            Engine::Text(_) => EngineKind::Text,
            Engine::Speech(_) => EngineKind::Speech,
            Engine::Embedding(_) => EngineKind::Embedding,
            Engine::Image(_) => EngineKind::Image,
        }
    }

    pub fn info(&self) -> &ModelInfo {
        match self {
            Engine::Text(e) => e.info(),
            Engine::Speech(e) => e.info(),
            Engine::Embedding(e) => e.info(),
            Engine::Image(e) => e.info(),
        }
    }

    /// How many holders it has (the registry's included).
    pub fn holders(&self) -> usize {
        match self {
            Engine::Text(e) => Arc::strong_count(e),
            Engine::Speech(e) => Arc::strong_count(e),
            Engine::Embedding(e) => Arc::strong_count(e),
            Engine::Image(e) => Arc::strong_count(e),
        }
    }

    /// The text engine; an error naming what the model is otherwise.
    pub fn text(self) -> Result<Arc<dyn TextEngine>, EngineError> {
        match self {
            Engine::Text(e) => Ok(e),
            other => Err(other.wrong_kind(EngineKind::Text)),
        }
    }

    pub fn speech(self) -> Result<Arc<dyn SpeechEngine>, EngineError> {
        match self {
            Engine::Speech(e) => Ok(e),
            other => Err(other.wrong_kind(EngineKind::Speech)),
        }
    }

    pub fn embedding(self) -> Result<Arc<dyn EmbeddingEngine>, EngineError> {
        match self {
            Engine::Embedding(e) => Ok(e),
            other => Err(other.wrong_kind(EngineKind::Embedding)),
        }
    }

    pub fn image(self) -> Result<Arc<dyn ImageEngine>, EngineError> {
        match self {
            Engine::Image(e) => Ok(e),
            other => Err(other.wrong_kind(EngineKind::Image)),
        }
    }

    fn wrong_kind(&self, wanted: EngineKind) -> EngineError {
        EngineError::WrongKind {
            model: self.info().id.clone(),
            is: self.kind(),
            wanted,
        }
    }
}

/// Cut `text` at the first stop string, if any; true when one was found.
pub fn cut_at_stop(text: &mut String, stop: &[String]) -> bool {
    let first = stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    match first {
        Some(at) => {
            text.truncate(at);
            true
        }
        None => false,
    }
}

/// How much of `text` can be shown: not a tail that might grow into a stop string.
pub fn stop_safe_len(text: &str, stop: &[String]) -> usize {
    let mut safe = text.len();
    for s in stop {
        for k in (1..s.len()).rev() {
            if s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                safe = safe.min(text.len() - k);
                break;
            }
        }
    }
    safe
}

pub fn per_second(tokens: u32, ms: f64) -> f64 {
    if ms > 0.0 {
        tokens as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_at_the_earliest() {
        let mut text = "one two\nUser: three".to_string();
        assert!(cut_at_stop(
            &mut text,
            &["three".into(), "\nUser:".into(), String::new()]
        ));
        assert_eq!(text, "one two");
        let mut text = "nothing here".to_string();
        assert!(!cut_at_stop(&mut text, &["zzz".into()]));
        assert_eq!(text, "nothing here");
    }

    #[test]
    fn holds_back_a_possible_stop_prefix() {
        let stop = vec!["\nUser:".to_string()];
        assert_eq!(stop_safe_len("hello\nUs", &stop), 5);
        assert_eq!(stop_safe_len("hello", &stop), 5);
        assert_eq!(stop_safe_len("hello\n", &stop), 5);
    }

    #[test]
    fn rates_do_not_divide_by_zero() {
        assert_eq!(per_second(10, 0.0), 0.0);
        assert_eq!(per_second(10, 500.0), 20.0);
    }
}
