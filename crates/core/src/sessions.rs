//! Sessions for handshake-era clients over Streamable HTTP.
//!
//! A client of the handshake era (2024-11-05 … 2025-11-25) hears of later
//! server notifications (resource updates, list changes, log messages) only
//! on a session: `initialize` opens one (`Mcp-Session-Id`), a GET on the
//! endpoint is its event stream, DELETE ends it. rmcp's legacy session mode
//! serves that; this module sends it the requests that belong to a session
//! and adds what rmcp lacks:
//!
//! - a cap on open sessions (`http.max_sessions`): one more `initialize` gets
//!   503 with a JSON-RPC error that says why;
//! - expiry (`http.session_idle_timeout_ms`) counted from the last request or
//!   open stream. rmcp's own timer counts only messages, so it would close the
//!   session of a subscriber whose event stream waits quietly for a rare change;
//! - each session belongs to the principal that opened it: another caller
//!   presenting its id gets 404, like an unknown id.
//!
//! Everything else stays stateless, as before: the 2026-07-28 era, and
//! handshake-era requests without a session id (clients that skip
//! `initialize` or ignore the id), so any replica can still answer those.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Once, Weak};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{Method, StatusCode};
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::config::HttpConfig;

const SESSION_HEADER: &str = "mcp-session-id";

/// Put in the HTTP request of every message served on a session, so a
/// handler knows a later notification has somewhere to go.
#[derive(Debug, Clone, Copy)]
pub struct OnSession;

/// Whether a notification sent after this request's response can still reach
/// its client: yes over stdio and in-process pipes (no HTTP parts) and on an
/// HTTP session; no for a stateless HTTP request.
pub fn can_notify_later(extensions: &rmcp::model::Extensions) -> bool {
    extensions
        .get::<http::request::Parts>()
        .is_none_or(|parts| parts.extensions.get::<OnSession>().is_some())
}

/// The open sessions of one endpoint and the rmcp service that serves them.
pub struct Sessions {
    manager: Arc<LocalSessionManager>,
    /// rmcp in legacy session mode, at the MCP path.
    endpoint: Router,
    max: usize,
    idle: Duration,
    max_body_bytes: usize,
    /// Held while an `initialize` opens a session, so the cap is exact.
    opening: tokio::sync::Mutex<()>,
    open: Mutex<HashMap<String, Session>>,
    sweeper: Once,
    shutdown: CancellationToken,
}

struct Session {
    owner: String,
    last_seen: Instant,
    /// Requests and event streams of this session still being answered.
    streams: usize,
}

impl Sessions {
    /// `endpoint` serves the MCP path with `manager`'s sessions.
    pub fn new(
        manager: Arc<LocalSessionManager>,
        endpoint: Router,
        http: &HttpConfig,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            manager,
            endpoint,
            max: http.max_sessions,
            idle: Duration::from_millis(http.session_idle_timeout_ms),
            max_body_bytes: http.max_body_bytes,
            opening: tokio::sync::Mutex::new(()),
            open: Mutex::new(HashMap::new()),
            sweeper: Once::new(),
            shutdown,
        })
    }

    fn open(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn open_session(self: &Arc<Self>, id: Value, request: Request) -> Response {
        self.start_sweeper();
        let owner = owner_of(&request);
        let _opening = self.opening.lock().await;
        if self.manager.sessions.read().await.len() >= self.max {
            return too_many_sessions(id, self.max);
        }
        let response = self.serve(request).await;
        let session = response
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok());
        if let Some(session) = session {
            let opened = Session {
                owner,
                last_seen: Instant::now(),
                streams: 0,
            };
            self.open().insert(session.to_string(), opened);
        }
        response
    }

    async fn serve_on_session(self: &Arc<Self>, id: String, mut request: Request) -> Response {
        let Some(activity) = self.enter(&id, &owner_of(&request)) else {
            return session_not_found();
        };
        let deleting = request.method() == Method::DELETE;
        request.extensions_mut().insert(OnSession);
        let mut response = self.serve(request).await;
        if deleting && response.status().is_success() {
            self.open().remove(&id);
            // rmcp says 202; clients (the Python SDK) expect 200 or 204.
            *response.status_mut() = StatusCode::NO_CONTENT;
        }
        // The session stays alive while its answer or event stream is open.
        let (parts, body) = response.into_parts();
        let body = body.into_data_stream().map(move |chunk| {
            let _alive = &activity;
            chunk
        });
        Response::from_parts(parts, Body::from_stream(body))
    }

    async fn serve(&self, request: Request) -> Response {
        let outcome = tower::ServiceExt::oneshot(self.endpoint.clone(), request).await;
        outcome.unwrap_or_else(|never| match never {})
    }

    /// Count a request or stream on session `id` of `owner`; `None` when
    /// there is no such session.
    fn enter(self: &Arc<Self>, id: &str, owner: &str) -> Option<Activity> {
        let mut open = self.open();
        let session = open.get_mut(id).filter(|s| s.owner == owner)?;
        session.streams += 1;
        session.last_seen = Instant::now();
        Some(Activity {
            sessions: Arc::downgrade(self),
            id: id.to_string(),
        })
    }

    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper.call_once(|| {
            tokio::spawn(sweep(
                Arc::downgrade(self),
                self.idle,
                self.shutdown.clone(),
            ));
        });
    }

    /// Forget and close the sessions idle for longer than allowed. Sessions
    /// rmcp ended itself (shutdown, no `initialize` in time) are forgotten
    /// the same way, closing them again being harmless.
    async fn close_idle(&self) {
        let expired: Vec<String> = {
            let mut open = self.open();
            let idle: Vec<String> = open
                .iter()
                .filter(|(_, s)| s.streams == 0 && s.last_seen.elapsed() >= self.idle)
                .map(|(id, _)| id.clone())
                .collect();
            idle.iter().for_each(|id| {
                open.remove(id);
            });
            idle
        };
        for id in expired {
            tracing::info!(session = %id, "closing an idle session");
            if let Err(e) = self.manager.close_session(&id.as_str().into()).await {
                tracing::warn!(session = %id, error = %e, "closing an idle session failed");
            }
        }
    }
}

