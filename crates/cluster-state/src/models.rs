//! Models shared by the cluster: their files in a JetStream Object Store
//! (`<cluster>_model_files`, one object per distinct content, named
//! `sha256-<hex>`), and a registry in KV (`<cluster>_models`, one entry per
//! model name) saying what each model is and which files make it.
//!
//! The Object Store chunks, replicates and checksums; nothing here is a
//! transfer protocol of our own. What this adds is the order that keeps a
//! model whole:
//!
//! - publish uploads every file (or finds it there, same name and size and
//!   digest), checks the Object Store's digest (`SHA-256=<base64url>`) against
//!   the store's sha256, and only then writes the registry entry. Cut short
//!   anywhere, the model is listed nowhere.
//! - pull downloads every file into a private directory of the local store's
//!   `tmp/`, hashing as it writes, compares each sha256 with the registry,
//!   and then imports (hard links, one transaction). Cut short anywhere,
//!   nothing is listed, and the directory goes (when dropped, or at the next
//!   `ModelStore::open` after a kill -9).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectMetadata, ObjectStore};
use async_nats::jetstream::{kv, stream::StorageType};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use bytes::Bytes;
use futures::StreamExt;
use jetsonmind_cluster::Bus;
use jetsonmind_cluster::membership::unix_now;
use jetsonmind_store::{ImportOptions, ModelFile, ModelInfo, ModelStore, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::{StateError, durable_bucket};

mod hooks;

pub use hooks::{ModelHooks, Placed};

/// A model in the cluster's registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
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
    /// Where the publisher's store had it from.
    pub source: String,
    /// The digest of the main model file.
    pub sha256: String,
    /// Each file of the model, as the publisher's store has it.
    pub files: Vec<ModelFile>,
    /// The node that published it.
    pub published_by: String,
    pub published_unix: u64,
}

/// The object that holds `file`'s content.
fn object_of(file: &ModelFile) -> String {
    object_name(&file.sha256)
}

/// The Object Store object of the content with this sha256.
pub fn object_name(sha256: &str) -> String {
    format!("sha256-{sha256}")
}

