//! The compute server: inference tools.
//!
//! `multi_modal_inference` and `image_analyze`'s `describe` are built from
//! the other tools, called as their caller ([`multimodal`]).

pub mod config;
pub mod embeddings;
pub mod engine;
pub mod input;
pub mod models;
pub mod multimodal;
pub mod placement;
pub mod prompts;
pub mod scheduler;
pub mod schema;
pub mod speech;
pub mod text;
pub mod vision;

use std::sync::{Arc, Weak};
use std::time::Duration;

use jetsonmind_contract::access::AccessLevel;
use jetsonmind_contract::calibration::{
    CALIBRATE_ENGINE, CalibrateArgs, Calibration, EngineTuning,
};
use jetsonmind_contract::inference::{
    CODE_COMPLETE, LOAD_MODEL, TEXT_GENERATE, UNLOAD_MODEL, code_complete_tool, text_generate_tool,
};
use jetsonmind_contract::replica::{REPLICA_STATUS_URI, ReplicaReport};
use jetsonmind_core::auth::Principal;
use jetsonmind_core::content::{json_resource, json_tool_result};
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{
    CallToolResult, CompleteRequestParams, CompletionInfo, GetPromptResult, JsonObject, Prompt,
    ReadResourceResult, Resource, ToolAnnotations,
};
use jetsonmind_core::unit::CallContext;
use jetsonmind_core::{Catalog, Config, McpUnit, ToolCall, UnitIdentity, tool_error, tool_from};
use jetsonmind_data::cache::InferenceCache;
use jetsonmind_data::config::CacheConfig;
use jetsonmind_data::inputs::InputCache;
use jetsonmind_store::ModelStore;
use jetsonmind_telemetry::LinuxReader;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::{ComputeConfig, ComputeEngine};
use crate::embeddings::{EMBED, EmbeddingService, RERANK};
use crate::engine::TextSettings;
use crate::engine::simulated;
use crate::engine::{EngineError, Traffic};
use crate::models::{Loader, ModelRegistry, ModelSource, Placement};
use crate::multimodal::MULTI_MODAL_INFERENCE;
use crate::scheduler::Scheduler;
use crate::schema::*;
use crate::speech::{AUDIO_PROCESS, AudioService};
use crate::text::TextService;
use crate::vision::{IMAGE_ANALYZE, ImageService};

pub struct ComputeServer {
    catalog: Arc<Catalog>,
    text: TextService,
    audio: AudioService,
    embeddings: EmbeddingService,
    images: ImageService,
    vitals: LinuxReader,
    /// `host:pid`, how this replica names itself in its status.
    replica: String,
    /// The models prompts name and complete.
    store: Arc<ModelStore>,
    /// The inference simulator answers: every tool result says so.
    simulated: bool,
}

/// How often idle models are checked against their keep-alive.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

impl ComputeServer {
    /// `cache` and `store` are shared with the data server, which reports on them.
    pub fn new(config: &Config, cache: Arc<InferenceCache>, store: Arc<ModelStore>) -> Self {
        Self::build(config, cache, store, None)
    }

    /// As [`Self::new`], loading models with `loader` instead of llama.cpp
    /// (for tests: a load that takes as long as the test wants).
    pub fn with_loader(
        config: &Config,
        cache: Arc<InferenceCache>,
        store: Arc<ModelStore>,
        loader: Loader,
    ) -> Self {
        Self::build(config, cache, store, Some(loader))
    }

