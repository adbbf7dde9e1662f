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

/// What an import produced.
#[derive(Debug, Clone, Serialize)]
pub struct Imported {
    pub path: PathBuf,
    pub size_bytes: u64,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}: not a GGUF file (it does not start with the GGUF magic)")]
    NotGguf(PathBuf),
    #[error("{0}: a model with this name exists; remove it first or import under another name")]
    Exists(PathBuf),
    #[error("model name `{0}`: use a plain file name ending in .gguf")]
    BadName(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Copy a GGUF file into the model directory.
///
/// The copy goes to a hidden partial file that is synced and then renamed,
/// so a crash mid-import never leaves a half model under a model's name.
/// `progress(copied, total)` is called as bytes are copied.
pub fn import_gguf(
    source: &std::path::Path,
    dir: &std::path::Path,
    name: Option<&str>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Imported, ImportError> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};

    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| ImportError::Io { path, source }
    };
    let name = match name {
        Some(name) => name.to_string(),
        None => source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    if !name.ends_with(".gguf") || name.starts_with('.') || name.contains(['/', '\\']) {
        return Err(ImportError::BadName(name));
    }
    let mut input = std::fs::File::open(source).map_err(io(source))?;
    let total = input.metadata().map_err(io(source))?.len();
    let mut magic = [0u8; 4];
    if input.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        return Err(ImportError::NotGguf(source.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let target = dir.join(&name);
    if target.exists() {
        return Err(ImportError::Exists(target));
    }
    let partial = dir.join(format!(".{name}.partial"));
    let mut output = std::fs::File::create(&partial).map_err(io(&partial))?;
    let mut hasher = Sha256::new();
    hasher.update(magic);
    output.write_all(&magic).map_err(io(&partial))?;
    let mut copied = magic.len() as u64;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buffer).map_err(io(source))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        output.write_all(&buffer[..n]).map_err(io(&partial))?;
        copied += n as u64;
        progress(copied, total);
    }
    output.sync_all().map_err(io(&partial))?;
    drop(output);
    std::fs::rename(&partial, &target).map_err(io(&target))?;
    Ok(Imported {
        path: target,
        size_bytes: copied,
        sha256: format!("{:x}", hasher.finalize()),
    })
}

#[cfg(test)]
mod import_tests {
    use super::*;

    #[test]
    fn imports_atomically_with_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("tiny.gguf");
        std::fs::write(&source, b"GGUF then some tensor bytes").unwrap();
        let store = dir.path().join("models");
        let mut calls = 0;
        let imported = import_gguf(&source, &store, None, |_, _| calls += 1).unwrap();
        assert_eq!(imported.size_bytes, 27);
        // sha256 of the bytes above, from `sha256sum`.
        assert_eq!(
            imported.sha256,
            "92854925f02d8eaf3606c652e4185b0a0112e865b5046cb923f14a7768240276"
        );
        assert!(calls >= 1);
        let names: Vec<_> = std::fs::read_dir(&store)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("tiny.gguf")]);
        assert!(matches!(
            import_gguf(&source, &store, None, |_, _| {}),
            Err(ImportError::Exists(_))
        ));
    }

    #[test]
    fn refuses_what_is_not_gguf() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("fake.gguf");
        std::fs::write(&source, b"PK\x03\x04 a zip").unwrap();
        assert!(matches!(
            import_gguf(&source, dir.path(), None, |_, _| {}),
            Err(ImportError::NotGguf(_))
        ));
        assert!(matches!(
            import_gguf(&source, dir.path(), Some("../x.gguf"), |_, _| {}),
            Err(ImportError::BadName(_))
        ));
    }
}
