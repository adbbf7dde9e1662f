//! One federated MCP server, as seen from the gateway: how to reach it,
//! whether it is up, and what it offers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use jetsonmind_core::rmcp::model::{
    ClientRequest, PingRequest, SubscribeRequestParams, UnsubscribeRequestParams,
};
use jetsonmind_core::rmcp::service::RunningService;
use jetsonmind_core::rmcp::transport::StreamableHttpClientTransport;
use jetsonmind_core::rmcp::{ClientCacheConfig, RoleClient, ServiceExt};
use serde::Serialize;
use tokio::io::DuplexStream;

use crate::forward::ForwardingClient;
use crate::view::Offer;

pub type Client = RunningService<RoleClient, ForwardingClient>;

/// How to open a connection to a backend.
#[derive(Clone)]
pub enum Connector {
    /// Streamable HTTP endpoint, e.g. another node's gateway.
    Http(String),
    /// A server in this process; each call starts it on a fresh in-memory pipe.
    InProcess(Arc<dyn Fn() -> DuplexStream + Send + Sync>),
}

impl Connector {
    fn describe(&self) -> String {
        match self {
            Connector::Http(url) => url.clone(),
            Connector::InProcess(_) => "in-process".into(),
        }
    }
}

#[derive(Default)]
struct State {
    client: Option<Arc<Client>>,
    offer: Option<Offer>,
    last_error: Option<String>,
    connected_since: Option<SystemTime>,
    /// Resource subscriptions held on this connection (the backend's URIs).
    subscribed: BTreeSet<String>,
    /// Subscriptions this connection refused, with why; not asked again
    /// until it reconnects.
    refused: BTreeMap<String, String>,
}

pub struct Backend {
    pub name: String,
    connector: Connector,
    state: Mutex<State>,
}

/// What `manage_connections` shows of a backend.
#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    pub name: String,
    pub endpoint: String,
    pub up: bool,
    pub tools: usize,
    pub resources: usize,
    pub templates: usize,
    pub connected_since_unix: Option<u64>,
    pub last_error: Option<String>,
    /// Resources whose changes are relayed from this backend now.
    pub subscriptions: Vec<String>,
    /// Resources whose subscription the backend refused, with its reason.
    pub refused_subscriptions: BTreeMap<String, String>,
}

impl Backend {
    pub fn new(name: impl Into<String>, connector: Connector) -> Self {
        Self {
            name: name.into(),
            connector,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("backend state lock")
    }

    pub fn client(&self) -> Option<Arc<Client>> {
        self.state().client.clone()
    }

    pub fn offer(&self) -> Option<Offer> {
        self.state().offer.clone()
    }

    /// Forget the connection after a failure; the next check reconnects.
    /// Returns true when the backend was up until now.
    pub fn mark_down(&self, error: impl Into<String>) -> bool {
        let mut state = self.state();
        let was_up = state.client.take().is_some();
        state.offer = None;
        state.connected_since = None;
        state.subscribed.clear();
        state.refused.clear();
        state.last_error = Some(error.into());
        if was_up {
            tracing::warn!(backend = %self.name, error = ?state.last_error, "backend down");
        }
        was_up
    }

    /// Check liveness and refresh the offer, connecting first when needed.
    /// Returns true when the offer changed (including up/down).
    pub async fn check(&self, handler: ForwardingClient, timeout: Duration) -> bool {
        let client = match self.client() {
            Some(client) => client,
            None => match tokio::time::timeout(timeout, self.connect(handler)).await {
                Ok(Ok(client)) => Arc::new(client),
                Ok(Err(e)) => return self.mark_down(e),
                Err(_) => return self.mark_down("connect timed out"),
            },
        };
        match tokio::time::timeout(timeout, fetch_offer(&client)).await {
            Ok(Ok(offer)) => self.set_up(client, offer),
            Ok(Err(e)) => self.mark_down(e),
            Err(_) => self.mark_down("health check timed out"),
        }
    }

    fn set_up(&self, client: Arc<Client>, offer: Offer) -> bool {
        let mut state = self.state();
        let changed = state.offer.as_ref() != Some(&offer);
        if state.client.is_none() {
            tracing::info!(backend = %self.name, tools = offer.tools.len(), "backend up");
            state.connected_since = Some(SystemTime::now());
            state.subscribed.clear();
            state.refused.clear();
        }
        state.client = Some(client);
        state.offer = Some(offer);
        state.last_error = None;
        changed
    }

    async fn connect(&self, handler: ForwardingClient) -> Result<Client, String> {
        let result = match &self.connector {
            Connector::Http(url) => {
                handler
                    .serve(StreamableHttpClientTransport::from_uri(url.as_str()))
                    .await
            }
            Connector::InProcess(start) => handler.serve(start()).await,
        };
        let client =
            result.map_err(|e| format!("cannot connect to {}: {e}", self.connector.describe()))?;
        // The gateway serves many principals over one connection and must
        // see a dead backend at once: no shared or stale cached answers.
        client
            .peer()
            .set_response_cache_config(ClientCacheConfig::disabled())
            .await;
        Ok(client)
    }

    pub fn status(&self) -> BackendStatus {
        let state = self.state();
        let count = |f: fn(&Offer) -> usize| state.offer.as_ref().map_or(0, f);
        BackendStatus {
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
            last_error: state.last_error.clone(),
            subscriptions: state.subscribed.iter().cloned().collect(),
            refused_subscriptions: state.refused.clone(),
        }
    }

    /// Hold subscriptions to exactly `wanted` (the backend's URIs) on the
    /// current connection; its notifications reach the gateway's
    /// [`ForwardingClient`].
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
                    tracing::warn!(backend = %self.name, %uri, error = %e, "backend refused a subscription");
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

/// Ping first: list results may come from the client's cache and would not
/// notice a dead backend.
async fn fetch_offer(client: &Client) -> Result<Offer, String> {
    let peer = client.peer();
    let describe = |what: &str, e: jetsonmind_core::rmcp::ServiceError| format!("{what}: {e}");
    peer.send_request(ClientRequest::PingRequest(PingRequest::default()))
        .await
        .map_err(|e| describe("ping", e))?;
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
    Ok(Offer {
        tools,
        resources,
        templates,
    })
}
