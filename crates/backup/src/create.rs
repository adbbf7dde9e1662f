//! Writing a backup: a consistent snapshot, streamed into a tar under a
//! temporary name, renamed when complete.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use jetsonmind_store::{ModelStore, Snapshot};

use super::{
    BUFFER, BackupError, CONFIG_ENTRY, Doing, FORMAT, FileRecord, Hashing, MANIFEST, Manifest,
    Part, VERSION, beside, ensure_room, names_log_entry, parent_of, refuse_unless, rfc3339,
    sync_dir,
};

/// What to back up.
pub struct Source<'a> {
    pub data_dir: &'a Path,
    /// The config file the node runs with, when it was given one.
    pub config_file: Option<&'a Path>,
    /// The node's name, for the manifest.
    pub node: String,
}

/// The archive's room for headers and the end marker, beyond the files.
const TAR_OVERHEAD_PER_FILE: u64 = 1024;

/// One file to put in the archive.
struct Entry {
    path: String,
    content: Content,
    size: u64,
    mode: u32,
}

enum Content {
    /// Small files, read whole when the backup starts.
    Bytes(Vec<u8>),
    /// A file streamed from disk; for a blob, the digest its name promises.
    File {
        path: PathBuf,
        sha256: Option<String>,
    },
}

/// Write a backup of `source` to `output` (which must not exist): under a
/// temporary name beside it, renamed to `output` only once complete and
/// synced, so a backup cut short is never mistaken for a good one.
pub fn create(source: &Source, output: &Path) -> Result<Manifest, BackupError> {
    let created = SystemTime::now();
    refuse_unless(!output.exists(), || {
        format!("{} exists: choose another --output", output.display())
    })?;
    refuse_unless(source.data_dir.is_dir(), || {
        format!(
            "no data dir at {}: nothing to back up",
            source.data_dir.display()
        )
    })?;
    let dir = parent_of(output);
    refuse_unless(!dir.exists() || dir.is_dir(), || {
        format!(
            "cannot write {}: {} is not a directory",
            output.display(),
            dir.display()
        )
    })?;
    std::fs::create_dir_all(dir).doing(|| format!("creating {}", dir.display()))?;
    let partial = beside(output, "partial");
    let database = beside(output, "db.partial");
    let _cleanup = RemoveOnDrop(vec![partial.clone(), database.clone()]);
    let store = ModelStore::open(source.data_dir)
        .doing(|| format!("opening the model store in {}", source.data_dir.display()))?;
    let snapshot = store
        .snapshot(&database)
        .doing(|| "copying the database".into())?;
    drop(store);
    let entries = entries(source, &snapshot, &database)?;
    let needed = entries
        .iter()
        .map(|e| e.size + TAR_OVERHEAD_PER_FILE)
        .sum::<u64>()
        + TAR_OVERHEAD_PER_FILE;
    ensure_room(dir, needed)?;
    let files = write_archive(&partial, &entries, |files| Manifest {
        format: FORMAT.into(),
        version: VERSION,
        jetsonmind_version: env!("CARGO_PKG_VERSION").into(),
        created: rfc3339(created),
        node: source.node.clone(),
        data_dir: std::path::absolute(source.data_dir)
            .unwrap_or_else(|_| source.data_dir.to_path_buf()),
        config_file: source
            .config_file
            .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.to_path_buf())),
        files,
    })?;
    std::fs::rename(&partial, output)
        .doing(|| format!("renaming {} to {}", partial.display(), output.display()))?;
    sync_dir(dir)?;
    Ok(files)
}

/// Everything to archive, in archive order: the database, the small files,
/// the model store.
fn entries(
    source: &Source,
    snapshot: &Snapshot,
    database: &Path,
) -> Result<Vec<Entry>, BackupError> {
    use jetsonmind_core::auth::keys::KEYS_FILE;
    use jetsonmind_core::config::{CLUSTER_SETTINGS_FILE, SETTINGS_FILE};
    use jetsonmind_store::db::DB_FILE;
    let data_dir = source.data_dir;
    let mut entries = vec![Entry {
        path: DB_FILE.into(),
        size: file_size(database)?,
        mode: mode_of(&data_dir.join(DB_FILE)).unwrap_or(0o644),
        content: Content::File {
            path: database.to_path_buf(),
            sha256: None,
        },
    }];
    for name in [SETTINGS_FILE, CLUSTER_SETTINGS_FILE, KEYS_FILE] {
        if let Some(entry) = small_file(name, &data_dir.join(name))? {
            entries.push(entry);
        }
    }
    if let Some(config) = source.config_file {
        let entry = small_file(CONFIG_ENTRY, config)?.ok_or_else(|| {
            BackupError::Refused(format!("the config file {} is gone", config.display()))
        })?;
        entries.push(entry);
    }
    if !snapshot.names_log.is_empty() {
        let names = names_log_entry();
        entries.push(Entry {
            mode: mode_of(&data_dir.join(&names)).unwrap_or(0o644),
            size: snapshot.names_log.len() as u64,
            content: Content::Bytes(snapshot.names_log.clone()),
            path: names,
        });
    }
    for blob in &snapshot.blobs {
        entries.push(Entry {
            path: format!("{}{}", super::BLOB_PREFIX, blob.sha256),
            size: blob.size_bytes,
            mode: mode_of(&blob.path).unwrap_or(0o644),
            content: Content::File {
                path: blob.path.clone(),
                sha256: Some(blob.sha256.clone()),
            },
        });
    }
    Ok(entries)
}

