//! One typed configuration for every server.
//!
//! Sources, later ones winning: built-in defaults, a TOML file, environment
//! variables, then command-line flags (applied by the binary). An environment
//! variable names a key by its path: `JETSONMIND_HTTP__LISTEN=127.0.0.1:9000`
//! sets `[http] listen`. Its value is read as TOML when it parses as a TOML
//! value (`64`, `true`, `["a", "b"]`) and as a plain string otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use jetsonmind_contract::calibration::FlashAttention;
pub use jetsonmind_telemetry::{TegrastatsMode, TelemetryConfig};
use serde::{Deserialize, Serialize};

use crate::CoreError;

mod hybrid;
pub use hybrid::{EgressRule, HybridConfig, ProviderConfig};

/// The prefix of environment variables that set config keys.
pub const ENV_PREFIX: &str = "JETSONMIND_";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub mcp: McpConfig,
    pub gateway: GatewayConfig,
    pub data: DataConfig,
    pub compute: ComputeConfig,
    pub cache: CacheConfig,
    pub telemetry: TelemetryConfig,
    pub control: ControlConfig,
    pub auth: AuthConfig,
    pub cluster: ClusterConfig,
    pub hybrid: HybridConfig,
}

/// The edge-cluster tier: nodes that share one NATS JetStream cluster.
/// Off (a single device, no NATS) while `urls` is empty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS servers to connect to (`nats://host:4222`); any one is enough,
    /// the client learns the rest. `serve --cluster` sets these.
    pub urls: Vec<String>,
    /// The cluster's name: the first token of its subjects and buckets, so
    /// clusters can share NATS servers. Letters, digits, `-` and `_`.
    pub name: String,
    /// This node's id in the cluster; the host name when empty. `serve --node` sets it.
    pub node: String,
    /// The local servers other nodes route calls to (each node serves all
    /// of its servers to directed calls; these join the cluster's fleets).
    pub share: Vec<String>,
    /// NATS user (with `password_env`).
    pub user: Option<String>,
    /// The environment variable that holds the NATS password.
    pub password_env: Option<String>,
    /// The environment variable that holds a NATS token.
    pub token_env: Option<String>,
    /// A file holding an NKey seed (`SU...`).
    pub nkey_file: Option<PathBuf>,
    /// A NATS credentials file (JWT and seed, `.creds`).
    pub creds_file: Option<PathBuf>,
    /// CA certificate (PEM) that NATS servers must be signed by; implies TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for servers that verify clients.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Require TLS even without a CA file (system roots).
    pub tls_required: bool,
    /// How often a node writes its status to the membership bucket.
    pub heartbeat_ms: u64,
    /// A node not heard from this long leaves every view (and the bucket
    /// forgets it: its entries' max age).
    pub node_ttl_ms: u64,
    /// Copies of each of the cluster's buckets and streams; 0: as many as
    /// the NATS servers the cluster has (those advertised, or the URLs given
    /// if more), at most 3.
    pub kv_replicas: usize,
    /// How often an open session to another node is checked to be alive
    /// (a node that died is seen within this and `probe_timeout_ms`).
    pub probe_ms: u64,
    /// How long one message to another node may wait for its receipt.
    pub probe_timeout_ms: u64,
    /// A session no message reached for this long is closed by its server.
    pub session_idle_ms: u64,
    /// How often a node publishes its telemetry and analytics to the
    /// cluster's telemetry stream (what `jetson://system/metrics` and
    /// `jetson://performance/analytics` show of it at other nodes).
    pub telemetry_interval_ms: u64,
    /// A node's telemetry older than this is dropped (the stream's max age):
    /// a node that stopped publishing leaves the cluster's views then, if
    /// the membership has not dropped it first. At least twice the interval.
    pub telemetry_max_age_ms: u64,
    /// Telemetry snapshots the stream keeps per node (the latest is shown).
    pub telemetry_history: i64,
    /// How long `jetsonmind cluster status` may wait for NATS in all before
    /// it gives up, saying so.
    pub status_timeout_ms: u64,
    /// Largest MCP message carried over NATS; larger ones are sent in parts
    /// of NATS `max_payload`, and beyond this refused with a JSON-RPC error.
    pub max_message_bytes: usize,
    /// Sessions one node serves at once; more are refused.
    pub max_sessions: usize,
    /// How often each node checks the cluster's placements against what it
    /// runs (it also checks on every change of the placements).
    pub reconcile_ms: u64,
    /// Largest chunk a model file is stored in, in the cluster's model
    /// Object Store (never more than the NATS servers' `max_payload`).
    pub model_chunk_bytes: usize,
    /// A model download from the cluster that receives nothing for this
    /// long is abandoned, and nothing of it is kept.
    pub model_stall_ms: u64,
    /// Largest the cluster's model Object Store may grow, per copy; 0: no
    /// limit but the NATS servers' own.
    pub model_bucket_max_bytes: u64,
    /// How long the cluster's call records (`<cluster>_analytics`) are kept:
    /// also the longest uplink outage after which the hub's backup still
    /// gets every record.
    pub analytics_max_age_ms: u64,
    /// Call records a node queues for that stream; beyond this, new ones are
    /// dropped (and counted) rather than holding calls.
    pub analytics_buffer: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            name: "jetsonmind".into(),
            node: String::new(),
            share: vec!["compute".into()],
            user: None,
            password_env: None,
            token_env: None,
            nkey_file: None,
            creds_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            heartbeat_ms: 1_000,
            node_ttl_ms: 4_000,
            kv_replicas: 0,
            probe_ms: 1_000,
            probe_timeout_ms: 2_000,
            session_idle_ms: 60_000,
            telemetry_interval_ms: 2_000,
            telemetry_max_age_ms: 180_000,
            telemetry_history: 5,
            status_timeout_ms: 10_000,
            max_message_bytes: 64 << 20,
            max_sessions: 1_024,
            reconcile_ms: 2_000,
            model_chunk_bytes: 1 << 20,
            model_stall_ms: 30_000,
            model_bucket_max_bytes: 0,
            analytics_max_age_ms: 7 * 24 * 3_600_000,
            analytics_buffer: 10_000,
        }
    }
}

