//! Calls forwarded to an upstream server: progress notifications from it are
//! sent on to whoever made the call (an MCP client, or the OpenAI endpoint),
//! all before the call's answer, and a call its caller abandons is cancelled
//! upstream.
//!
//! rmcp would hand each notification to a task of its own, where the answer
//! to a call can overtake the progress sent just before it (and progress can
//! come before the call's route is known). So the transport of every upstream
//! connection is wrapped ([`ForwardingClient::connect`]): it takes progress
//! off the wire into a queue per call, in order with the answers, and the
//! forwarded call relays its queue before it returns the answer.

#![allow(deprecated)] // rmcp marks MCP logging deprecated (SEP-2577); both eras are served.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotification, CancelledNotificationParam,
    ClientConfig, ClientNotification, ClientRequest, Implementation, JsonRpcMessage,
    JsonRpcNotification, LoggingMessageNotificationParam, ProgressNotificationParam, ProgressToken,
    RequestId, ResourceUpdatedNotificationParam, ServerNotification, ServerResult,
};
use rmcp::service::{
    ClientInitializeError, NotificationContext, Peer, PeerRequestOptions, RequestContext,
    RxJsonRpcMessage, TxJsonRpcMessage,
};
use rmcp::transport::{IntoTransport, Transport};
use rmcp::{ClientHandler, RoleClient, RoleServer, ServiceError, ServiceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Client, UpstreamId};

/// How long progress for a call nobody has claimed is kept: the call that
/// will claim it is a moment away, and an upstream that sends progress for
/// no call must not grow the table.
const UNCLAIMED_FOR: Duration = Duration::from_secs(60);

/// The progress of forwarded calls, queued per call as it arrives.
///
/// rmcp gives every outgoing request a token of its own, unique per upstream
/// connection, so a queue is keyed by upstream and that token; the client's
/// own token (two clients may both use `1`) is put back on the way out.
#[derive(Default)]
pub struct ProgressRoutes {
    queues: Mutex<HashMap<RouteKey, Queue>>,
}

/// One call's progress, waiting for the call to relay it.
struct Queue {
    sender: mpsc::UnboundedSender<ProgressNotificationParam>,
    /// Taken by the call that claims the queue.
    receiver: Option<mpsc::UnboundedReceiver<ProgressNotificationParam>>,
    opened: Instant,
}

impl Queue {
    fn new() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            sender,
            receiver: Some(receiver),
            opened: Instant::now(),
        }
    }

    fn unclaimed_too_long(&self, now: Instant) -> bool {
        self.receiver.is_some() && now.duration_since(self.opened) > UNCLAIMED_FOR
    }
}

/// Where a call's progress goes. Clones share one high-water mark: when a
/// call is retried on another replica its progress starts again from zero,
/// and the caller is only told once it passes what it already heard
/// (progress must increase).
#[derive(Clone)]
pub struct ProgressSink {
    target: ProgressTarget,
    high_water: Arc<Mutex<Option<f64>>>,
}

#[derive(Clone)]
enum ProgressTarget {
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
        Some(Self::new(ProgressTarget::Client {
            peer: caller.peer.clone(),
            token,
        }))
    }

    /// Progress handed to an in-process consumer.
    pub fn channel(sender: mpsc::UnboundedSender<ProgressNotificationParam>) -> Self {
        Self::new(ProgressTarget::Channel(sender))
    }

    fn new(target: ProgressTarget) -> Self {
        Self {
            target,
            high_water: Arc::default(),
        }
    }

    /// Whether `progress` moves past everything sent so far (and records it).
    fn advances(&self, progress: f64) -> bool {
        let mut high_water = self.high_water.lock().expect("progress high-water lock");
        if high_water.is_some_and(|seen| progress <= seen) {
            return false;
        }
        *high_water = Some(progress);
        true
    }

    /// Tell the caller; its own progress token replaces the one in `params`.
    pub async fn report(&self, mut params: ProgressNotificationParam) {
        if !self.advances(params.progress) {
            return;
        }
        match &self.target {
            ProgressTarget::Client { peer, token } => {
                params.progress_token = token.clone();
                if let Err(e) = peer.notify_progress(params).await {
                    tracing::debug!(error = %e, "client went away before its progress arrived");
                }
            }
            ProgressTarget::Channel(sender) => {
                let _ = sender.send(params);
            }
        }
    }

    /// A callback for a transfer's `(done, total)` bytes, callable from any
    /// thread, that tells this sink of each whole percent, in order: a
    /// download of a million chunks is a hundred notifications. `describe`
    /// makes each one. The relay ends once the callback is dropped and all
    /// is told: await it before what should follow the transfer's progress.
    pub fn percent_reporter(
        self,
        describe: impl Fn(u64, u64) -> ProgressNotificationParam + Send + 'static,
    ) -> (TransferCallback, tokio::task::JoinHandle<()>) {
        let (sender, mut updates) = mpsc::unbounded_channel::<(u64, u64)>();
        let relay = tokio::spawn(async move {
            while let Some((done, total)) = updates.recv().await {
                self.report(describe(done, total)).await;
            }
        });
        let mut last = None;
        let callback = Box::new(move |done: u64, total: u64| {
            let percent = done.saturating_mul(100).checked_div(total).unwrap_or(100);
            if last != Some(percent) {
                last = Some(percent);
                let _ = sender.send((done, total));
            }
        });
        (callback, relay)
    }
}

