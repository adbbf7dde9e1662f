//! Restoring a backup: unpacked and checked beside the data dir, then
//! swapped in with one rename.
//!
//! The data dir is not touched until every file has been read back and
//! matched against the manifest, and the restored database opens and holds
//! every model file it lists. Then a single `renameat2(RENAME_EXCHANGE)`
//! swaps the staged directory and the data dir, so a kill -9 at any moment
//! leaves the data dir path holding the old state whole or the new state
//! whole; the old state is then renamed to `<data dir>.before-restore-<time>`
//! (kept, never deleted).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use jetsonmind_store::ModelStore;

use super::{
    BUFFER, BackupError, Doing, FORMAT, FileRecord, Hashing, MANIFEST, Manifest, Part, VERSION,
    beside, blob_digest, compact_stamp, ensure_room, parent_of, refuse_unless, sync_dir,
};

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The restored backup's manifest: when and where it was taken.
    pub manifest: Manifest,
    /// Where the data dir's previous contents went, when it had any.
    pub aside: Option<PathBuf>,
}

/// Restore `archive` into `data_dir`. A data dir that holds anything is
/// refused unless `force`, and then moved aside, not deleted.
pub fn restore(data_dir: &Path, archive: &Path, force: bool) -> Result<Restored, BackupError> {
    let file = File::open(archive).doing(|| format!("opening {}", archive.display()))?;
    let archive_size = file
        .metadata()
        .doing(|| format!("reading {}", archive.display()))?
        .len();
    // The real directory, so a data dir reached through a symlink is
    // restored where it really is (on its own disk), the link kept.
    let data_dir = match std::fs::canonicalize(data_dir) {
        Ok(real) => real,
        Err(_) => std::path::absolute(data_dir)
            .doing(|| format!("finding where {} is", data_dir.display()))?,
    };
    let in_use = holds_anything(&data_dir)?;
    refuse_unless(force || !in_use, || {
        format!(
            "{} is not empty: `restore --force` moves what is there aside (to {}.before-restore-<time>) and restores in its place",
            data_dir.display(),
            data_dir.display()
        )
    })?;
    let parent = parent_of(&data_dir);
    std::fs::create_dir_all(parent).doing(|| format!("creating {}", parent.display()))?;
    ensure_room(parent, archive_size)?;
    let started = SystemTime::now();
    let staging = Staging::create(&beside(
        &data_dir,
        &format!(
            "restoring-{}-{}",
            compact_stamp(started),
            std::process::id()
        ),
    ))?;
    let manifest = unpack(
        BufReader::with_capacity(BUFFER, file),
        &staging.path,
        archive,
    )?;
    check_store(&staging.path)?;
    for dir in ["models/blobs", "models", ""].map(|d| staging.path.join(d)) {
        if dir.is_dir() {
            sync_dir(&dir)?;
        }
    }
    let aside = swap_in(staging, &data_dir, started)?;
    Ok(Restored { manifest, aside })
}

/// Whether `dir` exists and has any entry.
fn holds_anything(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).doing(|| format!("reading {}", dir.display())),
    }
}

/// The directory a restore unpacks into; removed if the restore fails
/// before it is swapped in.
struct Staging {
    path: PathBuf,
    kept: bool,
}

