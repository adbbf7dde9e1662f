use std::os::unix::fs::PermissionsExt;

use jetsonmind_core::auth::KeyStore;
use jetsonmind_store::{ImportOptions, ModelStore};

use super::*;

/// A model file's bytes: larger than the copy buffer, with a marker to find
/// them in an archive.
fn weights() -> Vec<u8> {
    let mut bytes = b"MARKER-weights-of-the-test-model".to_vec();
    bytes.resize(3 << 20, 7);
    bytes
}

/// A node's data dir under `root`: a model, an API key, a setting.
fn node(root: &Path) -> PathBuf {
    let data = root.join("data");
    let model = root.join("tiny.safetensors");
    std::fs::write(&model, weights()).unwrap();
    let store = ModelStore::open(&data).unwrap();
    store
        .import(&model, &ImportOptions::default(), |_, _| {})
        .unwrap();
    KeyStore::open(&data)
        .create("ops", &["admin".to_string()])
        .unwrap();
    std::fs::write(data.join("settings.toml"), "[cache]\nttl_secs = 77\n").unwrap();
    let cluster = r#"{"revision": 4, "values": {"cache": {"max_bytes": 4096}}}"#;
    std::fs::write(data.join("cluster_settings.json"), cluster).unwrap();
    data
}

fn back_up(
    data: &Path,
    output: &Path,
    config_file: Option<&Path>,
) -> Result<Manifest, BackupError> {
    let source = Source {
        data_dir: data,
        config_file,
        node: "test-node".into(),
    };
    create(&source, output)
}

/// What a node holds, as the commands show it.
fn state(data: &Path) -> Vec<String> {
    let store = ModelStore::open(data).unwrap();
    let mut seen: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|m| format!("model {} {} {}", m.name, m.sha256, m.size_bytes))
        .collect();
    for model in store.list().unwrap() {
        assert!(
            store.verify(&model.name).unwrap().ok,
            "{} verifies",
            model.name
        );
    }
    let keys = KeyStore::open(data).list().unwrap();
    seen.extend(keys.iter().map(|k| format!("key {} {}", k.id, k.sha256)));
    seen.push(std::fs::read_to_string(data.join("settings.toml")).unwrap_or_default());
    seen
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A copy of `archive` at `out` with each entry passed through `edit`
/// (`None` leaves it out).
fn rewrite(archive: &Path, out: &Path, mut edit: impl FnMut(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut reader = tar::Archive::new(std::fs::File::open(archive).unwrap());
    let mut writer = tar::Builder::new(std::fs::File::create(out).unwrap());
    for entry in reader.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if let Some(bytes) = edit(&path, bytes) {
            let mut header = entry.header().clone();
            header.set_size(bytes.len() as u64);
            writer
                .append_data(&mut header, &path, bytes.as_slice())
                .unwrap();
        }
    }
    writer.finish().unwrap();
}

#[test]
fn a_backup_restores_into_a_fresh_dir_all_of_it_keys_private() {
    let root = tempfile::tempdir().unwrap();
    let data = node(root.path());
    let config = root.path().join("node.toml");
    std::fs::write(&config, "[compute]\nkeep_alive_secs = 42\n").unwrap();
    let archive = root.path().join("out/node.tar");

    let manifest = back_up(&data, &archive, Some(&config)).unwrap();

    assert_eq!(
        listing(&root.path().join("out")),
        ["node.tar"],
        "no partial files left"
    );
    assert_eq!(mode(&archive), 0o600, "the archive holds the keys' hashes");
    assert_eq!(manifest.node, "test-node");
    assert_eq!(manifest.config_file.as_deref(), Some(config.as_path()));
    let paths: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths[..6],
        [
            "jetsonmind.db",
            "settings.toml",
            "cluster_settings.json",
            "api_keys.json",
            "config.toml",
            "models/names"
        ]
    );
    assert_eq!(paths.len(), 7, "{paths:?}");
    let blob = &manifest.files[6];
    assert_eq!(blob.sha256, format!("{:x}", Sha256::digest(weights())));
    assert_eq!(blob.path, format!("{BLOB_PREFIX}{}", blob.sha256));

    let target = root.path().join("restored/data");
    let restored = restore(&target, &archive, false).unwrap();
    assert_eq!(restored.manifest, manifest);
    assert_eq!(restored.aside, None);
    assert_eq!(state(&target), state(&data));
    for file in [
        "api_keys.json",
        "settings.toml",
        "cluster_settings.json",
        "models/names",
    ] {
        assert_eq!(
            std::fs::read(target.join(file)).unwrap(),
            std::fs::read(data.join(file)).unwrap(),
            "{file}"
        );
    }
    assert_eq!(
        std::fs::read(target.join("config.toml")).unwrap(),
        std::fs::read(&config).unwrap()
    );
    assert_eq!(mode(&target.join("api_keys.json")), 0o600);
    assert_eq!(
        listing(&root.path().join("restored")),
        ["data"],
        "no staging left"
    );
}

