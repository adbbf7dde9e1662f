//! One typed configuration for every server: the sections they all share
//! (`http`, `mcp`, `data`, `telemetry`, `auth`, `cluster`) and each server's
//! own, which its crate defines as a [`Section`] and the binary names in a
//! [`Schema`].
//!
//! Sources, later ones winning: built-in defaults, a TOML file, environment
//! variables, then command-line flags (applied by the binary). An environment
//! variable names a key by its path: `JETSONMIND_HTTP__LISTEN=127.0.0.1:9000`
//! sets `[http] listen`. Its value is read as TOML when it parses as a TOML
//! value (`64`, `true`, `["a", "b"]`) and as a plain string otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use jetsonmind_telemetry::{TegrastatsMode, TelemetryConfig};
use serde::{Deserialize, Serialize};

use crate::CoreError;

mod section;
use section::Sections;
pub use section::{Schema, Section, keys};

/// The prefix of environment variables that set config keys.
pub const ENV_PREFIX: &str = "JETSONMIND_";

/// A node's configuration: the shared sections as fields, each server's
/// through [`Config::section`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub mcp: McpConfig,
    pub data: DataConfig,
    pub telemetry: TelemetryConfig,
    pub auth: AuthConfig,
    pub cluster: ClusterConfig,
    /// Read through the schema, not serde (see [`Schema`]).
    #[serde(skip)]
    sections: Sections,
}

/// The shared sections' tables.
const SHARED_SECTIONS: [&str; 6] = ["http", "mcp", "data", "telemetry", "auth", "cluster"];

/// What the shared sections' keys are to the settings (each server's
/// section says its own: see [`Section`]).
const SHARED_ROLES: section::Roles = section::Roles {
    live: &["data.notify_interval_ms"],
    trust: &[
        "auth",
        "http.listen",
        "http.allowed_hosts",
        "http.allowed_origins",
        // Programs it runs, and where it reads the device and files.
        "telemetry.tegrastats_command",
        "telemetry.root",
        "data.dir",
        "cluster",
    ],
    node: &["http", "data.dir", "cluster", "telemetry"],
};

impl Serialize for Config {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Whole<'a> {
            http: &'a HttpConfig,
            mcp: &'a McpConfig,
            data: &'a DataConfig,
            telemetry: &'a TelemetryConfig,
            auth: &'a AuthConfig,
            cluster: &'a ClusterConfig,
            #[serde(flatten)]
            sections: &'a Sections,
        }
        Whole {
            http: &self.http,
            mcp: &self.mcp,
            data: &self.data,
            telemetry: &self.telemetry,
            auth: &self.auth,
            cluster: &self.cluster,
            sections: &self.sections,
        }
        .serialize(serializer)
    }
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
    /// The server sections a configuration may have besides the shared ones.
    pub schema: Schema,
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
        let mut config = parse_table(table, &self.schema)?;
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
        Ok(parse_table(table, &self.schema)?.data.dir)
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

/// The shared sections out of `table`, and `schema`'s from their tables;
/// any other table is an error that names it.
fn parse_table(mut table: toml::Table, schema: &Schema) -> Result<Config, CoreError> {
    let sections = schema.take_sections(&mut table)?;
    if let Some(unknown) = table
        .keys()
        .find(|k| !SHARED_SECTIONS.contains(&k.as_str()))
    {
        let known: Vec<&str> = SHARED_SECTIONS.into_iter().chain(schema.names()).collect();
        return Err(CoreError::Config(format!(
            "unknown section `{unknown}`, expected one of `{}`",
            known.join("`, `")
        )));
    }
    let mut config: Config = table
        .try_into()
        .map_err(|e: toml::de::Error| CoreError::Config(e.to_string()))?;
    config.sections = sections;
    Ok(config)
}

impl Config {
    /// The model directory.
    pub fn models_dir(&self) -> PathBuf {
        self.data.dir.join("models")
    }

