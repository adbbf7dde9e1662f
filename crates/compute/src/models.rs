//! Loaded models, by name. A model is loaded on first use and then shared by
//! every call that names it; nothing is loaded twice.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use jetsonmind_data::store::{ModelStore, StoreError};
use tokio::sync::Mutex;

use crate::engine::llama::{LlamaEngine, LlamaSettings};
use crate::engine::{EngineError, TextEngine};

pub struct ModelRegistry {
    store: Arc<ModelStore>,
    default_model: String,
    settings: LlamaSettings,
    loaded: Mutex<HashMap<String, Arc<dyn TextEngine>>>,
}

impl ModelRegistry {
    pub fn new(store: Arc<ModelStore>, default_model: String, settings: LlamaSettings) -> Self {
        Self {
            store,
            default_model,
            settings,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// The engine for `name` (the default model when `None`), loading it if needed.
    pub async fn get(&self, name: Option<&str>) -> Result<Arc<dyn TextEngine>, EngineError> {
        let (id, path) = self.resolve(name.unwrap_or(&self.default_model))?;
        let mut loaded = self.loaded.lock().await;
        if let Some(engine) = loaded.get(&id) {
            return Ok(engine.clone());
        }
        let settings = self.settings.clone();
        let key = id.clone();
        let engine = tokio::task::spawn_blocking(move || LlamaEngine::load(&path, key, settings))
            .await
            .map_err(|e| EngineError::Inference(format!("model loader stopped: {e}")))??;
        tracing::info!(model = %id, parameters = engine.info().parameters, "model loaded");
        if let Err(e) = self.store.record_load(&id) {
            tracing::warn!(model = %id, error = %e, "cannot record the load in the model store");
        }
        let engine: Arc<dyn TextEngine> = Arc::new(engine);
        loaded.insert(id, engine.clone());
        Ok(engine)
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

fn load_error(name: &str, e: StoreError) -> EngineError {
    EngineError::Load {
        path: name.to_string(),
        reason: e.to_string(),
    }
}
