//! The accept loop of every HTTP server, and what one client connection may
//! hold: a slot under `http.max_connections` (and the per-address cap),
//! at most `header_read_timeout_ms` to send a request's headers,
//! `body_read_timeout_ms` for its body, and `idle_timeout_ms` with nothing in
//! flight before it is closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::CoreError;
use crate::admission::{ConnectionSlots, Refused, Slot};
use crate::config::HttpConfig;
use crate::connections::{ConnectionId, Connections};
use crate::request_body::{BodyOutcome, DeadlineBody, Guarded};

/// How long a connection closed by `manage_connections` may finish the
/// requests it is serving (the close request itself among them).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What a connection over a cap is told, written before anything is read.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
retry-after: 1\r\ncontent-type: text/plain\r\ncontent-length: 37\r\n\r\n\
server busy: too many open connections";

/// The connection-level limits of [`HttpConfig`].
#[derive(Clone)]
pub struct ConnectionLimits {
    header_read_timeout: Duration,
    body_read_timeout: Duration,
    idle_timeout: Duration,
    max_body_bytes: usize,
    slots: Arc<ConnectionSlots>,
}

impl From<&HttpConfig> for ConnectionLimits {
    fn from(http: &HttpConfig) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(http.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(http.body_read_timeout_ms),
            idle_timeout: Duration::from_millis(http.idle_timeout_ms),
            max_body_bytes: http.max_body_bytes,
            slots: ConnectionSlots::from_config(http),
        }
    }
}

/// [`serve_http_with`] under the default limits of [`HttpConfig`].
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    connections: Arc<Connections>,
) -> Result<(), CoreError> {
    let limits = ConnectionLimits::from(&HttpConfig::default());
    serve_http_with(listener, router, limits, shutdown, connections).await
}

/// Serve `router` until `shutdown` is cancelled, finishing requests in
/// flight. Each connection is registered in `connections` (which can close
/// it) and its requests carry its [`ConnectionId`](crate::connections::ConnectionId)
/// and peer address. Connections beyond `limits`' caps get 503 and are closed.
pub async fn serve_http_with(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    connections: Arc<Connections>,
) -> Result<(), CoreError> {
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match limits.slots.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                turn_away(&stream, peer, why);
                continue;
            }
        };
        let connection = Connection {
            peer,
            router: router.clone(),
            limits: limits.clone(),
            _slot: slot,
        };
        tasks.spawn(connection.serve(stream, connections.clone(), shutdown.clone()));
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Answer 503 without reading, then close: costs no task and no wait.
fn turn_away(stream: &TcpStream, peer: SocketAddr, why: Refused) {
    tracing::debug!(%peer, ?why, "connection refused: too many open");
    // A fresh socket's send buffer has room; if not, closing is answer enough.
    let _ = stream.try_write(BUSY);
}

/// One accepted client connection.
struct Connection {
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    _slot: Slot,
}

