//! The Streamable HTTP transport and its limits, driven with raw HTTP so
//! every status code and JSON-RPC error is visible.

use std::sync::Arc;
use std::time::Duration;

use jetsonmind_core::config::{HttpConfig, McpConfig};
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::CallToolResult;
use jetsonmind_core::serve::{bind, mcp_router, serve_http};
use jetsonmind_core::{
    Catalog, McpUnit, ToolCall, UnitIdentity, UnitServer, tool_error, tool_from,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(schemars::JsonSchema, serde::Deserialize)]
#[allow(dead_code)]
struct SleepArgs {
    ms: u64,
}

/// A unit with one tool that sleeps, to hold requests in flight.
struct Sleeper(Arc<Catalog>);

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
}

struct Server {
    url: String,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(http: HttpConfig) -> Server {
    let catalog = Catalog::new(
        vec![tool_from::<SleepArgs>("sleep", "sleep")],
        vec![],
        vec![],
    )
    .unwrap();
    let server = UnitServer::new(Arc::new(Sleeper(Arc::new(catalog))), McpConfig::default());
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
