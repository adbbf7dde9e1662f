//! The gateway federating real MCP servers over Streamable HTTP: merging,
//! collisions, backends leaving and returning, progress, cancellation, and a
//! gateway federating another gateway.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jetsonmind_control::ControlServer;
use jetsonmind_control::config::ControlConfig;
use jetsonmind_control::fleet::{Fleet, FleetSettings};
use jetsonmind_core::config::{Config, McpConfig};
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, CallToolResult, NumberOrString, ProgressNotificationParam,
    ProgressToken, ReadResourceResult, RequestMetaObject, ResourceContents,
};
use jetsonmind_core::rmcp::service::RunningService;
use jetsonmind_core::rmcp::{ClientCacheConfig, ErrorData as McpError, RoleClient, ServiceExt};
use jetsonmind_core::serve::in_process;
use jetsonmind_core::upstream::Connector;
use jetsonmind_core::{ToolCall, UnitServer, tool_error};
use jetsonmind_gateway::config::GatewayConfig;
use jetsonmind_gateway::{Backend, Gateway};
use jetsonmind_testkit::{self as testing, FakeUnit, HttpUnit, ProgressRecorder};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(schemars::JsonSchema, serde::Deserialize)]
#[allow(dead_code)]
struct TickArgs {
    count: u32,
    interval_ms: u64,
}

/// A unit whose `tick` reports progress once per tick, and which notes in
/// `cancelled` a call cancelled mid-way.
fn ticker_noting(cancelled: Arc<AtomicBool>) -> Arc<FakeUnit> {
    FakeUnit::named("ticker")
        .tool_of::<TickArgs>("tick", "count with progress")
        .resource("test://status", "status")
        .answers(move |call| ticking(call, cancelled.clone()))
        .reads(|uri| {
            Ok(ReadResourceResult::new(vec![ResourceContents::text(
                "ok", uri,
            )]))
        })
        .build()
}

fn ticker() -> Arc<FakeUnit> {
    ticker_noting(Arc::default())
}

async fn ticking(call: ToolCall, cancelled: Arc<AtomicBool>) -> Result<CallToolResult, McpError> {
    let count = call.arguments["count"].as_u64().unwrap();
    let interval = Duration::from_millis(call.arguments["interval_ms"].as_u64().unwrap());
    for i in 1..=count {
        tokio::select! {
            _ = call.context.cancel.cancelled() => {
                cancelled.store(true, Ordering::SeqCst);
                return Ok(tool_error("cancelled"));
            }
            _ = tokio::time::sleep(interval) => {}
        }
        if let Some(sink) = &call.context.progress {
            let token = ProgressToken(NumberOrString::Number(0));
            let progress = ProgressNotificationParam::new(token, i as f64).with_total(count as f64);
            sink.report(progress).await;
        }
    }
    Ok(CallToolResult::structured(json!({ "ticks": count })))
}

fn fleet_settings() -> FleetSettings {
    let config = Config::default();
    config
        .section::<GatewayConfig>()
        .fleet_settings(config.section::<ControlConfig>())
}

fn http_backend(name: &str, server: &HttpUnit) -> Backend {
    Fleet::single(name, Connector::http(&server.url), fleet_settings())
}

/// A control server over no replicas: another unit with tools of its own.
fn control_server() -> ControlServer {
    let fleet = Arc::new(Fleet::new("compute", fleet_settings()));
    ControlServer::new(fleet, &Config::default(), None)
}

async fn gateway(backends: Vec<Backend>) -> Arc<Gateway> {
    let gateway = Gateway::new(GatewayConfig::default(), fleet_settings(), backends).unwrap();
    gateway.refresh().await;
    gateway
}

async fn connect(
    gateway: &Arc<Gateway>,
    recorder: ProgressRecorder,
) -> RunningService<RoleClient, ProgressRecorder> {
    let server = UnitServer::new(gateway.clone(), McpConfig::default());
    let client = recorder.serve(in_process(server)).await.unwrap();
    // The view changes under the test; a cached list would hide that.
    client
        .peer()
        .set_response_cache_config(ClientCacheConfig::disabled())
        .await;
    client
}

