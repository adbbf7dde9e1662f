//! What is read of a discrete NVIDIA GPU (through NVML, with the `nvml`
//! feature), shared by the Linux reader and the NVML reader.

use serde::Serialize;

/// One discrete NVIDIA GPU; a figure the driver does not report is `None`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DiscreteGpu {
    pub index: u32,
    pub name: Option<String>,
    /// Share of time a kernel ran, over the driver's last sample period.
    pub utilization_gpu_percent: Option<u32>,
    /// Share of time device memory was read or written.
    pub utilization_memory_percent: Option<u32>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_free_bytes: Option<u64>,
    pub temperature_celsius: Option<u32>,
    pub power_mw: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    pub memory_clock_mhz: Option<u32>,
}
