//! The tegrastats fallback on fake Jetson trees, with a fake `tegrastats`
//! script that prints real sample lines.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jetsonmind_telemetry::{
    JetsonMetrics, LinuxReader, MetricSource, TegrastatsMode, TelemetrySettings,
};
use jetsonmind_testkit::fake_root::{containerised_orin_nano, write};

const SAMPLES: &str = include_str!("fixtures/tegrastats_samples.txt");
/// Upper bound for the background program to deliver; the checks poll.
const PATIENCE: Duration = Duration::from_secs(10);

/// The raw line of the sample `id`.
fn sample_line(id: &str) -> &'static str {
    let mut lines = SAMPLES.lines();
    lines
        .find(|l| l.strip_prefix("# id: ").is_some_and(|i| i.trim() == id))
        .unwrap_or_else(|| panic!("no sample {id}"));
    lines
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap()
}

/// An executable shell script `name` in `dir` with `body`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A fake tegrastats that notes it ran, then prints `line` every 0.2 s.
fn fake_tegrastats(dir: &Path, line: &str) -> (PathBuf, PathBuf) {
    let marker = dir.join("started");
    let body = format!(
        "touch '{}'\nwhile true; do echo '{line}'; sleep 0.2; done",
        marker.display()
    );
    (script(dir, "tegrastats", &body), marker)
}

fn settings(mode: TegrastatsMode, command: &Path) -> TelemetrySettings {
    TelemetrySettings {
        tegrastats: mode,
        tegrastats_command: vec![command.display().to_string()],
        ..TelemetrySettings::default()
    }
}

