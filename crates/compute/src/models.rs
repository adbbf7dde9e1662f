//! Loaded models, by name. A model is loaded on first use (or on request)
//! and then shared by every call that names it; nothing is loaded twice.
//! Loads stay within the memory budget: idle models are unloaded, least
//! recently used first, to make room, and a model idle past its keep-alive
//! is unloaded by [`ModelRegistry::sweep`]. A model in use is never unloaded,
//! so memory is never over-committed.
//!
//! A load runs on a task of its own, outside the registry's lock: the
//! status read (and calls to other models) never wait for it, and callers
//! of the model being loaded wait for that one load.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use jetsonmind_contract::inference::TransferProgress;
use jetsonmind_contract::replica::LoadedModel;
use jetsonmind_core::upstream::ProgressSink;
use jetsonmind_core::upstream::forward::TransferCallback;
use jetsonmind_store::{ModelStore, StoreError};
use tokio::sync::watch;

use crate::config::{AllocationStrategy, SimulatorConfig};
use crate::engine::runtimes::{self, Runtimes, engine_kind, not_servable};
use crate::engine::{Engine, EngineError, EngineKind, ModelDir, TextEngine, TextSettings};
use crate::placement::{self, Resident};

/// How models are placed in memory.
#[derive(Debug, Clone)]
pub struct Placement {
    pub budget_bytes: u64,
    /// For models loaded without their own; `None` keeps them until evicted.
    pub keep_alive: Option<Duration>,
}

/// How models are kept (`compute.allocation`): the strategy, and the store
/// ids of the models it pins.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Allocation {
    pub strategy: AllocationStrategy,
    pub pinned: BTreeSet<String>,
}

/// Loads a model file into a text engine (blocking). llama.cpp's by
/// default; tests give their own.
pub use crate::engine::runtimes::TextLoader as Loader;

/// Where a model this node's store lacks can come from: the cluster's
/// registry, once the node has joined one (the cluster-state crate
/// implements it on JetStream).
pub trait ModelSource: Send + Sync {
    /// Bring the model `name` into the store, checked, if the source has it;
    /// `Ok(false)` when it has none of that name. `progress(done, total)`
    /// follows the download in bytes.
    fn fetch(
        &self,
        name: String,
        progress: TransferCallback,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send + '_>>;
}

/// What a simulated model is counted for: it holds nothing, but a token
/// amount keeps the memory budget bounding how many names can be loaded.
pub const SIMULATED_MODEL_BYTES: u64 = 1 << 20;

/// The longest model name the simulator takes (a file name's limit).
const MAX_SIMULATED_NAME_BYTES: usize = 255;

struct Loaded {
    engine: Engine,
    bytes: u64,
    last_used: Instant,
    keep_alive: Option<Duration>,
    path: PathBuf,
    /// What it was loaded with: when the settings change, it is loaded
    /// again with the new ones once idle.
    settings: TextSettings,
}

impl Loaded {
    /// Calls running on it: every clone of the engine beyond ours.
    fn in_use(&self) -> usize {
        self.engine.holders() - 1
    }
}

/// A load in progress. Its memory is already counted (and cannot be
/// taken back); callers of the model wait on `done` for the one load.
struct Loading {
    bytes: u64,
    keep_alive: Option<Duration>,
    done: watch::Receiver<LoadState>,
}

/// `None` while loading; then why it failed, if it did.
type LoadState = Option<Result<(), String>>;

enum Slot {
    Ready(Loaded),
    Loading(Loading),
}

pub struct ModelRegistry {
    store: Arc<ModelStore>,
    default_model: String,
    /// The models `audio_process` and `embed` use when a call names none.
    speech_model: String,
    embedding_model: String,
    /// The image model `image_analyze` uses when a call names none, and the
    /// threads each image model runs on.
    image_model: String,
    /// How models are loaded now (changed at run time by [`Self::retune`]).
    settings: RwLock<TextSettings>,
    /// How they are kept (changed by [`Self::set_allocation`]).
    allocation: RwLock<Allocation>,
    placement: Placement,
    /// The engines models load into.
    runtimes: Runtimes,
    /// Models are simulated: any name loads, from no file (benchmarks).
    simulated: bool,
    /// Held only for bookkeeping, never across a load or an await, so the
    /// status read never waits for a model to load.
    slots: Mutex<HashMap<String, Slot>>,
    /// Where models the store lacks are pulled from; none on one device.
    source: OnceLock<Arc<dyn ModelSource>>,
}

/// What a load did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadOutcome {
    pub model: String,
    pub already_loaded: bool,
    pub bytes: u64,
    /// Idle models unloaded to make room.
    pub unloaded: Vec<String>,
    pub keep_alive_secs: Option<u64>,
}

