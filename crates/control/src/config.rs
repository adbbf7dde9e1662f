//! `[control]` and `[hybrid]`: the control server's sections of the
//! configuration.

use jetsonmind_core::config::{Section, is_http_url, keys};
use jetsonmind_core::{Config, CoreError};
use serde::{Deserialize, Serialize};

mod hybrid;
pub use hybrid::{EgressRule, HybridConfig, ProviderConfig};

/// How replicas are ranked (see the control server's `route_request`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Replicas that already hold the model first, then least outstanding
    /// requests, then lowest latency.
    #[default]
    Affinity,
    /// Fewest requests in flight first, then lowest latency.
    LeastOutstanding,
    /// Lowest expected wait first: recent latency times (requests in flight + 1).
    Latency,
}

/// The control plane: routing among compute replicas, failover, scaling,
/// power modes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    pub strategy: Strategy,
    /// A replica takes no more calls once this share of its capacity
    /// (running slots + queue) is in use; calls then wait, or are shed.
    pub utilization_ceiling: f64,
    /// Replicas hotter than this leave the rotation until they cool down.
    pub max_temperature_c: f64,
    /// Failures in a row that open a replica's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker keeps a replica out before one trial call.
    pub breaker_cooldown_ms: u64,
    /// Tries of an idempotent call across replicas when one fails mid-call.
    pub max_attempts: u32,
    /// How long a call waits for a replica under its ceiling before it is shed.
    pub queue_timeout_ms: u64,
    /// Calls that may wait at once; more are shed at once.
    pub max_queued: usize,
    /// Compute replicas elsewhere (Streamable HTTP URLs), routed among with
    /// this process's own.
    pub replicas: Vec<String>,
    /// The environment variable holding the bearer token sent to `replicas`
    /// (the token itself is never in a file), for replicas that require one:
    /// any not on this machine's loopback.
    pub replicas_token_env: Option<String>,
    /// `serve`: this process's compute server is a replica too.
    pub local_replica: bool,
    /// Most replicas `scale_cluster` keeps (all kinds together).
    pub max_replicas: usize,
    /// How long a started replica may take to listen.
    pub replica_start_timeout_ms: u64,
    /// How long a removed replica may finish its calls before it is stopped.
    pub drain_timeout_ms: u64,
    /// Let `optimize_system` change power modes and clocks (Jetson).
    pub allow_power_changes: bool,
    /// Programs `optimize_system` runs; `{mode}` is replaced by the mode id.
    pub nvpmodel_query_command: Vec<String>,
    pub nvpmodel_set_command: Vec<String>,
    /// Pins the clocks at their maximum.
    pub jetson_clocks_command: Vec<String>,
    /// Keeps the clocks' settings before they are pinned, and puts them back.
    pub jetson_clocks_store_command: Vec<String>,
    pub jetson_clocks_restore_command: Vec<String>,
    /// How often `monitor_health`'s alerts are evaluated.
    pub alert_interval_ms: u64,
    /// How `optimize_system` searches for the best engine settings.
    pub optimize: OptimizeConfig,
}

/// `optimize_system`'s search: bounded in time and candidates, each
/// candidate measured with concurrent calls of this size on the real model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizeConfig {
    /// Longest a search may take; what is measured by then decides.
    pub budget_secs: u64,
    /// Most candidates measured in one search (the settings in use count).
    pub max_candidates: usize,
    /// Prompt tokens of each calibration call.
    pub prompt_tokens: u32,
    /// Tokens each calibration call generates.
    pub max_tokens: u32,
    /// `thermal`: the hottest zone must stay under this while measured.
    pub thermal_limit_c: f64,
    /// Settings are changed only for a candidate that measured at least
    /// this much better than the settings in use: less is noise.
    pub min_gain_percent: f64,
}

impl Default for OptimizeConfig {
    fn default() -> Self {
        Self {
            budget_secs: 300,
            max_candidates: 12,
            prompt_tokens: 128,
            max_tokens: 32,
            thermal_limit_c: 80.0,
            min_gain_percent: 5.0,
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        let argv = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect();
        Self {
            strategy: Strategy::Affinity,
            utilization_ceiling: 0.8,
            max_temperature_c: 85.0,
            breaker_failures: 3,
            breaker_cooldown_ms: 5_000,
            max_attempts: 3,
            queue_timeout_ms: 10_000,
            max_queued: 64,
            replicas: Vec::new(),
            replicas_token_env: None,
            local_replica: true,
            max_replicas: 8,
            replica_start_timeout_ms: 30_000,
            drain_timeout_ms: 30_000,
            allow_power_changes: false,
            nvpmodel_query_command: argv(&["nvpmodel", "-q", "--verbose"]),
            nvpmodel_set_command: argv(&["nvpmodel", "-m", "{mode}"]),
            jetson_clocks_command: argv(&["jetson_clocks"]),
            jetson_clocks_store_command: argv(&["jetson_clocks", "--store"]),
            jetson_clocks_restore_command: argv(&["jetson_clocks", "--restore"]),
            alert_interval_ms: 5_000,
            optimize: OptimizeConfig::default(),
        }
    }
}

/// Where calls go and what runs on the host: an administrator's to change,
/// and each node's own.
const HOST_KEYS: &[&str] = &[
    "control.replicas",
    "control.replicas_token_env",
    "control.allow_power_changes",
    "control.nvpmodel_query_command",
    "control.nvpmodel_set_command",
    "control.jetson_clocks_command",
    "control.jetson_clocks_store_command",
    "control.jetson_clocks_restore_command",
];

impl Section for ControlConfig {
    const NAME: &'static str = "control";
    const TRUST_KEYS: &'static [&'static str] = HOST_KEYS;
    const NODE_KEYS: &'static [&'static str] = &keys::<9>(HOST_KEYS, &["control.local_replica"]);

    fn validate(&self, _config: &Config) -> Result<(), CoreError> {
        let control = self;
        let fail = |msg: &str| Err(CoreError::Config(format!("control.{msg}")));
        if !(control.utilization_ceiling > 0.0 && control.utilization_ceiling <= 1.0) {
            return fail("utilization_ceiling must be in (0, 1]");
        }
        if control.max_attempts == 0 || control.breaker_failures == 0 {
            return fail("max_attempts and breaker_failures must be at least 1");
        }
        if control.max_replicas == 0 {
            return fail("max_replicas must be at least 1");
        }
        if !control.replicas.iter().all(|url| is_http_url(url)) {
            return fail("replicas: urls must start with http:// or https://");
        }
        let commands = [
            &control.nvpmodel_query_command,
            &control.nvpmodel_set_command,
            &control.jetson_clocks_command,
            &control.jetson_clocks_store_command,
            &control.jetson_clocks_restore_command,
        ];
        if commands.iter().any(|c| c.is_empty()) {
            return fail("power commands must not be empty");
        }
        if control.alert_interval_ms < 100 {
            return fail("alert_interval_ms must be at least 100");
        }
        let optimize = &control.optimize;
        if optimize.budget_secs == 0
            || optimize.max_candidates == 0
            || optimize.prompt_tokens == 0
            || optimize.max_tokens == 0
        {
            return fail(
                "optimize: budget_secs, max_candidates, prompt_tokens and max_tokens must be at \
                 least 1",
            );
        }
        Ok(())
    }
}