    fn build(
        config: &Config,
        cache: Arc<InferenceCache>,
        store: Arc<ModelStore>,
        loader: Option<Loader>,
    ) -> Self {
        let mut settings = config.section::<ComputeConfig>().clone();
        let vitals = LinuxReader::new("/");
        let budget_bytes = match settings.memory_budget_bytes {
            0 => default_budget(&vitals),
            bytes => bytes,
        };
        let simulated = settings.engine == ComputeEngine::Simulated;
        let auto_parallel = match simulated {
            true => 1,
            false => placement::auto_slots(budget_bytes, default_context_bytes(&store, &settings)),
        };
        if settings.parallel == 0 {
            tracing::info!(
                slots = auto_parallel,
                "compute.parallel = 0: sequence slots per model"
            );
            settings.parallel = auto_parallel;
        }
        let llama = TextSettings {
            threads: resolve_threads(settings.threads),
            context_size: settings.context_size,
            gpu_layers: settings.gpu_layers,
            slots: settings.parallel as u32,
            batch_size: settings.batch_size,
            ubatch_size: settings.ubatch_size,
            flash_attention: settings.flash_attention,
            prefix_cache: settings.prefix_cache,
        };
        let placement = Placement {
            budget_bytes,
            keep_alive: match settings.keep_alive_secs {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
        };
        let mut registry = ModelRegistry::new(
            store.clone(),
            settings.default_model.clone(),
            llama,
            placement,
        )
        .with_default_models(
            settings.speech_model.clone(),
            settings.embedding_model.clone(),
        )
        .with_image_models(
            settings.vision.classify_model.clone(),
            engine::runtimes::ImageRuntime::choose(
                settings.vision.runtime,
                &settings.vision.onnxruntime_library,
                resolve_threads(settings.vision.threads),
            ),
        );
        if simulated {
            tracing::warn!(
                prompt_token_us = settings.simulator.prompt_token_us,
                output_token_us = settings.simulator.output_token_us,
                "compute.engine = \"simulated\": the inference simulator answers every call, \
                 for benchmarks only; no model runs and the text is made up"
            );
            registry = registry.simulated(settings.simulator.clone());
        }
        if let Some(loader) = loader {
            registry = registry.with_loader(loader);
        }
        let models = Arc::new(registry);
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep_idle_models(Arc::downgrade(&models)));
            keep_models_as(&models, &settings);
        }
        let inputs = Arc::new(InputCache::new(
            (&config.section::<CacheConfig>().inputs).into(),
        ));
        let audio = AudioService {
            models: models.clone(),
            settings: settings.audio.clone(),
            inputs: inputs.clone(),
        };
        let embeddings = EmbeddingService {
            models: models.clone(),
            cache: cache.clone(),
            settings: settings.embeddings.clone(),
        };
        let images = ImageService {
            models: models.clone(),
            settings: settings.vision.clone(),
            inputs,
        };
        let text = TextService {
            models,
            scheduler: Arc::new(Scheduler::new(settings.parallel, settings.queue_depth)),
            cache,
            auto_parallel,
            settings,
        };
        Self {
            catalog: Arc::new(catalog()),
            text,
            audio,
            embeddings,
            images,
            vitals,
            replica: format!("{}:{}", store.node(), std::process::id()),
            store,
            simulated,
        }
    }

    /// Keep prepared media in `inputs`, the cache the data server reports
    /// on (`jetson://data/cache`), instead of one of its own.
    pub fn with_input_cache(mut self, inputs: Arc<InputCache>) -> Self {
        self.audio.inputs = inputs.clone();
        self.images.inputs = inputs;
        self
    }

    async fn status(&self) -> ReplicaReport {
        let models = &self.text.models;
        let residency = models.residency();
        let estimates = models.store_estimates();
        let vitals = self.vitals.vitals();
        let engine = models.settings();
        let budget = models.budget_bytes();
        let idle_bytes = residency.used_bytes - residency.busy_bytes;
        let within_budget = budget.saturating_sub(residency.busy_bytes);
        let loadable_bytes = match vitals.available_memory_bytes {
            Some(free) => within_budget.min(free + idle_bytes),
            None => within_budget,
        };
        ReplicaReport {
            replica: self.replica.clone(),
            default_model: models.default_model().to_string(),
            running: self.text.scheduler.running(),
            waiting: self.text.scheduler.waiting(),
            capacity: self.text.scheduler.capacity(),
            memory_budget_bytes: budget,
            memory_used_bytes: residency.used_bytes,
            loadable_bytes,
            free_memory_bytes: vitals.available_memory_bytes,
            temperature_c: vitals.max_temperature_c,
            loaded: residency.loaded,
            loading: residency.loading,
            model_bytes: estimates.bytes,
            unusable_models: estimates.unusable,
            engine: Some(EngineTuning {
                threads: engine.threads,
                parallel: engine.slots,
                batch_size: engine.batch_size,
                ubatch_size: engine.ubatch_for(engine.batch_size.max(engine.slots)),
                flash_attention: engine.flash_attention,
            }),
        }
    }

    /// Generations decoded together per loaded model (`compute.parallel`,
    /// resolved when it is 0).
    pub fn slots(&self) -> usize {
        self.text.scheduler.parallel()
    }

    /// Follow the settings: a change of `compute.threads`, `parallel`,
    /// `batch_size`, `ubatch_size`, `flash_attention` or `prefix_cache`
    /// takes effect now (the loaded models
    /// are loaded again with it as each becomes idle; calls go on), and
    /// `parallel` admits that many generations from the next call on; so
    /// do `allocation` and `pinned_models`.
    pub fn follow_settings(self: &Arc<Self>, mut settings: watch::Receiver<Config>) {
        let server = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last = settings
                .borrow_and_update()
                .section::<ComputeConfig>()
                .clone();
            while settings.changed().await.is_ok() {
                let Some(server) = server.upgrade() else {
                    return;
                };
                let compute = settings
                    .borrow_and_update()
                    .section::<ComputeConfig>()
                    .clone();
                server.retune(&compute);
                if (compute.allocation, &compute.pinned_models)
                    != (last.allocation, &last.pinned_models)
                {
                    keep_models_as(&server.text.models, &compute);
                }
                last = compute;
            }
        });
    }

    fn retune(&self, compute: &ComputeConfig) {
        let models = &self.text.models;
        let now = models.settings();
        let wanted = TextSettings {
            threads: resolve_threads(compute.threads),
            // 0, as at start: the count that fits the budget (a revert to
            // the default must not keep the count it replaced).
            slots: match compute.parallel {
                0 => self.text.auto_parallel as u32,
                n => n as u32,
            },
            batch_size: compute.batch_size,
            ubatch_size: compute.ubatch_size,
            flash_attention: compute.flash_attention,
            prefix_cache: compute.prefix_cache,
            ..now.clone()
        };
        if wanted == now {
            return;
        }
        tracing::info!(
            threads = wanted.threads,
            parallel = wanted.slots,
            batch_size = wanted.batch_size,
            ubatch_size = wanted.ubatch_size,
            flash_attention = ?wanted.flash_attention,
            prefix_cache = wanted.prefix_cache,
            "engine settings changed: loaded models are loaded again with them when idle"
        );
        self.text.scheduler.resize(wanted.slots as usize);
        models.retune(wanted);
    }

    /// Measure `trial` on a model, giving way to real calls.
    async fn calibrate(&self, args: CalibrateArgs, context: CallContext) -> CallToolResult {
        let engine = match self.text.models.get(args.model.as_deref(), None).await {
            Ok(engine) => engine,
            Err(e) => return tool_error(e.to_string()),
        };
        let scheduler = self.text.scheduler.clone();
        let cancel = context.cancel.clone();
        let trial = args.trial.clone();
        let measured = tokio::task::spawn_blocking(move || {
            let traffic = || match (
                cancel.is_cancelled(),
                scheduler.running() + scheduler.waiting(),
            ) {
                (true, _) => Traffic::Cancelled,
                (false, 0) => Traffic::Quiet,
                (false, _) => Traffic::Calls,
            };
            engine
                .calibrate(&trial, &traffic)
                .map(|figures| (engine.info().id.clone(), figures))
        })
        .await;
        let (model, figures) = match measured {
            Ok(Ok(measured)) => measured,
            Ok(Err(e)) => return tool_error(e.to_string()),
            Err(e) => return tool_error(format!("the calibration thread failed: {e}")),
        };
        let models = &self.text.models;
        match models.bytes_with_slots(&model, args.trial.slots) {
            Ok(model_bytes) => json_tool_result(&Calibration {
                model,
                trial: args.trial,
                figures,
                model_bytes,
                memory_budget_bytes: models.budget_bytes(),
            }),
            Err(e) => tool_error(e.to_string()),
        }
    }

    /// Pull models this node's store lacks from `source` (the cluster's
    /// registry, once the node joins; only the first call counts).
    pub fn set_model_source(&self, source: Arc<dyn ModelSource>) {
        self.text.models.set_source(source);
    }

    /// Load `model` (pulled first if only the cluster has it) and keep it
    /// loaded, never unloaded for being idle, until [`Self::release`]: a
    /// replica that a placement asked of this node.
    pub async fn keep_loaded(&self, model: &str) -> Result<(), EngineError> {
        self.text
            .models
            .load(model, Some(None), None)
            .await
            .map(|_| ())
    }

    /// Unload `model`, which a placement no longer wants here.
    pub fn release(&self, model: &str) -> Result<(), EngineError> {
        self.text.models.unload(model).map(|_| ())
    }

    async fn load_model(&self, args: LoadModelArgs, context: CallContext) -> CallToolResult {
        let keep_alive = args.keep_alive_secs.map(|secs| match secs {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        });
        let progress = context.progress.as_ref();
        match self
            .text
            .models
            .load(&args.model, keep_alive, progress)
            .await
        {
            Ok(outcome) => json_tool_result(&outcome),
            Err(e) => tool_error(e.to_string()),
        }
    }

    async fn unload_model(&self, args: UnloadModelArgs) -> CallToolResult {
        match self.text.models.unload(&args.model) {
            Ok(bytes) => json_tool_result(&serde_json::json!({
                "model": args.model,
                "freed_bytes": bytes,
            })),
            Err(e) => tool_error(e.to_string()),
        }
    }

    /// The tool's own result, before the engine is named in it.
    async fn dispatch(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        match call.name.as_str() {
            LOAD_MODEL => Ok(self.load_model(call.parse()?, call.context).await),
            CALIBRATE_ENGINE => Ok(self.calibrate(call.parse()?, call.context).await),
            UNLOAD_MODEL => Ok(self.unload_model(call.parse()?).await),
            _ => {
                let result = self.infer(call).await;
                // With `on_demand`, the model a call ran on goes once its calls end.
                self.text.models.unload_idle_on_demand();
                result
            }
        }
    }

    /// An inference tool's own result.
    pub(crate) async fn infer(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        Ok(match call.name.as_str() {
            TEXT_GENERATE => {
                let args = call.parse()?;
                let raw = Value::Object(call.arguments);
                self.text.text_generate(args, &raw, call.context).await
            }
            CODE_COMPLETE => {
                let args = call.parse()?;
                let raw = Value::Object(call.arguments);
                self.text.code_complete(args, &raw, call.context).await
            }
            AUDIO_PROCESS => self.audio.audio_process(call.parse()?, call.context).await,
            IMAGE_ANALYZE => {
                let args: ImageAnalyzeArgs = call.parse()?;
                if args.analysis_type == AnalysisType::Describe {
                    return self.describe(call).await;
                }
                self.images.image_analyze(args, call.context).await
            }
            MULTI_MODAL_INFERENCE => return self.multi_modal(call).await,
            EMBED => self.embeddings.embed(call.parse()?, call.context).await,
            RERANK => self.embeddings.rerank(call.parse()?, call.context).await,
            other => {
                return Err(McpError::invalid_params(
                    format!("unknown tool: {other}"),
                    None,
                ));
            }
        })
    }
}