/// A transfer's progress, as it goes: bytes done, of total.
pub type TransferCallback = Box<dyn FnMut(u64, u64) + Send>;

type RouteKey = (UpstreamId, ProgressToken);

/// A forwarded call's progress queue; removed when the call ends, however
/// it ends.
struct Claimed {
    routes: Arc<ProgressRoutes>,
    key: RouteKey,
    progress: mpsc::UnboundedReceiver<ProgressNotificationParam>,
}

impl Drop for Claimed {
    fn drop(&mut self) {
        self.routes.map().remove(&self.key);
    }
}

impl ProgressRoutes {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<RouteKey, Queue>> {
        self.queues.lock().expect("progress queues lock")
    }

    /// Queue `params` for the call it belongs to, claimed yet or not.
    fn arrive(&self, upstream: UpstreamId, params: ProgressNotificationParam) {
        let key = (upstream, params.progress_token.clone());
        let mut queues = self.map();
        if !queues.contains_key(&key) {
            let now = Instant::now();
            queues.retain(|_, queue| !queue.unclaimed_too_long(now));
        }
        let queue = queues.entry(key).or_insert_with(Queue::new);
        let _ = queue.sender.send(params);
    }

    /// The progress queue of the call to `upstream` whose token is `ours`,
    /// with whatever already arrived for it.
    fn claim(self: &Arc<Self>, upstream: UpstreamId, ours: ProgressToken) -> Claimed {
        let key = (upstream, ours);
        let progress = self
            .map()
            .entry(key.clone())
            .or_insert_with(Queue::new)
            .receiver
            .take()
            // Tokens are unique per connection: a second claim is a bug
            // upstream of here, and gets a queue that hears nothing.
            .unwrap_or_else(|| mpsc::unbounded_channel().1);
        Claimed {
            routes: self.clone(),
            key,
            progress,
        }
    }
}

/// An upstream connection's transport, taking progress notifications off the
/// wire into [`ProgressRoutes`] in the order they arrive.
struct QueueingProgress<T> {
    inner: T,
    routes: Arc<ProgressRoutes>,
    upstream: UpstreamId,
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for QueueingProgress<T> {
    type Error = T::Error;

    fn name() -> Cow<'static, str> {
        T::name()
    }

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        loop {
            match self.inner.receive().await? {
                JsonRpcMessage::Notification(JsonRpcNotification {
                    notification: ServerNotification::ProgressNotification(progress),
                    ..
                }) => self.routes.arrive(self.upstream, progress.params),
                message => return Some(message),
            }
        }
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

/// What an upstream told of one of its resources.
#[derive(Debug, Clone)]
pub struct ResourceChange {
    pub upstream: UpstreamId,
    /// The upstream's URI.
    pub uri: String,
    /// `None`: it changed. Some: a log message about it (an alert fired),
    /// which names the URI in `data.uri`.
    pub log: Option<LoggingMessageNotificationParam>,
}

impl ResourceChange {
    /// Its log message, naming the resource as `exposed` (the URI a gateway
    /// offers it under) instead of the upstream's URI.
    pub fn log_as(self, exposed: &str) -> Option<LoggingMessageNotificationParam> {
        let mut message = self.log?;
        if let Some(data) = message.data.as_object_mut() {
            data.insert("uri".into(), exposed.into());
        }
        Some(message)
    }
}

/// The client handler of one upstream connection.
#[derive(Clone)]
pub struct ForwardingClient {
    pub upstream: UpstreamId,
    pub progress: Arc<ProgressRoutes>,
    /// Where the upstream's `notifications/resources/updated` go; none for
    /// connections that subscribe to nothing.
    pub changes: Option<mpsc::UnboundedSender<ResourceChange>>,
    /// Set when the upstream says a list changed ([`super::Upstream::lists_changed`]).
    pub lists_changed: Option<Arc<AtomicBool>>,
}

impl ForwardingClient {
    fn lists_changed(&self) {
        if let Some(flag) = &self.lists_changed {
            flag.store(true, Ordering::SeqCst);
        }
    }