#[test]
fn a_data_dir_in_use_needs_force_and_is_then_kept_aside() {
    let root = tempfile::tempdir().unwrap();
    let data = node(root.path());
    let archive = root.path().join("node.tar");
    back_up(&data, &archive, None).unwrap();
    let before = state(&data);
    KeyStore::open(&data)
        .create("later", &["metrics".to_string()])
        .unwrap();
    std::fs::write(data.join("notes.txt"), "mine").unwrap();
    let changed = state(&data);

    let refused = restore(&data, &archive, false).unwrap_err().to_string();
    assert!(
        refused.contains("not empty") && refused.contains("--force"),
        "{refused}"
    );
    assert_eq!(state(&data), changed);

    let restored = restore(&data, &archive, true).unwrap();
    let aside = restored.aside.expect("the old state is kept");
    assert!(
        aside.to_string_lossy().contains("data.before-restore-"),
        "{aside:?}"
    );
    assert_eq!(state(&data), before);
    assert!(!data.join("notes.txt").exists());
    assert_eq!(state(&aside), changed, "nothing of the old state is lost");
    assert_eq!(
        std::fs::read_to_string(aside.join("notes.txt")).unwrap(),
        "mine"
    );
}

/// Restoring `archive` over a node's data dir fails saying `expected`, and
/// leaves that data dir exactly as it was, with nothing beside it.
fn refused_untouched(archive: &Path, expected: &str) {
    let root = tempfile::tempdir().unwrap();
    let data = node(root.path());
    let before = state(&data);
    let error = restore(&data, archive, true).unwrap_err().to_string();
    assert!(error.contains(expected), "{error}");
    assert_eq!(state(&data), before);
    assert_eq!(
        listing(root.path()),
        ["data", "tiny.safetensors"],
        "no staging left"
    );
}

#[test]
fn a_damaged_file_is_named_and_nothing_is_touched() {
    let root = tempfile::tempdir().unwrap();
    let data = node(root.path());
    let archive = root.path().join("node.tar");
    let manifest = back_up(&data, &archive, None).unwrap();
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = bytes
        .windows(6)
        .position(|w| w == b"MARKER")
        .expect("the model's bytes");
    bytes[at + 100_000] ^= 0xff;
    std::fs::write(&archive, bytes).unwrap();
    let blob = &manifest.files.last().unwrap().path;
    refused_untouched(&archive, &format!("{blob} does not match the manifest"));
}

#[test]
fn a_truncated_archive_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let data = node(root.path());
    let archive = root.path().join("node.tar");
    back_up(&data, &archive, None).unwrap();
    let whole = std::fs::read(&archive).unwrap();
    // Mid-file, and exactly at the manifest's header (a clean cut between entries).
    let manifest_header = whole
        .windows(13)
        .position(|w| w == b"manifest.json")
        .unwrap();
    for (cut, expected) in [
        (whole.len() / 2, "truncated"),
        (manifest_header, "no manifest.json"),
        (100, "truncated or corrupt"),
    ] {
        let short = root.path().join(format!("short-{cut}.tar"));
        std::fs::write(&short, &whole[..cut]).unwrap();
        refused_untouched(&short, expected);
    }
    let text = root.path().join("text.tar");
    std::fs::write(&text, "root:x:0:0:root:/root:/bin/bash\n".repeat(100)).unwrap();
    refused_untouched(&text, "the archive is truncated or corrupt");
}