/// 80% of the machine's memory; unbounded when it cannot be read.
fn default_budget(vitals: &LinuxReader) -> u64 {
    vitals
        .vitals()
        .total_memory_bytes
        .map_or(u64::MAX, |total| total / 5 * 4)
}

/// Unload models idle past their keep-alive, until the server is gone.
async fn sweep_idle_models(models: Weak<ModelRegistry>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(models) = models.upgrade() else {
            return;
        };
        models.sweep();
    }
}

/// The KV bytes of one full context of the default model, from its GGUF
/// header; `None` when the store lacks it or the header does not say.
fn default_context_bytes(store: &ModelStore, settings: &ComputeConfig) -> Option<u64> {
    let path = store.main_file(&settings.default_model).ok()?;
    let per_token = engine::runtimes::kv_bytes_per_token(&path).ok()??;
    per_token.checked_mul(settings.context_size as u64)
}

/// Keep models as `compute.allocation` says; a pinned model the store
/// lacks is logged, the others are pinned still.
fn keep_models_as(models: &Arc<ModelRegistry>, compute: &ComputeConfig) {
    for problem in models.set_allocation(compute.allocation, &compute.pinned_models) {
        tracing::warn!("compute.pinned_models: {problem}");
    }
}

/// `compute.threads`, where 0 is every core.
fn resolve_threads(threads: usize) -> usize {
    match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

fn catalog() -> Catalog {
    let tools = vec![
        // Written in the contract: a provider offers them too.
        text_generate_tool(),
        code_complete_tool(),
        tool_from::<AudioProcessArgs>(
            AUDIO_PROCESS,
            "Process audio: `transcribe` speech to text (whisper, English; timed segments, \
             progress per 30 s window), `synthesize` text to speech (espeak-ng; WAV audio), \
             `analyze` (duration, rate, channels, levels, loudness in LUFS, speech and silence) \
             or `convert` (resample and mix down; WAV audio). Audio in WAV, FLAC, MP3 or OGG, \
             as base64 or a data URI.",
        )
        // Nothing changes on the node: a call cut by a replica's death may run again elsewhere.
        .annotate(
            ToolAnnotations::new()
                .read_only(true)
                .idempotent(true)
                .open_world(false),
        ),
        tool_from::<ImageAnalyzeArgs>(
            IMAGE_ANALYZE,
            "Analyze an image: `classify` (the most likely ImageNet classes with scores; \
             EfficientNet-Lite0 by default), `ocr` (lines of text with boxes and confidences; \
             PP-OCRv4), `detect` (objects with boxes, classes and scores, with a YOLO-layout \
             detector), `properties` (size, format, colour statistics, dominant colours, \
             sharpness, exposure) or `describe` (a short description the language model writes \
             from the classification, text and properties; it does not see the picture). PNG, \
             JPEG, WebP, GIF or BMP, as base64 or a data URI; turned upright by its EXIF \
             orientation.",
        )
        .annotate(
            ToolAnnotations::new()
                .read_only(true)
                .idempotent(true)
                .open_world(false),
        ),
        tool_from::<MultiModalArgs>(
            MULTI_MODAL_INFERENCE,
            "Answer a task about text, an image and audio together: the image is classified, \
             its text read and its properties measured while the audio is transcribed, then the \
             language model does `task` with the text and those findings (it does not see or \
             hear the media itself). The result holds the answer and each part's findings; \
             progress per stage.",
        )
        .annotate(
            ToolAnnotations::new()
                .read_only(true)
                .idempotent(true)
                .open_world(false),
        ),
        tool_from::<EmbedArgs>(
            EMBED,
            "Embed texts as unit-length sentence vectors (all-MiniLM-L6-v2 by default, 384 \
             dimensions): cosine similarity is their dot product. Deterministic: repeated texts \
             come from the inference cache.",
        )
        .annotate(
            ToolAnnotations::new()
                .read_only(true)
                .idempotent(true)
                .open_world(false),
        ),
        tool_from::<RerankArgs>(
            RERANK,
            "Rank documents by relevance to a query, best first, with scores. A bi-encoder \
             ranking: query and documents are embedded apart and compared by cosine \
             similarity (fast; a cross-encoder reading each pair together would be more exact).",
        )
        .annotate(
            ToolAnnotations::new()
                .read_only(true)
                .idempotent(true)
                .open_world(false),
        ),
        AccessLevel::Admin.mark(
            tool_from::<LoadModelArgs>(
                LOAD_MODEL,
                "Load a model into this replica's memory now, within its memory budget (idle \
                 models are unloaded, least recently used first, to make room).",
            )
            .annotate(ToolAnnotations::new().idempotent(true).destructive(false)),
        ),
        AccessLevel::Admin.mark(
            tool_from::<UnloadModelArgs>(
                UNLOAD_MODEL,
                "Unload an idle model from this replica's memory.",
            )
            .annotate(ToolAnnotations::new().idempotent(true)),
        ),
        AccessLevel::Admin.mark(
            tool_from::<CalibrateArgs>(
                CALIBRATE_ENGINE,
                "Measure engine settings (threads, parallel slots, batch size) on a loaded \
                 model with concurrent calls of a given prompt and answer length, beside the \
                 settings serving calls; gives way to real calls. optimize_system runs it per \
                 candidate.",
            )
            // It changes nothing: only the measurement's own context comes and goes.
            .annotate(ToolAnnotations::new().read_only(true).idempotent(true)),
        ),
    ];
    let resources = vec![
        Resource::new(REPLICA_STATUS_URI, "compute-status")
            .with_description(
                "This replica's load (running, waiting, capacity), loaded models, memory budget, \
                 free memory and temperature: what the control plane routes by.",
            )
            .with_mime_type("application/json"),
    ];
    Catalog::new(tools, resources, Vec::new()).expect("the compute catalog is valid")
}

impl McpUnit for ComputeServer {
    fn identity(&self) -> UnitIdentity {
        UnitIdentity {
            name: "jetsonmind-compute",
            title: "JetsonMind compute",
            instructions: "Local AI inference on this device: text generation, code \
                           completion, speech to text and back, text embeddings and image \
                           analysis.",
        }
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.catalog.clone()
    }

    fn readiness(&self) -> jetsonmind_core::lifecycle::Readiness {
        self.text.models.default_loadable()
    }

    async fn call_tool(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        let mut result = self.dispatch(call).await?;
        if self.simulated {
            let meta = result.meta.get_or_insert_with(Default::default);
            meta.0.insert(
                simulated::ENGINE_META_KEY.into(),
                simulated::ENGINE_NAME.into(),
            );
        }
        Ok(result)
    }

    fn prompts(&self) -> Vec<Prompt> {
        prompts::prompts()
    }

    async fn get_prompt(
        &self,
        name: &str,
        arguments: JsonObject,
        _caller: &Principal,
    ) -> Result<GetPromptResult, McpError> {
        prompts::get(name, &arguments, &self.store)
    }

    async fn complete(
        &self,
        request: &CompleteRequestParams,
        _caller: &Principal,
    ) -> Result<CompletionInfo, McpError> {
        prompts::complete(&request.r#ref, &request.argument, &self.store)
    }

    async fn read_resource(
        &self,
        uri: &str,
        _caller: &Principal,
    ) -> Result<ReadResourceResult, McpError> {
        match uri {
            REPLICA_STATUS_URI => json_resource(uri, &self.status().await),
            _ => Err(jetsonmind_core::error::no_resource_at(uri)),
        }
    }
}
