//! `jetsonmind restore` killed with SIGKILL at any moment leaves the data
//! dir holding the old state whole or the new state whole.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_jetsonmind");

fn jetsonmind(data: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("run jetsonmind");
    assert!(
        out.status.success(),
        "jetsonmind {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// What the data dir holds, as the commands show it; its model verifies.
fn state(data: &Path) -> String {
    jetsonmind(data, &["models", "verify", "big.safetensors"]);
    jetsonmind(data, &["models", "list"]) + &jetsonmind(data, &["keys", "list"])
}

#[test]
fn a_restore_killed_at_any_moment_leaves_the_old_state_or_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Large enough that a restore takes a while; sparse, so cheap to make.
    let model = dir.path().join("big.safetensors");
    std::fs::File::create(&model)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    jetsonmind(&data, &["models", "import", model.to_str().unwrap()]);
    jetsonmind(
        &data,
        &["keys", "create", "--name", "first", "--scope", "admin"],
    );
    let archive = dir.path().join("node.tar");
    jetsonmind(&data, &["backup", "--output", archive.to_str().unwrap()]);
    let new = state(&data);

    // How long one restore takes here, to spread the kills over it.
    let started = Instant::now();
    jetsonmind(
        &dir.path().join("probe"),
        &["restore", archive.to_str().unwrap()],
    );
    let whole = started.elapsed();

    let mut old = String::new();
    for eighth in 0..8 {
        if old.is_empty() || state(&data) == new {
            jetsonmind(
                &data,
                &["keys", "create", "--name", "later", "--scope", "metrics"],
            );
            old = state(&data);
        }
        let mut restore = Command::new(BIN)
            .arg("--data-dir")
            .arg(&data)
            .args(["restore", "--force", archive.to_str().unwrap()])
            .spawn()
            .unwrap();
        std::thread::sleep(whole * eighth / 8 + Duration::from_millis(2));
        restore.kill().unwrap();
        restore.wait().unwrap();
        let now = state(&data);
        assert!(
            now == old || now == new,
            "killed at {eighth}/8 of a restore, the data dir holds neither state:\n{now}"
        );
    }
    jetsonmind(&data, &["restore", "--force", archive.to_str().unwrap()]);
    assert_eq!(state(&data), new);
}
