//! Loaded models, by name. A model is loaded on first use (or on request)
//! and then shared by every call that names it; nothing is loaded twice.
//! Loads stay within the memory budget: idle models are unloaded, least
//! recently used first, to make room, and a model idle past its keep-alive
//! is unloaded by [`ModelRegistry::sweep`]. A model in use is never unloaded,
//! so memory is never over-committed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetsonmind_core::replica::LoadedModel;
use jetsonmind_data::gguf;
use jetsonmind_data::store::{ModelStore, StoreError};
use tokio::sync::Mutex;

use crate::engine::llama::{LlamaEngine, LlamaSettings};
use crate::engine::{EngineError, TextEngine};
use crate::placement::{self, Resident};

/// How models are placed in memory.
#[derive(Debug, Clone)]
pub struct Placement {
    pub budget_bytes: u64,
    /// For models loaded without their own; `None` keeps them until evicted.
    pub keep_alive: Option<Duration>,
    /// Generations that may run at once, each with its own context.
    pub parallel: usize,
}

struct Loaded {
    engine: Arc<dyn TextEngine>,
    bytes: u64,
    last_used: Instant,
    keep_alive: Option<Duration>,
}

impl Loaded {
    /// Calls running on it: every clone of the engine beyond ours.
    fn in_use(&self) -> usize {
        Arc::strong_count(&self.engine) - 1
    }
}

pub struct ModelRegistry {
    store: Arc<ModelStore>,
    default_model: String,
    settings: LlamaSettings,
    placement: Placement,
    loaded: Mutex<HashMap<String, Loaded>>,
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
    pub used_bytes: u64,
    /// Held by models with calls running: cannot be given back now.
    pub busy_bytes: u64,
}

impl ModelRegistry {
    pub fn new(
        store: Arc<ModelStore>,
        default_model: String,
        settings: LlamaSettings,
        placement: Placement,
    ) -> Self {
        Self {
            store,
            default_model,
            settings,
            placement,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    pub fn budget_bytes(&self) -> u64 {
        self.placement.budget_bytes
    }

    /// The engine for `name` (the default model when `None`), loading it if needed.
    pub async fn get(&self, name: Option<&str>) -> Result<Arc<dyn TextEngine>, EngineError> {
        let (id, path) = self.resolve(name.unwrap_or(&self.default_model))?;
        let (engine, _) = self.ensure_loaded(&id, &path, None).await?;
        Ok(engine)
    }

    /// Load `name` now; `keep_alive` (when given) replaces its keep-alive.
    pub async fn load(
        &self,
        name: &str,
        keep_alive: Option<Option<Duration>>,
    ) -> Result<LoadOutcome, EngineError> {
        let (id, path) = self.resolve(name)?;
        let (_, outcome) = self.ensure_loaded(&id, &path, keep_alive).await?;
        Ok(outcome)
    }

    async fn ensure_loaded(
        &self,
        id: &str,
        path: &Path,
        keep_alive: Option<Option<Duration>>,
    ) -> Result<(Arc<dyn TextEngine>, LoadOutcome), EngineError> {
        let mut loaded = self.loaded.lock().await;
        if let Some(model) = loaded.get_mut(id) {
            model.last_used = Instant::now();
            if let Some(keep_alive) = keep_alive {
                model.keep_alive = keep_alive;
            }
            let outcome = LoadOutcome {
                model: id.to_string(),
                already_loaded: true,
                bytes: model.bytes,
                unloaded: Vec::new(),
                keep_alive_secs: model.keep_alive.map(|d| d.as_secs()),
            };
            return Ok((model.engine.clone(), outcome));
        }
        let bytes = self.estimate_bytes(path)?;
        let evict =
            placement::evictions_for(id, bytes, &residents(&loaded), self.placement.budget_bytes)
                .map_err(|e| EngineError::Load {
                path: id.to_string(),
                reason: e.to_string(),
            })?;
        for name in &evict {
            loaded.remove(name);
            self.forget(name, "to make room");
        }
        let settings = self.settings.clone();
        let key = id.to_string();
        let path = path.to_path_buf();
        let engine = tokio::task::spawn_blocking(move || LlamaEngine::load(&path, key, settings))
            .await
            .map_err(|e| EngineError::Inference(format!("model loader stopped: {e}")))??;
        tracing::info!(model = %id, parameters = engine.info().parameters, bytes, "model loaded");
        if let Err(e) = self.store.record_load(id) {
            tracing::warn!(model = %id, error = %e, "cannot record the load in the model store");
        }
        let engine: Arc<dyn TextEngine> = Arc::new(engine);
        let keep_alive = keep_alive.unwrap_or(self.placement.keep_alive);
        loaded.insert(
            id.to_string(),
            Loaded {
                engine: engine.clone(),
                bytes,
                last_used: Instant::now(),
                keep_alive,
            },
        );
        let outcome = LoadOutcome {
            model: id.to_string(),
            already_loaded: false,
            bytes,
            unloaded: evict,
            keep_alive_secs: keep_alive.map(|d| d.as_secs()),
        };
        Ok((engine, outcome))
    }

    /// Unload `name`; refused while calls run on it.
    pub async fn unload(&self, name: &str) -> Result<u64, EngineError> {
        let (id, _) = self.resolve(name)?;
        let mut loaded = self.loaded.lock().await;
        let refuse = |reason: String| EngineError::Load {
            path: id.clone(),
            reason,
        };
        let Some(model) = loaded.get(&id) else {
            return Err(refuse("it is not loaded".into()));
        };
        let in_use = model.in_use();
        if in_use > 0 {
            return Err(refuse(format!(
                "cannot unload: {in_use} call(s) are running on it; try again when they finish"
            )));
        }
        let bytes = model.bytes;
        loaded.remove(&id);
        self.forget(&id, "on request");
        Ok(bytes)
    }

    /// Unload the idle models whose keep-alive ran out; their names.
    pub async fn sweep(&self) -> Vec<String> {
        let mut loaded = self.loaded.lock().await;
        let now = Instant::now();
        // The idle clock starts when the last call ends, seen here.
        for model in loaded.values_mut().filter(|m| m.in_use() > 0) {
            model.last_used = now;
        }
        let expired = placement::expired(&residents(&loaded), now);
        for name in &expired {
            loaded.remove(name);
            self.forget(name, "keep-alive expired");
        }
        expired
    }

    fn forget(&self, name: &str, why: &str) {
        tracing::info!(model = %name, "model unloaded: {why}");
        if let Err(e) = self.store.record_unload(name) {
            tracing::warn!(model = %name, error = %e, "cannot record the unload in the model store");
        }
    }

    /// The loaded models and the memory they are counted for.
    pub async fn residency(&self) -> Residency {
        let loaded = self.loaded.lock().await;
        let now = Instant::now();
        let mut residency = Residency::default();
        for (name, model) in loaded.iter() {
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
            });
        }
        residency.loaded.sort_by(|a, b| a.name.cmp(&b.name));
        residency
    }

