//! Transports: stdio, Streamable HTTP (both protocol eras), and in-process
//! pipes for the gateway to reach servers living in the same process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, ServiceExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio_util::task::TaskTracker;

use crate::CoreError;
use crate::cancel::{InFlight, track_cancellation};
use crate::config::HttpConfig;
use crate::connections::Connections;

/// The path the MCP endpoint is mounted at.
pub const MCP_PATH: &str = "/mcp";

/// Serve one MCP server on stdin/stdout until the client closes it.
pub async fn serve_stdio<S: ServerHandler>(server: S) -> Result<(), CoreError> {
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| CoreError::Service(e.to_string()))?;
    running
        .waiting()
        .await
        .map_err(|e| CoreError::Service(e.to_string()))?;
    Ok(())
}

/// An axum router with the MCP endpoint at [`MCP_PATH`], behind the limits of `http`.
pub fn mcp_router<S>(server: S, http: &HttpConfig, shutdown: CancellationToken) -> Router
where
    S: ServerHandler + Clone + Send + Sync + 'static,
{
    with_limits(mcp_routes(server, http, shutdown), http)
}

/// The MCP endpoint alone, to merge with other routes before [`with_limits`].
///
/// Stateless Streamable HTTP with JSON responses: every request stands
/// alone, so any replica can answer it, and both the 2026-07-28 era (no
/// handshake) and the handshake eras are served by the same endpoint. rmcp
/// checks `Host`, `Origin` and the body size here.
pub fn mcp_routes<S>(server: S, http: &HttpConfig, shutdown: CancellationToken) -> Router
where
    S: ServerHandler + Clone + Send + Sync + 'static,
{
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts(http.allowed_hosts.clone())
        .with_allowed_origins(http.allowed_origins.clone())
        // With an empty list rmcp would let every Origin through.
        .enforce_origin_validation()
        .with_max_request_body_bytes(http.max_body_bytes)
        .with_cancellation_token(shutdown);
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    Router::new()
        .route_service(MCP_PATH, service)
        .layer(middleware::from_fn_with_state(
            InFlight::new(http.max_body_bytes),
            track_cancellation,
        ))
}

/// Concurrency and time limits over every route of `router`.
pub fn with_limits(router: Router, http: &HttpConfig) -> Router {
    router.layer(middleware::from_fn_with_state(
        Arc::new(Limits::from(http)),
        limit_requests,
    ))
}

/// `Host` and `Origin` checks and the body limit, for routes that rmcp does
/// not serve (it checks its own): the same rules as the MCP endpoint.
pub fn guard_headers(router: Router, http: &HttpConfig) -> Router {
    router
        .layer(middleware::from_fn_with_state(
            Arc::new(HeaderRules::from(http)),
            check_headers,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(http.max_body_bytes))
}

struct HeaderRules {
    hosts: Vec<String>,
    origins: Vec<String>,
}

impl From<&HttpConfig> for HeaderRules {
    fn from(http: &HttpConfig) -> Self {
        Self {
            hosts: http.allowed_hosts.clone(),
            origins: http.allowed_origins.clone(),
        }
    }
}

async fn check_headers(
    State(rules): State<Arc<HeaderRules>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(refusal) = refuse_headers(&rules, request.headers()) {
        return (StatusCode::FORBIDDEN, refusal).into_response();
    }
    next.run(request).await
}

fn refuse_headers(rules: &HeaderRules, headers: &http::HeaderMap) -> Option<&'static str> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if header(http::header::HOST).is_some_and(|host| !host_allowed(host, &rules.hosts)) {
        return Some("Forbidden: Host header is not allowed");
    }
    if header(http::header::ORIGIN).is_some_and(|origin| !origin_allowed(origin, &rules.origins)) {
        return Some("Forbidden: Origin header is not allowed");
    }
    None
}

/// `allowed` entries are host names (any port) or exact `host:port`.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    allowed.iter().any(|a| a == host || a == name)
}

/// `allowed` entries are `scheme://host:port`, `scheme://host:*`, or
/// `scheme://host` (any port); `null` matches the browser's opaque origin.
fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let (base, port) = split_port(origin);
    allowed.iter().any(|entry| {
        let (allowed_base, allowed_port) = split_port(entry);
        entry == origin
            || (allowed_base == base && allowed_port.is_none_or(|p| p == "*" || Some(p) == port))
    })
}

