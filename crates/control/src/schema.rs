//! Input schemas of the control tools.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRequestArgs {
    /// The compute tool to route, e.g. `text_generate`.
    pub tool: String,
    /// The arguments the call would carry.
    pub arguments: Option<Map<String, Value>>,
    /// When true, only show the decision; do not forward the call.
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OptimizeAction {
    /// Current power mode, clocks and what could be changed.
    Report,
    /// Switch to an nvpmodel power mode (`mode`).
    SetPowerMode,
    /// Pin clocks to their maximum (jetson_clocks).
    MaxClocks,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizeSystemArgs {
    pub action: OptimizeAction,
    /// nvpmodel mode id, for `set_power_mode`.
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ResourceAction {
    List,
    Load,
    Unload,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManageResourcesArgs {
    pub action: ResourceAction,
    /// Model id, for `load` and `unload`.
    pub model: Option<String>,
    /// Keep a loaded model this long after its last use (like Ollama's keep_alive).
    pub keep_alive_secs: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MonitorHealthArgs {
    /// One replica's id; all replicas when absent.
    pub replica: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScaleAction {
    Status,
    Add,
    Remove,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleClusterArgs {
    pub action: ScaleAction,
    /// How many replicas to add or remove.
    #[schemars(range(min = 1, max = 16))]
    pub count: Option<u32>,
}
