//! An upstream MCP server, seen from this process as a client: how to reach
//! it, whether it is up, what it offers, and calls forwarded to it.
//!
//! The gateway federates upstreams and the control plane routes among
//! replicas; both hold their peers as [`Upstream`]s, so connecting, health
//! checks and forwarding are written once.

pub mod forward;
pub mod local;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rmcp::model::{
    ClientRequest, PingRequest, Prompt, Resource, ResourceTemplate, SubscribeRequestParams, Tool,
    UnsubscribeRequestParams,
};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientCacheConfig, RoleClient};
use serde::Serialize;
use tokio::io::DuplexStream;
use tokio_util::sync::CancellationToken;

pub use forward::{
    ForwardError, ForwardingClient, ProgressRoutes, ProgressSink, ResourceChange, call_tool,
};
pub use local::{LocalClient, ReadError};

pub type Client = RunningService<RoleClient, ForwardingClient>;

/// Identifies one upstream for as long as the process runs (indices shift
/// when replicas come and go; these never repeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct UpstreamId(u64);

impl UpstreamId {
    /// A new id, never handed out before in this process.
    pub fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A credential sent upstream; never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret held by environment variable `var` (config files name the
    /// variable, never the secret).
    pub fn from_env(var: &str) -> Result<Self, String> {
        std::env::var(var)
            .map(Self)
            .map_err(|_| format!("environment variable {var} is not set"))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Opens a fresh connection as an in-memory pipe: the other end is a server
/// in this process, or a bridge to one elsewhere (another node over NATS).
pub type OpenPipe = Arc<dyn Fn() -> DuplexStream + Send + Sync>;

/// How to open a connection to an upstream.
#[derive(Clone)]
pub enum Connector {
    /// Streamable HTTP endpoint, e.g. another node's gateway, with a bearer
    /// token when it requires one.
    Http { url: String, bearer: Option<Secret> },
    /// A server in this process; each connection starts it on a fresh in-memory pipe.
    InProcess(OpenPipe),
    /// A pipe to a bridge that carries the messages elsewhere (a server on
    /// another node of the cluster); `label` says where, for status pages.
    Pipe { label: String, open: OpenPipe },
    /// A program speaking MCP on its stdin/stdout, started for the connection.
    Command(Vec<String>),
}

impl Connector {
    /// An HTTP endpoint without credentials.
    pub fn http(url: impl Into<String>) -> Self {
        Connector::Http {
            url: url.into(),
            bearer: None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Connector::Http { url, .. } => url.clone(),
            Connector::InProcess(_) => "in-process".into(),
            Connector::Pipe { label, .. } => label.clone(),
            Connector::Command(argv) => format!("stdio: {}", argv.join(" ")),
        }
    }
}

/// What one upstream offers, as it names it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Offer {
    pub tools: Vec<Tool>,
    pub resources: Vec<Resource>,
    pub templates: Vec<ResourceTemplate>,
    pub prompts: Vec<Prompt>,
}

impl Offer {
    pub fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }
}

#[derive(Default)]
struct State {
    client: Option<Arc<Client>>,
    /// Cancelled when this connection is given up, so calls still waiting
    /// on it end at once instead of hanging on a dead peer.
    lost: CancellationToken,
    offer: Option<Offer>,
    last_error: Option<String>,
    connected_since: Option<SystemTime>,
    /// Round trip of the last health check.
    last_check: Option<Duration>,
    /// When the offer was last fetched whole.
    listed_at: Option<Instant>,
    /// Resource subscriptions held on this connection (the upstream's URIs).
    subscribed: BTreeSet<String>,
    /// Subscriptions this connection refused, with why; not asked again
    /// until it reconnects.
    refused: BTreeMap<String, String>,
}

pub struct Upstream {
    pub id: UpstreamId,
    pub name: String,
    connector: Connector,
    state: Mutex<State>,
    /// The upstream said its lists changed since they were fetched.
    lists_changed: Arc<AtomicBool>,
}

/// What `manage_connections` and `monitor_health` show of an upstream.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub endpoint: String,
    pub up: bool,
    pub tools: usize,
    pub resources: usize,
    pub templates: usize,
    pub connected_since_unix: Option<u64>,
    pub last_check_ms: Option<f64>,
    pub last_error: Option<String>,
    /// Resources whose changes are relayed from this upstream now.
    pub subscriptions: Vec<String>,
    /// Resources whose subscription the upstream refused, with its reason.
    pub refused_subscriptions: BTreeMap<String, String>,
}