impl Connection {
    async fn serve(
        self,
        stream: TcpStream,
        connections: Arc<Connections>,
        shutdown: CancellationToken,
    ) {
        let peer = self.peer;
        let registration = connections.register(peer);
        let id = registration.id;
        let activity = Activity::new();
        let (router, limits, watched) =
            (self.router.clone(), self.limits.clone(), activity.clone());
        let service = hyper::service::service_fn(move |request| {
            let context = RequestContext {
                peer,
                id,
                busy: watched.begin(),
            };
            handle(request, router.clone(), limits.clone(), context)
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout);
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        tokio::pin!(connection);
        let grace = tokio::select! {
            outcome = connection.as_mut() => {
                if let Err(e) = outcome {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            // Shutting down: finish what is in flight, however long it takes.
            _ = shutdown.cancelled() => None,
            _ = registration.close.cancelled() => {
                tracing::info!(%peer, connection = id.0, "closing the connection on request");
                Some(CLOSE_GRACE)
            }
            _ = activity.idle_for(self.limits.header_read_timeout, self.limits.idle_timeout) => {
                tracing::debug!(%peer, connection = id.0, "closing an idle connection");
                Some(CLOSE_GRACE)
            }
        };
        connection.as_mut().graceful_shutdown();
        match grace {
            None => {
                let _ = connection.await;
            }
            Some(grace) => {
                let _ = tokio::time::timeout(grace, connection).await;
            }
        }
    }
}

/// Where a request came from, and its place among the connection's activity.
struct RequestContext {
    peer: SocketAddr,
    id: ConnectionId,
    busy: Busy,
}

/// One request: its body gets a deadline, its extensions the peer and the
/// connection id, and it counts as activity until its response body ends.
async fn handle(
    request: http::Request<Incoming>,
    router: Router,
    limits: ConnectionLimits,
    context: RequestContext,
) -> Result<http::Response<Guarded<axum::body::Body, Busy>>, Infallible> {
    let deadline = Instant::now() + limits.body_read_timeout;
    let (parts, incoming) = request.into_parts();
    let (body, outcome) = DeadlineBody::new(incoming, deadline);
    let mut request = http::Request::from_parts(parts, axum::body::Body::new(body));
    request.extensions_mut().insert(ConnectInfo(context.peer));
    request.extensions_mut().insert(context.id);
    let response = tower::ServiceExt::oneshot(router, request).await?;
    let response = finish(response, &outcome, limits.max_body_bytes, deadline).await;
    Ok(response.map(|body| Guarded::new(body, context.busy)))
}

/// The response, once the request's body is off the wire. A body that did
/// not arrive in time gets 408 whatever a layer made of its error; a body
/// that cannot be read to its end closes the connection after the response,
/// and says so, so the client does not send its next request on it.
async fn finish(
    response: Response,
    body: &BodyOutcome,
    max_body_bytes: usize,
    deadline: Instant,
) -> Response {
    let mut response = match body.timed_out() {
        true => (
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time (http.body_read_timeout_ms)",
        )
            .into_response(),
        false => response,
    };
    if body.timed_out() || !body.drain(max_body_bytes, deadline).await {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// What a connection is doing; watchers are woken on every change.
#[derive(Clone)]
struct Activity(Arc<ActivityState>);

struct ActivityState {
    now: Mutex<Counts>,
    changed: tokio::sync::Notify,
}

#[derive(Clone, Copy)]
struct Counts {
    in_flight: usize,
    /// When `in_flight` last changed (or the connection opened).
    since: Instant,
    /// Whether any request came at all.
    started: bool,
}

/// One request in flight, until its response body is done or dropped.
struct Busy(Activity);

impl Activity {
    fn new() -> Self {
        let counts = Counts {
            in_flight: 0,
            since: Instant::now(),
            started: false,
        };
        Self(Arc::new(ActivityState {
            now: Mutex::new(counts),
            changed: tokio::sync::Notify::new(),
        }))
    }

    fn change(&self, by: isize) {
        let mut now = self.0.now.lock().expect("activity lock");
        now.in_flight = now.in_flight.saturating_add_signed(by);
        now.since = Instant::now();
        now.started = true;
        self.0.changed.notify_waiters();
    }

    fn begin(&self) -> Busy {
        self.change(1);
        Busy(self.clone())
    }

    /// Resolves once nothing has been in flight for `then`, or, before the
    /// first request, for `first`: hyper's header timer starts only once the
    /// connection's first bytes tell HTTP/1.1 from HTTP/2, so a client that
    /// sends nothing is closed here.
    async fn idle_for(&self, first: Duration, then: Duration) {
        loop {
            let changed = self.0.changed.notified();
            let now = *self.0.now.lock().expect("activity lock");
            if now.in_flight > 0 {
                changed.await;
                continue;
            }
            let expires = now.since + if now.started { then } else { first };
            if Instant::now() >= expires {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(expires) => {}
                _ = changed => {}
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.change(-1);
    }
}
