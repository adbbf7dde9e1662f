//! `[compute]`: the compute server's section of the configuration.

pub use jetsonmind_contract::allocation::AllocationStrategy;
use jetsonmind_contract::calibration::FlashAttention;
use jetsonmind_core::config::Section;
use jetsonmind_core::{Config, CoreError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Inference settings of the compute server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ComputeConfig {
    /// Model used when a call names none: a file name in `<data.dir>/models`.
    pub default_model: String,
    /// CPU threads for each decode step of a loaded model (its running
    /// generations are decoded together); 0 means every core.
    pub threads: usize,
    /// Largest context (prompt + generated tokens) a call may use.
    pub context_size: u32,
    /// Layers offloaded to the GPU (builds with the `cuda` feature); 0 on CPU.
    pub gpu_layers: u32,
    /// Generations that run at once per loaded model, each in a sequence slot
    /// of the model's one context, decoded together (continuous batching).
    /// Others wait in the queue. 0: as many as a quarter of the memory budget
    /// holds full contexts of the default model for, from 1 to 8.
    pub parallel: usize,
    /// Most tokens one decode step takes: the next token of every generating
    /// call, then chunks of prompts being read (a long prompt is read over
    /// several steps, so it never stalls the others for long). Raised to
    /// `parallel` when lower, so every running call advances each step.
    pub batch_size: u32,
    /// Most tokens computed at once within a decode step (llama.cpp's
    /// micro-batch); 0: `batch_size`, and never more.
    pub ubatch_size: u32,
    /// llama.cpp's flash attention: `auto` (llama.cpp chooses for the
    /// backend), `on` or `off`.
    pub flash_attention: FlashAttention,
    /// A call whose prompt starts as one a slot holds (system prompt, tool
    /// definitions, the conversation so far) reads only the rest.
    pub prefix_cache: bool,
    /// Calls that may wait for a free slot; one more gets a "busy" error.
    pub queue_depth: usize,
    /// Longest prompt accepted, in bytes (all messages together).
    pub max_prompt_bytes: usize,
    /// Most chat turns (`messages`) one call may send: each costs template
    /// and tokenizer work before the prompt's length is known, and takes at
    /// least one token of the context.
    pub max_messages: usize,
    /// A progress notification every this many generated tokens.
    pub progress_every_tokens: u32,
    /// Memory the loaded models may take together (weights and context
    /// reserve); 0: 80% of the memory the machine has. Loads that would
    /// exceed it unload idle models first (least recently used), or fail.
    pub memory_budget_bytes: u64,
    /// An idle model is unloaded after this long (like Ollama's keep_alive);
    /// 0 keeps it until its memory is needed.
    pub keep_alive_secs: u64,
    /// How loaded models are kept in memory (`manage_resources` sets it).
    pub allocation: AllocationStrategy,
    /// `allocation = "pinned"`: these models are loaded and never unloaded
    /// to make room or for being idle.
    pub pinned_models: Vec<String>,
    /// Speech model `audio_process` transcribes with when a call names none.
    pub speech_model: String,
    /// Embedding model of `embed` and `rerank` when a call names none.
    pub embedding_model: String,
    /// Audio in and out: limits, where files may be read, the TTS program.
    pub audio: AudioConfig,
    /// Limits of `embed` and `rerank`.
    pub embeddings: EmbeddingsConfig,
    /// Images in: the models `image_analyze` uses, limits, where files may be read.
    pub vision: VisionConfig,
    /// What generates text: llama.cpp, or the simulator (benchmarks only).
    pub engine: ComputeEngine,
    /// The simulator's token times; read only with `engine = "simulated"`.
    pub simulator: SimulatorConfig,
}

/// Audio the speech tools take and give.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AudioConfig {
    /// Largest audio accepted, in bytes once decoded from base64.
    pub max_bytes: usize,
    /// Longest audio accepted, in seconds.
    pub max_seconds: f64,
    /// Directories whose files `audio_data` may name by path (none: only
    /// base64 and data URIs). A path is resolved (links followed) before
    /// it is checked.
    pub allowed_dirs: Vec<PathBuf>,
    /// Longest text `synthesize` speaks, in characters.
    pub max_speech_chars: usize,
    /// The text-to-speech program (espeak-ng's command line), run as a
    /// separate process: it is GPL-licensed, never linked.
    pub tts_command: String,
    /// The TTS program is stopped after this long.
    pub tts_timeout_secs: u64,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            max_bytes: 12 << 20,
            max_seconds: 900.0,
            allowed_dirs: Vec::new(),
            max_speech_chars: 5000,
            tts_command: "espeak-ng".into(),
            tts_timeout_secs: 60,
        }
    }
}