/// A live connection and the token that fires when it is given up.
pub struct Connection {
    pub client: Arc<Client>,
    pub lost: CancellationToken,
}

impl Upstream {
    pub fn new(name: impl Into<String>, connector: Connector) -> Self {
        Self {
            id: UpstreamId::fresh(),
            name: name.into(),
            connector,
            state: Mutex::new(State::default()),
            lists_changed: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("upstream state lock")
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    pub fn client(&self) -> Option<Arc<Client>> {
        self.state().client.clone()
    }

    pub fn connection(&self) -> Option<Connection> {
        let state = self.state();
        let client = state.client.clone()?;
        Some(Connection {
            client,
            lost: state.lost.clone(),
        })
    }

    pub fn is_up(&self) -> bool {
        self.state().client.is_some()
    }

    pub fn offer(&self) -> Option<Offer> {
        self.state().offer.clone()
    }

    /// One tool of its offer (without copying the rest).
    pub fn tool(&self, name: &str) -> Option<Tool> {
        self.state().offer.as_ref()?.tool(name).cloned()
    }

    pub fn last_check(&self) -> Option<Duration> {
        self.state().last_check
    }

    /// Forget the connection after a failure; the next check reconnects.
    /// Returns true when the upstream was up until now.
    pub fn mark_down(&self, error: impl Into<String>) -> bool {
        let mut state = self.state();
        let was_up = state.client.take().is_some();
        state.lost.cancel();
        state.offer = None;
        state.connected_since = None;
        state.subscribed.clear();
        state.refused.clear();
        state.last_error = Some(error.into());
        if was_up {
            tracing::warn!(upstream = %self.name, error = ?state.last_error, "upstream down");
        }
        was_up
    }

    /// Check liveness and refresh the offer, connecting first when needed.
    /// Returns true when the offer changed (including up/down).
    ///
    /// A live connection is pinged; its lists are fetched again only when the
    /// upstream said they changed (`notifications/*/list_changed`), or they
    /// are older than `relist_after`: a cluster of N nodes checks N x N
    /// replicas, and a compute replica's lists never change while it runs.
    pub async fn check(
        &self,
        handler: ForwardingClient,
        timeout: Duration,
        relist_after: Duration,
    ) -> bool {
        let client = match self.client() {
            Some(client) => client,
            None => match tokio::time::timeout(timeout, self.connect(handler)).await {
                Ok(Ok(client)) => Arc::new(client),
                Ok(Err(e)) => return self.mark_down(e),
                Err(_) => return self.mark_down("connect timed out"),
            },
        };
        let started = Instant::now();
        let known = self.known_offer(relist_after);
        let listing = known.is_none();
        let check = async {
            match known {
                Some(offer) => ping(&client).await.map(|()| offer),
                None => fetch_offer(&client).await,
            }
        };
        match tokio::time::timeout(timeout, check).await {
            Ok(Ok(offer)) => self.set_up(client, offer, started.elapsed(), listing),
            Ok(Err(e)) => self.mark_down(e),
            Err(_) => self.mark_down("health check timed out"),
        }
    }

    /// The offer as last fetched, while it may still be trusted.
    fn known_offer(&self, relist_after: Duration) -> Option<Offer> {
        let changed = self.lists_changed.swap(false, Ordering::SeqCst);
        let state = self.state();
        let fresh = state
            .listed_at
            .is_some_and(|at| at.elapsed() < relist_after);
        match (changed, fresh) {
            (false, true) => state.offer.clone(),
            _ => None,
        }
    }

    /// Set by the connection's handler when the upstream says its lists
    /// changed; the next check fetches them.
    pub fn lists_changed(&self) -> Arc<AtomicBool> {
        self.lists_changed.clone()
    }

    fn set_up(
        &self,
        client: Arc<Client>,
        offer: Offer,
        round_trip: Duration,
        listed: bool,
    ) -> bool {
        let mut state = self.state();
        if listed {
            state.listed_at = Some(Instant::now());
        }
        let changed = state.offer.as_ref() != Some(&offer);
        if state.client.is_none() {
            tracing::info!(upstream = %self.name, tools = offer.tools.len(), "upstream up");
            state.connected_since = Some(SystemTime::now());
            state.lost = CancellationToken::new();
            state.subscribed.clear();
            state.refused.clear();
        }
        state.client = Some(client);
        state.offer = Some(offer);
        state.last_error = None;
        state.last_check = Some(round_trip);
        changed
    }

    async fn connect(&self, handler: ForwardingClient) -> Result<Client, String> {
        let result = match &self.connector {
            Connector::Http { url, bearer } => {
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                // Many calls share one connection: let them run side by side.
                config.max_concurrent_requests = 256;
                if let Some(Secret(token)) = bearer {
                    config = config.auth_header(token.clone());
                }
                handler
                    .connect(StreamableHttpClientTransport::from_config(config))
                    .await
            }
            Connector::InProcess(open) | Connector::Pipe { open, .. } => {
                handler.connect(open()).await
            }
            Connector::Command(argv) => {
                let (program, args) = argv
                    .split_first()
                    .ok_or_else(|| "empty command".to_string())?;
                let mut command = tokio::process::Command::new(program);
                command.args(args);
                let child = rmcp::transport::TokioChildProcess::new(command)
                    .map_err(|e| format!("cannot start `{program}`: {e}"))?;
                handler.connect(child).await
            }
        };
        let client =
            result.map_err(|e| format!("cannot connect to {}: {e}", self.connector.describe()))?;
        // Many principals are served over one connection, and a dead peer
        // must be seen at once: no shared or stale cached answers.
        client
            .peer()
            .set_response_cache_config(ClientCacheConfig::disabled())
            .await;
        Ok(client)
    }

    pub fn status(&self) -> UpstreamStatus {
        let state = self.state();
        let count = |f: fn(&Offer) -> usize| state.offer.as_ref().map_or(0, f);
        UpstreamStatus {
            name: self.name.clone(),
            endpoint: self.connector.describe(),
            up: state.client.is_some(),
            tools: count(|o| o.tools.len()),
            resources: count(|o| o.resources.len()),
            templates: count(|o| o.templates.len()),
            connected_since_unix: state
                .connected_since
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            last_check_ms: state.last_check.map(|d| d.as_secs_f64() * 1000.0),
            last_error: state.last_error.clone(),
            subscriptions: state.subscribed.iter().cloned().collect(),
            refused_subscriptions: state.refused.clone(),
        }
    }

    /// Hold subscriptions to exactly `wanted` (the upstream's URIs) on the
    /// current connection; its notifications reach the [`ForwardingClient`].
    #[allow(deprecated)] // resources/subscribe: the era in-process sessions speak
    pub async fn sync_subscriptions(&self, wanted: &BTreeSet<String>) {
        let Some(client) = self.client() else { return };
        let (have, refused) = {
            let state = self.state();
            (state.subscribed.clone(), state.refused.clone())
        };
        let peer = client.peer();
        for uri in wanted.difference(&have) {
            if refused.contains_key(uri) {
                continue;
            }
            let outcome = peer
                .subscribe(SubscribeRequestParams::new(uri.clone()))
                .await;
            let mut state = self.state();
            match outcome {
                Ok(()) => state.subscribed.insert(uri.clone()),
                Err(e) => {
                    tracing::warn!(upstream = %self.name, %uri, error = %e, "upstream refused a subscription");
                    state.refused.insert(uri.clone(), e.to_string()).is_none()
                }
            };
        }
        for uri in have.difference(wanted) {
            let _ = peer
                .unsubscribe(UnsubscribeRequestParams::new(uri.clone()))
                .await;
            self.state().subscribed.remove(uri);
        }
    }
}

/// Whether the upstream answers at all.
async fn ping(client: &Client) -> Result<(), String> {
    client
        .peer()
        .send_request(ClientRequest::PingRequest(PingRequest::default()))
        .await
        .map(|_| ())
        .map_err(|e| format!("ping: {e}"))
}

/// Ping first: list results may come from the client's cache and would not
/// notice a dead upstream.
async fn fetch_offer(client: &Client) -> Result<Offer, String> {
    let peer = client.peer();
    let describe = |what: &str, e: rmcp::ServiceError| format!("{what}: {e}");
    ping(client).await?;
    let capabilities = peer
        .peer_info()
        .map(|info| info.capabilities.clone())
        .unwrap_or_default();
    let tools = match capabilities.tools {
        Some(_) => peer
            .list_all_tools()
            .await
            .map_err(|e| describe("tools/list", e))?,
        None => Vec::new(),
    };
    let (resources, templates) = match capabilities.resources {
        Some(_) => (
            peer.list_all_resources()
                .await
                .map_err(|e| describe("resources/list", e))?,
            peer.list_all_resource_templates()
                .await
                .map_err(|e| describe("resources/templates/list", e))?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    let prompts = match capabilities.prompts {
        Some(_) => peer
            .list_all_prompts()
            .await
            .map_err(|e| describe("prompts/list", e))?,
        None => Vec::new(),
    };
    Ok(Offer {
        tools,
        resources,
        templates,
        prompts,
    })
}
