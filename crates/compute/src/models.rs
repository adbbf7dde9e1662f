//! Loaded models, by name. A model is loaded on first use and then shared by
//! every call that names it; nothing is loaded twice.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::engine::llama::{LlamaEngine, LlamaSettings};
use crate::engine::{EngineError, TextEngine};

pub struct ModelRegistry {
    dir: PathBuf,
    default_model: String,
    settings: LlamaSettings,
    loaded: Mutex<HashMap<String, Arc<dyn TextEngine>>>,
}

impl ModelRegistry {
    pub fn new(dir: PathBuf, default_model: String, settings: LlamaSettings) -> Self {
        Self {
            dir,
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
        let engine: Arc<dyn TextEngine> = Arc::new(engine);
        loaded.insert(id, engine.clone());
        Ok(engine)
    }

    /// A model name is a file name in the model directory, `.gguf` optional.
    fn resolve(&self, name: &str) -> Result<(String, PathBuf), EngineError> {
        let plain = !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..";
        if !plain {
            return Err(EngineError::Load {
                path: name.to_string(),
                reason: "a model name is a plain file name".into(),
            });
        }
        let file = if name.ends_with(".gguf") {
            name.to_string()
        } else {
            format!("{name}.gguf")
        };
        let path = self.dir.join(&file);
        if !path.is_file() {
            let reason = format!(
                "no model `{name}` in {}; import one with `jetsonmind models import FILE.gguf`",
                self.dir.display()
            );
            return Err(EngineError::Load {
                path: path.display().to_string(),
                reason,
            });
        }
        Ok((file, path))
    }
}
