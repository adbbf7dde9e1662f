//! A node's whole state in one archive, and back: what `jetsonmind backup`
//! and `jetsonmind restore` run.
//!
//! The archive is a plain tar of files named by their place in the data dir:
//!
//! ```text
//! jetsonmind.db               the database, copied consistently while servers run
//! settings.toml               run-time settings (when any were saved)
//! cluster_settings.json       the cluster's settings as this node last had them (a cluster node)
//! api_keys.json               API keys, hashed (mode 0600 in the archive and restored)
//! models/names                the store's names log
//! models/blobs/sha256-<hex>   every model file the copied database refers to
//! config.toml                 the config file given to `backup`, if any
//! manifest.json               last: version, time, node, each file's path, size, sha256
//! ```
//!
//! A crate of its own rather than part of the data crate: it gathers what
//! belongs to several crates (the store and database of `data`, the settings
//! and keys of `core`, the config file of the command line). The data crate
//! does its own part: a consistent copy of the database and the blobs that
//! copy refers to ([`ModelStore::snapshot`]).
//!
//! Not compressed: model files (GGUF, quantized weights) are nearly
//! incompressible, so gzip or zstd would cost minutes of a Jetson's CPU to
//! save a percent or two; the rest is small.
//!
//! [`ModelStore::snapshot`]: jetsonmind_store::ModelStore::snapshot

mod create;
mod error;
mod restore;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use indicatif::HumanBytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use create::{Source, create};
pub use error::BackupError;
use error::{Doing, refuse_unless};
pub use restore::{Restored, restore};

/// The manifest's name in the archive.
const MANIFEST: &str = "manifest.json";
/// What a manifest says it is.
const FORMAT: &str = "jetsonmind-backup";
/// The archive layout this build writes; it restores this one and older.
const VERSION: u32 = 1;
/// The config file's name in the archive (the manifest keeps where it was),
/// and in the data dir once restored.
pub const CONFIG_ENTRY: &str = "config.toml";
/// Where the store keeps a model file: `models/blobs/sha256-<hex>`.
const BLOB_PREFIX: &str = "models/blobs/sha256-";
/// How much is read or written at a time: model files are streamed.
const BUFFER: usize = 1 << 20;

/// `jetsonmind-20250601T120000Z.tar`: a backup's default file name.
pub fn archive_name(time: SystemTime) -> String {
    format!("jetsonmind-{}.tar", compact_stamp(time))
}

/// What a backup holds, written last into it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Always `jetsonmind-backup`.
    pub format: String,
    /// The archive layout.
    pub version: u32,
    /// The jetsonmind that wrote it.
    pub jetsonmind_version: String,
    /// When the backup started, RFC 3339 in UTC.
    pub created: String,
    /// The node it was taken on.
    pub node: String,
    /// The data dir it was taken of.
    pub data_dir: PathBuf,
    /// The config file backed up as `config.toml`, where it was.
    pub config_file: Option<PathBuf>,
    pub files: Vec<FileRecord>,
}

/// One file of a backup, as its manifest lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileRecord {
    /// Its path in the archive, which is its place in the data dir.
    pub path: String,
    pub size_bytes: u64,
    /// Of its content, hex: checked again when it is restored.
    pub sha256: String,
}

/// The parts of a node's state, as `backup` reports their sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Part {
    Database,
    Settings,
    ApiKeys,
    ModelStore,
    ConfigFile,
}

impl Part {
    const ALL: [Part; 5] = [
        Part::Database,
        Part::Settings,
        Part::ApiKeys,
        Part::ModelStore,
        Part::ConfigFile,
    ];