#[test]
fn a_file_missing_from_the_archive_or_not_in_its_manifest_is_named() {
    let root = tempfile::tempdir().unwrap();
    let data = node(root.path());
    let archive = root.path().join("node.tar");
    back_up(&data, &archive, None).unwrap();

    let without = root.path().join("without.tar");
    rewrite(&archive, &without, |path, bytes| {
        (path != "settings.toml").then_some(bytes)
    });
    refused_untouched(
        &without,
        "settings.toml is in the manifest but missing from the archive",
    );

    let unlisted = root.path().join("unlisted.tar");
    rewrite(&archive, &unlisted, |path, bytes| match path {
        MANIFEST => {
            let mut manifest: Manifest = serde_json::from_slice(&bytes).unwrap();
            manifest.files.retain(|f| f.path != "api_keys.json");
            Some(serde_json::to_vec(&manifest).unwrap())
        }
        _ => Some(bytes),
    });
    refused_untouched(
        &unlisted,
        "api_keys.json is in the archive but not in its manifest",
    );

    let newer = root.path().join("newer.tar");
    rewrite(&archive, &newer, |path, bytes| match path {
        MANIFEST => {
            let mut manifest: Manifest = serde_json::from_slice(&bytes).unwrap();
            manifest.version = VERSION + 1;
            Some(serde_json::to_vec(&manifest).unwrap())
        }
        _ => Some(bytes),
    });
    refused_untouched(&newer, "written by a newer jetsonmind");
}

#[test]
fn an_entry_outside_the_data_dir_is_never_written() {
    let root = tempfile::tempdir().unwrap();
    let archive = root.path().join("evil.tar");
    let mut writer = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    let mut header = tar::Header::new_old();
    // Written raw: the tar crate itself refuses to build such a path.
    header.as_old_mut().name[..9].copy_from_slice(b"../escape");
    header.set_size(4);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    writer.append(&header, &b"evil"[..]).unwrap();
    writer.finish().unwrap();
    refused_untouched(&archive, "`../escape` is nothing a JetsonMind backup holds");
    assert!(!root.path().join("escape").exists());
}

#[test]
fn an_output_that_cannot_be_written_fails_and_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let data = node(root.path());
    let file = root.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let error = back_up(&data, &file.join("node.tar"), None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("a-file is not a directory"), "{error}");

    let taken = root.path().join("taken.tar");
    std::fs::write(&taken, "keep").unwrap();
    let error = back_up(&data, &taken, None).unwrap_err().to_string();
    assert!(error.contains("exists"), "{error}");
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "keep");
    assert_eq!(
        listing(root.path()),
        ["a-file", "data", "taken.tar", "tiny.safetensors"]
    );

    let error = back_up(
        &root.path().join("nowhere"),
        &root.path().join("x.tar"),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("no data dir"), "{error}");
}

#[test]
fn too_little_room_is_said_before_writing() {
    let error = check_room(Path::new("/backups"), 5 << 30, 1 << 30)
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "not enough space in /backups: 5.00 GiB needed, 1.00 GiB free"
    );
    assert!(check_room(Path::new("/backups"), 1 << 30, 1 << 30).is_ok());
}

#[test]
fn times_are_utc_dates() {
    let at = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(at(1_000_000_000)), "2001-09-09T01:46:40Z");
    // A leap day, and the last second of a year.
    assert_eq!(rfc3339(at(1_709_210_096)), "2024-02-29T12:34:56Z");
    assert_eq!(compact_stamp(at(1_735_689_599)), "20241231T235959Z");
}