    /// What each GGUF model of the store would be counted for when loaded.
    pub fn store_model_bytes(&self) -> BTreeMap<String, u64> {
        let Ok(models) = self.store.list() else {
            return BTreeMap::new();
        };
        models
            .iter()
            .filter(|m| m.format == "gguf")
            .filter_map(|m| {
                let path = self.store.main_file(&m.name).ok()?;
                Some((m.name.clone(), self.estimate_bytes(&path).ok()?))
            })
            .collect()
    }

    /// Weights as stored, plus the KV cache of `parallel` full contexts;
    /// without attention facts in the header, a quarter more than the weights.
    fn estimate_bytes(&self, path: &Path) -> Result<u64, EngineError> {
        let error = |reason: String| EngineError::Load {
            path: path.display().to_string(),
            reason,
        };
        let weights = std::fs::metadata(path)
            .map_err(|e| error(e.to_string()))?
            .len();
        let per_token = std::fs::File::open(path)
            .ok()
            .and_then(|file| gguf::read_metadata(std::io::BufReader::new(file)).ok())
            .and_then(|metadata| gguf::kv_bytes_per_token(&metadata));
        let contexts = self.settings.context_size as u64 * self.placement.parallel.max(1) as u64;
        Ok(match per_token {
            Some(per_token) => weights + per_token * contexts,
            None => weights + weights / 4,
        })
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
        let mut ids = vec![name.to_string()];
        if !name.ends_with(".gguf") {
            ids.push(format!("{name}.gguf"));
        }
        for id in &ids {
            match self.store.get(id) {
                Ok(model) if model.format != "gguf" => {
                    return Err(EngineError::Load {
                        path: id.clone(),
                        reason: format!("a {} model, not a GGUF language model", model.format),
                    });
                }
                Ok(_) => {
                    let path = self.store.main_file(id).map_err(|e| load_error(id, e))?;
                    return Ok((id.clone(), path));
                }
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(load_error(id, e)),
            }
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
}

/// The loaded models as placement sees them; a model in use counts as used now.
fn residents(loaded: &HashMap<String, Loaded>) -> Vec<Resident> {
    let now = Instant::now();
    loaded
        .iter()
        .map(|(name, model)| {
            let in_use = model.in_use() > 0;
            Resident {
                name: name.clone(),
                bytes: model.bytes,
                last_used: if in_use { now } else { model.last_used },
                in_use,
                keep_alive: model.keep_alive,
            }
        })
        .collect()
}

fn load_error(name: &str, e: StoreError) -> EngineError {
    EngineError::Load {
        path: name.to_string(),
        reason: e.to_string(),
    }
}