    /// The part a path in the archive belongs to; `None` for anything a
    /// backup never holds (so never a path outside the data dir).
    fn of(path: &str) -> Option<Part> {
        use jetsonmind_core::auth::keys::KEYS_FILE;
        use jetsonmind_core::config::{CLUSTER_SETTINGS_FILE, SETTINGS_FILE};
        use jetsonmind_store::db::DB_FILE;
        match path {
            DB_FILE => Some(Part::Database),
            SETTINGS_FILE | CLUSTER_SETTINGS_FILE => Some(Part::Settings),
            KEYS_FILE => Some(Part::ApiKeys),
            CONFIG_ENTRY => Some(Part::ConfigFile),
            _ if path == names_log_entry() || blob_digest(path).is_some() => Some(Part::ModelStore),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Part::Database => "database",
            Part::Settings => "settings",
            Part::ApiKeys => "api keys",
            Part::ModelStore => "model store",
            Part::ConfigFile => "config file",
        }
    }

    /// The permissions a file of this part gets: API keys are private
    /// whatever the source file had.
    fn mode(self, mode: u32) -> u32 {
        match self {
            Part::ApiKeys => mode & 0o600,
            _ => mode & 0o777,
        }
    }
}

fn names_log_entry() -> String {
    format!("models/{}", jetsonmind_store::NAMES_LOG)
}

/// The digest a blob's path names, when `path` is a blob's.
fn blob_digest(path: &str) -> Option<&str> {
    path.strip_prefix(BLOB_PREFIX).filter(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The sizes of each part, one line each, and the total.
pub fn size_report(files: &[FileRecord]) -> String {
    let mut lines = Vec::new();
    for part in Part::ALL {
        let (count, bytes) = files
            .iter()
            .filter(|f| Part::of(&f.path) == Some(part))
            .fold((0, 0), |(n, sum), f| (n + 1, sum + f.size_bytes));
        let size = match count {
            0 => "-".to_string(),
            _ => HumanBytes(bytes).to_string(),
        };
        lines.push(format!("  {:<12} {size}", part.label()));
    }
    let total = files.iter().map(|f| f.size_bytes).sum();
    lines.push(format!("  {:<12} {}", "total", HumanBytes(total)));
    lines.join("\n")
}

/// A reader that hashes and counts what passes through it, and keeps what
/// went wrong reading (to tell the source's fault from the destination's).
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    read_error: Option<io::Error>,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            read_error: None,
        }
    }

    fn digest(self) -> String {
        format!("{:x}", self.hasher.finalize())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.read_error = Some(io::Error::new(e.kind(), e.to_string()));
                Err(e)
            }
        }
    }
}

/// Fail early, before writing gigabytes, when `dir`'s filesystem has less
/// than `needed` bytes free for an unprivileged writer.
fn ensure_room(dir: &Path, needed: u64) -> Result<(), BackupError> {
    let stats = rustix::fs::statvfs(dir)
        .map_err(io::Error::from)
        .doing(|| format!("checking the free space in {}", dir.display()))?;
    let available = stats.f_bavail.saturating_mul(stats.f_frsize);
    check_room(dir, needed, available)
}

fn check_room(dir: &Path, needed: u64, available: u64) -> Result<(), BackupError> {
    refuse_unless(available >= needed, || {
        format!(
            "not enough space in {}: {} needed, {} free",
            dir.display(),
            HumanBytes(needed),
            HumanBytes(available)
        )
    })
}

/// Make renames and new files in `dir` durable (a power cut after a
/// backup or restore said it was done must not undo it).
fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .doing(|| format!("syncing {}", dir.display()))
}

/// `<path>.<suffix>`, in the same directory (same filesystem, so renames
/// between them work).
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

/// The directory a path is in (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `20250601T120000Z`: for file names.
fn compact_stamp(time: SystemTime) -> String {
    let (date, clock) = utc(time);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        date.0, date.1, date.2, clock.0, clock.1, clock.2
    )
}

/// `2025-06-01T12:00:00Z`: RFC 3339, for people and the manifest.
fn rfc3339(time: SystemTime) -> String {
    let (date, clock) = utc(time);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        date.0, date.1, date.2, clock.0, clock.1, clock.2
    )
}

/// (year, month, day) and (hour, minute, second) in UTC.
fn utc(time: SystemTime) -> ((i64, u32, u32), (u32, u32, u32)) {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
    (
        civil_from_days(days),
        (rest / 3600, rest % 3600 / 60, rest % 60),
    )
}

/// The Gregorian date `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests;
