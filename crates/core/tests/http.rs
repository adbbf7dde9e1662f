//! The Streamable HTTP transport and its limits, driven with raw HTTP so
//! every status code and JSON-RPC error is visible.

use std::sync::Arc;
use std::time::Duration;

use jetsonmind_core::config::{HttpConfig, McpConfig};
use jetsonmind_core::serve::{ConnectionLimits, bind, mcp_router, serve_http_with, serve_lines};
use jetsonmind_core::{ResourceUpdates, UnitServer, tool_error};
use jetsonmind_testkit::FakeUnit;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(schemars::JsonSchema, serde::Deserialize)]
#[allow(dead_code)]
struct SleepArgs {
    ms: u64,
}

const COUNTER: &str = "test://counter";

/// A unit with one tool that sleeps, to hold requests in flight, and one
/// resource whose changes the test announces.
fn sleeper(updates: Arc<ResourceUpdates>) -> Arc<FakeUnit> {
    FakeUnit::named("sleeper")
        .tool_of::<SleepArgs>("sleep", "sleep")
        .resource(COUNTER, "counter")
        .announcing(updates)
        .answers(|call| async move {
            let ms = call.arguments["ms"].as_u64().unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(tool_error(format!("slept {ms} ms")))
        })
        .build()
}

struct Server {
    url: String,
    shutdown: CancellationToken,
    updates: Arc<ResourceUpdates>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(http: HttpConfig) -> Server {
    let updates = Arc::new(ResourceUpdates::default());
    let server = UnitServer::new(sleeper(updates.clone()), McpConfig::default());
    let shutdown = CancellationToken::new();
    let router = mcp_router(server, &http, shutdown.clone());
    Server {
        url: serve_router(router, &http, shutdown.clone()).await,
        shutdown,
        updates,
    }
}

/// Serve `router` under the connection limits of `http`; its `/mcp` URL.
async fn serve_router(
    router: axum::Router,
    http: &HttpConfig,
    shutdown: CancellationToken,
) -> String {
    let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let limits = ConnectionLimits::from(http);
    tokio::spawn(serve_http_with(
        listener,
        router,
        limits,
        shutdown,
        Default::default(),
    ));
    format!("http://{addr}/mcp")
}

fn post(url: &str, body: &Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(body)
}

fn legacy_call(ms: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "sleep", "arguments": {"ms": ms}}})
}

fn modern_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

async fn call_ok(url: &str) {
    let response = post(url, &legacy_call(1)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"]["content"][0]["text"], "slept 1 ms", "{body}");
}

#[tokio::test]
async fn both_protocol_eras_on_one_endpoint() {
    let server = start(HttpConfig::default()).await;
    call_ok(&server.url).await;

    let discover = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": modern_meta()}});
    let response = post(&server.url, &discover)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "server/discover")
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    let versions: Vec<&str> = body["result"]["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        versions,
        [
            "2024-11-05",
            "2025-03-26",
            "2025-06-18",
            "2025-11-25",
            "2026-07-28"
        ],
        "{body}"
    );

    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"_meta": modern_meta()}});
    let response = post(&server.url, &list)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/list")
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["result"]["ttlMs"],
        McpConfig::default().list_ttl_ms,
        "{body}"
    );
    assert_eq!(body["result"]["cacheScope"], "private");
    assert_eq!(body["result"]["tools"][0]["name"], "sleep");

    let wrong = post(&server.url, &list)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 400);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], -32020);
}

#[tokio::test]
async fn foreign_origins_and_hosts_are_refused() {
    let server = start(HttpConfig::default()).await;
    let response = post(&server.url, &legacy_call(1))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = post(&server.url, &legacy_call(1))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = post(&server.url, &legacy_call(1))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    call_ok(&server.url).await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let http = HttpConfig {
        max_body_bytes: 2048,
        ..HttpConfig::default()
    };
    let server = start(http).await;
    let mut call = legacy_call(1);
    call["params"]["arguments"]["padding"] = json!("x".repeat(4096));
    let response = post(&server.url, &call).send().await.unwrap();
    assert_eq!(response.status(), 413);
    call_ok(&server.url).await;
}