/// The Object Store's digest of content with this sha256 (hex).
fn object_digest(sha256: &str) -> Option<String> {
    let bytes: Vec<u8> = (0..sha256.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(sha256.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    Some(format!("SHA-256={}", URL_SAFE.encode(bytes)))
}

/// The cluster's model buckets, as one node uses them.
#[derive(Clone)]
pub struct ClusterModels {
    bus: Bus,
    files: ObjectStore,
    registry: kv::Store,
}

/// Revisions of an entry the registry keeps (a model published again).
const REGISTRY_HISTORY: i64 = 5;

impl ClusterModels {
    /// Open both buckets (made by the first node that needs them).
    pub async fn open(bus: &Bus) -> Result<Self, StateError> {
        let files_config = object_store::Config {
            bucket: bus.bucket_name("model_files"),
            description: Some(
                "JetsonMind model files, one object per content: sha256-<hex>".into(),
            ),
            storage: StorageType::File,
            num_replicas: bus.bucket_replicas(),
            max_bytes: i64::try_from(bus.config.model_bucket_max_bytes)
                .ok()
                .filter(|max| *max > 0)
                .unwrap_or(-1),
            ..Default::default()
        };
        let registry_config = durable_bucket(
            bus,
            "models",
            "JetsonMind model registry: what each published model is and its files",
            REGISTRY_HISTORY,
        );
        let (files, registry) = bus
            .patiently("the model buckets", || async {
                let files = bus.object_store(files_config.clone()).await?;
                let registry = bus.key_value(registry_config.clone()).await?;
                Ok((files, registry))
            })
            .await?;
        Ok(Self {
            bus: bus.clone(),
            files,
            registry,
        })
    }

    /// The cluster's name, as pulled models record where they came from.
    pub fn cluster(&self) -> &str {
        &self.bus.config.name
    }

    /// Publish the model `name` of `store`: upload the files the cluster
    /// lacks, check every digest, then write the registry entry (the files
    /// of what the name held before go, unless another model has them).
    /// `progress(done, total)` follows the upload in bytes.
    pub async fn publish(
        &self,
        store: &ModelStore,
        name: &str,
        mut progress: impl FnMut(u64, u64) + Send,
    ) -> Result<ModelEntry, StateError> {
        check_key(name)?;
        let model = store.get(name)?;
        let blobs = store.files(name)?;
        let entry = self.entry_of(&model);
        let mut done = 0;
        for file in &entry.files {
            let blob = blobs.get(&file.path).ok_or_else(|| {
                StateError::Invalid(format!("{name}: the store lost its file {}", file.path))
            })?;
            let base = done;
            self.upload(name, file, blob, &mut |n| {
                progress(base + n, entry.size_bytes)
            })
            .await?;
            done += file.size_bytes;
            progress(done, entry.size_bytes);
        }
        let replaced = self.entry(name).await?;
        let value = serde_json::to_vec(&entry).map_err(StateError::jetstream)?;
        self.registry
            .put(name, Bytes::from(value))
            .await
            .map_err(|e| StateError::JetStream(format!("registering {name}: {e}")))?;
        // What the name held before goes, unless another model holds it too.
        if let Some(replaced) = replaced {
            self.delete_unreferenced(&replaced).await?;
        }
        tracing::info!(model = %name, bytes = entry.size_bytes, "model published to the cluster");
        Ok(entry)
    }

    /// The registry entry for `model`, as this node publishes it.
    fn entry_of(&self, model: &ModelInfo) -> ModelEntry {
        ModelEntry {
            name: model.name.clone(),
            format: model.format.clone(),
            architecture: model.architecture.clone(),
            quantization: model.quantization.clone(),
            parameters: model.parameters.clone(),
            context_length: model.context_length,
            size_bytes: model.size_bytes,
            license: model.license.clone(),
            source: model.source.clone(),
            sha256: model.sha256.clone(),
            files: model.files.clone(),
            published_by: self.bus.node.clone(),
            published_unix: unix_now(),
        }
    }

    /// Put `blob` (the content of `file`) in the Object Store unless an
    /// object of that content is there, and check what the store computed.
    async fn upload(
        &self,
        model: &str,
        file: &ModelFile,
        blob: &Path,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(), StateError> {
        let name = object_of(file);
        let expected = object_digest(&file.sha256)
            .ok_or_else(|| StateError::Invalid(format!("{model}: bad sha256 {}", file.sha256)))?;
        if let Ok(info) = self.files.info(&name).await
            && !info.deleted
            && info.size as u64 == file.size_bytes
            && info.digest.as_deref() == Some(expected.as_str())
        {
            tracing::debug!(object = %name, "already in the cluster; not uploaded again");
            return Ok(());
        }
        let opened = tokio::fs::File::open(blob).await;
        let reader = opened.map_err(|source| StoreError::Io {
            path: blob.to_path_buf(),
            source,
        })?;
        let mut counted = Counted {
            inner: reader,
            read: 0,
            progress,
        };
        let meta = ObjectMetadata {
            name: name.clone(),
            description: Some(format!("{model}: {}", file.path)),
            chunk_size: Some(self.chunk_bytes()),
            ..Default::default()
        };
        let info = self
            .files
            .put(meta, &mut counted)
            .await
            .map_err(|e| StateError::JetStream(format!("uploading {}: {e}", file.path)))?;
        let actual = info.digest.unwrap_or_default();
        if actual != expected || info.size as u64 != file.size_bytes {
            // Named by a content it does not hold: it must not stay.
            let _ = self.files.delete(&name).await;
            return Err(StateError::DigestMismatch {
                file: format!("{model}/{}", file.path),
                expected,
                actual,
            });
        }
        Ok(())
    }

    /// Chunks as configured, never beyond what one NATS message carries.
    fn chunk_bytes(&self) -> usize {
        let max_payload = self.bus.max_payload();
        match max_payload {
            0 => self.bus.config.model_chunk_bytes,
            max => self.bus.config.model_chunk_bytes.min(max),
        }
    }

    /// Every model of the registry, by name.
    pub async fn list(&self) -> Result<Vec<ModelEntry>, StateError> {
        let mut keys = self
            .registry
            .keys()
            .await
            .map_err(|e| StateError::JetStream(format!("listing the model registry: {e}")))?;
        let mut names = BTreeSet::new();
        while let Some(key) = keys.next().await {
            names.insert(key.map_err(StateError::jetstream)?);
        }
        let mut entries = Vec::new();
        for name in names {
            // Withdrawn between the listing and now: not listed.
            if let Some(entry) = self.entry(&name).await? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// The registry entry of `name`, if the cluster has that model.
    pub async fn entry(&self, name: &str) -> Result<Option<ModelEntry>, StateError> {
        check_key(name)?;
        let value = self
            .registry
            .get(name)
            .await
            .map_err(|e| StateError::JetStream(format!("reading the model registry: {e}")))?;
        let Some(value) = value else {
            return Ok(None);
        };
        let entry: ModelEntry = serde_json::from_slice(&value)
            .map_err(|e| StateError::Invalid(format!("{name}: unreadable registry entry: {e}")))?;
        Ok(Some(entry))
    }

    /// Bring the cluster's model `name` into `store`: download, check every
    /// sha256 against the registry, import. `progress(done, total)` follows
    /// the download in bytes. A model the store already has under that name
    /// with the same content is returned as it is.
    pub async fn pull(
        &self,
        store: &Arc<ModelStore>,
        name: &str,
        mut progress: impl FnMut(u64, u64) + Send,
    ) -> Result<ModelInfo, StateError> {
        let entry = self
            .entry(name)
            .await?
            .ok_or_else(|| StateError::NotPublished(name.to_string()))?;
        check_entry(name, &entry)?;
        let scratch = store.scratch_dir()?;
        let (dir, source) = match entry.files.as_slice() {
            // A single file is imported itself, under the model's name.
            [only] => (
                scratch.path().to_path_buf(),
                scratch.path().join(&only.path),
            ),
            _ => {
                let dir = scratch.path().join(name);
                create_dir(&dir).await?;
                (dir.clone(), dir)
            }
        };
        let mut done = 0;
        for file in &entry.files {
            let base = done;
            let report = &mut |n| progress(base + n, entry.size_bytes);
            self.download(name, file, &dir.join(&file.path), report)
                .await?;
            done += file.size_bytes;
        }
        progress(done, entry.size_bytes);
        let imported = self.import(store, &entry, source).await;
        drop(scratch);
        imported
    }

    /// Write the object of `file` to `path`, hashing as it goes, synced;
    /// refused unless its sha256 is the registry's.
    async fn download(
        &self,
        model: &str,
        file: &ModelFile,
        path: &Path,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(), StateError> {
        let mut object = self.files.get(object_of(file)).await.map_err(|e| {
            StateError::JetStream(format!(
                "{model}/{}: object {} cannot be read ({e}); publish the model again",
                file.path,
                object_of(file)
            ))
        })?;
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut out = tokio::fs::File::create(path).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut size = 0u64;
        let stall = Duration::from_millis(self.bus.config.model_stall_ms);
        loop {
            let read = tokio::time::timeout(stall, object.read(&mut buffer))
                .await
                .map_err(|_| StateError::Stalled {
                    file: format!("{model}/{}", file.path),
                    after: stall,
                })?;
            let n = read.map_err(|e| {
                StateError::JetStream(format!("{model}/{}: download: {e}", file.path))
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            out.write_all(&buffer[..n]).await.map_err(io)?;
            size += n as u64;
            progress(size);
        }
        out.sync_all().await.map_err(io)?;
        let actual = format!("{:x}", hasher.finalize());
        if actual != file.sha256 || size != file.size_bytes {
            // Its chunks are not the content it is named by (whatever its
            // metadata says): delete it, so the next publish uploads it.
            if let Err(e) = self.files.delete(object_of(file)).await {
                tracing::warn!(object = %object_of(file), error = %e, "cannot delete a damaged model file");
            }
            return Err(StateError::DigestMismatch {
                file: format!("{model}/{}", file.path),
                expected: file.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Import the checked download at `source` as `entry` (a blocking
    /// import, off the async threads).
    async fn import(
        &self,
        store: &Arc<ModelStore>,
        entry: &ModelEntry,
        source: PathBuf,
    ) -> Result<ModelInfo, StateError> {
        let options = ImportOptions {
            name: Some(entry.name.clone()),
            source: Some(format!("cluster:{}/{}", self.cluster(), entry.published_by)),
            license: entry.license.clone(),
            link: true,
        };
        let importer = store.clone();
        let imported =
            tokio::task::spawn_blocking(move || importer.import(&source, &options, |_, _| {}))
                .await
                .map_err(|e| StateError::Invalid(format!("the import stopped: {e}")))?;
        match imported {
            Ok(model) => Ok(model),
            // Pulled meanwhile by someone else (another process of this
            // node): the same content is as good.
            Err(StoreError::Exists(_)) => match store.get(&entry.name)? {
                model if model.sha256 == entry.sha256 => Ok(model),
                _ => Err(StoreError::Exists(entry.name.clone()).into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Withdraw `name` from the registry: the entry it had. Its objects go
    /// when no other entry refers to them (a publish racing this one may
    /// find its file gone at pull; publishing again puts it back).
    pub async fn unpublish(&self, name: &str) -> Result<ModelEntry, StateError> {
        let entry = self
            .entry(name)
            .await?
            .ok_or_else(|| StateError::NotPublished(name.to_string()))?;
        self.registry
            .delete(name)
            .await
            .map_err(|e| StateError::JetStream(format!("withdrawing {name}: {e}")))?;
        self.delete_unreferenced(&entry).await?;
        tracing::info!(model = %name, "model withdrawn from the cluster");
        Ok(entry)
    }

    /// Delete the objects of `entry` that no entry of the registry refers
    /// to now (it was withdrawn, or its name now holds other content).
    async fn delete_unreferenced(&self, entry: &ModelEntry) -> Result<(), StateError> {
        let still_used: BTreeSet<String> = self
            .list()
            .await?
            .iter()
            .flat_map(|other| other.files.iter().map(object_of))
            .collect();
        for object in entry.files.iter().map(object_of) {
            if !still_used.contains(&object)
                && let Err(e) = self.files.delete(&object).await
            {
                tracing::warn!(%object, error = %e, "cannot delete a model file no model uses");
            }
        }
        Ok(())
    }

    /// The Object Store's objects that are not deleted: name and size.
    pub async fn objects(&self) -> Result<BTreeMap<String, u64>, StateError> {
        let mut listing = self.files.list().await.map_err(StateError::jetstream)?;
        let mut objects = BTreeMap::new();
        while let Some(info) = listing.next().await {
            let info = info.map_err(StateError::jetstream)?;
            if !info.deleted {
                objects.insert(info.name, info.size as u64);
            }
        }
        Ok(objects)
    }
}

/// A reader that counts what went through it.
struct Counted<'a, R> {
    inner: R,
    read: u64,
    progress: &'a mut (dyn FnMut(u64) + Send),
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<'_, R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.read += n;
            let read = self.read;
            (self.progress)(read);
        }
        polled
    }
}

async fn create_dir(dir: &Path) -> Result<(), StateError> {
    tokio::fs::create_dir(dir).await.map_err(|source| {
        StateError::Store(StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })
    })
}

/// A model name the registry can hold: a legal KV key (letters, digits,
/// `-`, `_`, `=`, `.`, no empty token), at most 128 characters.
pub fn check_key(name: &str) -> Result<(), StateError> {
    let refuse = |why: &str| {
        Err(StateError::Invalid(format!(
            "model name `{name}` cannot be a cluster registry key: {why}"
        )))
    };
    if name.is_empty() || name.len() > 128 {
        return refuse("use 1 to 128 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '.'))
    {
        return refuse("use letters, digits, `.`, `-`, `_` and `=` only");
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return refuse("it must not start or end with `.`, nor hold `..`");
    }
    Ok(())
}

/// An entry this node will download: its files plain names (written into
/// a directory of ours), its digests sha256 hex.
fn check_entry(key: &str, entry: &ModelEntry) -> Result<(), StateError> {
    let refuse = |why: String| Err(StateError::Invalid(format!("registry entry {key}: {why}")));
    if entry.name != key {
        return refuse(format!("it names another model, `{}`", entry.name));
    }
    if entry.files.is_empty() {
        return refuse("it lists no files".into());
    }
    let mut seen = BTreeSet::new();
    for file in &entry.files {
        let plain = !file.path.is_empty()
            && !file.path.starts_with('.')
            && !file.path.contains(['/', '\\', '\0'])
            && seen.insert(file.path.as_str());
        if !plain {
            return refuse(format!("`{}` is not a file name of its own", file.path));
        }
        let hex = file.sha256.len() == 64 && file.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex {
            return refuse(format!("{}: `{}` is not a sha256", file.path, file.sha256));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_digest_is_the_sha256_in_base64url() {
        // sha256 of the empty string.
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            object_digest(empty).as_deref(),
            Some("SHA-256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU=")
        );
        assert_eq!(object_digest("zz"), None);
    }

    #[test]
    fn registry_keys_are_checked() {
        for good in ["smol-shared", "SmolLM2-135M.Q4_1.gguf", "a_b=c"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "trailing.", "a..b", "a b", "a/b", "a*", "a>"] {
            let err = check_key(bad).unwrap_err().to_string();
            assert!(
                err.contains("cannot be a cluster registry key"),
                "{bad}: {err}"
            );
        }
    }

    fn entry(paths: &[&str]) -> ModelEntry {
        ModelEntry {
            name: "m".into(),
            format: "gguf".into(),
            architecture: None,
            quantization: None,
            parameters: None,
            context_length: None,
            size_bytes: 0,
            license: None,
            source: String::new(),
            sha256: "a".repeat(64),
            files: paths
                .iter()
                .map(|p| ModelFile {
                    path: p.to_string(),
                    sha256: "a".repeat(64),
                    size_bytes: 0,
                })
                .collect(),
            published_by: "n1".into(),
            published_unix: 0,
        }
    }

    #[test]
    fn an_entry_whose_files_would_leave_the_download_directory_is_refused() {
        assert!(check_entry("m", &entry(&["m.gguf", "config.json"])).is_ok());
        for bad in [
            &["../x"][..],
            &["a/b"],
            &[".hidden"],
            &[""],
            &["x", "x"],
            &[],
        ] {
            assert!(check_entry("m", &entry(bad)).is_err(), "{bad:?}");
        }
        assert!(check_entry("other", &entry(&["m.gguf"])).is_err());
    }
}