/// A request or event stream of a session, counted until dropped.
struct Activity {
    sessions: Weak<Sessions>,
    id: String,
}

impl Drop for Activity {
    fn drop(&mut self) {
        let Some(sessions) = self.sessions.upgrade() else {
            return;
        };
        if let Some(session) = sessions.open().get_mut(&self.id) {
            session.streams -= 1;
            session.last_seen = Instant::now();
        }
    }
}

async fn sweep(sessions: Weak<Sessions>, idle: Duration, shutdown: CancellationToken) {
    let period = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(10));
    let mut ticker = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Some(sessions) = sessions.upgrade() else {
            return;
        };
        sessions.close_idle().await;
    }
}

/// Middleware in front of the stateless endpoint: requests of a session, and
/// `initialize` (which opens one), go to the session endpoint instead.
pub async fn route(
    State(sessions): State<Arc<Sessions>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(id) = request.headers().get(SESSION_HEADER) {
        // An id that is not text is no session of ours.
        let id = id.to_str().unwrap_or_default().to_string();
        return sessions.serve_on_session(id, request).await;
    }
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, sessions.max_body_bytes).await else {
        let message = format!(
            "Payload Too Large: request body exceeds {} bytes",
            sessions.max_body_bytes
        );
        return (StatusCode::PAYLOAD_TOO_LARGE, message).into_response();
    };
    let initialize = initialize_id(&bytes);
    let request = Request::from_parts(parts, Body::from(bytes));
    match initialize {
        Some(id) => sessions.open_session(id, request).await,
        None => next.run(request).await,
    }
}

/// The JSON-RPC id of an `initialize` request; `None` for anything else.
fn initialize_id(body: &[u8]) -> Option<Value> {
    let Ok(Value::Object(mut message)) = serde_json::from_slice(body) else {
        return None;
    };
    let is_initialize = message.get("method").and_then(Value::as_str) == Some("initialize");
    is_initialize.then(|| message.remove("id")).flatten()
}

fn owner_of(request: &Request) -> String {
    request
        .extensions()
        .get::<Principal>()
        .map_or_else(String::new, |p| p.id.clone())
}

/// MCP: a server MUST answer 404 for a session id it does not know (ended,
/// expired, or never its own); the client then starts a new session.
fn session_not_found() -> Response {
    (StatusCode::NOT_FOUND, "Not Found: Session not found").into_response()
}

fn too_many_sessions(id: Value, max: usize) -> Response {
    let message = format!(
        "too many sessions: this server holds at most {max} (http.max_sessions); \
         end one with DELETE, retry later, or use protocol 2026-07-28, which needs no session"
    );
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32000, "message": message}});
    let headers = [(http::header::RETRY_AFTER, "1")];
    (StatusCode::SERVICE_UNAVAILABLE, headers, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_initialize_opens_a_session() {
        let id = initialize_id(br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}"#);
        assert_eq!(id, Some(json!(0)));
        let list = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert_eq!(initialize_id(list), None);
        assert_eq!(initialize_id(br#"[{"method":"initialize","id":1}]"#), None);
        assert_eq!(initialize_id(br#"{"method":"initialize"}"#), None);
        assert_eq!(initialize_id(b"not json"), None);
    }
}