/// The image tools: their models and what they take.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VisionConfig {
    /// The classifier `classify` uses when a call names none (an ONNX
    /// model in the store).
    pub classify_model: String,
    /// The YOLO-layout ONNX detector `detect` uses when a call names none;
    /// none ships (import one, then name it here).
    pub detect_model: String,
    /// The text reader `ocr` uses when a call names none (a directory of
    /// `det.onnx` and `rec.onnx`, PaddleOCR's layout).
    pub ocr_model: String,
    /// Largest image accepted, in bytes once decoded from base64.
    pub max_bytes: usize,
    /// Largest image accepted, in pixels (width times height), checked
    /// from its header before it is decoded.
    pub max_pixels: u64,
    /// Directories whose files `image_data` may name by path (none: only
    /// base64 and data URIs).
    pub allowed_dirs: Vec<PathBuf>,
    /// Threads one image model runs on; 0 is every core.
    pub threads: usize,
    /// What runs image models: `auto` (ONNX Runtime where its library
    /// loads, tract otherwise), `onnxruntime` or `tract`.
    pub runtime: VisionRuntime,
    /// ONNX Runtime's library (`libonnxruntime.so`, 1.20 or later); empty:
    /// beside this program, then wherever the dynamic linker looks.
    pub onnxruntime_library: PathBuf,
}

/// Which library runs image models (`compute.vision.runtime`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VisionRuntime {
    /// ONNX Runtime where its library loads, tract otherwise.
    #[default]
    Auto,
    /// ONNX Runtime, or no image model loads (the error says why).
    Onnxruntime,
    /// tract (pure Rust, in the binary).
    Tract,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            classify_model: "efficientnet-lite0".into(),
            detect_model: String::new(),
            ocr_model: "ppocr-v4".into(),
            max_bytes: 12 << 20,
            max_pixels: 40_000_000,
            allowed_dirs: Vec::new(),
            threads: 0,
            runtime: VisionRuntime::Auto,
            onnxruntime_library: PathBuf::new(),
        }
    }
}

/// Limits of the embedding tools.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingsConfig {
    /// Most texts one call embeds (or documents one `rerank` ranks).
    pub max_texts: usize,
    /// Longest text, in bytes; a model reads at most its token limit of it
    /// (256 tokens for MiniLM) and ignores the rest.
    pub max_text_bytes: usize,
    /// Texts embedded in one forward pass.
    pub batch_size: usize,
}

impl Default for EmbeddingsConfig {
    fn default() -> Self {
        Self {
            max_texts: 256,
            max_text_bytes: 16 * 1024,
            batch_size: 32,
        }
    }
}
/// The engine behind `text_generate` and `code_complete`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeEngine {
    /// llama.cpp over the GGUF models of the store.
    #[default]
    Llama,
    /// For benchmarks only: no model file and no CPU, a fixed time slept per
    /// token, and every result says it is simulated.
    Simulated,
}

/// The inference simulator (`compute.engine = "simulated"`): a call takes
/// these times, slept, per token of its prompt and of its answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Microseconds per prompt token (prompt processing, "prefill").
    pub prompt_token_us: u64,
    /// Microseconds per generated token.
    pub output_token_us: u64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            prompt_token_us: 200,
            output_token_us: 10_000,
        }
    }
}

/// Most sequences one context decodes together (llama.cpp's own limit is higher).
pub const MAX_PARALLEL: usize = 64;

/// Most tokens in one decode step.
pub const MAX_BATCH_SIZE: u32 = 8192;

/// The longest time the simulator may take per token: one second, slower
/// than any real device, so a typo cannot hold a slot for hours.
pub const MAX_SIMULATED_TOKEN_US: u64 = 1_000_000;

impl Default for ComputeConfig {
    fn default() -> Self {
        Self {
            default_model: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            threads: 0,
            context_size: 4096,
            gpu_layers: 0,
            parallel: 0,
            batch_size: 512,
            ubatch_size: 0,
            flash_attention: FlashAttention::Auto,
            prefix_cache: true,
            queue_depth: 16,
            max_prompt_bytes: 64 * 1024,
            max_messages: 1024,
            progress_every_tokens: 4,
            memory_budget_bytes: 0,
            keep_alive_secs: 300,
            allocation: AllocationStrategy::Balanced,
            pinned_models: Vec::new(),
            speech_model: "whisper-tiny.en".into(),
            embedding_model: "all-MiniLM-L6-v2".into(),
            audio: AudioConfig::default(),
            embeddings: EmbeddingsConfig::default(),
            vision: VisionConfig::default(),
            engine: ComputeEngine::Llama,
            simulator: SimulatorConfig::default(),
        }
    }
}

