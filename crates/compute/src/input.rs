//! What a caller sends as media (audio now, images next): base64, a data
//! URI, or the path of a file in a directory the configuration allows.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InputError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error(
        "{what} is neither base64 nor a data URI ({reason}); a file path is read only inside {allowed}"
    )]
    NotBase64 {
        what: &'static str,
        reason: String,
        allowed: String,
    },
    #[error("{what} is {bytes} bytes; this server takes at most {max} ({setting})")]
    TooLarge {
        what: &'static str,
        bytes: usize,
        max: usize,
        setting: &'static str,
    },
    #[error("{what}: {path}: {reason}")]
    File {
        what: &'static str,
        path: String,
        reason: String,
    },
}

/// Where and how much a caller may send.
pub struct InputRules<'a> {
    /// Names the input in errors (`audio_data`).
    pub what: &'static str,
    pub max_bytes: usize,
    /// The setting `max_bytes` comes from, named in the error.
    pub setting: &'static str,
    pub allowed_dirs: &'a [PathBuf],
    /// The setting `allowed_dirs` comes from, named in the error.
    pub allowed_dirs_setting: &'static str,
}

/// The bytes `data` stands for.
pub fn read(data: &str, rules: &InputRules) -> Result<Vec<u8>, InputError> {
    let data = data.trim();
    if data.is_empty() {
        return Err(InputError::Empty { what: rules.what });
    }
    if looks_like_path(data) && !rules.allowed_dirs.is_empty() {
        return read_file(Path::new(data), rules);
    }
    let payload = match data.strip_prefix("data:") {
        Some(uri) => data_uri_payload(uri).map_err(|reason| not_base64(rules, reason))?,
        None => data,
    };
    // Base64 grows 4 bytes for 3: refuse a payload too large before decoding it.
    let decoded_len = payload.len() / 4 * 3;
    if decoded_len > rules.max_bytes.saturating_add(3) {
        return Err(too_large(rules, decoded_len));
    }
    let compact: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let bytes = STANDARD
        .decode(&compact)
        .or_else(|_| STANDARD_NO_PAD.decode(compact.trim_end_matches('=')))
        .map_err(|e| not_base64(rules, e.to_string()))?;
    if bytes.len() > rules.max_bytes {
        return Err(too_large(rules, bytes.len()));
    }
    if bytes.is_empty() {
        return Err(InputError::Empty { what: rules.what });
    }
    Ok(bytes)
}

fn looks_like_path(data: &str) -> bool {
    data.starts_with('/') || data.starts_with("./") || data.starts_with("file://")
}

/// `data:[<mime>][;base64],<payload>`: the payload, which must be base64.
fn data_uri_payload(uri: &str) -> Result<&str, String> {
    let (header, payload) = uri
        .split_once(',')
        .ok_or_else(|| "a data URI without a comma".to_string())?;
    match header.split(';').any(|p| p.eq_ignore_ascii_case("base64")) {
        true => Ok(payload),
        false => Err("a data URI that is not base64".into()),
    }
}

/// A file inside an allowed directory, once links are resolved: a path
/// cannot climb out with `..` or a symbolic link.
fn read_file(path: &Path, rules: &InputRules) -> Result<Vec<u8>, InputError> {
    let path = path.strip_prefix("file://").unwrap_or(path);
    let fail = |reason: String| InputError::File {
        what: rules.what,
        path: path.display().to_string(),
        reason,
    };
    let real = path.canonicalize().map_err(|e| fail(e.to_string()))?;
    let allowed = rules
        .allowed_dirs
        .iter()
        .filter_map(|dir| dir.canonicalize().ok())
        .any(|dir| real.starts_with(&dir));
    if !allowed {
        return Err(fail(format!(
            "not inside a directory this server reads ({})",
            allowed_list(rules)
        )));
    }
    let size = std::fs::metadata(&real)
        .map_err(|e| fail(e.to_string()))?
        .len();
    if size > rules.max_bytes as u64 {
        return Err(too_large(rules, size as usize));
    }
    std::fs::read(&real).map_err(|e| fail(e.to_string()))
}

fn allowed_list(rules: &InputRules) -> String {
    match rules.allowed_dirs.is_empty() {
        true => format!("no directory: {} is empty", rules.allowed_dirs_setting),
        false => rules
            .allowed_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn not_base64(rules: &InputRules, reason: String) -> InputError {
    InputError::NotBase64 {
        what: rules.what,
        reason,
        allowed: allowed_list(rules),
    }
}

fn too_large(rules: &InputRules, bytes: usize) -> InputError {
    InputError::TooLarge {
        what: rules.what,
        bytes,
        max: rules.max_bytes,
        setting: rules.setting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(dirs: &[PathBuf]) -> InputRules<'_> {
        InputRules {
            what: "audio_data",
            max_bytes: 16,
            setting: "compute.audio.max_bytes",
            allowed_dirs: dirs,
            allowed_dirs_setting: "compute.audio.allowed_dirs",
        }
    }

    #[test]
    fn base64_and_data_uris() {
        assert_eq!(read("aGVsbG8=", &rules(&[])).unwrap(), b"hello");
        assert_eq!(read("aGVsbG8", &rules(&[])).unwrap(), b"hello");
        assert_eq!(
            read("data:audio/wav;base64,aGVs\nbG8=", &rules(&[])).unwrap(),
            b"hello"
        );
        let error = read("data:audio/wav,hello", &rules(&[])).unwrap_err();
        assert!(error.to_string().contains("not base64"), "{error}");
        let error = read("%%%", &rules(&[])).unwrap_err();
        assert!(matches!(error, InputError::NotBase64 { .. }), "{error}");
    }

    #[test]
    fn too_large_is_refused_before_decoding() {
        let big = STANDARD.encode([0u8; 64]);
        let error = read(&big, &rules(&[])).unwrap_err();
        assert!(error.to_string().contains("at most 16"), "{error}");
    }

    #[test]
    fn paths_only_inside_allowed_directories() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().join("a.wav");
        std::fs::write(&inside, b"RIFF").unwrap();
        let allowed = vec![dir.path().to_path_buf()];
        assert_eq!(
            read(inside.to_str().unwrap(), &rules(&allowed)).unwrap(),
            b"RIFF"
        );
        let escape = format!("{}/../../etc/hostname", dir.path().display());
        let error = read(&escape, &rules(&allowed)).unwrap_err();
        assert!(matches!(error, InputError::File { .. }), "{error}");
        // With no directory allowed, a path is not read: it is (bad) base64.
        let error = read(inside.to_str().unwrap(), &rules(&[])).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("compute.audio.allowed_dirs is empty"),
            "{error}"
        );
    }
}
