//! The `[telemetry]` section of the configuration: owned here, composed
//! into the whole configuration by `jetsonmind-core`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How telemetry is gathered (`jetson://system/metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where the device is read: `/proc`, `/sys`, `/etc` (the board, L4T,
    /// nvpmodel.conf) and `/var/lib/nvpmodel` under it. `/` but in tests,
    /// which give a fake tree.
    pub root: PathBuf,
    /// When to run `tegrastats` on a Jetson.
    pub tegrastats: TegrastatsMode,
    /// The program and its arguments.
    pub tegrastats_command: Vec<String>,
    /// Least time between two starts of the program (0 counts as 1).
    pub tegrastats_retry_secs: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            root: "/".into(),
            tegrastats: TegrastatsMode::Auto,
            tegrastats_command: ["tegrastats", "--interval", "1000"]
                .map(String::from)
                .to_vec(),
            tegrastats_retry_secs: 30,
        }
    }
}

/// Only a Jetson ever runs `tegrastats`, whatever the mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TegrastatsMode {
    /// Run it when sysfs lacks the GPU load or the power rails, and fill only those gaps.
    #[default]
    Auto,
    /// Run it always; its GPU load, clock and rails win over sysfs.
    Always,
    /// Never run it.
    Never,
}