/// `http://host:8080` -> (`http://host`, Some("8080")); IPv6 brackets kept.
fn split_port(origin: &str) -> (&str, Option<&str>) {
    let host_start = origin.find("://").map_or(0, |i| i + 3);
    let authority = &origin[host_start..];
    match authority.rfind(':') {
        Some(i) if !authority.ends_with(']') => {
            (&origin[..host_start + i], Some(&authority[i + 1..]))
        }
        _ => (origin, None),
    }
}

/// Concurrency and time limits, as one middleware so their errors are ours.
struct Limits {
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
    request_timeout: Duration,
}

impl From<&HttpConfig> for Limits {
    fn from(http: &HttpConfig) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(http.max_concurrent_requests)),
            queue_timeout: Duration::from_millis(http.queue_timeout_ms),
            request_timeout: Duration::from_millis(http.request_timeout_ms),
        }
    }
}

async fn limit_requests(
    State(limits): State<Arc<Limits>>,
    request: Request,
    next: Next,
) -> Response {
    let permit =
        tokio::time::timeout(limits.queue_timeout, limits.permits.clone().acquire_owned()).await;
    let Ok(Ok(_permit)) = permit else {
        return plain_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server busy: too many requests in flight, try again",
        );
    };
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => plain_error(StatusCode::REQUEST_TIMEOUT, "request took too long"),
    }
}

fn plain_error(status: StatusCode, message: &'static str) -> Response {
    (status, [(http::header::RETRY_AFTER, "1")], message).into_response()
}

/// Bind `addr`. Port 0 picks a free port; the bound address is returned.
pub async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), CoreError> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serve `router` until `shutdown` is cancelled, finishing requests in
/// flight. Each connection is registered in `connections` (which can close
/// it) and its requests carry its [`ConnectionId`] and peer address.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: Router,
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
        tasks.spawn(serve_connection(
            stream,
            peer,
            router.clone(),
            connections.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// How long a connection closed by `manage_connections` may finish the
/// requests it is serving (the close request itself among them).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    connections: Arc<Connections>,
    shutdown: CancellationToken,
) {
    let registration = connections.register(peer);
    let id = registration.id;
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(id);
        tower::ServiceExt::oneshot(router.clone(), request)
    });
    let connection = auto::Builder::new(TokioExecutor::new())
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

/// Start `server` on an in-memory pipe and return the client end.
///
/// The gateway talks to servers in its own process through real MCP
/// messages, exactly as it talks to remote ones, so one code path serves both.
pub fn in_process<S: ServerHandler>(server: S) -> tokio::io::DuplexStream {
    let (client_end, server_end) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        match server.serve(server_end).await {
            Ok(running) => {
                let _ = running.waiting().await;
            }
            Err(e) => tracing::warn!(error = %e, "in-process server failed to start"),
        }
    });
    client_end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_by_name_or_exact_authority() {
        let allowed = vec![
            "localhost".to_string(),
            "::1".to_string(),
            "example.com:8443".to_string(),
        ];
        assert!(host_allowed("localhost:8080", &allowed));
        assert!(host_allowed("[::1]:8080", &allowed));
        assert!(host_allowed("example.com:8443", &allowed));
        assert!(!host_allowed("example.com:80", &allowed));
        assert!(!host_allowed("evil.example", &allowed));
    }

    #[test]
    fn origins_match_scheme_host_and_port_rule() {
        let allowed = vec![
            "http://localhost:*".to_string(),
            "https://app.example:443".to_string(),
            "https://any.example".to_string(),
        ];
        assert!(origin_allowed("http://localhost:3000", &allowed));
        assert!(origin_allowed("http://localhost", &allowed));
        assert!(!origin_allowed("https://localhost:3000", &allowed));
        assert!(origin_allowed("https://app.example:443", &allowed));
        assert!(!origin_allowed("https://app.example:444", &allowed));
        assert!(origin_allowed("https://any.example:9", &allowed));
        assert!(!origin_allowed("http://evil.example", &allowed));
    }
}