/// A small file read whole, as `name` in the archive; `None` when it does not exist.
fn small_file(name: &str, path: &Path) -> Result<Option<Entry>, BackupError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).doing(|| format!("reading {}", path.display())),
    };
    Ok(Some(Entry {
        path: name.into(),
        size: bytes.len() as u64,
        mode: mode_of(path).unwrap_or(0o600),
        content: Content::Bytes(bytes),
    }))
}

fn file_size(path: &Path) -> Result<u64, BackupError> {
    Ok(std::fs::metadata(path)
        .doing(|| format!("reading {}", path.display()))?
        .len())
}

fn mode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.mode())
}

/// Write `entries` and then the manifest `manifest` makes of their records
/// to `partial`, synced.
fn write_archive(
    partial: &Path,
    entries: &[Entry],
    manifest: impl FnOnce(Vec<FileRecord>) -> Manifest,
) -> Result<Manifest, BackupError> {
    let writing = || format!("writing {}", partial.display());
    // Private: it holds the API keys' hashes and the config file.
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(partial)
        .doing(writing)?;
    let mut archive = tar::Builder::new(BufWriter::with_capacity(BUFFER, file));
    let mut records = Vec::new();
    for entry in entries {
        records.push(append(&mut archive, entry, partial)?);
    }
    let manifest = manifest(records);
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(io::Error::from)
        .doing(writing)?;
    let mut header = header(text.len() as u64, 0o644);
    archive
        .append_data(&mut header, MANIFEST, text.as_slice())
        .doing(writing)?;
    let file = archive
        .into_inner()
        .and_then(|buffered| buffered.into_inner().map_err(|e| e.into_error()))
        .doing(writing)?;
    file.sync_all().doing(writing)?;
    Ok(manifest)
}

fn header(size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    header
}

/// Stream one entry into the archive, hashing it on the way.
fn append<W: Write>(
    archive: &mut tar::Builder<W>,
    entry: &Entry,
    output: &Path,
) -> Result<FileRecord, BackupError> {
    let part = Part::of(&entry.path).expect("backups hold only known parts");
    let mut header = header(entry.size, part.mode(entry.mode));
    let sha256 = match &entry.content {
        Content::Bytes(bytes) => {
            let mut reader = Hashing::new(bytes.as_slice());
            archive
                .append_data(&mut header, &entry.path, &mut reader)
                .doing(|| format!("writing {}", output.display()))?;
            reader.digest()
        }
        Content::File { path, sha256 } => {
            let file = File::open(path).doing(|| missing(path, sha256.is_some()))?;
            let mut reader = Hashing::new(file.take(entry.size));
            let written = archive.append_data(&mut header, &entry.path, &mut reader);
            if let Some(e) = reader.read_error.take() {
                return Err(e).doing(|| format!("reading {}", path.display()));
            }
            written.doing(|| format!("writing {}", output.display()))?;
            refuse_unless(reader.count == entry.size, || {
                format!("{} shrank while it was backed up", path.display())
            })?;
            let actual = reader.digest();
            if let Some(expected) = sha256 {
                refuse_unless(*expected == actual, || {
                    format!(
                        "{} does not hold what its name says (sha256 {actual}): the model store is \
                         damaged; `jetsonmind models verify` names the model",
                        path.display()
                    )
                })?;
            }
            actual
        }
    };
    Ok(FileRecord {
        path: entry.path.clone(),
        size_bytes: entry.size,
        sha256,
    })
}

fn missing(path: &Path, blob: bool) -> String {
    match blob {
        true => format!(
            "reading {} (was its model removed while the backup ran? run it again)",
            path.display()
        ),
        false => format!("reading {}", path.display()),
    }
}

/// Files removed when dropped: a backup that fails leaves nothing behind.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}
