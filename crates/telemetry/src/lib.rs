//! Telemetry of the machine the server runs on: a library the data server
//! (`jetson://system/metrics`), the control plane (power modes and rails)
//! and compute (free memory) read.
//!
//! Every reader takes a root directory (`/` in production) so tests run it
//! on a fake `/proc` and `/sys` tree.

mod config;
mod gpu;
pub mod jetson;
mod linux;
#[cfg(feature = "nvml")]
pub mod nvml;
mod sysfs;
pub mod tegrastats;
pub mod tegrastats_source;

pub use gpu::DiscreteGpu;
pub use jetson::{
    JetsonMetrics, JetsonReader, JetsonSources, MetricSource, PowerMode, TegrastatsStatus,
};
pub use linux::{CpuTimes, LinuxReader, SystemMetrics, ThermalZone, Vitals};
pub use tegrastats_source::TegrastatsSource;

/// The `[telemetry]` section, as the readers take it.
pub use config::TelemetryConfig as TelemetrySettings;
pub use config::{TegrastatsMode, TelemetryConfig};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_defaults_and_json() {
        let settings: TelemetrySettings = serde_json::from_str("{}").unwrap();
        assert_eq!(settings, TelemetrySettings::default());
        assert_eq!(settings.tegrastats, TegrastatsMode::Auto);
        assert_eq!(
            settings.tegrastats_command,
            ["tegrastats", "--interval", "1000"]
        );
        assert_eq!(settings.tegrastats_retry_secs, 30);
        let always: TelemetrySettings =
            serde_json::from_str(r#"{"tegrastats": "always", "tegrastats_retry_secs": 5}"#)
                .unwrap();
        assert_eq!(
            (always.tegrastats, always.tegrastats_retry_secs),
            (TegrastatsMode::Always, 5)
        );
        assert!(serde_json::from_str::<TelemetrySettings>(r#"{"tegrastat": "never"}"#).is_err());
        assert!(serde_json::from_str::<TelemetrySettings>(r#"{"tegrastats": "Never"}"#).is_err());
    }
}