/// Memory accounting of the loaded models.
#[derive(Debug, Clone, Default)]
pub struct Residency {
    pub loaded: Vec<LoadedModel>,
    /// Models being loaded now.
    pub loading: Vec<String>,
    /// Loaded and loading models together.
    pub used_bytes: u64,
    /// Held by models with calls running or being loaded: cannot be given back now.
    pub busy_bytes: u64,
}

/// What each model of the store would be counted for when loaded, and the
/// models that cannot be served, with why.
#[derive(Debug, Clone, Default)]
pub struct StoreEstimates {
    pub bytes: BTreeMap<String, u64>,
    pub unusable: BTreeMap<String, String>,
}

impl ModelRegistry {
    pub fn new(
        store: Arc<ModelStore>,
        default_model: String,
        settings: TextSettings,
        placement: Placement,
    ) -> Self {
        Self {
            store,
            default_model,
            speech_model: String::new(),
            embedding_model: String::new(),
            image_model: String::new(),
            settings: RwLock::new(settings),
            allocation: RwLock::default(),
            placement,
            runtimes: Runtimes::default(),
            simulated: false,
            slots: Mutex::new(HashMap::new()),
            source: OnceLock::new(),
        }
    }

    /// Pull models the store lacks from `source` (set once the node joins
    /// a cluster; only the first call counts).
    pub fn set_source(&self, source: Arc<dyn ModelSource>) {
        let _ = self.source.set(source);
    }

    /// The models used for speech and embeddings when a call names none.
    pub fn with_default_models(mut self, speech: String, embedding: String) -> Self {
        self.speech_model = speech;
        self.embedding_model = embedding;
        self
    }

    /// The image model used when a call names none, and the threads each
    /// image model runs on.
    pub fn with_image_models(mut self, default: String, runtime: runtimes::ImageRuntime) -> Self {
        self.image_model = default;
        self.runtimes = self.runtimes.with_image_runtime(runtime);
        self
    }

    /// Load models with `loader` instead of llama.cpp.
    pub fn with_loader(mut self, loader: Loader) -> Self {
        self.runtimes = self.runtimes.with_text_loader(loader);
        self
    }

    /// Simulate every model (benchmarks only): any name loads with no
    /// file, counted for [`SIMULATED_MODEL_BYTES`].
    pub fn simulated(mut self, times: SimulatorConfig) -> Self {
        self.runtimes = self.runtimes.simulated(times);
        self.simulated = true;
        self
    }

    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    pub fn budget_bytes(&self) -> u64 {
        self.placement.budget_bytes
    }