    /// Defaults, then `file` (if given), then `JETSONMIND_*` variables from
    /// `env`, with `schema`'s sections; no run-time settings (see
    /// [`ConfigSources`] for those).
    pub fn load(
        schema: &Schema,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, CoreError> {
        let sources = ConfigSources {
            file: file.map(Path::to_path_buf),
            env: env.into_iter().collect(),
            data_dir: None,
            schema: schema.clone(),
        };
        sources.load_with(&toml::Table::new())
    }

    /// A server's section: as loaded, or its defaults when this
    /// configuration was built without it (`Config::default()`).
    pub fn section<T: Section>(&self) -> &T {
        self.sections.get()
    }

    /// A server's section to change (its defaults first when missing).
    pub fn section_mut<T: Section>(&mut self) -> &mut T {
        self.sections.get_mut()
    }

    /// The server sections this configuration holds, to read it again with
    /// (its own settings changed, say).
    pub fn schema(&self) -> Schema {
        self.sections.schema()
    }

    /// With `section` in place of its table.
    pub fn with<T: Section>(mut self, section: T) -> Self {
        *self.section_mut() = section;
        self
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
        if self.data.notify_interval_ms < 50 || self.data.analytics_flush_ms < 100 {
            return fail("data: notify_interval_ms >= 50 and analytics_flush_ms >= 100".into());
        }
        if self.http.rate_limit_per_second < 0.0 {
            return fail("http.rate_limit_per_second must not be negative".into());
        }
        self.cluster.validate()?;
        if let Some(oauth) = &self.auth.oauth {
            for (key, url) in [("jwks_url", &oauth.jwks_url), ("issuer", &oauth.issuer)] {
                if !is_http_url(url) {
                    return fail(format!("auth.oauth.{key} must be an http(s) URL"));
                }
            }
        }
        self.sections.validate(self)
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
        let config = Config::load(&Schema::new(), None, []).unwrap();
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
            &Schema::new(),
            Some(&file),
            env(&[
                ("JETSONMIND_HTTP__MAX_BODY_BYTES", "4096"),
                ("JETSONMIND_HTTP__ALLOWED_HOSTS", "[\"a.example\"]"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.http.listen.port(), 9000);
        assert_eq!(config.http.max_body_bytes, 4096);
        assert_eq!(config.http.allowed_hosts, vec!["a.example".to_string()]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = Config::load(
            &Schema::new(),
            None,
            env(&[("JETSONMIND_HTTP__LISTN", "x")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
        let err = Config::load(
            &Schema::new(),
            None,
            env(&[("JETSONMIND_HTTP__MAX_BODY_BYTES", "10")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_body_bytes"), "{err}");
    }

    /// A server's section, as a server crate would define one.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        ttl_secs: u64,
        max_bytes: usize,
    }

    impl Section for Sample {
        const NAME: &'static str = "sample";

        fn validate(&self, config: &Config) -> Result<(), CoreError> {
            match self.max_bytes > config.http.max_body_bytes * 1024 {
                true => Err(CoreError::Config("sample.max_bytes is too large".into())),
                false => Ok(()),
            }
        }
    }

    #[test]
    fn server_sections_load_validate_and_render_through_the_schema() {
        let schema = Schema::new().with::<Sample>();
        let set = env(&[("JETSONMIND_SAMPLE__TTL_SECS", "5")]);
        let config = Config::load(&schema, None, set).unwrap();
        assert_eq!(config.section::<Sample>().ttl_secs, 5);
        assert!(
            config.to_toml().contains("[sample]\nttl_secs = 5"),
            "{}",
            config.to_toml()
        );
        let typo = env(&[("JETSONMIND_SAMPLE__TTL", "5")]);
        let err = Config::load(&schema, None, typo).unwrap_err().to_string();
        assert!(err.contains("sample") && err.contains("ttl"), "{err}");
        let huge = env(&[("JETSONMIND_SAMPLE__MAX_BYTES", "1000000000000")]);
        let err = Config::load(&schema, None, huge).unwrap_err().to_string();
        assert!(err.contains("sample.max_bytes"), "{err}");
        // Without the section in the schema, its table is unknown, and a read gives its defaults.
        let err = Config::load(
            &Schema::new(),
            None,
            env(&[("JETSONMIND_SAMPLE__TTL_SECS", "5")]),
        );
        let err = err.unwrap_err().to_string();
        assert!(
            err.contains("unknown section `sample`") && err.contains("`http`"),
            "{err}"
        );
        assert_eq!(Config::default().section::<Sample>(), &Sample::default());
        let changed = Config::default().with(Sample {
            ttl_secs: 9,
            max_bytes: 0,
        });
        assert_eq!(changed.section::<Sample>().ttl_secs, 9);
        assert_ne!(changed, Config::default());
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
                "[data]\ndir = {:?}\n[sample]\nttl_secs = 1\nmax_bytes = 2048\n",
                data.to_str().unwrap()
            ),
        )
        .unwrap();
        std::fs::write(
            data.join(SETTINGS_FILE),
            "[sample]\nttl_secs = 2\nmax_bytes = 4096\n",
        )
        .unwrap();
        let sources = ConfigSources {
            file: Some(file),
            env: env(&[("JETSONMIND_SAMPLE__MAX_BYTES", "8192")]),
            data_dir: None,
            schema: Schema::new().with::<Sample>(),
        };
        let config = sources.load().unwrap();
        assert_eq!(config.section::<Sample>().ttl_secs, 2);
        assert_eq!(config.section::<Sample>().max_bytes, 8192);
        assert_eq!(sources.settings_path().unwrap(), data.join(SETTINGS_FILE));
        let moved: toml::Table = "[data]\ndir = \"/elsewhere\"".parse().unwrap();
        let err = sources.load_with(&moved).unwrap_err();
        assert!(err.to_string().contains("data.dir"), "{err}");
    }

    #[test]
    fn cluster_telemetry_limits_are_checked() {
        let cluster = |key: &str, value: &str| {
            env(&[
                ("JETSONMIND_CLUSTER__URLS", "[\"nats://127.0.0.1:4222\"]"),
                (key, value),
            ])
        };
        let ok = Config::load(
            &Schema::new(),
            None,
            cluster("JETSONMIND_CLUSTER__TELEMETRY_HISTORY", "1"),
        );
        assert_eq!(ok.unwrap().cluster.telemetry_interval_ms, 2_000);
        for (key, value, named) in [
            ("TELEMETRY_INTERVAL_MS", "0", "telemetry_interval_ms"),
            ("STATUS_TIMEOUT_MS", "0", "status_timeout_ms"),
            ("TELEMETRY_MAX_AGE_MS", "3999", "telemetry_max_age_ms"),
            ("TELEMETRY_HISTORY", "0", "telemetry_history"),
        ] {
            let err = Config::load(
                &Schema::new(),
                None,
                cluster(&format!("JETSONMIND_CLUSTER__{key}"), value),
            );
            let err = err.unwrap_err().to_string();
            assert!(err.contains(named), "{key}={value}: {err}");
        }
    }
}