impl ClusterConfig {
    /// Whether this process joins a cluster.
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    fn validate(&self) -> Result<(), CoreError> {
        let fail = |msg: String| Err(CoreError::Config(format!("cluster.{msg}")));
        if !self.enabled() {
            return Ok(());
        }
        if !is_subject_token(&self.name) {
            return fail(format!(
                "name `{}`: use letters, digits, `-` and `_` only",
                self.name
            ));
        }
        if !self.node.is_empty() && !is_subject_token(&self.node) {
            return fail(format!(
                "node `{}`: use letters, digits, `-` and `_` only",
                self.node
            ));
        }
        if let Some(url) = self.urls.iter().find(|u| !u.contains("://")) {
            return fail(format!(
                "urls: `{url}` is not a NATS URL (nats://host:port)"
            ));
        }
        if self.heartbeat_ms == 0 || self.probe_ms == 0 || self.probe_timeout_ms == 0 {
            return fail("heartbeat_ms, probe_ms and probe_timeout_ms must be at least 1".into());
        }
        if self.node_ttl_ms < 2 * self.heartbeat_ms {
            return fail("node_ttl_ms must be at least twice heartbeat_ms".into());
        }
        self.validate_telemetry()?;
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return fail("tls_cert_file and tls_key_file go together".into());
        }
        if self.max_message_bytes < 4096 || self.max_sessions == 0 {
            return fail("max_message_bytes >= 4096 and max_sessions >= 1".into());
        }
        if self.reconcile_ms == 0 || self.analytics_max_age_ms == 0 || self.analytics_buffer == 0 {
            return fail(
                "reconcile_ms, analytics_max_age_ms and analytics_buffer must be at least 1".into(),
            );
        }
        if self.model_chunk_bytes < 4096 || self.model_stall_ms == 0 {
            return fail("model_chunk_bytes >= 4096 and model_stall_ms >= 1".into());
        }
        Ok(())
    }
}

/// A token of a NATS subject or a bucket name: letters, digits, `-`, `_`.
pub fn is_subject_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl ClusterConfig {
    fn validate_telemetry(&self) -> Result<(), CoreError> {
        let fail = |msg: &str| Err(CoreError::Config(format!("cluster.{msg}")));
        if self.telemetry_interval_ms == 0 || self.status_timeout_ms == 0 {
            return fail("telemetry_interval_ms and status_timeout_ms must be at least 1");
        }
        // Shorter, and a live node's snapshot would age out between two.
        if self.telemetry_max_age_ms < 2 * self.telemetry_interval_ms.max(500) {
            return fail(
                "telemetry_max_age_ms must be at least twice telemetry_interval_ms (and 1000)",
            );
        }
        if !(1..=100).contains(&self.telemetry_history) {
            return fail("telemetry_history must be 1 to 100");
        }
        Ok(())
    }
}

/// Who may call: API keys and OAuth 2.1 bearer tokens, with scopes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require credentials even on loopback. Always required when an HTTP
    /// server listens on a non-loopback address.
    pub required: bool,
    /// Accept JWT access tokens from an OAuth 2.1 authorization server.
    pub oauth: Option<OAuthConfig>,
}

/// This server as an OAuth 2.1 resource server (RFC 9728 metadata).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// Where the issuer publishes its signing keys (JWKS).
    pub jwks_url: String,
    /// The `aud` tokens must carry: this server's public URL, e.g. `https://edge.example/mcp`.
    pub audience: String,
    /// Advertised in the protected-resource metadata; the issuer when empty.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// How often the keys are fetched again (also on an unknown `kid`, at most once a minute).
    #[serde(default = "default_jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
}

fn default_jwks_refresh_secs() -> u64 {
    300
}

fn default_leeway_secs() -> u64 {
    30
}

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

/// The inference cache: answers of deterministic calls, reused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub enabled: bool,
    /// How long an answer is reused.
    pub ttl_secs: u64,
    /// Memory for cached answers; the least recently used go first.
    pub max_bytes: usize,
    /// Media as the engines take it (`jetson://data/cache`).
    pub inputs: InputCacheConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_secs: 3600,
            max_bytes: 16 * 1024 * 1024,
            inputs: InputCacheConfig::default(),
        }
    }
}

/// The input cache: pictures decoded and clips resampled, by the digest of
/// the bytes sent, so the same media sent again skips decoding.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InputCacheConfig {
    pub enabled: bool,
    /// How long a prepared input is kept.
    pub ttl_secs: u64,
    /// Memory for prepared inputs (a 12-megapixel picture takes 36 MB).
    pub max_bytes: usize,
}

impl Default for InputCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_secs: 600,
            max_bytes: 128 * 1024 * 1024,
        }
    }
}

