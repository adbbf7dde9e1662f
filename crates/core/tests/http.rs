//! The Streamable HTTP transport and its limits, driven with raw HTTP so
//! every status code and JSON-RPC error is visible.

use std::sync::Arc;
use std::time::Duration;

use jetsonmind_core::config::{HttpConfig, McpConfig};
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::CallToolResult;
use jetsonmind_core::rmcp::model::Resource;
use jetsonmind_core::serve::{bind, mcp_router, serve_http};
use jetsonmind_core::{
    Catalog, McpUnit, ResourceUpdates, ToolCall, UnitIdentity, UnitServer, tool_error, tool_from,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(schemars::JsonSchema, serde::Deserialize)]
#[allow(dead_code)]
struct SleepArgs {
    ms: u64,
}

/// A unit with one tool that sleeps, to hold requests in flight, and one
/// resource whose changes the test announces.
struct Sleeper(Arc<Catalog>, Arc<ResourceUpdates>);

const COUNTER: &str = "test://counter";

impl McpUnit for Sleeper {
    fn identity(&self) -> UnitIdentity {
        UnitIdentity {
            name: "sleeper",
            title: "Sleeper",
            instructions: "test unit",
        }
    }
    fn catalog(&self) -> Arc<Catalog> {
        self.0.clone()
    }
    async fn call_tool(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        let ms = call.arguments["ms"].as_u64().unwrap();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(tool_error(format!("slept {ms} ms")))
    }
    fn updates(&self) -> Option<Arc<ResourceUpdates>> {
        Some(self.1.clone())
    }
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
    let catalog = Catalog::new(
        vec![tool_from::<SleepArgs>("sleep", "sleep")],
        vec![Resource::new(COUNTER, "counter")],
        vec![],
    )
    .unwrap();
    let updates = Arc::new(ResourceUpdates::default());
    let unit = Sleeper(Arc::new(catalog), updates.clone());
    let server = UnitServer::new(Arc::new(unit), McpConfig::default());
    let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let shutdown = CancellationToken::new();
    let router = mcp_router(server, &http, shutdown.clone());
    tokio::spawn(serve_http(
        listener,
        router,
        shutdown.clone(),
        Default::default(),
    ));
    Server {
        url: format!("http://{addr}/mcp"),
        shutdown,
        updates,
    }
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