/// Snapshots until `done` holds for the Jetson part, or panics after `PATIENCE`.
async fn poll_jetson(reader: &LinuxReader, done: impl Fn(&JetsonMetrics) -> bool) -> JetsonMetrics {
    let start = Instant::now();
    loop {
        let jetson = reader.snapshot().await.jetson.expect("a Jetson");
        if done(&jetson) {
            return jetson;
        }
        assert!(start.elapsed() < PATIENCE, "gave up waiting: {jetson:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn fallback_fills_gpu_load_and_rails_from_tegrastats() {
    let tree = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    containerised_orin_nano(tree.path());
    // GR3D_FREQ 33% … VDD_IN 9761mW/9761mW/9761mW VDD_CPU_GPU_CV 4238mW/… VDD_SOC 1825mW/…
    let (command, _) = fake_tegrastats(bin.path(), sample_line("jetson-orin-nano-8gb-r39"));
    let reader = LinuxReader::with_settings(tree.path(), settings(TegrastatsMode::Auto, &command));

    let m = poll_jetson(&reader, |j| j.gpu.as_ref().unwrap().load_percent.is_some()).await;

    let gpu = m.gpu.as_ref().unwrap();
    assert_eq!(gpu.load_percent, Some(33.0));
    // The line has no GPU clock; sysfs had one and keeps it.
    assert_eq!(gpu.freq_mhz, Some(306.0));
    let rails: Vec<_> = m
        .rails
        .iter()
        .map(|r| (r.name.as_str(), r.power_mw))
        .collect();
    assert_eq!(
        rails,
        [
            ("VDD_IN", Some(9761.0)),
            ("VDD_CPU_GPU_CV", Some(4238.0)),
            ("VDD_SOC", Some(1825.0)),
        ]
    );
    assert!(
        m.rails
            .iter()
            .all(|r| r.voltage_mv.is_none() && r.current_ma.is_none())
    );
    assert_eq!(m.sources.gpu_load, Some(MetricSource::Tegrastats));
    assert_eq!(m.sources.gpu_freq, Some(MetricSource::Sysfs));
    assert_eq!(m.sources.rails, Some(MetricSource::Tegrastats));
    let status = m.tegrastats.as_ref().unwrap();
    assert!(status.running);
    assert_eq!(status.starts, 1);
    assert!(status.line_age_ms.unwrap() < PATIENCE.as_millis() as u64);
    assert_eq!(status.command, [command.display().to_string()]);

    let json = serde_json::to_value(&m).unwrap();
    assert_eq!(json["sources"]["gpu_load"], "tegrastats");
    assert_eq!(json["tegrastats"]["running"], true);
}

#[tokio::test]
async fn always_mode_prefers_tegrastats_over_sysfs() {
    let tree = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    containerised_orin_nano(tree.path());
    write(
        tree.path(),
        "sys/class/devfreq/17000000.ga10b/device/load",
        "473\n",
    );
    // GR3D_FREQ 12%@[1300,1300] … VDD_GPU_SOC 5139mW/5139mW/5139mW
    let (command, _) = fake_tegrastats(bin.path(), sample_line("jetson-agx-orin-64gb-jp72"));
    let reader =
        LinuxReader::with_settings(tree.path(), settings(TegrastatsMode::Always, &command));

    let m = poll_jetson(&reader, |j| {
        j.sources.gpu_load == Some(MetricSource::Tegrastats)
    })
    .await;

    let gpu = m.gpu.as_ref().unwrap();
    assert_eq!((gpu.load_percent, gpu.freq_mhz), (Some(12.0), Some(1300.0)));
    assert_eq!(m.rails[0].name, "VDD_GPU_SOC");
    assert_eq!(m.rails[0].power_mw, Some(5139.0));
}

#[tokio::test]
async fn missing_program_is_reported_not_fatal() {
    let tree = tempfile::tempdir().unwrap();
    containerised_orin_nano(tree.path());
    let missing = tree.path().join("no-such-tegrastats");
    let reader = LinuxReader::with_settings(tree.path(), settings(TegrastatsMode::Auto, &missing));

    let m = poll_jetson(&reader, |j| {
        j.tegrastats
            .as_ref()
            .is_some_and(|s| s.last_error.is_some())
    })
    .await;

    let status = m.tegrastats.unwrap();
    let error = status.last_error.unwrap();
    assert!(error.contains("no-such-tegrastats"), "{error}");
    assert!(!status.running && status.line_age_ms.is_none());
    assert_eq!(m.model, "NVIDIA Jetson Orin Nano Developer Kit");
    assert_eq!(m.gpu.unwrap().load_percent, None);
    assert!(m.rails.is_empty());
    // Within the retry interval it is not tried again.
    let again = reader.snapshot().await.jetson.unwrap().tegrastats.unwrap();
    assert_eq!(again.starts, 1);
}

#[tokio::test]
async fn an_exiting_program_is_reported_and_not_restarted_at_once() {
    let tree = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    containerised_orin_nano(tree.path());
    let line = sample_line("jetson-orin-nano-8gb-r39");
    let command = script(
        bin.path(),
        "tegrastats",
        &format!("echo '{line}'\necho 'tegrastats: permission denied' >&2\nexit 3"),
    );
    let reader = LinuxReader::with_settings(tree.path(), settings(TegrastatsMode::Auto, &command));

    let m = poll_jetson(&reader, |j| {
        j.tegrastats
            .as_ref()
            .is_some_and(|s| !s.running && s.last_error.is_some())
    })
    .await;

    let status = m.tegrastats.unwrap();
    let error = status.last_error.unwrap();
    assert!(error.contains("exit status: 3"), "{error}");
    assert!(error.contains("permission denied"), "{error}");
    // A stopped program's line is not presented as current.
    assert_eq!(status.line_age_ms, None);
    assert_eq!(m.sources.gpu_load, None);
    for _ in 0..5 {
        let status = reader.snapshot().await.jetson.unwrap().tegrastats.unwrap();
        assert_eq!(status.starts, 1);
    }
}

#[tokio::test]
async fn a_pc_never_starts_the_program() {
    let tree = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    write(tree.path(), "proc/sys/kernel/hostname", "desktop\n");
    let (command, marker) = fake_tegrastats(bin.path(), sample_line("jetson-orin-nano-8gb-r39"));
    let reader =
        LinuxReader::with_settings(tree.path(), settings(TegrastatsMode::Always, &command));
    for _ in 0..3 {
        assert!(reader.snapshot().await.jetson.is_none());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!marker.exists());
}

#[tokio::test]
async fn full_sysfs_or_never_mode_does_not_start_it() {
    let bin = tempfile::tempdir().unwrap();
    let (command, marker) = fake_tegrastats(bin.path(), sample_line("jetson-orin-nano-8gb-r39"));

    let full = tempfile::tempdir().unwrap();
    containerised_orin_nano(full.path());
    write(
        full.path(),
        "sys/class/devfreq/17000000.ga10b/device/load",
        "473\n",
    );
    let ina = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1";
    write(full.path(), &format!("{ina}/in1_label"), "VDD_IN\n");
    write(full.path(), &format!("{ina}/in1_input"), "5072\n");
    write(full.path(), &format!("{ina}/curr1_input"), "936\n");
    let auto = LinuxReader::with_settings(full.path(), settings(TegrastatsMode::Auto, &command));
    let m = auto.snapshot().await.jetson.unwrap();
    assert!(m.tegrastats.is_none());
    assert_eq!(m.sources.rails, Some(MetricSource::Sysfs));

    let bare = tempfile::tempdir().unwrap();
    containerised_orin_nano(bare.path());
    let never = LinuxReader::with_settings(bare.path(), settings(TegrastatsMode::Never, &command));
    let m = never.snapshot().await.jetson.unwrap();
    assert!(m.tegrastats.is_none() && m.rails.is_empty());

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!marker.exists());
}
