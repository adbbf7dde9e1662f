//! A server's life as orchestrators see it: health probes, and draining on
//! SIGTERM.
//!
//! `GET /healthz` answers 200 while the process serves. `GET /readyz`
//! answers 200 while it should be sent calls: it is not draining and its
//! unit is ready ([`McpUnit::readiness`](crate::McpUnit::readiness): a
//! gateway's backends up, compute's default model loadable), else 503. Both
//! are unauthenticated, so they say a status and a short reason, nothing
//! more.
//!
//! Draining ([`Drain`]): a request that arrives after it begins gets 503 with
//! `Retry-After` and `Connection: close` (a client or load balancer sends it
//! elsewhere), while the tool calls in flight ([`InFlight::calls`], wherever
//! they came from) finish and their HTTP responses ([`InFlight::responses`])
//! are written, event streams answering a POST included. The binary waits
//! for both, at most `http.drain_grace_ms`, before it stops everything else.
//! A GET's event stream is not waited for: it carries no call of its own,
//! and ends with the server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use http::header::{CONNECTION, RETRY_AFTER};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::paths::{HEALTHZ, READYZ};
use crate::request_body::Guarded;

/// Whether `path` is a probe: answered without authentication.
pub fn is_probe(path: &str) -> bool {
    path == HEALTHZ || path == READYZ
}

/// Cancelled when the server begins to drain.
pub type Drain = CancellationToken;

/// Whether a unit can take calls now: `Err` says why not, in words that
/// name no model, key or address.
pub type Readiness = Result<(), String>;

/// The probe routes; `ready` is asked on each `/readyz`.
pub fn probe_routes<F>(ready: F, drain: Drain) -> Router
where
    F: Fn() -> Readiness + Clone + Send + Sync + 'static,
{
    Router::new()
        .route(HEALTHZ, get(|| async { Json(json!({"status": "alive"})) }))
        .route(
            READYZ,
            get(move || {
                let state = match drain.is_cancelled() {
                    true => Err("draining".to_string()),
                    false => ready(),
                };
                async move {
                    match state {
                        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready"}))),
                        Err(reason) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(json!({"status": "not ready", "reason": reason})),
                        ),
                    }
                }
            }),
        )
}

/// Refuse every request but the probes once `drain` is cancelled, and
/// count the responses being written.
pub fn drain_layer(router: Router, drain: Drain) -> Router {
    router.layer(middleware::from_fn_with_state(drain, refuse_when_draining))
}

async fn refuse_when_draining(
    State(drain): State<Drain>,
    request: Request,
    next: Next,
) -> Response {
    if !drain.is_cancelled() || is_probe(request.uri().path()) {
        // A GET's event stream carries no call of its own and ends with the
        // server; a POST's carries its call's progress and answer, then ends.
        let standalone = request.method() == http::Method::GET;
        let writing = InFlight::responses().begin();
        let response = next.run(request).await;
        if standalone && is_event_stream(&response) {
            return response;
        }
        return response.map(|body| Body::new(Guarded::new(body, writing)));
    }
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting down: send this request to another replica",
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(RETRY_AFTER, http::HeaderValue::from_static("1"));
    headers.insert(CONNECTION, http::HeaderValue::from_static("close"));
    response
}

fn is_event_stream(response: &Response) -> bool {
    response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Work in flight in this process, which a drain waits for.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    changed: Notify,
}

/// One piece of work, counted until dropped.
pub struct InFlightGuard(Arc<InFlight>);

static CALLS: LazyLock<Arc<InFlight>> = LazyLock::new(Arc::default);
static RESPONSES: LazyLock<Arc<InFlight>> = LazyLock::new(Arc::default);

impl InFlight {
    /// The tool calls being served, wherever they came from (HTTP, stdio,
    /// an in-process pipe).
    pub fn calls() -> &'static Arc<InFlight> {
        &CALLS
    }

    /// HTTP responses being made or written, but GET event streams.
    pub fn responses() -> &'static Arc<InFlight> {
        &RESPONSES
    }

    pub fn begin(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    pub fn now(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves once no call is in flight.
    pub async fn none(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.now() == 0 {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_for_no_calls_ends_when_the_last_one_does() {
        let calls = Arc::new(InFlight::default());
        calls.none().await;
        let first = calls.begin();
        let second = calls.begin();
        let waiter = tokio::spawn({
            let calls = calls.clone();
            async move { calls.none().await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(second);
        waiter.await.unwrap();
        assert_eq!(calls.now(), 0);
    }
}
