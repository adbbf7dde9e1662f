//! The figures both dashboards show, read out of what a gateway answers
//! (`jetson://system/metrics`, `monitor_health`,
//! `jetson://performance/analytics`): `jetsonmind top` in a terminal and the
//! gateway's web dashboard in a browser. Reading them in one place keeps the
//! two showing the same numbers.
//!
//! Missing figures stay `None` (a machine without a GPU has no GPU load),
//! never zero.

pub mod sample;
pub mod snapshot;

pub use sample::{Sample, ToolLatency};
pub use snapshot::{ModelRate, Node, Replica, Snapshot};
