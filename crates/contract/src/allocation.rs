//! How a compute replica keeps models in memory: compute applies it,
//! `manage_resources` sets and reports it.

use serde::{Deserialize, Serialize};

/// How the compute server keeps models in memory.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AllocationStrategy {
    /// Loaded on use, unloaded when idle past the keep-alive or to make room
    /// (least recently used first) within the memory budget.
    #[default]
    Balanced,
    /// As balanced, but `compute.pinned_models` are loaded and never unloaded.
    Pinned,
    /// Each model is unloaded as soon as its calls end: least memory held.
    OnDemand,
    /// As balanced; `manage_resources` loads the models recent calls used
    /// most, as many as the budget holds.
    Preload,
}