/// Streamable HTTP transport settings and limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on. Loopback by default: nothing is exposed unless asked.
    pub listen: SocketAddr,
    /// `Host` header values accepted (DNS-rebinding protection). Hosts may carry a port.
    pub allowed_hosts: Vec<String>,
    /// Browser `Origin` values accepted. Requests without `Origin` (non-browser
    /// clients) pass; a request with any other Origin gets 403.
    pub allowed_origins: Vec<String>,
    /// Largest accepted request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Requests served at once; more wait up to `queue_timeout_ms`, then get 503.
    pub max_concurrent_requests: usize,
    pub queue_timeout_ms: u64,
    /// Longest a request may take before its response starts; then 408.
    pub request_timeout_ms: u64,
    /// Longest wait for a request's headers, counted from when the
    /// connection opens or its previous response ends (HTTP/1.1): a client
    /// that sends nothing, or headers too slowly, is disconnected. So it also
    /// closes HTTP/1.1 keep-alive connections idle this long.
    pub header_read_timeout_ms: u64,
    /// Longest a request's body may take to arrive, from its headers on; then
    /// 408 and the connection is closed. Bodies are read whole before a
    /// request takes one of `max_concurrent_requests`, so slow senders hold none.
    pub body_read_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2 too, which `header_read_timeout_ms` does not cover).
    pub idle_timeout_ms: u64,
    /// Open client connections at most; one more is answered 503 and closed
    /// at once, before it is read. Keep it under the process's file limit.
    pub max_connections: usize,
    /// Open connections from one IP address at most; more: as above.
    pub max_connections_per_address: usize,
    /// Requests per second each client (API key, token subject, or address)
    /// may make on average; more get 429. 0 turns the limit off.
    pub rate_limit_per_second: f64,
    /// Requests a client may make at once above that rate.
    pub rate_limit_burst: u32,
    /// Handshake-era sessions open at once (each `initialize` over HTTP opens
    /// one, so that later notifications reach the client); one more
    /// `initialize` gets 503. 0 serves that era statelessly, without
    /// `resources/subscribe` over HTTP. The 2026-07-28 era needs no session.
    pub max_sessions: usize,
    /// A session with no request and no open stream for this long is closed;
    /// its id then gets 404 and the client starts a new one.
    pub session_idle_timeout_ms: u64,
    /// Rate-limit unauthenticated clients on loopback too (local agents run
    /// many parallel workers from one address, so by default they are not).
    pub rate_limit_loopback: bool,
    /// On SIGTERM, how long the calls in flight may finish (new ones are
    /// refused with 503) before the rest is cancelled and the server exits.
    pub drain_grace_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            allowed_origins: vec!["http://localhost:*".into(), "http://127.0.0.1:*".into()],
            // Room for audio sent as base64 (compute.audio.max_bytes, a third more).
            max_body_bytes: 16 * 1024 * 1024,
            max_concurrent_requests: 64,
            queue_timeout_ms: 5_000,
            request_timeout_ms: 600_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 512,
            max_connections_per_address: 128,
            rate_limit_per_second: 100.0,
            rate_limit_burst: 200,
            max_sessions: 256,
            session_idle_timeout_ms: 300_000,
            rate_limit_loopback: false,
            drain_grace_ms: 30_000,
        }
    }
}

/// Protocol-level settings shared by every server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// `ttlMs` on list results: how long a client may reuse a tool/resource list.
    pub list_ttl_ms: u64,
    /// `ttlMs` on resource reads; telemetry changes fast, so keep it short.
    pub read_ttl_ms: u64,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            list_ttl_ms: 10_000,
            read_ttl_ms: 1_000,
        }
    }
}

/// How the gateway names things that two backends both offer.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PrefixMode {
    /// Prefix only the names that collide (both sides), keep the rest as they are.
    #[default]
    Collisions,
    /// Prefix every backend name: stable names whatever else is federated.
    Always,
    /// Never prefix; on a collision the first backend in config order wins.
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub prefix: PrefixMode,
    /// Put between backend name and tool name when prefixing: `node1_text_generate`.
    pub separator: String,
    /// How often backends are checked (a ping, and the status of compute replicas).
    pub health_interval_ms: u64,
    /// How long one health check may take before the backend counts as gone.
    pub health_timeout_ms: u64,
    /// A live backend's lists are fetched again when it says they changed
    /// (`list_changed`), when it reconnects, and at least this often.
    pub relist_interval_ms: u64,
    /// Remote MCP servers to federate (another gateway works too).
    pub backends: Vec<BackendConfig>,
    /// The web dashboard at `/ui`.
    pub ui: UiConfig,
}

/// `[gateway.ui]`: the web dashboard the gateway serves at `/ui` (HTTP only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    pub enabled: bool,
    /// A browser's sign-in lasts this long without a visit.
    pub session_ttl_secs: u64,
    /// Signed-in browsers at once; the longest idle is signed out for a new one.
    pub max_sessions: usize,
    /// How often the charts take a point (node figures and call rates).
    pub sample_ms: u64,
    /// How far back the charts reach.
    pub history_secs: u64,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_ttl_secs: 12 * 3600,
            max_sessions: 256,
            sample_ms: 5_000,
            history_secs: 3_600,
        }
    }
}