#[tokio::test]
async fn a_full_server_answers_503_then_recovers() {
    let http = HttpConfig {
        max_concurrent_requests: 1,
        queue_timeout_ms: 50,
        ..HttpConfig::default()
    };
    let server = start(http).await;
    let url = server.url.clone();
    let slow = tokio::spawn(async move {
        post(&url, &legacy_call(1000))
            .send()
            .await
            .unwrap()
            .status()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = post(&server.url, &legacy_call(1)).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(slow.await.unwrap(), 200);
    call_ok(&server.url).await;
}

#[tokio::test]
async fn a_slow_request_gets_408() {
    let http = HttpConfig {
        request_timeout_ms: 100,
        ..HttpConfig::default()
    };
    let server = start(http).await;
    let response = post(&server.url, &legacy_call(2000)).send().await.unwrap();
    assert_eq!(response.status(), 408);
    call_ok(&server.url).await;
}

// Handshake-era sessions: what VS Code, Cursor and most agent frameworks use
// over HTTP to hear of later changes.

const SESSION: &str = "mcp-session-id";
const HANDSHAKE_VERSION: &str = "2025-11-25";

fn initialize_request(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": HANDSHAKE_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "raw-http-test", "version": "0"}
    }})
}

fn subscribe_request(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "resources/subscribe", "params": {"uri": COUNTER}})
}

fn list_request(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"})
}

/// A POST on session `id`.
fn on_session(url: &str, id: &str, body: &Value) -> reqwest::RequestBuilder {
    post(url, body)
        .header(SESSION, id)
        .header("mcp-protocol-version", HANDSHAKE_VERSION)
}

/// The JSON-RPC messages of an SSE body (or the part of it read so far).
fn sse_messages(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str(data.trim()).ok())
        .collect()
}

/// The answer a session request's SSE response carries.
async fn answer_of(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    let answer = sse_messages(&text)
        .into_iter()
        .find(|m| m.get("id").is_some());
    answer.unwrap_or_else(|| panic!("no answer in {text}"))
}

/// `initialize`, then `notifications/initialized`: the new session's id.
async fn open_session(url: &str) -> String {
    let response = post(url, &initialize_request(0)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()[SESSION].to_str().unwrap().to_string();
    let answer = answer_of(response).await;
    assert_eq!(
        answer["result"]["protocolVersion"], HANDSHAKE_VERSION,
        "{answer}"
    );
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let response = on_session(url, &id, &initialized).send().await.unwrap();
    assert_eq!(response.status(), 202);
    id
}

async fn delete_session(url: &str, id: &str) -> reqwest::StatusCode {
    let response = reqwest::Client::new()
        .delete(url)
        .header(SESSION, id)
        .header("mcp-protocol-version", HANDSHAKE_VERSION)
        .send()
        .await
        .unwrap();
    response.status()
}

/// The session's GET event stream, open.
async fn event_stream(url: &str, id: &str) -> reqwest::Response {
    let response = reqwest::Client::new()
        .get(url)
        .header("accept", "text/event-stream")
        .header(SESSION, id)
        .header("mcp-protocol-version", HANDSHAKE_VERSION)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response
}

/// Read `stream` until a message with `method` arrives.
async fn next_notification(stream: &mut reqwest::Response, method: &str) -> Value {
    let mut seen = String::new();
    let read = async {
        while let Some(chunk) = stream.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(m) = sse_messages(&seen)
                .into_iter()
                .find(|m| m["method"] == method)
            {
                return Some(m);
            }
        }
        None
    };
    // Only a guard against hanging on a stream that stays silent.
    let found = tokio::time::timeout(Duration::from_secs(30), read).await;
    found
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no {method} arrived"))
}

