//! Input schemas of the control tools.

use jetsonmind_contract::allocation::AllocationStrategy;
use schemars::JsonSchema;

use crate::placement::PlacementStrategy;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::Strategy;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRequestArgs {
    /// The compute tool to route, e.g. `text_generate`.
    pub tool: String,
    /// The arguments the call would carry.
    pub arguments: Option<Map<String, Value>>,
    /// When true (the default), only show the decision; when false, also
    /// make the call there and return its result.
    pub dry_run: Option<bool>,
    /// Rank by this strategy instead of the configured one.
    pub strategy: Option<Strategy>,
    /// What the call may do beyond the site (as its
    /// `_meta["jetsonmind/egress"]` would say); it narrows, never widens, the
    /// key's and the tool's policy.
    pub egress: Option<crate::egress::EgressRequest>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OptimizeAction {
    /// Measure candidate engine settings for `target_metric` and apply the
    /// best (the default when `target_metric` is given).
    Optimize,
    /// Restore the settings the last applied optimization replaced.
    Revert,
    /// Current power mode, clocks and what could be changed (Jetson).
    Report,
    /// Switch to an nvpmodel power mode (`mode`).
    SetPowerMode,
    /// Pin clocks to their maximum (jetson_clocks).
    MaxClocks,
}

/// What `optimize_system` tunes for.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TargetMetric {
    /// One call's time: first token, then per token.
    Latency,
    /// Generated tokens per second under concurrency.
    Throughput,
    /// Tokens per joule from the power rails (Jetson), else per CPU second.
    Efficiency,
    /// The highest throughput that keeps the hottest zone under `limit_c`.
    Thermal,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OptimizeSystemArgs {
    /// Tune this device's engine settings for this goal, by measuring
    /// candidates on the real loaded model.
    pub target_metric: Option<TargetMetric>,
    /// `optimize` (the default with `target_metric`), `revert`, or a power
    /// action: `report`, `set_power_mode`, `max_clocks`.
    pub action: Option<OptimizeAction>,
    /// nvpmodel mode id, for `set_power_mode`.
    pub mode: Option<u32>,
    /// Measure and show the table, change nothing.
    pub dry_run: Option<bool>,
    /// Longest the search may take, in seconds (control.optimize.budget_secs).
    #[schemars(range(min = 1, max = 86400))]
    pub budget_secs: Option<u64>,
    /// Most candidates measured, the settings in use among them
    /// (control.optimize.max_candidates).
    #[schemars(range(min = 1, max = 100))]
    pub max_candidates: Option<u32>,
    /// For `thermal`: the limit of the hottest zone, °C
    /// (control.optimize.thermal_limit_c).
    #[schemars(range(min = 1, max = 150))]
    pub limit_c: Option<f64>,
    /// The replica to tune; by default the first compute replica on this
    /// machine.
    pub replica: Option<String>,
    /// The model measured; its default model by default.
    pub model: Option<String>,
    /// Prompt tokens of each calibration call (control.optimize.prompt_tokens).
    #[schemars(range(min = 1, max = 8192))]
    pub prompt_tokens: Option<u32>,
    /// Tokens each calibration call generates (control.optimize.max_tokens).
    #[schemars(range(min = 1, max = 4096))]
    pub max_tokens: Option<u32>,
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
    /// `list`, `load` or `unload`; not needed with `allocation_strategy`.
    pub action: Option<ResourceAction>,
    /// How this device keeps models in memory from now on (saved as
    /// `compute.allocation`): `balanced` (least recently used within the
    /// budget), `pinned` (`models` stay loaded, never evicted), `on_demand`
    /// (unloaded as soon as idle), `preload` (as balanced, and the models
    /// recent calls used most are loaded now, as many as the budget holds).
    pub allocation_strategy: Option<AllocationStrategy>,
    /// For `pinned`: the models kept loaded.
    pub models: Option<Vec<String>>,
    /// Model id, for `load` and `unload`.
    pub model: Option<String>,
    /// Keep a loaded model this long after its last use (like Ollama's
    /// keep_alive); 0 keeps it until its memory is needed.
    pub keep_alive_secs: Option<u64>,
    /// The replica to act on; by default `load` picks one as routing would,
    /// and `unload` acts on every replica holding the model.
    pub replica: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MonitorHealthArgs {
    /// One replica's id; all replicas when absent.
    pub replica: Option<String>,
    /// What to read: `device`, `replicas`, `models`, `nodes` or `tools`
    /// (each a set of named figures). Without it and without `threshold`:
    /// the replicas' health in full.
    pub component: Option<Component>,
    /// Show the readings in breach of this line, e.g.
    /// `{"metric": "temperature_c", "above": 75}` or
    /// `{"metric": "p99_ms", "above": 500, "tool": "text_generate"}`.
    pub threshold: Option<Threshold>,
    /// Keep `threshold` as an alert of this name (admin): evaluated every
    /// `control.alert_interval_ms`, listed at jetson://control/alerts, whose
    /// subscribers hear when it fires or clears.
    pub alert: Option<String>,
    /// Remove the alert of this name (admin).
    pub remove_alert: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScaleAction {
    /// This machine's replicas and, in a cluster, the placements.
    Status,
    /// Start compute replicas on this machine.
    Add,
    /// Stop replicas this machine started.
    Remove,
    /// In a cluster: keep `replicas` replicas of `model` across the nodes,
    /// chosen by `strategy` (0 replicas removes the placement).
    Place,
    /// In a cluster: `node` takes no new calls, finishes those in flight,
    /// and its placements move elsewhere.
    Drain,
    /// In a cluster: bring a drained `node` back.
    Undrain,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleClusterArgs {
    pub action: ScaleAction,
    /// How many replicas to add or remove (default 1).
    #[schemars(range(min = 1, max = 16))]
    pub count: Option<u32>,
    /// For `remove`: this replica instead of the most recently started ones.
    pub replica: Option<String>,
    /// For `place`: the model to place.
    pub model: Option<String>,
    /// For `place`: how many nodes should run it (`target_size` also works).
    #[serde(alias = "target_size")]
    #[schemars(range(min = 0, max = 1024))]
    pub replicas: Option<u32>,
    /// For `place`: how its nodes are chosen (default `spread`).
    pub strategy: Option<PlacementStrategy>,
    /// For `drain` and `undrain`: the node's id.
    pub node: Option<String>,
}

/// What `monitor_health` reads, and a threshold or alert is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// This machine: temperature_c, cpu_percent, memory_used_percent,
    /// disk_used_percent, power_w (Jetson power rails), gpu_load_percent,
    /// and for throttling cpu_clock_percent and gpu_clock_percent (clocks
    /// as a share of their maximum).
    Device,
    /// Each compute replica: up, breaker_open, draining, outstanding,
    /// capacity, latency_ms, temperature_c.
    Replicas,
    /// Each loaded model of each replica: bytes, in_use, idle_secs.
    Models,
    /// Each cluster node (this one on a single device): replicas_up,
    /// replicas_down.
    Nodes,
    /// Each tool of each server: calls, errors, error_rate, p50_ms, p99_ms
    /// (the last 5 minutes).
    Tools,
}

/// A line one metric must not cross.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// A figure of a component, e.g. `temperature_c` (see `component`).
    pub metric: String,
    /// In breach above this value.
    pub above: Option<f64>,
    /// In breach below this value.
    pub below: Option<f64>,
    /// Only this tool's readings (for the tools' figures).
    pub tool: Option<String>,
    /// An alert clears once every reading is back past the line by this
    /// much; 5% of the line's value by default.
    #[schemars(range(min = 0))]
    pub hysteresis: Option<f64>,
}

impl Threshold {
    pub fn check(&self) -> Result<(), String> {
        match (self.above, self.below) {
            (None, None) => Err("a threshold needs `above` or `below`".into()),
            (Some(_), Some(_)) => Err("a threshold takes `above` or `below`, not both".into()),
            _ if self.hysteresis.is_some_and(|h| h < 0.0 || !h.is_finite()) => {
                Err("`hysteresis` must be a finite number, at least 0".into())
            }
            _ => Ok(()),
        }
    }
}