impl UiConfig {
    fn validate(&self) -> Result<(), CoreError> {
        let fail = |msg: &str| Err(CoreError::Config(format!("gateway.ui.{msg}")));
        if self.session_ttl_secs < 60 || self.max_sessions == 0 {
            return fail("session_ttl_secs must be at least 60 and max_sessions at least 1");
        }
        if self.sample_ms < 100 || self.history_secs.saturating_mul(1000) < self.sample_ms {
            return fail("sample_ms must be at least 100, and history_secs hold at least one");
        }
        Ok(())
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            prefix: PrefixMode::default(),
            separator: "_".into(),
            health_interval_ms: 2_000,
            health_timeout_ms: 2_000,
            relist_interval_ms: 30_000,
            backends: Vec::new(),
            ui: UiConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Short name, used as the prefix on collisions. Letters, digits, `-`.
    pub name: String,
    /// Streamable HTTP endpoint, e.g. `http://10.0.0.7:8080/mcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Instead of `url`: endpoints that offer the same thing (replicas, or
    /// node gateways of a cluster); each call goes to one, chosen and failed
    /// over as `[control]` says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// The environment variable holding the bearer token to send (never the
    /// token itself in a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

impl BackendConfig {
    /// Its endpoints: the one `url`, or the replicas.
    pub fn endpoints(&self) -> Vec<String> {
        match &self.url {
            Some(url) => vec![url.clone()],
            None => self.replicas.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// Where models, the database, settings and caches live.
    pub dir: PathBuf,
    /// How often subscribers of changing resources (metrics, analytics, cache,
    /// the model list) are told to read them again.
    pub notify_interval_ms: u64,
    /// How often analytics are written to the database (and at shutdown).
    pub analytics_flush_ms: u64,
    /// How long analytics samples are kept (the longest window is one hour).
    pub analytics_retention_secs: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dir: default_data_dir(),
            notify_interval_ms: 1_000,
            analytics_flush_ms: 10_000,
            analytics_retention_secs: 3_600,
        }
    }
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("jetsonmind");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/jetsonmind"),
        None => PathBuf::from(".jetsonmind"),
    }
}

/// Inference settings of the compute server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ComputeConfig {
    /// Model used when a call names none: a file name in `<data.dir>/models`.
    pub default_model: String,
    /// CPU threads for each decode step of a loaded model (its running
    /// generations are decoded together); 0 means every core.
    pub threads: usize,
    /// Largest context (prompt + generated tokens) a call may use.
    pub context_size: u32,
    /// Layers offloaded to the GPU (builds with the `cuda` feature); 0 on CPU.
    pub gpu_layers: u32,
    /// Generations that run at once per loaded model, each in a sequence slot
    /// of the model's one context, decoded together (continuous batching).
    /// Others wait in the queue. 0: as many as a quarter of the memory budget
    /// holds full contexts of the default model for, from 1 to 8.
    pub parallel: usize,
    /// Most tokens one decode step takes: the next token of every generating
    /// call, then chunks of prompts being read (a long prompt is read over
    /// several steps, so it never stalls the others for long). Raised to
    /// `parallel` when lower, so every running call advances each step.
    pub batch_size: u32,
    /// Most tokens computed at once within a decode step (llama.cpp's
    /// micro-batch); 0: `batch_size`, and never more.
    pub ubatch_size: u32,
    /// llama.cpp's flash attention: `auto` (llama.cpp chooses for the
    /// backend), `on` or `off`.
    pub flash_attention: FlashAttention,
    /// A call whose prompt starts as one a slot holds (system prompt, tool
    /// definitions, the conversation so far) reads only the rest.
    pub prefix_cache: bool,
    /// Calls that may wait for a free slot; one more gets a "busy" error.
    pub queue_depth: usize,
    /// Longest prompt accepted, in bytes (all messages together).
    pub max_prompt_bytes: usize,
    /// Most chat turns (`messages`) one call may send: each costs template
    /// and tokenizer work before the prompt's length is known, and takes at
    /// least one token of the context.
    pub max_messages: usize,
    /// A progress notification every this many generated tokens.
    pub progress_every_tokens: u32,
    /// Memory the loaded models may take together (weights and context
    /// reserve); 0: 80% of the memory the machine has. Loads that would
    /// exceed it unload idle models first (least recently used), or fail.
    pub memory_budget_bytes: u64,
    /// An idle model is unloaded after this long (like Ollama's keep_alive);
    /// 0 keeps it until its memory is needed.
    pub keep_alive_secs: u64,
    /// How loaded models are kept in memory (`manage_resources` sets it).
    pub allocation: AllocationStrategy,
    /// `allocation = "pinned"`: these models are loaded and never unloaded
    /// to make room or for being idle.
    pub pinned_models: Vec<String>,
    /// Speech model `audio_process` transcribes with when a call names none.
    pub speech_model: String,
    /// Embedding model of `embed` and `rerank` when a call names none.
    pub embedding_model: String,
    /// Audio in and out: limits, where files may be read, the TTS program.
    pub audio: AudioConfig,
    /// Limits of `embed` and `rerank`.
    pub embeddings: EmbeddingsConfig,
    /// Images in: the models `image_analyze` uses, limits, where files may be read.
    pub vision: VisionConfig,
    /// What generates text: llama.cpp, or the simulator (benchmarks only).
    pub engine: ComputeEngine,
    /// The simulator's token times; read only with `engine = "simulated"`.
    pub simulator: SimulatorConfig,
}

/// Audio the speech tools take and give.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AudioConfig {
    /// Largest audio accepted, in bytes once decoded from base64.
    pub max_bytes: usize,
    /// Longest audio accepted, in seconds.
    pub max_seconds: f64,
    /// Directories whose files `audio_data` may name by path (none: only
    /// base64 and data URIs). A path is resolved (links followed) before
    /// it is checked.
    pub allowed_dirs: Vec<PathBuf>,
    /// Longest text `synthesize` speaks, in characters.
    pub max_speech_chars: usize,
    /// The text-to-speech program (espeak-ng's command line), run as a
    /// separate process: it is GPL-licensed, never linked.
    pub tts_command: String,
    /// The TTS program is stopped after this long.
    pub tts_timeout_secs: u64,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            max_bytes: 12 << 20,
            max_seconds: 900.0,
            allowed_dirs: Vec::new(),
            max_speech_chars: 5000,
            tts_command: "espeak-ng".into(),
            tts_timeout_secs: 60,
        }
    }
}