#[tokio::test]
async fn handshake_era_sessions_carry_later_notifications() {
    let server = start(HttpConfig::default()).await;
    let session = open_session(&server.url).await;
    let answer = answer_of(
        on_session(&server.url, &session, &subscribe_request(1))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(answer.get("result").is_some(), "{answer}");
    let mut events = event_stream(&server.url, &session).await;
    // The subscription's relay starts on its own task.
    while !server.updates.is_watched(COUNTER) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.updates.publish(COUNTER);
    let update = next_notification(&mut events, "notifications/resources/updated").await;
    assert_eq!(update["params"]["uri"], COUNTER, "{update}");

    // Without a session there is nowhere to send an update later.
    let response = post(&server.url, &subscribe_request(2))
        .send()
        .await
        .unwrap();
    let refused: Value = response.json().await.unwrap();
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("stateless") && message.contains("subscriptions/listen"),
        "{refused}"
    );
}

#[tokio::test]
async fn the_2026_era_stays_stateless() {
    let server = start(HttpConfig::default()).await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": modern_meta()}});
    let response = post(&server.url, &list)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/list")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get(SESSION).is_none());
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["result"]["tools"][0]["name"], "sleep", "{body}");
}

#[tokio::test]
async fn a_deleted_or_unknown_session_gets_404() {
    let server = start(HttpConfig::default()).await;
    let session = open_session(&server.url).await;
    let listed = on_session(&server.url, &session, &list_request(1))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer_of(listed).await["result"]["tools"][0]["name"],
        "sleep"
    );
    assert_eq!(delete_session(&server.url, &session).await, 204);
    let after = on_session(&server.url, &session, &list_request(2))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 404);
    let unknown = on_session(&server.url, "no-such-session", &list_request(3))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(delete_session(&server.url, "no-such-session").await, 404);
}

#[tokio::test]
async fn idle_sessions_expire_but_an_open_event_stream_keeps_its_session() {
    let idle_ms = 200;
    let http = HttpConfig {
        session_idle_timeout_ms: idle_ms,
        ..HttpConfig::default()
    };
    let server = start(http).await;
    let watched = open_session(&server.url).await;
    let _events = event_stream(&server.url, &watched).await;
    let idle = open_session(&server.url).await;
    // Each look is a request that keeps the session alive: look seldom.
    let mut status = reqwest::StatusCode::OK;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(3 * idle_ms)).await;
        let response = on_session(&server.url, &idle, &list_request(1))
            .send()
            .await
            .unwrap();
        status = response.status();
        if status == 404 {
            break;
        }
    }
    assert_eq!(status, 404, "the idle session never expired");
    // Quiet for as long, but its event stream is open.
    let listed = on_session(&server.url, &watched, &list_request(2))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
}

#[tokio::test]
async fn sessions_beyond_the_cap_are_refused_clearly() {
    let http = HttpConfig {
        max_sessions: 1,
        ..HttpConfig::default()
    };
    let server = start(http).await;
    let first = open_session(&server.url).await;
    let response = post(&server.url, &initialize_request(7))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().get(SESSION).is_none());
    let refused: Value = response.json().await.unwrap();
    assert_eq!(refused["id"], 7, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("too many sessions") && message.contains("http.max_sessions"),
        "{refused}"
    );
    // Requests that need no session are still served.
    call_ok(&server.url).await;
    assert_eq!(delete_session(&server.url, &first).await, 204);
    open_session(&server.url).await;
}

// Connections: what one client may hold, and what it is told, seen on raw
// sockets (an HTTP client library would hide closes and reconnect).

/// Only a guard against a test hanging when the server never answers.
const PATIENCE: Duration = Duration::from_secs(30);

/// One HTTP/1.1 connection written and read byte by byte.
struct RawConnection {
    stream: tokio::net::TcpStream,
    host: String,
    read: Vec<u8>,
}

impl RawConnection {
    async fn open(url: &str) -> Self {
        let host = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let stream = tokio::net::TcpStream::connect(&host).await.unwrap();
        Self {
            stream,
            host,
            read: Vec::new(),
        }
    }

