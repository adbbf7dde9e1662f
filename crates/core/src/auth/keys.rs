//! API keys, kept hashed: `<data dir>/api_keys.json` holds each key's id,
//! name, scopes and the sha256 of the key, never the key itself. A key is
//! shown once, when it is created.
//!
//! Keys are `jm_<id>_<secret>` with 256 random bits of secret, so a plain
//! sha256 is enough at rest (a slow password hash protects guessable
//! secrets; these are not guessable). The file is read again when it
//! changes, so `jetsonmind keys create` takes effect on running servers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::scope::{Scopes, check_grantable};

pub const KEYS_FILE: &str = "api_keys.json";
const PREFIX: &str = "jm_";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredKey {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// Hex sha256 of the whole key.
    pub sha256: String,
    pub created_unix: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<StoredKey>,
}

/// A key just created: the only time its secret is known.
#[derive(Debug, Serialize)]
pub struct NewKey {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("api keys file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("no api key with id `{0}`")]
    NotFound(String),
}

/// Tells a changed file from an unchanged one without reading it.
type FileStamp = (SystemTime, u64);

fn stamp(meta: &std::fs::Metadata) -> Option<FileStamp> {
    Some((meta.modified().ok()?, meta.len()))
}

pub struct KeyStore {
    path: PathBuf,
    /// The keys as last read, and the file's modification time and size then.
    cache: Mutex<(Vec<StoredKey>, Option<FileStamp>)>,
}

impl KeyStore {
    pub fn open(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join(KEYS_FILE),
            cache: Mutex::new((Vec::new(), None)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored keys (without secrets), as the file says now.
    pub fn list(&self) -> Result<Vec<StoredKey>, KeyError> {
        self.refresh()?;
        Ok(self.cache.lock().expect("keys lock").0.clone())
    }

    /// True only when the file is known to hold no key: one that cannot be
    /// read or parsed may hold keys, and is reported by [`Self::list`].
    pub fn is_empty(&self) -> bool {
        self.list().is_ok_and(|k| k.is_empty())
    }

    /// The key's id, name and scopes when `presented` is a valid key.
    pub fn verify(&self, presented: &str) -> Option<(StoredKey, Scopes)> {
        let id = presented.strip_prefix(PREFIX)?.split('_').next()?;
        if let Err(e) = self.refresh() {
            // Every key is refused until the file is fixed: say why.
            tracing::warn!(error = %e, "cannot read the api keys");
            return None;
        }
        let digest = hex(&Sha256::digest(presented.as_bytes()));
        let cache = self.cache.lock().expect("keys lock");
        let key = cache.0.iter().find(|k| k.id == id)?;
        constant_time_eq(key.sha256.as_bytes(), digest.as_bytes())
            .then(|| (key.clone(), Scopes::new(key.scopes.clone())))
    }

    /// Create a key with `scopes`; the file keeps only its hash.
    pub fn create(&self, name: &str, scopes: &[String]) -> Result<NewKey, KeyError> {
        let mut keys = self.list()?;
        let (stored, new) = mint(name, scopes)?;
        keys.push(stored);
        self.write(keys)?;
        Ok(new)
    }

    /// Add `key`, made elsewhere (see [`supplied`]). A key already there
    /// with the same id is kept: `Ok(false)` when it is this key, an error
    /// when it is another.
    pub fn add(&self, key: StoredKey) -> Result<bool, KeyError> {
        let mut keys = self.list()?;
        if already_added(keys.iter().find(|k| k.id == key.id), &key)? {
            return Ok(false);
        }
        keys.push(key);
        self.write(keys)?;
        Ok(true)
    }

    /// Make the file hold exactly `keys` (a cluster's keys, mirrored here).
    pub fn replace(&self, keys: Vec<StoredKey>) -> Result<(), KeyError> {
        self.write(keys)
    }

    pub fn revoke(&self, id: &str) -> Result<StoredKey, KeyError> {
        let mut keys = self.list()?;
        let at = keys
            .iter()
            .position(|k| k.id == id)
            .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
        let revoked = keys.remove(at);
        self.write(keys)?;
        Ok(revoked)
    }

    fn file_error(&self, reason: impl ToString) -> KeyError {
        KeyError::File {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// Read the file again if it changed since the last read.
    fn refresh(&self) -> Result<(), KeyError> {
        let modified = match std::fs::metadata(&self.path) {
            Ok(meta) => stamp(&meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                *self.cache.lock().expect("keys lock") = (Vec::new(), None);
                return Ok(());
            }
            Err(e) => return Err(self.file_error(e)),
        };
        if modified.is_some() && self.cache.lock().expect("keys lock").1 == modified {
            return Ok(());
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| self.file_error(e))?;
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| self.file_error(e))?;
        *self.cache.lock().expect("keys lock") = (file.keys, modified);
        Ok(())
    }

    /// Atomically: a private temporary file, synced, renamed over the old.
    fn write(&self, keys: Vec<StoredKey>) -> Result<(), KeyError> {
        use std::io::Write;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| self.file_error(e))?;
        let temp = self.path.with_extension("json.tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temp).map_err(|e| self.file_error(e))?;
        let text = serde_json::to_string_pretty(&KeyFile { keys: keys.clone() })
            .map_err(|e| self.file_error(e))?;
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| self.file_error(e))?;
        std::fs::rename(&temp, &self.path).map_err(|e| self.file_error(e))?;
        let modified = std::fs::metadata(&self.path).ok().and_then(|m| stamp(&m));
        *self.cache.lock().expect("keys lock") = (keys, modified);
        Ok(())
    }
}

/// A new key with `scopes`: what to store (its hash) and what to show once
/// (the key itself).
pub fn mint(name: &str, scopes: &[String]) -> Result<(StoredKey, NewKey), KeyError> {
    let id = random_hex(4)?;
    let key = format!("{PREFIX}{id}_{}", random_hex(32)?);
    let stored = stored_key(name, scopes, &id, &key)?;
    let new = NewKey {
        id,
        name: name.to_string(),
        scopes: scopes.to_vec(),
        key,
    };
    Ok((stored, new))
}

/// What to store for `key`, made elsewhere (a deployment's secret, so that
/// the gateway and its backends can be given it before they start).
///
/// It must read `jm_<id>_<secret>`: an id of 1 to 16 lowercase letters and
/// digits, and a secret of at least 32 letters and digits, as random as the
/// ones `mint` makes (`jm_$(openssl rand -hex 4)_$(openssl rand -hex 32)`).
pub fn supplied(name: &str, scopes: &[String], key: &str) -> Result<StoredKey, KeyError> {
    let shape = "a key reads jm_<id>_<secret>: an id of 1 to 16 lowercase letters and digits, \
                 and a secret of at least 32 letters and digits";
    let (id, secret) = key
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .ok_or_else(|| KeyError::Invalid(shape.into()))?;
    let id_ok = (1..=16).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let secret_ok = secret.len() >= 32 && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    if !(id_ok && secret_ok) {
        return Err(KeyError::Invalid(shape.into()));
    }
    stored_key(name, scopes, id, key)
}

/// Whether `key` is `there` already, the key stored under its id if any:
/// adding a supplied key twice, as a deployment's start-up step does on
/// every start, is no error; a different key under the same id is.
pub fn already_added(there: Option<&StoredKey>, key: &StoredKey) -> Result<bool, KeyError> {
    match there {
        None => Ok(false),
        Some(there) if constant_time_eq(there.sha256.as_bytes(), key.sha256.as_bytes()) => Ok(true),
        Some(_) => Err(KeyError::Invalid(format!(
            "another key has the id `{}`: revoke it first",
            key.id
        ))),
    }
}

fn stored_key(name: &str, scopes: &[String], id: &str, key: &str) -> Result<StoredKey, KeyError> {
    if scopes.is_empty() {
        return Err(KeyError::Invalid("a key needs at least one scope".into()));
    }
    for scope in scopes {
        check_grantable(scope).map_err(KeyError::Invalid)?;
    }
    Ok(StoredKey {
        id: id.to_string(),
        name: name.to_string(),
        scopes: scopes.to_vec(),
        sha256: hex(&Sha256::digest(key.as_bytes())),
        created_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

/// `bytes` random bytes from the system, as hex.
pub fn random_hex(bytes: usize) -> Result<String, KeyError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer)
        .map_err(|e| KeyError::Invalid(format!("no randomness from the system: {e}")))?;
    Ok(hex(&buffer))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_supplied_key_is_checked_added_once_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path());
        let scopes = ["admin".to_string()];
        let key = format!("jm_gw01_{}", "ab12".repeat(8));
        for bad in [
            "",
            "jm_",
            "jm_gw01",
            "secret",
            "jm_GW_0123456789abcdef0123456789abcdef",
        ] {
            let refused = supplied("gateway", &scopes, bad).unwrap_err();
            assert!(
                refused.to_string().contains("jm_<id>_<secret>"),
                "{bad}: {refused}"
            );
        }
        let short = format!("jm_gw01_{}", "ab12".repeat(7));
        assert!(supplied("gateway", &scopes, &short).is_err());
        assert!(supplied("gateway", &[], &key).is_err());

        assert!(
            store
                .add(supplied("gateway", &scopes, &key).unwrap())
                .unwrap()
        );
        assert!(
            !store
                .add(supplied("gateway", &scopes, &key).unwrap())
                .unwrap()
        );
        assert_eq!(store.list().unwrap().len(), 1, "added once");
        let other = format!("jm_gw01_{}", "cd34".repeat(8));
        let clash = store.add(supplied("gateway", &scopes, &other).unwrap());
        assert!(clash.unwrap_err().to_string().contains("gw01"));

        let (stored, granted) = store.verify(&key).unwrap();
        assert_eq!(stored.name, "gateway");
        assert!(granted.grants("admin"));
        assert!(store.verify(&other).is_none());
        let file = std::fs::read_to_string(store.path()).unwrap();
        assert!(!file.contains(&key[8..]), "never stored in clear: {file}");
    }

    #[test]
    fn keys_verify_by_hash_and_are_never_stored_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path());
        assert!(store.is_empty());
        let made = store
            .create("ci", &["tools:*".to_string(), "metrics".to_string()])
            .unwrap();
        assert!(made.key.starts_with(&format!("jm_{}_", made.id)));
        let file = std::fs::read_to_string(store.path()).unwrap();
        assert!(!file.contains(&made.key[made.key.len() - 16..]), "{file}");