impl Staging {
    fn create(path: &Path) -> Result<Self, BackupError> {
        std::fs::create_dir(path).doing(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            kept: false,
        })
    }

    /// It has been swapped in: its path no longer holds what it unpacked.
    fn keep(mut self) -> PathBuf {
        self.kept = true;
        self.path.clone()
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Unpack every file of the archive into `staging`, hashing each; the
/// manifest they must match.
fn unpack(reader: impl Read, staging: &Path, archive: &Path) -> Result<Manifest, BackupError> {
    let corrupt = |e: io::Error| {
        BackupError::Refused(format!(
            "{}: the archive is truncated or corrupt ({})",
            archive.display(),
            brief(&e)
        ))
    };
    let mut tar = tar::Archive::new(reader);
    let mut found = BTreeMap::new();
    let mut manifest = None;
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry_path(&entry, archive)?;
        if path == MANIFEST {
            let read: Manifest = serde_json::from_reader(&mut entry).map_err(|e| {
                BackupError::Refused(format!(
                    "{}: its manifest does not read: {e}",
                    archive.display()
                ))
            })?;
            manifest = Some(read);
            continue;
        }
        refuse_unless(!found.contains_key(&path), || {
            format!("{}: {path} is in it twice", archive.display())
        })?;
        let record = unpack_file(&mut entry, staging, &path, archive)?;
        found.insert(path, record);
    }
    let manifest = manifest.ok_or_else(|| {
        BackupError::Refused(format!(
            "{}: no {MANIFEST}: the archive is truncated, or not a JetsonMind backup",
            archive.display()
        ))
    })?;
    check(&manifest, &found, archive)?;
    Ok(manifest)
}

/// The first line of an error, at most 100 characters: the tar reader's
/// messages quote what it found, which in a file that is no tar is anything.
fn brief(error: &io::Error) -> String {
    let text = error.to_string();
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(100) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    }
}

/// An entry's path, when it is a plain file a backup may hold.
fn entry_path<R: Read>(entry: &tar::Entry<'_, R>, archive: &Path) -> Result<String, BackupError> {
    let raw = entry.path_bytes();
    let path = String::from_utf8_lossy(&raw).into_owned();
    let known = path == MANIFEST || Part::of(&path).is_some();
    refuse_unless(
        known && entry.header().entry_type() == tar::EntryType::Regular,
        || {
            format!(
                "{}: `{path}` is nothing a JetsonMind backup holds; not restoring it",
                archive.display()
            )
        },
    )?;
    Ok(path)
}

/// Write one file to its place under `staging`, with its permissions.
fn unpack_file<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    staging: &Path,
    path: &str,
    archive: &Path,
) -> Result<FileRecord, BackupError> {
    let size = entry.size();
    let part = Part::of(path).expect("checked by entry_path");
    let mode = part.mode(entry.header().mode().unwrap_or(0o600));
    let dest = staging.join(path);
    let writing = || format!("writing {}", dest.display());
    std::fs::create_dir_all(parent_of(&dest)).doing(writing)?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&dest)
        .doing(writing)?;
    let mut reader = Hashing::new(entry);
    let mut buffer = vec![0; BUFFER];
    loop {
        let n = reader.read(&mut buffer).map_err(|e| {
            BackupError::Refused(format!(
                "{}: the archive is truncated or corrupt in {path} ({e})",
                archive.display()
            ))
        })?;
        if n == 0 {
            break;
        }
        out.write_all(&buffer[..n]).doing(writing)?;
    }
    refuse_unless(reader.count == size, || {
        format!(
            "{}: the archive is truncated in {path} ({} of {size} bytes)",
            archive.display(),
            reader.count
        )
    })?;
    out.sync_all().doing(writing)?;
    Ok(FileRecord {
        path: path.to_string(),
        size_bytes: size,
        sha256: reader.digest(),
    })
}

/// The files found must be exactly those the manifest lists, each with its
/// size and sha256.
fn check(
    manifest: &Manifest,
    found: &BTreeMap<String, FileRecord>,
    archive: &Path,
) -> Result<(), BackupError> {
    let archive = archive.display();
    refuse_unless(manifest.format == FORMAT, || {
        format!(
            "{archive}: not a JetsonMind backup (its manifest says `{}`)",
            manifest.format
        )
    })?;
    refuse_unless(manifest.version <= VERSION, || {
        format!(
            "{archive}: backup format {} was written by a newer jetsonmind ({}); upgrade to restore it",
            manifest.version, manifest.jetsonmind_version
        )
    })?;
    for listed in &manifest.files {
        let Some(got) = found.get(&listed.path) else {
            return Err(BackupError::Refused(format!(
                "{archive}: {} is in the manifest but missing from the archive",
                listed.path
            )));
        };
        refuse_unless(
            got.size_bytes == listed.size_bytes && got.sha256 == listed.sha256,
            || {
                format!(
                    "{archive}: {} does not match the manifest (sha256 {}, {} bytes; the manifest says {}, {} bytes): the archive is damaged",
                    listed.path, got.sha256, got.size_bytes, listed.sha256, listed.size_bytes
                )
            },
        )?;
        if let Some(named) = blob_digest(&listed.path) {
            refuse_unless(named == listed.sha256, || {
                format!(
                    "{archive}: {} holds other content than its name says",
                    listed.path
                )
            })?;
        }
    }
    for path in found.keys() {
        refuse_unless(manifest.files.iter().any(|f| f.path == *path), || {
            format!("{archive}: {path} is in the archive but not in its manifest")
        })?;
    }
    let database = jetsonmind_store::db::DB_FILE;
    refuse_unless(found.contains_key(database), || {
        format!("{archive}: it holds no {database}")
    })
}

