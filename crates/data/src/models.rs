//! The model files of this node, as found in its model directory.

use std::path::PathBuf;

use jetsonmind_core::rmcp::ErrorData as McpError;
use serde::Serialize;

/// Model file formats recognised by their extension.
const MODEL_EXTENSIONS: &[&str] = &["gguf", "onnx", "safetensors"];

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelFile {
    pub name: String,
    pub format: String,
    pub size_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ModelList {
    pub directory: PathBuf,
    pub models: Vec<ModelFile>,
}

pub struct ModelDir {
    dir: PathBuf,
}

impl ModelDir {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Every model file, by name. A missing directory is an empty store.
    pub fn list(&self) -> Result<ModelList, McpError> {
        let mut models = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ModelList {
                    directory: self.dir.clone(),
                    models,
                });
            }
            Err(e) => return Err(io_error(&self.dir, e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(format) = model_format(&name) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() {
                models.push(ModelFile {
                    name,
                    format,
                    size_bytes: meta.len(),
                });
            }
        }
        models.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ModelList {
            directory: self.dir.clone(),
            models,
        })
    }

    pub fn get(&self, name: &str) -> Result<ModelFile, McpError> {
        self.list()?
            .models
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| McpError::resource_not_found(format!("no model named {name}"), None))
    }
}

fn model_format(name: &str) -> Option<String> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    MODEL_EXTENSIONS.contains(&ext.as_str()).then_some(ext)
}

fn io_error(path: &std::path::Path, e: std::io::Error) -> McpError {
    McpError::internal_error(format!("cannot read {}: {e}", path.display()), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_model_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.gguf"), b"12345").unwrap();
        std::fs::write(dir.path().join("a.onnx"), b"1").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let store = ModelDir::new(dir.path().to_path_buf());
        let names: Vec<_> = store
            .list()
            .unwrap()
            .models
            .into_iter()
            .map(|m| (m.name, m.size_bytes))
            .collect();
        assert_eq!(
            names,
            vec![("a.onnx".to_string(), 1), ("b.gguf".to_string(), 5)]
        );
        assert_eq!(store.get("b.gguf").unwrap().format, "gguf");
        assert!(store.get("notes.txt").is_err());
    }

    #[test]
    fn missing_directory_is_empty() {
        let store = ModelDir::new("/nonexistent/jetsonmind/models".into());
        assert!(store.list().unwrap().models.is_empty());
    }
}