impl Section for ComputeConfig {
    const NAME: &'static str = "compute";
    const LIVE_KEYS: &'static [&'static str] = &[
        "compute.threads",
        "compute.parallel",
        "compute.batch_size",
        "compute.ubatch_size",
        "compute.flash_attention",
        "compute.prefix_cache",
        "compute.allocation",
        "compute.pinned_models",
    ];
    // Programs it runs and where it reads files.
    const TRUST_KEYS: &'static [&'static str] =
        &["compute.audio.tts_command", "compute.audio.allowed_dirs"];
    // Tuned to the node's own hardware.
    const NODE_KEYS: &'static [&'static str] = &[
        "compute.threads",
        "compute.parallel",
        "compute.batch_size",
        "compute.ubatch_size",
        "compute.flash_attention",
        "compute.gpu_layers",
        "compute.memory_budget_bytes",
    ];

    fn validate(&self, _config: &Config) -> Result<(), CoreError> {
        let fail = |msg: String| Err(CoreError::Config(msg));
        let compute = self;
        let (audio, embeddings) = (&compute.audio, &compute.embeddings);
        let seconds_valid = audio.max_seconds.is_finite() && audio.max_seconds > 0.0;
        if audio.max_bytes == 0 || !seconds_valid || audio.max_speech_chars == 0 {
            return fail(
                "compute.audio: max_bytes, max_seconds and max_speech_chars must be above 0".into(),
            );
        }
        if audio.tts_timeout_secs == 0 || audio.tts_command.trim().is_empty() {
            return fail(
                "compute.audio: tts_command must name a program, tts_timeout_secs >= 1".into(),
            );
        }
        let vision = &compute.vision;
        if vision.max_bytes == 0 || vision.max_pixels == 0 {
            return fail("compute.vision: max_bytes and max_pixels must be above 0".into());
        }
        if embeddings.max_texts == 0 || embeddings.max_text_bytes == 0 || embeddings.batch_size == 0
        {
            return fail(
                "compute.embeddings: max_texts, max_text_bytes and batch_size must be at least 1"
                    .into(),
            );
        }
        if compute.context_size < 256 || compute.progress_every_tokens == 0 {
            return fail("compute: context_size >= 256 and progress_every_tokens >= 1".into());
        }
        if compute.parallel > MAX_PARALLEL {
            return fail(format!(
                "compute.parallel is {}; at most {MAX_PARALLEL} sequences decode together \
                 (0 chooses from the memory budget)",
                compute.parallel
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&compute.batch_size) {
            return fail(format!(
                "compute.batch_size must be from 1 to {MAX_BATCH_SIZE} tokens"
            ));
        }
        if compute.ubatch_size > MAX_BATCH_SIZE {
            return fail(format!(
                "compute.ubatch_size must be at most {MAX_BATCH_SIZE} tokens (0: batch_size)"
            ));
        }
        if compute.max_messages == 0 {
            return fail("compute.max_messages must be at least 1".into());
        }
        let simulator = &compute.simulator;
        if simulator.prompt_token_us.max(simulator.output_token_us) > MAX_SIMULATED_TOKEN_US {
            return fail(format!(
                "compute.simulator: prompt_token_us and output_token_us must be at most {MAX_SIMULATED_TOKEN_US}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Config, CoreError> {
        jetsonmind_testkit::config_with::<ComputeConfig>(env)
    }

    #[test]
    fn the_simulator_is_chosen_and_timed_from_the_environment() {
        let config = load(&[
            ("JETSONMIND_COMPUTE__ENGINE", "simulated"),
            ("JETSONMIND_COMPUTE__SIMULATOR__OUTPUT_TOKEN_US", "500"),
        ])
        .unwrap();
        let compute = config.section::<ComputeConfig>();
        assert_eq!(compute.engine, ComputeEngine::Simulated);
        assert_eq!(compute.simulator.output_token_us, 500);
        assert_eq!(compute.simulator.prompt_token_us, 200);
        assert_eq!(ComputeConfig::default().engine, ComputeEngine::Llama);
        let slow = load(&[("JETSONMIND_COMPUTE__SIMULATOR__OUTPUT_TOKEN_US", "1000001")]);
        let err = slow.unwrap_err().to_string();
        assert!(err.contains("output_token_us"), "{err}");
        let err = load(&[("JETSONMIND_COMPUTE__ENGINE", "mock")]).unwrap_err();
        assert!(err.to_string().contains("simulated"), "{err}");
    }

    #[test]
    fn limits_are_checked_naming_the_key() {
        for (key, value, named) in [
            ("PARALLEL", "65", "compute.parallel"),
            ("BATCH_SIZE", "0", "compute.batch_size"),
            ("CONTEXT_SIZE", "100", "context_size"),
            ("VISION__MAX_PIXELS", "0", "compute.vision"),
        ] {
            let err = load(&[(&format!("JETSONMIND_COMPUTE__{key}"), value)]).unwrap_err();
            assert!(err.to_string().contains(named), "{key}={value}: {err}");
        }
    }
}
