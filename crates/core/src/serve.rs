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
use crate::sessions::{self, Sessions};

pub use crate::accept::{ConnectionLimits, serve_http, serve_http_with};

pub use crate::paths::MCP_PATH;

/// Serve one MCP server on stdin/stdout until the client closes it.
pub async fn serve_stdio<S: ServerHandler>(server: S) -> Result<(), CoreError> {
    serve_lines(server, tokio::io::stdin(), tokio::io::stdout()).await
}

/// Serve newline-delimited JSON-RPC from `input` to `output`. rmcp skips a
/// line that is not JSON without a word; such a line is answered here with
/// JSON-RPC's parse error (-32700, id null), so a client is not left waiting.
pub async fn serve_lines<S, R, W>(server: S, input: R, output: W) -> Result<(), CoreError>
where
    S: ServerHandler,
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (to_server, server_input) = tokio::io::duplex(1 << 16);
    let (server_output, from_server) = tokio::io::duplex(1 << 16);
    let (replies, replies_rx) = tokio::sync::mpsc::channel(16);
    let reader = tokio::spawn(sort_lines(input, to_server, replies));
    let writer = tokio::spawn(write_lines(from_server, replies_rx, output));
    let served = match server.serve((server_input, server_output)).await {
        Ok(running) => running
            .waiting()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    reader.abort();
    let _ = writer.await;
    served.map_err(CoreError::Service)
}

/// The longest input line passed on (rmcp's own limit).
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Lines that are JSON go on to the server; others get a reply.
async fn sort_lines<R: tokio::io::AsyncRead + Unpin>(
    input: R,
    mut to_server: tokio::io::DuplexStream,
    replies: tokio::sync::mpsc::Sender<String>,
) {
    use tokio::io::AsyncWriteExt;
    let mut input = tokio::io::BufReader::new(input);
    let mut line = Vec::new();
    loop {
        let length = match read_line(&mut input, &mut line, MAX_LINE_BYTES).await {
            Ok(0) | Err(_) => return,
            Ok(length) => length,
        };
        let reply = if length > MAX_LINE_BYTES {
            Some(crate::jsonrpc::oversized_line_reply(MAX_LINE_BYTES))
        } else if line.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            crate::jsonrpc::unparsable_line_reply(&line)
        };
        let passed = match reply {
            Some(reply) => replies.send(reply).await.is_ok(),
            None => to_server.write_all(&line).await.is_ok(),
        };
        if !passed {
            return;
        }
    }
}

/// The next line of `input` into `line` (at most `max + 1` of its bytes
/// kept): its whole length, newline included; 0 at the end of input.
async fn read_line<R: tokio::io::AsyncRead + Unpin>(
    input: &mut tokio::io::BufReader<R>,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<usize> {
    use tokio::io::AsyncBufReadExt;
    line.clear();
    let mut length = 0;
    loop {
        let buffer = input.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(length);
        }
        let end = buffer.iter().position(|b| *b == b'\n');
        let taken = end.map_or(buffer.len(), |at| at + 1);
        let room = (max + 1).saturating_sub(line.len());
        line.extend_from_slice(&buffer[..taken.min(room)]);
        input.consume(taken);
        length += taken;
        if end.is_some() {
            return Ok(length);
        }
    }
}