    /// The head of a POST to `/mcp` whose body is `length` bytes.
    fn post_head(&self, length: usize, extra_headers: &str) -> String {
        format!(
            "POST /mcp HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             accept: application/json, text/event-stream\r\ncontent-length: {length}\r\n{extra_headers}\r\n",
            self.host
        )
    }

    async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Read more; false when the server closed the connection.
    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await;
        match read.expect("the server neither answered nor closed") {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.read.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response's status and body; `None` if the connection
    /// closed before a whole response came.
    async fn response(&mut self) -> Option<(u16, String)> {
        let head_end = loop {
            if let Some(at) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.read[..head_end]).to_lowercase();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while self.read.len() < head_end + length {
            if !self.fill().await {
                return None;
            }
        }
        let body = String::from_utf8_lossy(&self.read[head_end..head_end + length]).into_owned();
        self.read.drain(..head_end + length);
        Some((status, body))
    }

    /// Whether the server closes the connection (reading and dropping what
    /// it sends first).
    async fn closed_by_server(&mut self) -> bool {
        while self.fill().await {}
        true
    }
}

#[tokio::test]
async fn refusals_that_leave_the_body_unread_keep_the_connection() {
    // Answers before reading the body, as the auth guard's 401 and 429 do.
    let refuse = axum::routing::post(|| async { http::StatusCode::UNAUTHORIZED });
    let router = axum::Router::new().route("/mcp", refuse);
    let shutdown = CancellationToken::new();
    let url = serve_router(router, &HttpConfig::default(), shutdown.clone()).await;
    let _stop = shutdown.drop_guard();
    let mut connection = RawConnection::open(&url).await;
    let body = legacy_call(1).to_string();
    for n in 0..500 {
        connection
            .send(connection.post_head(body.len(), "").as_bytes())
            .await;
        // The body a moment later, as it may come: the refusal is made by then.
        tokio::task::yield_now().await;
        connection.send(body.as_bytes()).await;
        let answer = connection.response().await;
        let (status, _) = answer.unwrap_or_else(|| panic!("closed without answering request {n}"));
        assert_eq!(status, 401);
    }
}

/// A request that declares a 100 KB body and sends 11 bytes of it.
async fn slow_body(url: &str) -> RawConnection {
    let mut connection = RawConnection::open(url).await;
    connection
        .send(connection.post_head(100_000, "").as_bytes())
        .await;
    connection.send(b"{\"jsonrpc\":").await;
    connection
}

#[tokio::test]
async fn slow_bodies_hold_no_permit_and_time_out_with_408() {
    let http = HttpConfig {
        max_concurrent_requests: 2,
        queue_timeout_ms: 100,
        body_read_timeout_ms: 1_000,
        ..HttpConfig::default()
    };
    let server = start(http).await;
    let url = &server.url;
    let mut slow = Vec::new();
    for _ in 0..3 {
        slow.push(slow_body(url).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    call_ok(url).await;
    for connection in &mut slow {
        let (status, body) = connection.response().await.expect("an answer");
        assert_eq!(status, 408, "{body}");
        assert!(connection.closed_by_server().await);
    }
}

#[tokio::test]
async fn a_client_that_sends_no_headers_is_disconnected() {
    let http = HttpConfig {
        header_read_timeout_ms: 200,
        ..HttpConfig::default()
    };
    let server = start(http).await;
    let url = &server.url;
    let mut silent = RawConnection::open(url).await;
    let mut partial = RawConnection::open(url).await;
    partial
        .send(b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        .await;
    assert!(silent.closed_by_server().await);
    assert!(partial.closed_by_server().await);
    call_ok(url).await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let http = HttpConfig {
        idle_timeout_ms: 200,
        // Long, so that only the idle timeout can close it.
        header_read_timeout_ms: 600_000,
        ..HttpConfig::default()
    };
    let server = start(http).await;
    let url = &server.url;
    let mut connection = RawConnection::open(url).await;
    let body = legacy_call(1).to_string();
    connection
        .send(connection.post_head(body.len(), "").as_bytes())
        .await;
    connection.send(body.as_bytes()).await;
    assert_eq!(connection.response().await.map(|r| r.0), Some(200));
    assert!(connection.closed_by_server().await);
}

#[tokio::test]
async fn connections_over_the_caps_get_503_and_are_closed() {
    let http = HttpConfig {
        max_connections: 3,
        max_connections_per_address: 2,
        ..HttpConfig::default()
    };
    let server = start(http).await;
    let url = &server.url;
    let first = RawConnection::open(url).await;
    let _second = RawConnection::open(url).await;
    let mut third = RawConnection::open(url).await;
    let (status, body) = third.response().await.expect("a 503");
    assert_eq!(status, 503, "{body}");
    assert!(third.closed_by_server().await);
    drop(first);
    // The freed slot is taken again (the close is seen a moment later).
    let mut status = 503;
    for _ in 0..100 {
        let mut again = RawConnection::open(url).await;
        let body = legacy_call(1).to_string();
        again.send(again.post_head(body.len(), "").as_bytes()).await;
        again.send(body.as_bytes()).await;
        status = again.response().await.map_or(0, |r| r.0);
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200);
}

// JSON-RPC: what is not one valid message gets a JSON-RPC error.

fn raw_post(url: &str, body: &'static str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(body)
}

#[tokio::test]
async fn bodies_that_are_not_one_message_get_json_rpc_errors() {
    let server = start(HttpConfig::default()).await;
    let cases = [
        ("{\"jsonrpc\": \"2.0\", \"id\": 1,", -32700),
        (r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#, -32600),
        (r#"{"id":1,"method":"ping"}"#, -32600),
    ];
    for (body, code) in cases {
        let response = raw_post(&server.url, body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    call_ok(&server.url).await;
}

#[tokio::test]
async fn notifications_need_no_mcp_method_header_but_a_wrong_one_is_refused() {
    let server = start(HttpConfig::default()).await;
    let cancel = r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1,
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
    let modern =
        |builder: reqwest::RequestBuilder| builder.header("mcp-protocol-version", "2026-07-28");
    let response = modern(raw_post(&server.url, cancel)).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let response = modern(raw_post(&server.url, cancel))
        .header("mcp-method", "tools/list")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // A request still needs it.
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{
        "io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let response = modern(raw_post(&server.url, list)).send().await.unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn an_unknown_resource_names_its_uri_in_the_error_data() {
    let server = start(HttpConfig::default()).await;
    let read = json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "test://nowhere"}});
    let answer: Value = post(&server.url, &read)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["error"]["code"], -32002, "{answer}");
    assert_eq!(answer["error"]["data"]["uri"], "test://nowhere", "{answer}");
}

#[tokio::test]
async fn stdio_answers_lines_that_are_not_json() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let server = UnitServer::new(FakeUnit::named("lines").build(), McpConfig::default());
    let (mut client_in, server_in) = tokio::io::duplex(4096);
    let (server_out, client_out) = tokio::io::duplex(4096);
    tokio::spawn(serve_lines(server, server_in, server_out));
    let mut replies = tokio::io::BufReader::new(client_out).lines();
    let ping = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    client_in
        .write_all(format!("this is not json\n\n{ping}\n").as_bytes())
        .await
        .unwrap();
    let mut next = async || {
        let line = tokio::time::timeout(PATIENCE, replies.next_line()).await;
        serde_json::from_str::<Value>(&line.unwrap().unwrap().unwrap()).unwrap()
    };
    let parse_error = next().await;
    assert_eq!(parse_error["error"]["code"], -32700, "{parse_error}");
    assert_eq!(parse_error["id"], Value::Null);
    assert_eq!(next().await["id"], 2, "the next line is served");
}
