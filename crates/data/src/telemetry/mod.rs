//! Telemetry of the machine the server runs on.
//!
//! Every reader takes a root directory (`/` in production) so tests run it
//! on a fake `/proc` and `/sys` tree.

mod linux;
pub mod tegrastats;

pub use linux::{CpuTimes, LinuxReader, SystemMetrics, ThermalZone};
