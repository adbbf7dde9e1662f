//! What a compute replica tells the control plane about itself: the
//! `jetson://compute/status` resource. Compute writes it, control reads it.

use std::collections::BTreeMap;

use rmcp::model::CallToolResult;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The resource every compute replica offers.
pub const REPLICA_STATUS_URI: &str = "jetson://compute/status";

/// The `_meta` key a replica sets on the tool error it gives when it is too
/// busy to start a call (slots and queue full): nothing ran, so a router may
/// send the call to another replica, or wait for room, instead of passing
/// the refusal on.
pub const BUSY_META_KEY: &str = "jetsonmind/busy";

/// Say, in `result`, that the replica was too busy to start the call.
pub fn mark_busy(result: &mut CallToolResult) {
    let meta = result.meta.get_or_insert_with(Default::default);
    meta.0.insert(BUSY_META_KEY.into(), Value::Bool(true));
}

/// Whether `result` is a replica's "too busy to start it".
pub fn is_busy(result: &CallToolResult) -> bool {
    result.is_error == Some(true)
        && result
            .meta
            .as_ref()
            .is_some_and(|meta| meta.0.get(BUSY_META_KEY) == Some(&Value::Bool(true)))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicaReport {
    /// `host:pid` of the process.
    pub replica: String,
    pub default_model: String,
    /// Generations running now, and waiting for a slot.
    pub running: usize,
    pub waiting: usize,
    /// Calls it holds at once before answering "busy": slots + queue.
    pub capacity: usize,
    pub memory_budget_bytes: u64,
    /// Counted for the loaded models.
    pub memory_used_bytes: u64,
    /// The most a model it has not loaded may take: budget not held by
    /// models in use, and no more than the machine has free plus what
    /// unloading idle models would give back.
    pub loadable_bytes: u64,
    /// MemAvailable of the machine.
    pub free_memory_bytes: Option<u64>,
    /// The hottest thermal zone.
    pub temperature_c: Option<f64>,
    pub loaded: Vec<LoadedModel>,
    /// Models being loaded now (their memory is in `memory_used_bytes`).
    pub loading: Vec<String>,
    /// Memory each model of the store would be counted for when loaded.
    pub model_bytes: BTreeMap<String, u64>,
    /// Models of the store that cannot be served here, with why (a GGUF
    /// header whose values are not usable): left out of `model_bytes`.
    pub unusable_models: BTreeMap<String, String>,
    /// How its engine runs models now (absent for a provider).
    pub engine: Option<crate::calibration::EngineTuning>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadedModel {
    pub name: String,
    pub bytes: u64,
    /// Calls running on it now.
    pub in_use: usize,
    pub idle_secs: f64,
    /// Unloaded once idle this long; absent: kept until its memory is needed.
    pub keep_alive_secs: Option<u64>,
    /// Kept loaded whatever else needs room (`compute.allocation = "pinned"`).
    pub pinned: bool,
}