/// The restored database must open (not too new for this jetsonmind) and
/// every model it lists must have its files.
fn check_store(staging: &Path) -> Result<(), BackupError> {
    let reading = || "reading the restored model store".to_string();
    let store = ModelStore::open(staging).doing(reading)?;
    for model in store.list().doing(reading)? {
        for (file, path) in store.files(&model.name).doing(reading)? {
            refuse_unless(path.is_file(), || {
                format!(
                    "the backup lists model {} but not its file {file}",
                    model.name
                )
            })?;
        }
    }
    Ok(())
}

/// Put `staging` where `data_dir` is: the old contents, if any, go to
/// `<data dir>.before-restore-<time>`, which is returned. Until the swap,
/// a failure leaves the data dir as it was (and removes `staging`).
fn swap_in(
    staging: Staging,
    data_dir: &Path,
    started: SystemTime,
) -> Result<Option<PathBuf>, BackupError> {
    let parent = parent_of(data_dir);
    let renaming = |from: &Path, to: &Path| {
        format!(
            "renaming {} to {} (both must be on one filesystem: if the data dir is a mount \
             point, restore into a directory inside it)",
            from.display(),
            to.display()
        )
    };
    if !data_dir.exists() {
        std::fs::rename(&staging.path, data_dir).doing(|| renaming(&staging.path, data_dir))?;
        staging.keep();
        sync_dir(parent)?;
        return Ok(None);
    }
    let aside = free_name(&beside(
        data_dir,
        &format!("before-restore-{}", compact_stamp(started)),
    ));
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    let old = match renameat_with(CWD, &staging.path, CWD, data_dir, RenameFlags::EXCHANGE) {
        // The old contents are where the staged ones were.
        Ok(()) => staging.keep(),
        // A filesystem that cannot swap: two renames; the data dir path is
        // missing for the moment between them.
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            std::fs::rename(data_dir, &aside).doing(|| renaming(data_dir, &aside))?;
            if let Err(e) = std::fs::rename(&staging.path, data_dir) {
                let _ = std::fs::rename(&aside, data_dir);
                return Err(e).doing(|| renaming(&staging.path, data_dir));
            }
            staging.keep();
            aside.clone()
        }
        Err(e) => {
            return Err(io::Error::from(e)).doing(|| renaming(&staging.path, data_dir));
        }
    };
    sync_dir(parent)?;
    if !holds_anything(&old)? {
        std::fs::remove_dir(&old).doing(|| format!("removing {}", old.display()))?;
        return Ok(None);
    }
    if old != aside {
        std::fs::rename(&old, &aside).doing(|| {
            format!(
                "the backup is restored, but the previous state is at {}: {}",
                old.display(),
                renaming(&old, &aside)
            )
        })?;
        sync_dir(parent)?;
    }
    Ok(Some(aside))
}

/// `path`, or `path-2`, `path-3`… the first that does not exist.
fn free_name(path: &Path) -> PathBuf {
    let numbered = (2..).map(|n| {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!("-{n}"));
        path.with_file_name(name)
    });
    std::iter::once(path.to_path_buf())
        .chain(numbered)
        .find(|p| !p.exists())
        .expect("an unused name")
}
