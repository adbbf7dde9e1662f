//! Cancellation for handshake-era clients on stateless HTTP.
//!
//! A 2026-07-28 client cancels a request by closing its response, which
//! rmcp turns into the handler's cancellation. A handshake-era client
//! instead POSTs `notifications/cancelled` naming the request id, and
//! without sessions rmcp has no request to match it to. This layer keeps the
//! requests in flight by (client address, JSON-RPC id); a cancel drops the
//! named request's response, which cancels its handler the same way.
//!
//! Ids are only unique per client, and without sessions the client is known
//! by its address and, when authenticated, its principal: two callers with
//! different credentials never cancel each other's requests; on a shared
//! address without authentication (loopback) a cancel reaches that
//! address's requests with that id.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;

/// (address, principal id, JSON-RPC id).
type Key = (IpAddr, String, String);

#[derive(Default)]
pub struct InFlight {
    next: AtomicU64,
    requests: Mutex<HashMap<Key, Vec<(u64, CancellationToken)>>>,
    max_body_bytes: usize,
}

/// Unregisters a request when its response is done or dropped.
struct Registration {
    inflight: Arc<InFlight>,
    key: Key,
    serial: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut requests = self.inflight.requests.lock().expect("in-flight lock");
        if let Some(entries) = requests.get_mut(&self.key) {
            entries.retain(|(serial, _)| *serial != self.serial);
            if entries.is_empty() {
                requests.remove(&self.key);
            }
        }
    }
}

impl InFlight {
    pub fn new(max_body_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            max_body_bytes,
            ..Self::default()
        })
    }

    fn register(self: &Arc<Self>, key: Key) -> (CancellationToken, Registration) {
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut requests = self.requests.lock().expect("in-flight lock");
        requests
            .entry(key.clone())
            .or_default()
            .push((serial, token.clone()));
        (
            token,
            Registration {
                inflight: self.clone(),
                key,
                serial,
            },
        )
    }

    fn cancel(&self, key: &Key) -> usize {
        let requests = self.requests.lock().expect("in-flight lock");
        let entries = requests.get(key).map_or(&[][..], Vec::as_slice);
        entries.iter().for_each(|(_, token)| token.cancel());
        entries.len()
    }
}

/// What a POST body says, as far as cancellation cares.
enum Message {
    Request { id: String },
    Cancel { id: String },
    Other,
}

fn classify(body: &[u8]) -> Message {
    let Ok(Value::Object(message)) = serde_json::from_slice::<Value>(body) else {
        return Message::Other;
    };
    let method = message.get("method").and_then(Value::as_str);
    match (method, message.get("id")) {
        (Some("notifications/cancelled"), None) => {
            match message.get("params").and_then(|p| p.get("requestId")) {
                Some(id) => Message::Cancel { id: id.to_string() },
                None => Message::Other,
            }
        }
        (Some(_), Some(id)) => Message::Request { id: id.to_string() },
        _ => Message::Other,
    }
}

pub async fn track_cancellation(
    State(inflight): State<Arc<InFlight>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != http::Method::POST {
        return next.run(request).await;
    }
    // Absent when the router is served without connect info (tests).
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let principal = request
        .extensions()
        .get::<Principal>()
        .map_or_else(String::new, |p| p.id.clone());
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, inflight.max_body_bytes).await else {
        let message = format!(
            "Payload Too Large: request body exceeds {} bytes",
            inflight.max_body_bytes
        );
        return (StatusCode::PAYLOAD_TOO_LARGE, message).into_response();
    };
    let message = classify(&bytes);
    let request = Request::from_parts(parts, Body::from(bytes));
    match message {
        Message::Cancel { id } => {
            let cancelled = inflight.cancel(&(address, principal, id.clone()));
            tracing::debug!(%id, cancelled, "cancel notification");
            next.run(request).await
        }
        Message::Request { id } => {
            let (token, registration) = inflight.register((address, principal, id));
            let response = tokio::select! {
                response = next.run(request) => response,
                _ = token.cancelled() => return cancelled_response(),
            };
            // The response may stream (SSE progress): keep the request
            // cancellable until its body ends.
            let (parts, body) = response.into_parts();
            let stream = body
                .into_data_stream()
                .take_until(token.cancelled_owned())
                .map(move |chunk| {
                    let _alive = &registration;
                    chunk
                });
            Response::from_parts(parts, Body::from_stream(stream))
        }
        Message::Other => next.run(request).await,
    }
}

fn cancelled_response() -> Response {
    let body = serde_json::json!({"jsonrpc": "2.0", "error": {"code": -32603, "message": "request cancelled"}});
    (StatusCode::OK, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_requests_from_cancels() {
        assert!(
            matches!(classify(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call"}"#), Message::Request { id } if id == "7")
        );
        assert!(matches!(
            classify(br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"a"}}"#),
            Message::Cancel { id } if id == "\"a\""
        ));
        assert!(matches!(
            classify(br#"{"jsonrpc":"2.0","id":7,"result":{}}"#),
            Message::Other
        ));
        assert!(matches!(classify(b"not json"), Message::Other));
    }

    #[test]
    fn cancels_only_the_named_request_of_that_address_and_principal() {
        let inflight = InFlight::new(1024);
        let here = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let there = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let key = |ip, who: &str, id: &str| (ip, who.to_string(), id.to_string());
        let (a, _ra) = inflight.register(key(here, "key:a", "1"));
        let (b, _rb) = inflight.register(key(there, "key:a", "1"));
        let (c, rc) = inflight.register(key(here, "key:a", "2"));
        let (d, _rd) = inflight.register(key(here, "key:b", "1"));
        assert_eq!(inflight.cancel(&key(here, "key:a", "1")), 1);
        assert!(a.is_cancelled() && !b.is_cancelled() && !c.is_cancelled() && !d.is_cancelled());
        drop(rc);
        assert_eq!(inflight.cancel(&key(here, "key:a", "2")), 0);
    }
}