/// The image tools: their models and what they take.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VisionConfig {
    /// The classifier `classify` uses when a call names none (an ONNX
    /// model in the store).
    pub classify_model: String,
    /// The YOLO-layout ONNX detector `detect` uses when a call names none;
    /// none ships (import one, then name it here).
    pub detect_model: String,
    /// The text reader `ocr` uses when a call names none (a directory of
    /// `det.onnx` and `rec.onnx`, PaddleOCR's layout).
    pub ocr_model: String,
    /// Largest image accepted, in bytes once decoded from base64.
    pub max_bytes: usize,
    /// Largest image accepted, in pixels (width times height), checked
    /// from its header before it is decoded.
    pub max_pixels: u64,
    /// Directories whose files `image_data` may name by path (none: only
    /// base64 and data URIs).
    pub allowed_dirs: Vec<PathBuf>,
    /// Threads one image model runs on; 0 is every core.
    pub threads: usize,
    /// What runs image models: `auto` (ONNX Runtime where its library
    /// loads, tract otherwise), `onnxruntime` or `tract`.
    pub runtime: VisionRuntime,
    /// ONNX Runtime's library (`libonnxruntime.so`, 1.20 or later); empty:
    /// beside this program, then wherever the dynamic linker looks.
    pub onnxruntime_library: PathBuf,
}

/// Which library runs image models (`compute.vision.runtime`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VisionRuntime {
    /// ONNX Runtime where its library loads, tract otherwise.
    #[default]
    Auto,
    /// ONNX Runtime, or no image model loads (the error says why).
    Onnxruntime,
    /// tract (pure Rust, in the binary).
    Tract,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            classify_model: "efficientnet-lite0".into(),
            detect_model: String::new(),
            ocr_model: "ppocr-v4".into(),
            max_bytes: 12 << 20,
            max_pixels: 40_000_000,
            allowed_dirs: Vec::new(),
            threads: 0,
            runtime: VisionRuntime::Auto,
            onnxruntime_library: PathBuf::new(),
        }
    }
}

/// Limits of the embedding tools.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingsConfig {
    /// Most texts one call embeds (or documents one `rerank` ranks).
    pub max_texts: usize,
    /// Longest text, in bytes; a model reads at most its token limit of it
    /// (256 tokens for MiniLM) and ignores the rest.
    pub max_text_bytes: usize,
    /// Texts embedded in one forward pass.
    pub batch_size: usize,
}

impl Default for EmbeddingsConfig {
    fn default() -> Self {
        Self {
            max_texts: 256,
            max_text_bytes: 16 * 1024,
            batch_size: 32,
        }
    }
}

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

/// The engine behind `text_generate` and `code_complete`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeEngine {
    /// llama.cpp over the GGUF models of the store.
    #[default]
    Llama,
    /// For benchmarks only: no model file and no CPU, a fixed time slept per
    /// token, and every result says it is simulated.
    Simulated,
}

/// The inference simulator (`compute.engine = "simulated"`): a call takes
/// these times, slept, per token of its prompt and of its answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Microseconds per prompt token (prompt processing, "prefill").
    pub prompt_token_us: u64,
    /// Microseconds per generated token.
    pub output_token_us: u64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            prompt_token_us: 200,
            output_token_us: 10_000,
        }
    }
}

/// Most sequences one context decodes together (llama.cpp's own limit is higher).
pub const MAX_PARALLEL: usize = 64;

/// Most tokens in one decode step.
pub const MAX_BATCH_SIZE: u32 = 8192;

/// The longest time the simulator may take per token: one second, slower
/// than any real device, so a typo cannot hold a slot for hours.
pub const MAX_SIMULATED_TOKEN_US: u64 = 1_000_000;

impl Default for ComputeConfig {
    fn default() -> Self {
        Self {
            default_model: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
            threads: 0,
            context_size: 4096,
            gpu_layers: 0,
            parallel: 0,
            batch_size: 512,
            ubatch_size: 0,
            flash_attention: FlashAttention::Auto,
            prefix_cache: true,
            queue_depth: 16,
            max_prompt_bytes: 64 * 1024,
            max_messages: 1024,
            progress_every_tokens: 4,
            memory_budget_bytes: 0,
            keep_alive_secs: 300,
            allocation: AllocationStrategy::Balanced,
            pinned_models: Vec::new(),
            speech_model: "whisper-tiny.en".into(),
            embedding_model: "all-MiniLM-L6-v2".into(),
            audio: AudioConfig::default(),
            embeddings: EmbeddingsConfig::default(),
            vision: VisionConfig::default(),
            engine: ComputeEngine::Llama,
            simulator: SimulatorConfig::default(),
        }
    }
}

/// Settings changed at run time (the data server's `update_settings`), kept
/// in the data dir: they win over the config file, and lose to environment
/// variables and flags, which are set for one run.
pub const SETTINGS_FILE: &str = "settings.toml";

/// The cluster-wide settings this node last had from its cluster (their
/// revision and values), kept so the node starts with them before it joins:
/// they win over `settings.toml`.
pub const CLUSTER_SETTINGS_FILE: &str = "cluster_settings.json";

/// The cluster-wide settings as a node keeps them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterLayer {
    /// The revision of the cluster's settings they are; 0: none yet.
    pub revision: u64,
    /// Sections of keys, as in the config file.
    pub values: toml::Table,
}