/// The server's lines and the replies to bad lines, never mixed mid-line.
async fn write_lines<W: tokio::io::AsyncWrite + Unpin>(
    from_server: tokio::io::DuplexStream,
    mut replies: tokio::sync::mpsc::Receiver<String>,
    mut output: W,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut from_server = tokio::io::BufReader::new(from_server);
    let mut line = Vec::new();
    loop {
        line.clear();
        tokio::select! {
            read = from_server.read_until(b'\n', &mut line) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            Some(reply) = replies.recv() => {
                line.extend_from_slice(reply.as_bytes());
                line.push(b'\n');
            }
        }
        if output.write_all(&line).await.is_err() || output.flush().await.is_err() {
            return;
        }
    }
    let _ = output.flush().await;
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
/// handshake) and the handshake eras are served by the same endpoint. A
/// handshake-era `initialize` opens a session instead (unless
/// `http.max_sessions` is 0), on which later notifications reach the client:
/// see [`crate::sessions`]. rmcp checks `Host`, `Origin` and the body size.
pub fn mcp_routes<S>(server: S, http: &HttpConfig, shutdown: CancellationToken) -> Router
where
    S: ServerHandler + Clone + Send + Sync + 'static,
{
    let config = endpoint_config(http, shutdown.clone())
        .with_legacy_session_mode(false)
        .with_json_response(true);
    let factory = server.clone();
    let service = StreamableHttpService::new(
        move || Ok(factory.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let stateless =
        Router::new()
            .route_service(MCP_PATH, service)
            .layer(middleware::from_fn_with_state(
                InFlight::new(http.max_body_bytes),
                track_cancellation,
            ));
    if http.max_sessions == 0 {
        return stateless;
    }
    // Outside the cancellation layer: a session's cancels reach rmcp's
    // session, which knows its requests by id.
    stateless.layer(middleware::from_fn_with_state(
        session_endpoint(server, http, shutdown),
        sessions::route,
    ))
}

/// What both endpoints check the same way.
fn endpoint_config(http: &HttpConfig, shutdown: CancellationToken) -> StreamableHttpServerConfig {
    StreamableHttpServerConfig::default()
        .with_allowed_hosts(http.allowed_hosts.clone())
        .with_allowed_origins(http.allowed_origins.clone())
        // With an empty list rmcp would let every Origin through.
        .enforce_origin_validation()
        .with_max_request_body_bytes(http.max_body_bytes)
        .with_cancellation_token(shutdown)
}

/// rmcp in legacy session mode, for handshake-era sessions.
fn session_endpoint<S>(server: S, http: &HttpConfig, shutdown: CancellationToken) -> Arc<Sessions>
where
    S: ServerHandler + Clone + Send + Sync + 'static,
{
    let mut manager = LocalSessionManager::default();
    // Expiry is ours: rmcp's timer would also close a quiet open event stream.
    manager.session_config.keep_alive = None;
    // No empty SSE priming events: simple clients choke on them.
    manager.session_config.sse_retry = None;
    let manager = Arc::new(manager);
    let config = endpoint_config(http, shutdown.clone())
        .with_legacy_session_mode(true)
        .with_sse_retry(None);
    let service = StreamableHttpService::new(move || Ok(server.clone()), manager.clone(), config);
    let endpoint = Router::new().route_service(MCP_PATH, service);
    Sessions::new(manager, endpoint, http, shutdown)
}

/// Concurrency and time limits over every route of `router`, and the
/// JSON-RPC checks of [`crate::jsonrpc`] on the MCP endpoint.
pub fn with_limits(router: Router, http: &HttpConfig) -> Router {
    let permits = Arc::new(Semaphore::new(http.max_concurrent_requests));
    let room = (permits, Duration::from_millis(http.queue_timeout_ms));
    let time_limit = Duration::from_millis(http.request_timeout_ms);
    router.layer(
        tower::ServiceBuilder::new()
            .layer(middleware::from_fn_with_state(
                http.max_body_bytes,
                read_body_first,
            ))
            .layer(middleware::from_fn_with_state(room, wait_for_room))
            .layer(middleware::from_fn_with_state(
                time_limit,
                within_time_limit,
            ))
            .layer(middleware::from_fn_with_state(
                http.max_body_bytes,
                check_mcp_messages,
            )),
    )
}

async fn check_mcp_messages(state: State<usize>, request: Request, next: Next) -> Response {
    match request.uri().path() == MCP_PATH {
        true => crate::jsonrpc::check_messages(state, request, next).await,
        false => next.run(request).await,
    }
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

/// The body is read whole before a permit is taken: a client sending it
/// slowly waits on its own time (`http.body_read_timeout_ms`), not on a
/// permit everyone needs.
async fn read_body_first(State(max_bytes): State<usize>, request: Request, next: Next) -> Response {
    match read_body(request, max_bytes).await {
        Ok(request) => next.run(request).await,
        Err(refusal) => refusal,
    }
}

/// At most `http.max_concurrent_requests` at once; a request waits for room
/// up to `http.queue_timeout_ms`, then gets a 503 to retry.
async fn wait_for_room(
    State((permits, queue_timeout)): State<(Arc<Semaphore>, Duration)>,
    request: Request,
    next: Next,
) -> Response {
    let permit = tokio::time::timeout(queue_timeout, permits.acquire_owned()).await;
    let Ok(Ok(_permit)) = permit else {
        return plain_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server busy: too many requests in flight, try again",
        );
    };
    next.run(request).await
}

/// A 408 for a request still unanswered after `http.request_timeout_ms`.
async fn within_time_limit(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => plain_error(StatusCode::REQUEST_TIMEOUT, "request took too long"),
    }
}

async fn read_body(request: Request, max_bytes: usize) -> Result<Request, Response> {
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, max_bytes).await {
        Ok(bytes) => Ok(Request::from_parts(parts, axum::body::Body::from(bytes))),
        Err(e) if crate::request_body::is_timeout(&e) => Err(plain_error(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        )),
        Err(_) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Payload Too Large: request body exceeds {max_bytes} bytes"),
        )
            .into_response()),
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
