//! Transports: stdio, Streamable HTTP (both protocol eras), and in-process
//! pipes for the gateway to reach servers living in the same process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, ServiceExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::CoreError;
use crate::cancel::{InFlight, track_cancellation};
use crate::config::HttpConfig;

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
///
/// Stateless Streamable HTTP with JSON responses: every request stands
/// alone, so any replica can answer it, and both the 2026-07-28 era (no
/// handshake) and the handshake eras are served by the same endpoint.
pub fn mcp_router<S>(server: S, http: &HttpConfig, shutdown: CancellationToken) -> Router
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
        .layer(middleware::from_fn_with_state(
            Arc::new(Limits::from(http)),
            limit_requests,
        ))
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

/// Serve `router` until `shutdown` is cancelled, finishing requests in flight.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(), CoreError> {
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// Refuse to expose a server beyond this machine without authentication.
pub fn check_exposure(listen: SocketAddr, auth_enabled: bool) -> Result<(), CoreError> {
    if listen.ip().is_loopback() || auth_enabled {
        return Ok(());
    }
    Err(CoreError::Config(format!(
        "refusing to listen on {listen}: a non-loopback address requires authentication, \
         which is not configured; listen on 127.0.0.1 or configure auth"
    )))
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