impl ClusterLayer {
    /// The layer kept in `data_dir`; empty when there is none.
    pub fn read(data_dir: &Path) -> Result<Self, CoreError> {
        let path = data_dir.join(CLUSTER_SETTINGS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| CoreError::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(CoreError::Config(format!("{}: {e}", path.display()))),
        }
    }
}

/// Where a configuration comes from, kept so it can be built again with
/// changed settings.
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    /// The TOML file (`--config`).
    pub file: Option<PathBuf>,
    /// The process environment; only `JETSONMIND_*` entries are read.
    pub env: Vec<(String, String)>,
    /// `--data-dir`, which wins over everything.
    pub data_dir: Option<PathBuf>,
}

impl ConfigSources {
    /// Defaults < file < `<data dir>/settings.toml` < the cluster's
    /// settings as last known < environment < flags.
    pub fn load(&self) -> Result<Config, CoreError> {
        let data_dir = self.data_dir_before_settings()?;
        let settings = read_settings(&data_dir)?;
        let mut layered = settings.clone();
        match ClusterLayer::read(&data_dir) {
            Ok(cluster) => merge(&mut layered, &cluster.values),
            Err(e) => tracing::warn!(error = %e, "ignoring the cluster's settings kept here"),
        }
        // A node whose kept cluster settings no longer load (a newer node
        // wrote them) still starts, leaves and backs up: without them.
        self.load_with(&layered).or_else(|e| {
            tracing::warn!(error = %e, "ignoring the cluster's settings kept here");
            self.load_with(&settings)
        })
    }

    /// The data dir the settings files live in.
    pub fn settings_dir(&self) -> Result<PathBuf, CoreError> {
        self.data_dir_before_settings()
    }

    /// The configuration with `settings` as the run-time settings layer.
    pub fn load_with(&self, settings: &toml::Table) -> Result<Config, CoreError> {
        if settings
            .get("data")
            .and_then(|d| d.as_table())
            .is_some_and(|d| d.contains_key("dir"))
        {
            return Err(CoreError::Config(
                "data.dir cannot be a run-time setting: it is where the settings live".into(),
            ));
        }
        let mut table = self.file_table()?;
        merge(&mut table, settings);
        self.apply_env(&mut table)?;
        let mut config = parse_table(table)?;
        if let Some(dir) = &self.data_dir {
            config.data.dir = dir.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// The run-time settings file of this configuration's data dir.
    pub fn settings_path(&self) -> Result<PathBuf, CoreError> {
        Ok(self.data_dir_before_settings()?.join(SETTINGS_FILE))
    }

    /// The data dir as the file, environment and flags set it.
    fn data_dir_before_settings(&self) -> Result<PathBuf, CoreError> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        let mut table = self.file_table()?;
        self.apply_env(&mut table)?;
        Ok(parse_table(table)?.data.dir)
    }

    fn file_table(&self) -> Result<toml::Table, CoreError> {
        match &self.file {
            Some(path) => read_table(path),
            None => Ok(toml::Table::new()),
        }
    }

    fn apply_env(&self, table: &mut toml::Table) -> Result<(), CoreError> {
        for (key, value) in &self.env {
            if let Some(path) = key.strip_prefix(ENV_PREFIX) {
                // `JETSONMIND_CONFIG` names the file itself, it is not a key.
                if path != "CONFIG" && path.contains("__") {
                    set_path(table, path, value)?;
                }
            }
        }
        Ok(())
    }
}

/// The run-time settings of `data_dir`; none when the file does not exist.
pub fn read_settings(data_dir: &Path) -> Result<toml::Table, CoreError> {
    let path = data_dir.join(SETTINGS_FILE);
    match path.exists() {
        true => read_table(&path),
        false => Ok(toml::Table::new()),
    }
}

/// Deep-merge `over` into `base`: tables merge key by key, anything else replaces.
pub fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => merge(base, over),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

fn parse_table(table: toml::Table) -> Result<Config, CoreError> {
    table
        .try_into()
        .map_err(|e: toml::de::Error| CoreError::Config(e.to_string()))
}

impl Config {
    /// The model directory.
    pub fn models_dir(&self) -> PathBuf {
        self.data.dir.join("models")
    }

    /// Defaults, then `file` (if given), then `JETSONMIND_*` variables from
    /// `env`; no run-time settings (see [`ConfigSources`] for those).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, CoreError> {
        let sources = ConfigSources {
            file: file.map(Path::to_path_buf),
            env: env.into_iter().collect(),
            data_dir: None,
        };
        sources.load_with(&toml::Table::new())
    }

