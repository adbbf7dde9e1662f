//! Telemetry of the machine the server runs on.
//!
//! Every reader takes a root directory (`/` in production) so tests run it
//! on a fake `/proc` and `/sys` tree.

pub mod jetson;
mod linux;
mod sysfs;
pub mod tegrastats;

pub use jetson::{JetsonMetrics, JetsonReader};
pub use linux::{CpuTimes, LinuxReader, SystemMetrics, ThermalZone};
