//! Discrete NVIDIA GPUs through NVML (the `nvml` feature).
//!
//! `nvml-wrapper` loads `libnvidia-ml.so.1` at run time, so the build needs
//! no CUDA and a machine without the driver gets an error string, not a
//! failure to start.

use std::sync::OnceLock;

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::{Device, Nvml};

use super::gpu::DiscreteGpu;

/// Reads every GPU NVML lists. The library is loaded and initialised on the
/// first read and kept, failure included: retrying a missing driver on each
/// snapshot would only repeat the same error at the cost of a `dlopen`.
#[derive(Default)]
pub struct NvmlReader {
    nvml: OnceLock<Result<Nvml, String>>,
}

impl NvmlReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// The GPUs read, and why the list may be empty or short.
    pub fn read(&self) -> (Vec<DiscreteGpu>, Option<String>) {
        let nvml = self
            .nvml
            .get_or_init(|| Nvml::init().map_err(|e| format!("NVML not available: {e}")));
        let nvml = match nvml {
            Ok(nvml) => nvml,
            Err(error) => return (Vec::new(), Some(error.clone())),
        };
        let count = match nvml.device_count() {
            Ok(count) => count,
            Err(e) => return (Vec::new(), Some(format!("NVML cannot count GPUs: {e}"))),
        };
        let mut errors = Vec::new();
        let gpus = (0..count)
            .filter_map(|index| match nvml.device_by_index(index) {
                Ok(device) => Some(describe(index, &device)),
                Err(e) => {
                    errors.push(format!("GPU {index}: {e}"));
                    None
                }
            })
            .collect();
        (gpus, (!errors.is_empty()).then(|| errors.join("; ")))
    }
}

/// Each query on its own: a GPU that does not support one (power on some
/// boards, clocks under MIG) still reports the rest.
fn describe(index: u32, device: &Device<'_>) -> DiscreteGpu {
    let utilization = device.utilization_rates().ok();
    let memory = device.memory_info().ok();
    DiscreteGpu {
        index,
        name: device.name().ok(),
        utilization_gpu_percent: utilization.as_ref().map(|u| u.gpu),
        utilization_memory_percent: utilization.as_ref().map(|u| u.memory),
        memory_total_bytes: memory.as_ref().map(|m| m.total),
        memory_used_bytes: memory.as_ref().map(|m| m.used),
        memory_free_bytes: memory.as_ref().map(|m| m.free),
        temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok(),
        power_mw: device.power_usage().ok(),
        sm_clock_mhz: device.clock_info(Clock::SM).ok(),
        memory_clock_mhz: device.clock_info(Clock::Memory).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LinuxReader;

    /// Without a driver (as on the build machine) the list is empty and the
    /// error says why; with one, every GPU has a name and a memory size.
    #[tokio::test]
    async fn a_snapshot_lists_gpus_or_says_why_not() {
        let m = LinuxReader::new("/").snapshot().await;
        match &m.gpus_error {
            Some(error) if m.gpus.is_empty() => {
                assert!(error.starts_with("NVML"), "{error}");
            }
            _ => {
                for gpu in &m.gpus {
                    assert!(gpu.name.is_some(), "{gpu:?}");
                    assert!(gpu.memory_total_bytes.unwrap_or(0) > 0, "{gpu:?}");
                }
            }
        }
        let json = serde_json::to_value(&m).unwrap();
        assert!(json["gpus"].is_array());
    }

    #[test]
    fn initialisation_is_kept() {
        let reader = NvmlReader::new();
        let first = reader.read();
        let second = reader.read();
        assert_eq!(first.1.is_some(), second.1.is_some());
        assert!(reader.nvml.get().is_some());
    }
}