        let (stored, scopes) = store.verify(&made.key).unwrap();
        assert_eq!(stored.name, "ci");
        assert!(scopes.grants("tools:text_generate"));
        let mut wrong = made.key.clone();
        wrong.pop();
        wrong.push('x');
        assert!(store.verify(&wrong).is_none());
        assert!(store.verify("jm_nope_secret").is_none());
        assert!(store.verify("not-a-key").is_none());

        // Another process (the CLI) sees the same file.
        let other = KeyStore::open(dir.path());
        assert!(other.verify(&made.key).is_some());
        other.revoke(&made.id).unwrap();
        assert!(
            store.verify(&made.key).is_none(),
            "a revoke elsewhere is seen"
        );
        assert!(matches!(other.revoke(&made.id), Err(KeyError::NotFound(_))));
    }

    #[test]
    fn a_corrupt_key_file_is_reported_not_taken_for_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEYS_FILE), "{\"keys\": [").unwrap();
        let store = KeyStore::open(dir.path());
        assert!(!store.is_empty(), "it may hold keys");
        let err = store.list().unwrap_err().to_string();
        assert!(err.contains(KEYS_FILE) && err.contains("EOF"), "{err}");
    }

    #[test]
    fn bad_scopes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path());
        assert!(store.create("x", &[]).is_err());
        let err = store.create("x", &["tool:everything".into()]).unwrap_err();
        assert!(err.to_string().contains("tool:everything"), "{err}");
    }
}