    /// The settings models are loaded with now.
    pub fn settings(&self) -> TextSettings {
        self.settings
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn allocation(&self) -> Allocation {
        self.allocation
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Keep models as `strategy` says from now on; `pinned` (store names)
    /// counts only for [`AllocationStrategy::Pinned`], whose models are
    /// loaded now if they are not. With `on_demand`, idle models are
    /// unloaded now. Returns why a pinned name was left out (not in the
    /// store); the others are still pinned.
    pub fn set_allocation(
        self: &Arc<Self>,
        strategy: AllocationStrategy,
        pinned: &[String],
    ) -> Vec<String> {
        let mut ids = BTreeSet::new();
        let mut problems = Vec::new();
        if strategy == AllocationStrategy::Pinned {
            for name in pinned {
                match self.resolve(name) {
                    Ok((id, _)) => {
                        ids.insert(id);
                    }
                    Err(e) => problems.push(format!("pinned model `{name}`: {e}")),
                }
            }
        }
        *self
            .allocation
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Allocation {
            strategy,
            pinned: ids.clone(),
        };
        for id in ids {
            let registry = self.clone();
            tokio::spawn(async move {
                if let Err(e) = registry.load(&id, Some(None), None).await {
                    tracing::warn!(model = %id, error = %e, "cannot load a pinned model");
                }
            });
        }
        self.unload_idle_on_demand();
        problems
    }

    /// With `on_demand`, unload every model no call runs on; their names.
    pub fn unload_idle_on_demand(&self) -> Vec<String> {
        if self.allocation().strategy != AllocationStrategy::OnDemand {
            return Vec::new();
        }
        let idle: Vec<String> = {
            let mut slots = self.slots();
            let idle: Vec<String> = slots
                .iter()
                .filter(|(_, slot)| matches!(slot, Slot::Ready(m) if m.in_use() == 0))
                .map(|(name, _)| name.clone())
                .collect();
            for name in &idle {
                slots.remove(name);
            }
            idle
        };
        for name in &idle {
            self.forget(name, "idle, and models are kept on demand");
        }
        idle
    }

    /// Load models with `settings` from now on. Each loaded model is loaded
    /// again with them: at once when idle, else once its calls end (see
    /// [`Self::reload_stale`]); its calls go on meanwhile.
    pub fn retune(self: &Arc<Self>, settings: TextSettings) {
        *self
            .settings
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = settings;
        self.reload_stale();
    }

    /// Load again, with the settings of now, the idle models loaded with
    /// other settings. Their memory is given back first, so the reload
    /// counts against the budget as any load does.
    pub fn reload_stale(self: &Arc<Self>) {
        let settings = self.settings();
        let stale: Vec<(String, PathBuf, Option<Duration>)> = {
            let mut slots = self.slots();
            let names: Vec<String> = slots
                .iter()
                .filter_map(|(name, slot)| match slot {
                    // Only llama.cpp takes these settings.
                    Slot::Ready(model)
                        if model.engine.kind() == EngineKind::Text
                            && model.settings != settings
                            && model.in_use() == 0 =>
                    {
                        Some(name.clone())
                    }
                    _ => None,
                })
                .collect();
            names
                .into_iter()
                .filter_map(|name| match slots.remove(&name) {
                    Some(Slot::Ready(model)) => Some((name, model.path, model.keep_alive)),
                    _ => None,
                })
                .collect()
        };
        for (id, path, keep_alive) in stale {
            self.forget(&id, "to load it with new engine settings");
            let registry = self.clone();
            tokio::spawn(async move {
                if let Err(e) = registry.ensure_loaded(&id, &path, Some(keep_alive)).await {
                    tracing::warn!(model = %id, error = %e, "reloading with new engine settings failed");
                }
            });
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The engine for `name` (the default model when `None`), loading it
    /// if needed (pulled from the cluster first when only the cluster has
    /// it; `progress` hears the download).
    pub async fn get(
        self: &Arc<Self>,
        name: Option<&str>,
        progress: Option<&ProgressSink>,
    ) -> Result<Arc<dyn TextEngine>, EngineError> {
        self.engine(name, EngineKind::Text, progress).await?.text()
    }

    /// The engine of a model of `kind`, `name` or that kind's default,
    /// loading it if needed as [`Self::get`] does.
    pub async fn engine(
        self: &Arc<Self>,
        name: Option<&str>,
        kind: EngineKind,
        progress: Option<&ProgressSink>,
    ) -> Result<Engine, EngineError> {
        let name = name.unwrap_or(match kind {
            EngineKind::Text => &self.default_model,
            EngineKind::Speech => &self.speech_model,
            EngineKind::Embedding => &self.embedding_model,
            EngineKind::Image => &self.image_model,
        });
        let (id, path) = self.resolve_or_pull(name, progress).await?;
        let (engine, _) = self.ensure_loaded(&id, &path, None).await?;
        Ok(engine)
    }

    /// Load `name` now; `keep_alive` (when given) replaces its keep-alive.
    pub async fn load(
        self: &Arc<Self>,
        name: &str,
        keep_alive: Option<Option<Duration>>,
        progress: Option<&ProgressSink>,
    ) -> Result<LoadOutcome, EngineError> {
        let (id, path) = self.resolve_or_pull(name, progress).await?;
        let (_, outcome) = self.ensure_loaded(&id, &path, keep_alive).await?;
        Ok(outcome)
    }

    /// [`Self::resolve`]; a model the store lacks is first pulled from the
    /// cluster, when this node is in one and the cluster has it.
    async fn resolve_or_pull(
        &self,
        name: &str,
        progress: Option<&ProgressSink>,
    ) -> Result<(String, PathBuf), EngineError> {
        let source = match self.source.get() {
            Some(source) if !self.simulated && !name.contains(['/', '\\']) => source,
            _ => return self.resolve(name),
        };
        if let Some(found) = self.lookup(name)? {
            return Ok(found);
        }
        for id in candidate_ids(name) {
            let (reporter, relay) = match progress.cloned() {
                Some(sink) => {
                    let (reporter, relay) = pull_reporter(sink, &id);
                    (reporter, Some(relay))
                }
                None => (Box::new(|_, _| {}) as TransferCallback, None),
            };
            let pulled = source.fetch(id.clone(), reporter).await;
            // The pull's progress reaches the caller before the generation's.
            if let Some(relay) = relay {
                let _ = relay.await;
            }
            match pulled {
                Ok(true) => return self.resolve(&id),
                Ok(false) => continue,
                Err(reason) => {
                    return Err(EngineError::Load {
                        path: id,
                        reason: format!(
                            "not in this node's store, and pulling it from the cluster \
                             failed: {reason}"
                        ),
                    });
                }
            }
        }
        // Neither here nor in the cluster: the single device's answer.
        self.resolve(name)
    }

    /// The loaded engine, after the one load of it (started here or by
    /// another caller) when it is not loaded yet.
    async fn ensure_loaded(
        self: &Arc<Self>,
        id: &str,
        path: &Path,
        keep_alive: Option<Option<Duration>>,
    ) -> Result<(Engine, LoadOutcome), EngineError> {
        // Set when this call started the load: the models it unloaded.
        let mut started: Option<Vec<String>> = None;
        loop {
            let mut done = {
                let mut slots = self.slots();
                match slots.get_mut(id) {
                    Some(Slot::Ready(model)) => {
                        return Ok(use_loaded(id, model, keep_alive, started));
                    }
                    Some(Slot::Loading(loading)) => {
                        if let Some(keep_alive) = keep_alive {
                            loading.keep_alive = keep_alive;
                        }
                        loading.done.clone()
                    }
                    None => {
                        let (done, evicted) = self.start_load(&mut slots, id, path, keep_alive)?;
                        drop(slots);
                        for name in &evicted {
                            self.forget(name, "to make room");
                        }
                        started = Some(evicted);
                        done
                    }
                }
            };
            let failure = match done.wait_for(Option::is_some).await {
                Ok(state) => state.as_ref().and_then(|r| r.as_ref().err().cloned()),
                Err(_) => Some("the model loader stopped".to_string()),
            };
            if let Some(reason) = failure {
                return Err(EngineError::Load {
                    path: id.to_string(),
                    reason,
                });
            }
            // Loaded: take it from its slot (or load it again if it was
            // evicted in the meantime).
        }
    }

    /// Reserve the memory of `id` (unloading idle models to make room) and
    /// load it on a task of its own: it completes even if every caller
    /// waiting for it goes away. The models unloaded, for the caller to
    /// record once the lock is released.
    fn start_load(
        self: &Arc<Self>,
        slots: &mut HashMap<String, Slot>,
        id: &str,
        path: &Path,
        keep_alive: Option<Option<Duration>>,
    ) -> Result<(watch::Receiver<LoadState>, Vec<String>), EngineError> {
        let refuse = |reason: String| EngineError::Load {
            path: id.to_string(),
            reason,
        };
        let bytes = self.bytes_to_load(id, path).map_err(refuse)?;
        let pinned = self.allocation().pinned;
        let residents = residents(slots, &pinned);
        let evict = placement::evictions_for(id, bytes, &residents, self.placement.budget_bytes)
            .map_err(|e| refuse(e.to_string()))?;
        for name in &evict {
            slots.remove(name);
        }
        let (report, done) = watch::channel(None);
        slots.insert(
            id.to_string(),
            Slot::Loading(Loading {
                bytes,
                keep_alive: keep_alive.unwrap_or(self.placement.keep_alive),
                done: done.clone(),
            }),
        );
        let registry = self.clone();
        let (id, path) = (id.to_string(), path.to_path_buf());
        tokio::spawn(async move {
            let settings = registry.settings();
            let (loader, key, file, used) =
                (registry.clone(), id.clone(), path.clone(), settings.clone());
            let loaded =
                tokio::task::spawn_blocking(move || loader.load_engine(&key, &file, &used))
                    .await
                    .unwrap_or_else(|e| {
                        Err(EngineError::Inference(format!("model loader stopped: {e}")))
                    });
            let loaded = loaded.map(|engine| (engine, path, settings));
            let _ = report.send(Some(registry.finish_load(&id, loaded)));
        });
        Ok((done, evict))
    }

    /// Turn the loading slot of `id` into a loaded model, or free it.
    fn finish_load(
        &self,
        id: &str,
        loaded: Result<(Engine, PathBuf, TextSettings), EngineError>,
    ) -> Result<(), String> {
        let (engine, path, settings) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                self.slots().remove(id);
                tracing::warn!(model = %id, error = %e, "model load failed");
                return Err(match e {
                    EngineError::Load { reason, .. } => reason,
                    other => other.to_string(),
                });
            }
        };
        let bytes = {
            let mut slots = self.slots();
            let Some(Slot::Loading(loading)) = slots.remove(id) else {
                return Err("the load was abandoned".into());
            };
            slots.insert(
                id.to_string(),
                Slot::Ready(Loaded {
                    engine: engine.clone(),
                    bytes: loading.bytes,
                    last_used: Instant::now(),
                    keep_alive: loading.keep_alive,
                    path,
                    settings,
                }),
            );
            loading.bytes
        };
        tracing::info!(model = %id, kind = %engine.kind(), parameters = engine.info().parameters, bytes, "model loaded");
        if self.simulated {
            // The store holds no such model: nothing to record.
            return Ok(());
        }
        if let Err(e) = self.store.record_load(id) {
            tracing::warn!(model = %id, error = %e, "cannot record the load in the model store");
        }
        Ok(())
    }

    /// Unload `name`; refused while calls run on it or while it loads.
    pub fn unload(&self, name: &str) -> Result<u64, EngineError> {
        let (id, _) = self.resolve(name)?;
        let refuse = |reason: String| EngineError::Load {
            path: id.clone(),
            reason,
        };
        let bytes = {
            let mut slots = self.slots();
            let model = match slots.get(&id) {
                Some(Slot::Ready(model)) => model,
                Some(Slot::Loading(_)) => {
                    return Err(refuse(
                        "it is being loaded; try again when the load is done".into(),
                    ));
                }
                None => return Err(refuse("it is not loaded".into())),
            };
            let in_use = model.in_use();
            if in_use > 0 {
                return Err(refuse(format!(
                    "cannot unload: {in_use} call(s) are running on it; try again when they finish"
                )));
            }
            let bytes = model.bytes;
            slots.remove(&id);
            bytes
        };
        self.forget(&id, "on request");
        Ok(bytes)
    }

    /// Unload the idle models whose keep-alive ran out; their names.
    pub fn sweep(&self) -> Vec<String> {
        let expired = {
            let mut slots = self.slots();
            let now = Instant::now();
            // The idle clock starts when the last call ends, seen here.
            for slot in slots.values_mut() {
                if let Slot::Ready(model) = slot
                    && model.in_use() > 0
                {
                    model.last_used = now;
                }
            }
            let pinned = self.allocation().pinned;
            let expired = placement::expired(&residents(&slots, &pinned), now);
            for name in &expired {
                slots.remove(name);
            }
            expired
        };
        for name in &expired {
            self.forget(name, "keep-alive expired");
        }
        // Calls that ended since (a cancelled one's thread stops a little later).
        let mut unloaded = expired;
        unloaded.extend(self.unload_idle_on_demand());
        unloaded
    }

    fn forget(&self, name: &str, why: &str) {
        tracing::info!(model = %name, "model unloaded: {why}");
        if self.simulated {
            return;
        }
        if let Err(e) = self.store.record_unload(name) {
            tracing::warn!(model = %name, error = %e, "cannot record the unload in the model store");
        }
    }

    /// The loaded and loading models and the memory they are counted for.
    pub fn residency(&self) -> Residency {
        let pinned = self.allocation().pinned;
        let slots = self.slots();
        let now = Instant::now();
        let mut residency = Residency::default();
        for (name, slot) in slots.iter() {
            let model = match slot {
                Slot::Ready(model) => model,
                Slot::Loading(loading) => {
                    residency.used_bytes += loading.bytes;
                    residency.busy_bytes += loading.bytes;
                    residency.loading.push(name.clone());
                    continue;
                }
            };
            let in_use = model.in_use();
            residency.used_bytes += model.bytes;
            if in_use > 0 {
                residency.busy_bytes += model.bytes;
            }
            residency.loaded.push(LoadedModel {
                name: name.clone(),
                bytes: model.bytes,
                in_use,
                idle_secs: match in_use {
                    0 => now.duration_since(model.last_used).as_secs_f64(),
                    _ => 0.0,
                },
                keep_alive_secs: model.keep_alive.map(|d| d.as_secs()),
                pinned: pinned.contains(name),
            });
        }
        residency.loaded.sort_by(|a, b| a.name.cmp(&b.name));
        residency.loading.sort();
        residency
    }

    /// What each GGUF model of the store would be counted for when loaded;
    /// a model whose header cannot be counted is listed as unusable, and
    /// never keeps the others from being reported.
    pub fn store_estimates(&self) -> StoreEstimates {
        let mut estimates = StoreEstimates::default();
        if self.simulated {
            estimates
                .bytes
                .insert(self.default_model.clone(), SIMULATED_MODEL_BYTES);
        }
        let Ok(models) = self.store.list() else {
            return estimates;
        };
        for model in models.iter().filter(|m| engine_kind(&m.format).is_some()) {
            if self.simulated {
                estimates
                    .bytes
                    .insert(model.name.clone(), SIMULATED_MODEL_BYTES);
                continue;
            }
            let estimate = self
                .store
                .main_file(&model.name)
                .map_err(|e| e.to_string())
                .and_then(|path| self.bytes_to_load(&model.name, &path));
            match estimate {
                Ok(bytes) => {
                    estimates.bytes.insert(model.name.clone(), bytes);
                }
                Err(reason) => {
                    estimates.unusable.insert(model.name.clone(), reason);
                }
            }
        }
        estimates
    }

    /// Whether the default model could be loaded now: in the store, readable
    /// and within the memory budget (`/readyz`; the reason names no model).
    pub fn default_loadable(&self) -> Result<(), String> {
        if self.simulated {
            return Ok(());
        }
        let path = self
            .store
            .main_file(&self.default_model)
            .map_err(|_| "the default model is not in the model store".to_string())?;
        let bytes = self
            .estimate_bytes(&path)
            .map_err(|_| "the default model cannot be read".to_string())?;
        match bytes <= self.budget_bytes() {
            true => Ok(()),
            false => Err("the default model needs more than the memory budget".into()),
        }
    }

    /// What loading the model `id` (main file at `path`) is counted for.
    fn bytes_to_load(&self, id: &str, path: &Path) -> Result<u64, String> {
        if self.simulated {
            return Ok(SIMULATED_MODEL_BYTES);
        }
        let model = self.store.get(id).map_err(|e| e.to_string())?;
        runtimes::bytes_to_load(&model, path, &self.settings())
    }

    /// Load the model `id` into the engine its format calls for (blocking).
    fn load_engine(
        &self,
        id: &str,
        path: &Path,
        settings: &TextSettings,
    ) -> Result<Engine, EngineError> {
        if self.simulated {
            return self.runtimes.load_text(path, id, settings);
        }
        let model = self.store.get(id).map_err(|e| load_error(id, e))?;
        let files = self.store.files(id).map_err(|e| load_error(id, e))?;
        let dir = ModelDir { id, files: &files };
        self.runtimes.load(&model, &dir, path, settings)
    }

    /// Weights as stored, plus the KV cache of `parallel` full contexts;
    /// without attention facts in the header, a quarter more than the
    /// weights. An error (why the model cannot be served) for a header whose
    /// attention facts are not usable numbers.
    fn estimate_bytes(&self, path: &Path) -> Result<u64, String> {
        self.estimate_bytes_with(path, self.settings().slots)
    }

    /// What the model `name` would be counted for with `slots` sequence
    /// slots (a setting not applied yet); `None` for a simulated model.
    pub fn bytes_with_slots(&self, name: &str, slots: u32) -> Result<Option<u64>, EngineError> {
        if self.simulated {
            return Ok(None);
        }
        let (id, path) = self.resolve(name)?;
        self.estimate_bytes_with(&path, slots)
            .map(Some)
            .map_err(|reason| EngineError::Load { path: id, reason })
    }

    fn estimate_bytes_with(&self, path: &Path, slots: u32) -> Result<u64, String> {
        runtimes::text_bytes(path, self.settings().context_size, slots)
    }

    /// A model is named as in the store; `.gguf` may be left off.
    fn resolve(&self, name: &str) -> Result<(String, PathBuf), EngineError> {
        if name.contains(['/', '\\']) {
            return Err(EngineError::Load {
                path: name.to_string(),
                reason:
                    "a model is named as in the store (`jetsonmind models list`), not by a path"
                        .into(),
            });
        }
        if self.simulated {
            return simulated_name(name).map(|id| (id, PathBuf::new()));
        }
        if let Some(found) = self.lookup(name)? {
            return Ok(found);
        }
        Err(EngineError::Load {
            path: name.to_string(),
            reason: format!(
                "no model `{name}` in the model store ({}); import one with \
                 `jetsonmind models import FILE.gguf`",
                self.store.dir().display()
            ),
        })
    }

    /// The store's model `name` stands for, with its main file; `None` when
    /// the store has none of that name.
    fn lookup(&self, name: &str) -> Result<Option<(String, PathBuf)>, EngineError> {
        for id in candidate_ids(name) {
            match self.store.get(&id) {
                Ok(model) if engine_kind(&model.format).is_none() => {
                    return Err(not_servable(&id, &model.format));
                }
                Ok(_) => {
                    let path = self.store.main_file(&id).map_err(|e| load_error(&id, e))?;
                    return Ok(Some((id, path)));
                }
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(load_error(&id, e)),
            }
        }
        Ok(None)
    }
}

/// The store names `name` may stand for: itself, or with `.gguf` added.
fn candidate_ids(name: &str) -> Vec<String> {
    let mut ids = vec![name.to_string()];
    if !name.ends_with(".gguf") {
        ids.push(format!("{name}.gguf"));
    }
    ids
}

/// A pull's progress, told to the caller of the call that needs the model;
/// the relay ends once the callback is dropped and all is told.
fn pull_reporter(
    sink: ProgressSink,
    model: &str,
) -> (TransferCallback, tokio::task::JoinHandle<()>) {
    sink.percent_reporter(TransferProgress::describer("pulling", model))
}

/// Any name is a simulated model, once it is a name: not empty, not too long.
fn simulated_name(name: &str) -> Result<String, EngineError> {
    let refuse = |reason: String| EngineError::Load {
        path: name.to_string(),
        reason,
    };
    if name.trim().is_empty() {
        return Err(refuse("the model name is empty".into()));
    }
    if name.len() > MAX_SIMULATED_NAME_BYTES {
        return Err(refuse(format!(
            "a model name is at most {MAX_SIMULATED_NAME_BYTES} bytes"
        )));
    }
    Ok(name.to_string())
}

/// The models as placement sees them; one in use or loading counts as used
/// now, and cannot be unloaded.
fn residents(slots: &HashMap<String, Slot>, pinned: &BTreeSet<String>) -> Vec<Resident> {
    let now = Instant::now();
    slots
        .iter()
        .map(|(name, slot)| match slot {
            Slot::Ready(model) => {
                let in_use = model.in_use() > 0;
                Resident {
                    name: name.clone(),
                    bytes: model.bytes,
                    last_used: if in_use { now } else { model.last_used },
                    in_use,
                    pinned: pinned.contains(name),
                    keep_alive: model.keep_alive,
                }
            }
            Slot::Loading(loading) => Resident {
                name: name.clone(),
                bytes: loading.bytes,
                last_used: now,
                in_use: true,
                pinned: pinned.contains(name),
                keep_alive: loading.keep_alive,
            },
        })
        .collect()
}

/// Take a loaded model for a call: it counts as used now.
fn use_loaded(
    id: &str,
    model: &mut Loaded,
    keep_alive: Option<Option<Duration>>,
    started: Option<Vec<String>>,
) -> (Engine, LoadOutcome) {
    model.last_used = Instant::now();
    if let Some(keep_alive) = keep_alive {
        model.keep_alive = keep_alive;
    }
    let outcome = LoadOutcome {
        model: id.to_string(),
        already_loaded: started.is_none(),
        bytes: model.bytes,
        unloaded: started.unwrap_or_default(),
        keep_alive_secs: model.keep_alive.map(|d| d.as_secs()),
    };
    (model.engine.clone(), outcome)
}

fn load_error(name: &str, e: StoreError) -> EngineError {
    EngineError::Load {
        path: name.to_string(),
        reason: e.to_string(),
    }
}
