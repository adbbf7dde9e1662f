//! Which engine runs a stored model, and what the model is counted for in
//! memory: the one place that names the engines. The model registry knows
//! models only through this and the engine traits, so an engine is added
//! here and in its own module, and nowhere else.

use std::path::Path;
use std::sync::Arc;

use jetsonmind_store::{ModelInfo, gguf};

use super::bert::BertEngine;
use super::llama::LlamaEngine;
use super::simulated::SimulatedEngine;
use super::vision;
use super::whisper::WhisperEngine;
use super::{Engine, EngineError, EngineKind, ModelDir, TextEngine, TextSettings};
use crate::config::SimulatorConfig;

/// What runs image models (ONNX Runtime or tract), on how many threads.
pub use super::vision::Runtime as ImageRuntime;

/// Loads a model file into a text engine (blocking): llama.cpp's by
/// default; the simulator's, or a test's own.
pub type TextLoader = Arc<
    dyn Fn(&Path, &str, &TextSettings) -> Result<Arc<dyn TextEngine>, EngineError> + Send + Sync,
>;

/// The most memory a model may be counted for: beyond any machine, and far
/// enough from `u64::MAX` that sums of such counts cannot overflow.
const MAX_MODEL_BYTES: u64 = 1 << 60;

/// What a speech, embedding or image model takes beyond its weights
/// (activations, the whisper mel spectrogram, tokenizer): an estimate, on
/// the safe side.
const WORKSPACE_BYTES: u64 = 64 << 20;

/// The engines this server runs models with.
#[derive(Clone)]
pub struct Runtimes {
    text: TextLoader,
    image: ImageRuntime,
}

impl Default for Runtimes {
    fn default() -> Self {
        Self {
            text: llama_loader(),
            image: ImageRuntime::default(),
        }
    }
}

impl Runtimes {
    /// Load text models with `loader` instead of llama.cpp.
    pub fn with_text_loader(mut self, loader: TextLoader) -> Self {
        self.text = loader;
        self
    }

    /// Simulate text models (benchmarks): nothing is read.
    pub fn simulated(self, times: SimulatorConfig) -> Self {
        self.with_text_loader(simulated_loader(times))
    }

    pub fn with_image_runtime(mut self, runtime: ImageRuntime) -> Self {
        self.image = runtime;
        self
    }

    /// A text model from its file alone (the simulator's models have no
    /// store entry).
    pub fn load_text(
        &self,
        path: &Path,
        id: &str,
        settings: &TextSettings,
    ) -> Result<Engine, EngineError> {
        (self.text)(path, id, settings).map(Engine::Text)
    }

    /// Load the stored `model` (main file at `path`) into the engine its
    /// format calls for (blocking).
    pub fn load(
        &self,
        model: &ModelInfo,
        dir: &ModelDir,
        path: &Path,
        settings: &TextSettings,
    ) -> Result<Engine, EngineError> {
        match engine_kind(&model.format) {
            Some(EngineKind::Text) => self.load_text(path, dir.id, settings),
            Some(EngineKind::Speech) => {
                WhisperEngine::load(dir).map(|e| Engine::Speech(Arc::new(e)))
            }
            Some(EngineKind::Embedding) => {
                BertEngine::load(dir).map(|e| Engine::Embedding(Arc::new(e)))
            }
            Some(EngineKind::Image) => vision::load(path, dir, &self.image).map(Engine::Image),
            None => Err(not_servable(dir.id, &model.format)),
        }
    }
}

/// What loading the stored `model` (main file at `path`) with `settings`
/// is counted for. An error says why it cannot be served.
pub fn bytes_to_load(
    model: &ModelInfo,
    path: &Path,
    settings: &TextSettings,
) -> Result<u64, String> {
    match model.format.as_str() {
        "gguf" => text_bytes(path, settings.context_size, settings.slots),
        // Half-precision weights are widened to f32 when loaded.
        "ctranslate2" => Ok(model.size_bytes * 2 + WORKSPACE_BYTES),
        "onnx" => Ok(vision::bytes_in_memory(model) + WORKSPACE_BYTES),
        _ => Ok(model.size_bytes + WORKSPACE_BYTES),
    }
}

/// A GGUF model's weights as stored, plus the KV cache of `slots` contexts
/// of `context_size` tokens; without attention facts in the header, a
/// quarter more than the weights. An error (why the model cannot be served)
/// for a header whose attention facts are not usable numbers.
pub fn text_bytes(path: &Path, context_size: u32, slots: u32) -> Result<u64, String> {
    let weights = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let per_token = kv_bytes_per_token(path)?;
    let contexts = context_size as u64 * slots.max(1) as u64;
    let bytes = match per_token {
        Some(per_token) => per_token
            .checked_mul(contexts)
            .and_then(|kv| kv.checked_add(weights)),
        None => weights.checked_add(weights / 4),
    };
    bytes
        .filter(|bytes| *bytes <= MAX_MODEL_BYTES)
        .ok_or_else(|| "its header describes a model larger than any machine's memory".into())
}

/// The KV bytes one token takes in the GGUF model at `path`, from its header;
/// `None` when the header cannot be read or does not say. An error (why the
/// model cannot be served) for attention facts that are not usable numbers.
pub fn kv_bytes_per_token(path: &Path) -> Result<Option<u64>, String> {
    let metadata = std::fs::File::open(path)
        .ok()
        .and_then(|file| gguf::read_metadata(std::io::BufReader::new(file)).ok());
    match metadata {
        Some(metadata) => gguf::kv_bytes_per_token(&metadata).map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

/// The engine a model of the store's `format` loads into: GGUF into
/// llama.cpp, a CTranslate2 directory into whisper, safetensors into BERT,
/// ONNX into the image engines (tract).
pub fn engine_kind(format: &str) -> Option<EngineKind> {
    match format {
        "gguf" => Some(EngineKind::Text),
        "ctranslate2" => Some(EngineKind::Speech),
        "safetensors" => Some(EngineKind::Embedding),
        "onnx" => Some(EngineKind::Image),
        _ => None,
    }
}

/// Why a stored model of `format` cannot be served here.
pub fn not_servable(id: &str, format: &str) -> EngineError {
    EngineError::Load {
        path: id.to_string(),
        reason: format!(
            "a {format} model: this server runs GGUF language models, CTranslate2 whisper, \
             safetensors BERT embedding models and ONNX image models"
        ),
    }
}

/// The simulator's loader: no file is read.
fn simulated_loader(times: SimulatorConfig) -> TextLoader {
    Arc::new(move |_: &Path, id: &str, settings: &TextSettings| {
        let engine = SimulatedEngine::new(id, times.clone(), settings.context_size);
        Ok(Arc::new(engine) as Arc<dyn TextEngine>)
    })
}

/// llama.cpp's loader.
fn llama_loader() -> TextLoader {
    Arc::new(|path: &Path, id: &str, settings: &TextSettings| {
        let engine = LlamaEngine::load(path, id.to_string(), settings.clone())?;
        Ok(Arc::new(engine) as Arc<dyn TextEngine>)
    })
}