    /// Checks that types alone cannot express.
    pub fn validate(&self) -> Result<(), CoreError> {
        let fail = |msg: String| Err(CoreError::Config(msg));
        if self.http.max_body_bytes < 1024 {
            return fail("http.max_body_bytes must be at least 1024".into());
        }
        if self.http.max_concurrent_requests == 0 {
            return fail("http.max_concurrent_requests must be at least 1".into());
        }
        self.validate_connections()?;
        if self.http.session_idle_timeout_ms == 0 {
            return fail("http.session_idle_timeout_ms must be at least 1".into());
        }
        let compute = &self.compute;
        let (audio, embeddings) = (&compute.audio, &compute.embeddings);
        let seconds_valid = audio.max_seconds.is_finite() && audio.max_seconds > 0.0;
        if audio.max_bytes == 0 || !seconds_valid || audio.max_speech_chars == 0 {
            return fail(
                "compute.audio: max_bytes, max_seconds and max_speech_chars must be above 0".into(),
            );
        }
        if audio.tts_timeout_secs == 0 || audio.tts_command.trim().is_empty() {
            return fail(
                "compute.audio: tts_command must name a program, tts_timeout_secs >= 1".into(),
            );
        }
        let vision = &compute.vision;
        if vision.max_bytes == 0 || vision.max_pixels == 0 {
            return fail("compute.vision: max_bytes and max_pixels must be above 0".into());
        }
        if embeddings.max_texts == 0 || embeddings.max_text_bytes == 0 || embeddings.batch_size == 0
        {
            return fail(
                "compute.embeddings: max_texts, max_text_bytes and batch_size must be at least 1"
                    .into(),
            );
        }
        if compute.context_size < 256 || compute.progress_every_tokens == 0 {
            return fail("compute: context_size >= 256 and progress_every_tokens >= 1".into());
        }
        if compute.parallel > MAX_PARALLEL {
            return fail(format!(
                "compute.parallel is {}; at most {MAX_PARALLEL} sequences decode together \
                 (0 chooses from the memory budget)",
                compute.parallel
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&compute.batch_size) {
            return fail(format!(
                "compute.batch_size must be from 1 to {MAX_BATCH_SIZE} tokens"
            ));
        }
        if compute.ubatch_size > MAX_BATCH_SIZE {
            return fail(format!(
                "compute.ubatch_size must be at most {MAX_BATCH_SIZE} tokens (0: batch_size)"
            ));
        }
        if compute.max_messages == 0 {
            return fail("compute.max_messages must be at least 1".into());
        }
        let simulator = &compute.simulator;
        if simulator.prompt_token_us.max(simulator.output_token_us) > MAX_SIMULATED_TOKEN_US {
            return fail(format!(
                "compute.simulator: prompt_token_us and output_token_us must be at most {MAX_SIMULATED_TOKEN_US}"
            ));
        }
        if self.data.notify_interval_ms < 50 || self.data.analytics_flush_ms < 100 {
            return fail("data: notify_interval_ms >= 50 and analytics_flush_ms >= 100".into());
        }
        if self.gateway.separator.is_empty() {
            return fail("gateway.separator must not be empty".into());
        }
        self.gateway.ui.validate()?;
        self.validate_control()?;
        self.cluster.validate()?;
        self.hybrid.validate()?;
        if self.hybrid.enabled() && !self.cluster.enabled() {
            return fail(
                "hybrid.hub_domain needs a cluster (cluster.urls, `serve --cluster`)".into(),
            );
        }
        if let Some(oauth) = &self.auth.oauth {
            for (key, url) in [("jwks_url", &oauth.jwks_url), ("issuer", &oauth.issuer)] {
                if !is_http_url(url) {
                    return fail(format!("auth.oauth.{key} must be an http(s) URL"));
                }
            }
        }
        for backend in &self.gateway.backends {
            if !is_backend_name(&backend.name) {
                return fail(format!(
                    "gateway backend name `{}`: use letters, digits and `-` only",
                    backend.name
                ));
            }
            if backend.url.is_some() != backend.replicas.is_empty() {
                return fail(format!(
                    "gateway backend `{}`: give either `url` or `replicas`",
                    backend.name
                ));
            }
            if !backend.endpoints().iter().all(|url| is_http_url(url)) {
                return fail(format!(
                    "gateway backend `{}`: urls must start with http:// or https://",
                    backend.name
                ));
            }
        }
        Ok(())
    }

    fn validate_connections(&self) -> Result<(), CoreError> {
        let http = &self.http;
        let timeouts = [
            http.header_read_timeout_ms,
            http.body_read_timeout_ms,
            http.idle_timeout_ms,
        ];
        if timeouts.contains(&0) {
            return Err(CoreError::Config(
                "http: header_read_timeout_ms, body_read_timeout_ms and idle_timeout_ms must be at least 1".into(),
            ));
        }
        if http.max_connections == 0 || http.max_connections_per_address == 0 {
            return Err(CoreError::Config(
                "http: max_connections and max_connections_per_address must be at least 1".into(),
            ));
        }
        Ok(())
    }

    fn validate_control(&self) -> Result<(), CoreError> {
        let control = &self.control;
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
        if self.http.rate_limit_per_second < 0.0 {
            return Err(CoreError::Config(
                "http.rate_limit_per_second must not be negative".into(),
            ));
        }
        Ok(())
    }

    /// The config as TOML, for `jetsonmind config` and the settings resource.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}

/// A Streamable HTTP endpoint's URL.
pub fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// A backend name, used in prefixes (`node1_tool`, `node1+uri`): letters,
/// digits and `-`.
pub fn is_backend_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn read_table(path: &Path) -> Result<toml::Table, CoreError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CoreError::Config(format!("cannot read {}: {e}", path.display())))?;
    text.parse::<toml::Table>()
        .map_err(|e| CoreError::Config(format!("{}: {e}", path.display())))
}

/// Set `HTTP__LISTEN` style paths (lower-cased) in a TOML table.
fn set_path(table: &mut toml::Table, path: &str, raw: &str) -> Result<(), CoreError> {
    let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
    let (last, parents) = keys.split_last().expect("split yields at least one item");
    let mut node = table;
    for key in parents {
        let entry = node
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry.as_table_mut().ok_or_else(|| {
            CoreError::Config(format!("{ENV_PREFIX}{path}: `{key}` is not a section"))
        })?;
    }
    node.insert(last.clone(), parse_env_value(raw));
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_bind_loopback() {
        let config = Config::load(None, []).unwrap();
        assert!(config.http.listen.ip().is_loopback());
        assert_eq!(config.http.listen.port(), 8080);
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[http]\nlisten = \"127.0.0.1:9000\"\nmax_body_bytes = 2048\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env(&[
                ("JETSONMIND_HTTP__MAX_BODY_BYTES", "4096"),
                ("JETSONMIND_GATEWAY__PREFIX", "always"),
                ("JETSONMIND_HTTP__ALLOWED_HOSTS", "[\"a.example\"]"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.http.listen.port(), 9000);
        assert_eq!(config.http.max_body_bytes, 4096);
        assert_eq!(config.gateway.prefix, PrefixMode::Always);
        assert_eq!(config.http.allowed_hosts, vec!["a.example".to_string()]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = Config::load(None, env(&[("JETSONMIND_HTTP__LISTN", "x")])).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
        let err =
            Config::load(None, env(&[("JETSONMIND_HTTP__MAX_BODY_BYTES", "10")])).unwrap_err();
        assert!(err.to_string().contains("max_body_bytes"), "{err}");
    }

    #[test]
    fn run_time_settings_sit_between_the_file_and_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(
            &file,
            format!(
                "[data]\ndir = {:?}\n[cache]\nttl_secs = 1\nmax_bytes = 2048\n",
                data.to_str().unwrap()
            ),
        )
        .unwrap();
        std::fs::write(
            data.join(SETTINGS_FILE),
            "[cache]\nttl_secs = 2\nmax_bytes = 4096\n",
        )
        .unwrap();
        let sources = ConfigSources {
            file: Some(file),
            env: env(&[("JETSONMIND_CACHE__MAX_BYTES", "8192")]),
            data_dir: None,
        };
        let config = sources.load().unwrap();
        assert_eq!(config.cache.ttl_secs, 2);
        assert_eq!(config.cache.max_bytes, 8192);
        assert_eq!(sources.settings_path().unwrap(), data.join(SETTINGS_FILE));
        let moved: toml::Table = "[data]\ndir = \"/elsewhere\"".parse().unwrap();
        let err = sources.load_with(&moved).unwrap_err();
        assert!(err.to_string().contains("data.dir"), "{err}");
    }

    #[test]
    fn a_cloud_tier_needs_a_cluster_and_sane_budgets() {
        let hub = [("JETSONMIND_HYBRID__HUB_DOMAIN", "hub")];
        let err = Config::load(None, env(&hub)).unwrap_err();
        assert!(err.to_string().contains("needs a cluster"), "{err}");
        let site = [
            ("JETSONMIND_CLUSTER__URLS", "[\"nats://127.0.0.1:4222\"]"),
            hub[0],
        ];
        let config = Config::load(None, env(&site)).unwrap();
        assert!(config.hybrid.enabled());
        let mut bad = config.clone();
        bad.hybrid.keys.insert(
            "k1".into(),
            EgressRule {
                budget: Some(-1.0),
                ..Default::default()
            },
        );
        let err = bad.validate().unwrap_err();
        assert!(err.to_string().contains("hybrid.keys.k1.budget"), "{err}");
    }

    #[test]
    fn the_example_file_documents_the_defaults() {
        let example = include_str!("../../../jetsonmind.example.toml");
        let table: toml::Table = example.parse().unwrap();
        let config = parse_table(table).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn the_simulator_is_chosen_and_timed_from_the_environment() {
        let config = Config::load(
            None,
            env(&[
                ("JETSONMIND_COMPUTE__ENGINE", "simulated"),
                ("JETSONMIND_COMPUTE__SIMULATOR__OUTPUT_TOKEN_US", "500"),
            ]),
        )
        .unwrap();
        assert_eq!(config.compute.engine, ComputeEngine::Simulated);
        assert_eq!(config.compute.simulator.output_token_us, 500);
        assert_eq!(config.compute.simulator.prompt_token_us, 200);
        assert_eq!(Config::default().compute.engine, ComputeEngine::Llama);
        let slow = env(&[("JETSONMIND_COMPUTE__SIMULATOR__OUTPUT_TOKEN_US", "1000001")]);
        let err = Config::load(None, slow).unwrap_err();
        assert!(err.to_string().contains("output_token_us"), "{err}");
        let unknown = env(&[("JETSONMIND_COMPUTE__ENGINE", "mock")]);
        let err = Config::load(None, unknown).unwrap_err();
        assert!(err.to_string().contains("simulated"), "{err}");
    }

    #[test]
    fn backend_urls_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[[gateway.backends]]\nname = \"n1\"\nurl = \"ftp://x\"\n",
        )
        .unwrap();
        let err = Config::load(Some(&file), []).unwrap_err();
        assert!(err.to_string().contains("n1"), "{err}");
    }

    #[test]
    fn cluster_telemetry_limits_are_checked() {
        let cluster = |key: &str, value: &str| {
            env(&[
                ("JETSONMIND_CLUSTER__URLS", "[\"nats://127.0.0.1:4222\"]"),
                (key, value),
            ])
        };
        let ok = Config::load(None, cluster("JETSONMIND_CLUSTER__TELEMETRY_HISTORY", "1"));
        assert_eq!(ok.unwrap().cluster.telemetry_interval_ms, 2_000);
        for (key, value, named) in [
            ("TELEMETRY_INTERVAL_MS", "0", "telemetry_interval_ms"),
            ("STATUS_TIMEOUT_MS", "0", "status_timeout_ms"),
            ("TELEMETRY_MAX_AGE_MS", "3999", "telemetry_max_age_ms"),
            ("TELEMETRY_HISTORY", "0", "telemetry_history"),
        ] {
            let err = Config::load(None, cluster(&format!("JETSONMIND_CLUSTER__{key}"), value));
            let err = err.unwrap_err().to_string();
            assert!(err.contains(named), "{key}={value}: {err}");
        }
    }
}
