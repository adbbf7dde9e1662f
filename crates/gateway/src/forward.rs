//! The gateway's client side: progress notifications from a backend are sent
//! on to whoever made the call (an MCP client, or the OpenAI endpoint), and
//! a call its caller abandons is cancelled at the backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jetsonmind_core::rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotification, CancelledNotificationParam,
    ClientConfig, ClientNotification, ClientRequest, Implementation, ProgressNotificationParam,
    ProgressToken, RequestId, ResourceUpdatedNotificationParam, ServerResult,
};
use jetsonmind_core::rmcp::service::{
    NotificationContext, Peer, PeerRequestOptions, RequestContext,
};
use jetsonmind_core::rmcp::{ClientHandler, RoleClient, RoleServer, ServiceError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Progress tokens of forwarded calls, and whom their progress belongs to.
///
/// rmcp gives every outgoing request a token of its own, unique per backend
/// connection, so a route is keyed by backend and that token; the client's
/// own token (two clients may both use `1`) is put back on the way out.
#[derive(Default)]
pub struct ProgressRoutes {
    routes: Mutex<HashMap<RouteKey, ProgressSink>>,
}

/// Where a call's progress goes.
#[derive(Clone)]
pub enum ProgressSink {
    /// An MCP client, under its own progress token.
    Client {
        peer: Peer<RoleServer>,
        token: ProgressToken,
    },
    /// An in-process consumer (the OpenAI endpoint's streaming).
    Channel(mpsc::UnboundedSender<ProgressNotificationParam>),
}

impl ProgressSink {
    /// The sink for an MCP request, if its client asked for progress.
    pub fn of_request(caller: &RequestContext<RoleServer>) -> Option<Self> {
        let token = caller.meta.get_progress_token()?;
        Some(ProgressSink::Client {
            peer: caller.peer.clone(),
            token,
        })
    }

    async fn send(self, mut params: ProgressNotificationParam) {
        match self {
            ProgressSink::Client { peer, token } => {
                params.progress_token = token;
                if let Err(e) = peer.notify_progress(params).await {
                    tracing::debug!(error = %e, "client went away before its progress arrived");
                }
            }
            ProgressSink::Channel(sender) => {
                let _ = sender.send(params);
            }
        }
    }
}

type RouteKey = (usize, ProgressToken);

/// Removes the route when the forwarded call ends, however it ends.
pub struct RouteGuard {
    routes: Arc<ProgressRoutes>,
    key: RouteKey,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.routes.map().remove(&self.key);
    }
}

impl ProgressRoutes {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<RouteKey, ProgressSink>> {
        self.routes.lock().expect("progress routes lock")
    }

    /// Route progress for `ours` (the token on the call to `backend`) to
    /// `sink` until the guard drops.
    pub fn register(
        self: &Arc<Self>,
        backend: usize,
        ours: ProgressToken,
        sink: ProgressSink,
    ) -> RouteGuard {
        let key = (backend, ours);
        self.map().insert(key.clone(), sink);
        RouteGuard {
            routes: self.clone(),
            key,
        }
    }

    fn lookup(&self, backend: usize, token: &ProgressToken) -> Option<ProgressSink> {
        self.map().get(&(backend, token.clone())).cloned()
    }
}

/// A backend's resource changed: (backend index, the backend's URI).
pub type ResourceChange = (usize, String);

/// The client handler of one backend connection.
#[derive(Clone)]
pub struct ForwardingClient {
    pub backend: usize,
    pub progress: Arc<ProgressRoutes>,
    /// Where the backend's `notifications/resources/updated` go; none for
    /// connections that subscribe to nothing.
    pub changes: Option<mpsc::UnboundedSender<ResourceChange>>,
}

impl ClientHandler for ForwardingClient {
    fn get_info(&self) -> ClientConfig {
        let mut config = ClientConfig::default();
        config.client_info = Implementation::new("jetsonmind-gateway", env!("CARGO_PKG_VERSION"));
        config
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(sink) = self.progress.lookup(self.backend, &params.progress_token) {
            sink.send(params).await;
        }
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(changes) = &self.changes {
            let _ = changes.send((self.backend, params.uri));
        }
    }
}

/// Why a forwarded call produced no result.
pub enum ForwardError {
    /// The caller cancelled; the backend was told.
    Cancelled,
    Service(ServiceError),
}

/// Call a tool on a backend: its progress goes to `sink`, and if `cancel`
/// fires (or this future is dropped) the backend gets `notifications/cancelled`.
pub async fn call_tool(
    backend: &Peer<RoleClient>,
    backend_index: usize,
    routes: &Arc<ProgressRoutes>,
    params: CallToolRequestParams,
    sink: Option<ProgressSink>,
    cancel: &CancellationToken,
) -> Result<ServerResult, ForwardError> {
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
    let handle = backend
        .send_request_with_option(request, PeerRequestOptions::no_options())
        .await
        .map_err(ForwardError::Service)?;
    let _route =
        sink.map(|sink| routes.register(backend_index, handle.progress_token.clone(), sink));
    let mut abandon = CancelOnDrop {
        peer: Some(backend.clone()),
        id: handle.id.clone(),
    };
    let outcome = tokio::select! {
        outcome = handle.await_response() => outcome.map_err(ForwardError::Service),
        _ = cancel.cancelled() => Err(ForwardError::Cancelled),
    };
    if !matches!(outcome, Err(ForwardError::Cancelled)) {
        abandon.peer = None;
    }
    outcome
}

/// Sends `notifications/cancelled` for a request still open when dropped.
struct CancelOnDrop {
    peer: Option<Peer<RoleClient>>,
    id: RequestId,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(peer) = self.peer.take() else { return };
        let params =
            CancelledNotificationParam::new(Some(self.id.clone()), Some("caller cancelled".into()));
        let notification =
            ClientNotification::CancelledNotification(CancelledNotification::new(params));
        tokio::spawn(async move {
            let _ = peer.send_notification(notification).await;
        });
    }
}