    fn relay(&self, uri: String, log: Option<LoggingMessageNotificationParam>) {
        if let Some(changes) = &self.changes {
            let _ = changes.send(ResourceChange {
                upstream: self.upstream,
                uri,
                log,
            });
        }
    }
}

impl ForwardingClient {
    /// Connect over `transport` (wrapped to queue progress for its calls)
    /// and initialize the session.
    pub async fn connect<T, E, A>(self, transport: T) -> Result<Client, ClientInitializeError>
    where
        T: IntoTransport<RoleClient, E, A>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let queueing = QueueingProgress {
            inner: transport.into_transport(),
            routes: self.progress.clone(),
            upstream: self.upstream,
        };
        self.serve(queueing).await
    }
}

impl ClientHandler for ForwardingClient {
    fn get_info(&self) -> ClientConfig {
        let mut config = ClientConfig::default();
        config.client_info = Implementation::new("jetsonmind", env!("CARGO_PKG_VERSION"));
        config
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.lists_changed();
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.lists_changed();
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.lists_changed();
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.relay(params.uri, None);
    }

    /// A log message about a resource (`data.uri`) goes where its changes
    /// go; others are the upstream's own business.
    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(uri) = params.data.get("uri").and_then(|u| u.as_str()) {
            let uri = uri.to_string();
            self.relay(uri, Some(params));
        }
    }
}

/// Why a forwarded call produced no result.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The caller cancelled; the upstream was told.
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Service(ServiceError),
}

/// Call a tool upstream: its progress goes to `sink`, and if `cancel` fires
/// (or this future is dropped) the upstream gets `notifications/cancelled`.
pub async fn call_tool(
    upstream: &Peer<RoleClient>,
    upstream_id: UpstreamId,
    routes: &Arc<ProgressRoutes>,
    params: CallToolRequestParams,
    sink: Option<ProgressSink>,
    cancel: &CancellationToken,
) -> Result<ServerResult, ForwardError> {
    let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
    let handle = upstream
        .send_request_with_option(request, PeerRequestOptions::no_options())
        .await
        .map_err(ForwardError::Service)?;
    let mut claimed = routes.claim(upstream_id, handle.progress_token.clone());
    let mut abandon = CancelOnDrop {
        peer: Some(upstream.clone()),
        id: handle.id.clone(),
    };
    let sink = sink.as_ref();
    let relay = move |progress| async move {
        if let Some(sink) = sink {
            sink.report(progress).await;
        }
    };
    let response = handle.await_response();
    tokio::pin!(response);
    let outcome = loop {
        // Progress first: what arrived before the answer goes before it.
        tokio::select! {
            biased;
            Some(progress) = claimed.progress.recv() => relay(progress).await,
            outcome = &mut response => break outcome.map_err(ForwardError::Service),
            _ = cancel.cancelled() => break Err(ForwardError::Cancelled),
        }
    };
    if !matches!(outcome, Err(ForwardError::Cancelled)) {
        abandon.peer = None;
        while let Ok(progress) = claimed.progress.try_recv() {
            relay(progress).await;
        }
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

#[cfg(test)]
mod tests {
    use rmcp::model::NumberOrString;

    use super::*;

    #[test]
    fn progress_only_moves_forward_across_clones() {
        let (sender, _receiver) = mpsc::unbounded_channel();
        let sink = ProgressSink::channel(sender);
        let retry = sink.clone();
        assert!(sink.advances(1.0));
        assert!(sink.advances(5.0));
        assert!(!retry.advances(1.0), "a retry starting over stays quiet");
        assert!(!retry.advances(5.0));
        assert!(retry.advances(6.0));
    }

    fn progress(token: i64, step: f64) -> ProgressNotificationParam {
        ProgressNotificationParam::new(ProgressToken(NumberOrString::Number(token)), step)
    }

    #[test]
    fn progress_that_comes_before_its_call_claims_it_waits_and_ends_with_the_call() {
        let routes = Arc::new(ProgressRoutes::default());
        let upstream = UpstreamId::fresh();
        routes.arrive(upstream, progress(7, 1.0));
        let token = ProgressToken(NumberOrString::Number(7));
        let mut claimed = routes.claim(upstream, token.clone());
        routes.arrive(upstream, progress(7, 2.0));
        let heard: Vec<f64> = std::iter::from_fn(|| claimed.progress.try_recv().ok())
            .map(|p| p.progress)
            .collect();
        assert_eq!(heard, [1.0, 2.0]);
        drop(claimed);
        assert!(routes.map().is_empty(), "the queue ends with its call");
    }
}