async fn tool_names(client: &RunningService<RoleClient, ProgressRecorder>) -> Vec<String> {
    testing::tool_names(client.peer()).await
}

fn tick(count: u32, interval_ms: u64, name: &'static str) -> CallToolRequestParams {
    CallToolRequestParams::new(name).with_arguments(
        json!({"count": count, "interval_ms": interval_ms})
            .as_object()
            .unwrap()
            .clone(),
    )
}

const OWN: [&str; 5] = [
    "aggregate_responses",
    "handle_auth",
    "manage_connections",
    "protocol_bridge",
    "validate_request",
];

fn with_own(names: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = OWN.iter().chain(names).map(|s| s.to_string()).collect();
    all.sort();
    all
}

#[tokio::test]
async fn merges_backends_and_prefixes_only_collisions() {
    let alpha = HttpUnit::start(ticker()).await;
    let beta = HttpUnit::start(ticker()).await;
    let control = HttpUnit::start(Arc::new(control_server())).await;
    let gateway = gateway(vec![
        http_backend("alpha", &alpha),
        http_backend("beta", &beta),
        http_backend("control", &control),
    ])
    .await;
    let client = connect(&gateway, ProgressRecorder::default()).await;

    assert_eq!(
        tool_names(&client).await,
        with_own(&[
            "alpha_tick",
            "beta_tick",
            "manage_resources",
            "monitor_health",
            "optimize_system",
            "route_request",
            "scale_cluster"
        ])
    );
    let result = client.call_tool(tick(2, 1, "beta_tick")).await.unwrap();
    assert_eq!(result.structured_content, Some(json!({"ticks": 2})));

    let uris = testing::resource_uris(client.peer()).await;
    assert_eq!(
        uris,
        [
            "alpha+test://status",
            "beta+test://status",
            "jetson://control/alerts"
        ]
    );
    let read = client
        .read_resource(
            jetsonmind_core::rmcp::model::ReadResourceRequestParams::new("beta+test://status"),
        )
        .await
        .unwrap();
    match &read.contents[0] {
        ResourceContents::TextResourceContents { uri, text, .. } => {
            assert_eq!((uri.as_str(), text.as_str()), ("beta+test://status", "ok"))
        }
        other => panic!("{other:?}"),
    }

    // Arguments are checked against the merged schema before anything is forwarded.
    let result = client
        .call_tool(
            tick(2, 1, "alpha_tick")
                .with_arguments(json!({"count": "two"}).as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    let text = &result.content[0].as_text().unwrap().text;
    assert!(
        text.contains("/count") && text.contains("interval_ms"),
        "{text}"
    );
}

#[tokio::test]
async fn a_backend_that_leaves_is_dropped_and_comes_back() {
    let ticker = ticker();
    let server = HttpUnit::start(ticker.clone()).await;
    let addr = server.addr;
    let gateway = gateway(vec![http_backend("node1", &server)]).await;
    let recorder = ProgressRecorder::default();
    let client = connect(&gateway, recorder.clone()).await;
    assert_eq!(tool_names(&client).await, with_own(&["tick"]));

    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    gateway.refresh().await;
    // The client is told, so it lists again instead of calling what is gone.
    let told = recorder.tool_list_changed(Duration::from_secs(30)).await;
    assert!(told, "no tools/list_changed arrived");
    assert_eq!(tool_names(&client).await, with_own(&[]));
    let status = &gateway.backend_status()[0];
    let replica = &status.replicas[0].connection;
    assert!(!status.up && replica.last_error.is_some(), "{status:?}");

    let _server = HttpUnit::start_at(ticker, addr).await;
    gateway.refresh().await;
    assert_eq!(tool_names(&client).await, with_own(&["tick"]));
    let result = client.call_tool(tick(1, 1, "tick")).await.unwrap();
    assert_eq!(result.structured_content, Some(json!({"ticks": 1})));
}

#[tokio::test]
async fn a_replica_that_joins_is_in_the_view_once_checked_not_at_the_next_health_tick() {
    // A cluster node's replica joins a fleet the gateway already serves;
    // the health loop is an hour away, so only the fleet's wake can do it.
    let server = HttpUnit::start(ticker()).await;
    let fleet = Arc::new(Fleet::new("compute", fleet_settings()));
    let settings = GatewayConfig {
        health_interval_ms: 3_600_000,
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(settings, fleet_settings(), vec![fleet.clone()]).unwrap();
    let shutdown = CancellationToken::new();
    gateway.start(shutdown.clone()).await;
    let recorder = ProgressRecorder::default();
    let client = connect(&gateway, recorder.clone()).await;
    assert_eq!(tool_names(&client).await, with_own(&[]));

    fleet.add(
        jetsonmind_core::upstream::Upstream::new("compute@n2", Connector::http(&server.url)),
        jetsonmind_control::fleet::Origin::Discovered {
            node: "n2".into(),
            tier: jetsonmind_control::routing::Tier::Site,
        },
    );
    fleet.check().await;
    let told = recorder.tool_list_changed(Duration::from_secs(30)).await;
    assert!(told, "the view was not rebuilt");
    assert_eq!(tool_names(&client).await, with_own(&["tick"]));
    shutdown.cancel();
}

#[tokio::test]
async fn progress_reaches_the_caller_through_the_gateway() {
    let server = HttpUnit::start(ticker()).await;
    let gateway = gateway(vec![http_backend("node1", &server)]).await;
    let recorder = ProgressRecorder::default();
    let client = connect(&gateway, recorder.clone()).await;

    let mut call = tick(3, 20, "tick");
    let mut meta = RequestMetaObject::default();
    meta.set_progress_token(jetsonmind_core::rmcp::model::ProgressToken(
        jetsonmind_core::rmcp::model::NumberOrString::Number(7),
    ));
    call.meta = Some(meta);
    let result = client.call_tool(call).await.unwrap();
    assert_eq!(result.structured_content, Some(json!({"ticks": 3})));
    let heard = recorder.wait_for(3).await;
    let heard: Vec<_> = heard.iter().map(|p| (p.progress, p.total)).collect();
    assert_eq!(
        heard,
        vec![(1.0, Some(3.0)), (2.0, Some(3.0)), (3.0, Some(3.0))]
    );
}

#[tokio::test]
async fn cancelling_a_call_cancels_it_at_the_backend() {
    let cancelled = Arc::new(AtomicBool::new(false));
    let server = HttpUnit::start(ticker_noting(cancelled.clone())).await;
    let gateway = gateway(vec![http_backend("node1", &server)]).await;
    let client = connect(&gateway, ProgressRecorder::default()).await;

    let call = client.peer().call_tool_once(tick(1000, 10, "tick"));
    // Dropping the pending call sends notifications/cancelled to the gateway.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), call)
            .await
            .is_err()
    );
    for _ in 0..50 {
        if cancelled.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the backend never saw the cancellation");
}

#[tokio::test]
async fn a_gateway_federates_another_gateway() {
    let leaf = HttpUnit::start(ticker()).await;
    let node = gateway(vec![http_backend("leaf", &leaf)]).await;
    let node_http = HttpUnit::start(node).await;
    let cluster = gateway(vec![http_backend("node1", &node_http)]).await;
    let client = connect(&cluster, ProgressRecorder::default()).await;

    // The node's own tools collide with the cluster's, so they get the node's prefix.
    let names = tool_names(&client).await;
    assert!(names.contains(&"tick".to_string()), "{names:?}");
    assert!(
        names.contains(&"node1_manage_connections".to_string()),
        "{names:?}"
    );
    let result = client.call_tool(tick(2, 1, "tick")).await.unwrap();
    assert_eq!(result.structured_content, Some(json!({"ticks": 2})));
}
