//! The cluster's views over a real nats-server: each node's telemetry
//! snapshot is read back as its latest, only for the nodes asked (the live
//! ones), and not once it is older than the max age; a data server that
//! joined shows every live node in its metrics and analytics, with totals.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jetsonmind_cluster::membership::unix_now;
use jetsonmind_cluster::{Bus, Membership, NodeStatus};
use jetsonmind_cluster_state::views::ClusterViews;
use jetsonmind_core::config::{ClusterConfig, McpConfig};
use jetsonmind_core::rmcp::model::CallToolResult;
use jetsonmind_core::{CallObserver, Config, UnitServer};
use jetsonmind_data::analytics::{Analytics, ToolSummary};
use jetsonmind_data::cluster_view::{NodeSnapshot, Snapshots, metrics_totals, tool_totals};
use jetsonmind_data::settings::Settings;
use jetsonmind_data::{DataServer, NodeState, PERFORMANCE_ANALYTICS, SYSTEM_METRICS};
use jetsonmind_store::ModelStore;
use jetsonmind_testkit as testing;
use serde_json::{Value, json};
use support::{NatsServer, connect, node_config, within};
use tokio_util::sync::CancellationToken;

const GIB: u64 = 1 << 30;

/// A test node whose telemetry is published often and kept `max_age_ms`.
fn config(server: &NatsServer, node: &str, max_age_ms: u64) -> ClusterConfig {
    ClusterConfig {
        telemetry_interval_ms: 100,
        telemetry_max_age_ms: max_age_ms,
        telemetry_history: 2,
        ..node_config(server, node)
    }
}

fn snapshot(node: &str, calls: u64, p99_ms: f64, celsius: f64) -> NodeSnapshot {
    NodeSnapshot {
        node: node.into(),
        published_unix_ms: 1,
        metrics: json!({
            "cpu": {"cores": 4},
            "memory": {"total_bytes": 8 * GIB, "available_bytes": 5 * GIB},
            "thermal_zones": [{"name": "cpu", "celsius": celsius}],
        }),
        tools: vec![ToolSummary {
            server: "jetsonmind-compute".into(),
            tool: "text_generate".into(),
            calls,
            errors: 0,
            completion_tokens: 10 * calls,
            p50_ms: Some(p99_ms / 2.0),
            p99_ms: Some(p99_ms),
        }],
    }
}

async fn opened(bus: &Bus) -> ClusterViews {
    within("opening the telemetry stream", ClusterViews::open(bus))
        .await
        .expect("the telemetry stream")
}

async fn read(views: &ClusterViews, nodes: &[&str]) -> Snapshots {
    let nodes = nodes.iter().map(|n| n.to_string());
    within("reading the snapshots", views.read(nodes))
        .await
        .expect("the snapshots")
}

/// Poll `read` until `holds` says yes; fail if that never happens.
async fn until_read<F: Future<Output = Value>>(
    what: &str,
    read: impl Fn() -> F,
    holds: impl Fn(&Value) -> bool,
) -> Value {
    within(what, async {
        loop {
            let value = read().await;
            if holds(&value) {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test]
async fn each_nodes_latest_snapshot_is_read_back_with_totals_until_it_ages_out() {
    let server = NatsServer::start();
    let node1 = connect(&config(&server, "node1", 3_000)).await;
    let node2 = connect(&config(&server, "node2", 3_000)).await;
    let (views1, views2) = (opened(&node1).await, opened(&node2).await);

    views1
        .publish(&snapshot("node1", 1, 40.0, 50.0))
        .await
        .unwrap();
    let latest = snapshot("node1", 3, 80.0, 52.5);
    views1.publish(&latest).await.unwrap();
    views2
        .publish(&snapshot("node2", 4, 120.0, 61.0))
        .await
        .unwrap();

    // Read at node2: node1's latest, node2's own; node3 never published.
    let all = read(&views2, &["node1", "node2", "node3"]).await;
    assert_eq!(all.keys().collect::<Vec<_>>(), ["node1", "node2"]);
    assert_eq!(all["node1"], latest);
    // A node the membership does not list is not shown, whatever the stream holds.
    let live = read(&views2, &["node2"]).await;
    assert_eq!(live.keys().collect::<Vec<_>>(), ["node2"]);

    let machines = metrics_totals(&all);
    assert_eq!((machines.nodes, machines.cpu_cores), (2, 8));
    assert_eq!(
        (machines.memory_used_bytes, machines.memory_total_bytes),
        (6 * GIB, 16 * GIB)
    );
    assert_eq!(machines.max_temperature_c, Some(61.0));
    let tools = tool_totals(&all);
    assert_eq!(tools.len(), 1, "{tools:?}");
    assert_eq!(
        (tools[0].nodes, tools[0].calls, tools[0].completion_tokens),
        (2, 7, 70)
    );
    assert_eq!(tools[0].worst_p99_ms, Some(120.0));

    // Nothing more is published: both age out.
    let empty = until_read(
        "the snapshots ageing out",
        || async { json!(read(&views1, &["node1", "node2"]).await.len()) },
        |count| count == 0,
    )
    .await;
    assert_eq!(empty, 0);
}

/// The node state of a data server in `dir`.
fn node_state(dir: &Path) -> NodeState {
    let mut config = Config::default();
    config.data.dir = dir.to_path_buf();
    NodeState {
        store: Arc::new(ModelStore::open(dir).expect("the model store")),
        settings: Arc::new(Settings::fixed(config)),
        cache: Default::default(),
        inputs: Default::default(),
        analytics: Default::default(),
    }
}

/// A heartbeat as a node writes it (from JSON: fields this test does not
/// care about keep their defaults).
fn status_of(node: &str) -> impl Fn() -> NodeStatus + Send + Sync + 'static {
    let node = node.to_string();
    move || {
        let status = json!({"node": node, "version": "test", "servers": ["data"], "shared": [],
            "started_unix": 0, "heartbeat_unix": unix_now()});
        serde_json::from_value(status).expect("a node status")
    }
}

/// A node joined to the membership and the views, with its data server.
struct Node {
    data: Arc<DataServer>,
    analytics: Arc<Analytics>,
    membership: Membership,
    _dir: tempfile::TempDir,
}

async fn joined(server: &NatsServer, node: &str, stop: &CancellationToken) -> Node {
    let bus = connect(&config(server, node, 60_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let state = node_state(dir.path());
    let analytics = state.analytics.clone();
    let data = Arc::new(DataServer::new(state));
    let membership = within(
        "joining",
        Membership::join(&bus, status_of(node), stop.clone()),
    )
    .await
    .expect("joining the membership");
    opened(&bus)
        .await
        .join(data.clone(), membership.view(), stop.clone());
    Node {
        data,
        analytics,
        membership,
        _dir: dir,
    }
}

#[tokio::test]
async fn a_data_server_shows_every_live_node_and_forgets_one_that_leaves() {
    let server = NatsServer::start();
    let stop = CancellationToken::new();
    let node1 = joined(&server, "node1", &stop).await;
    let node2 = joined(&server, "node2", &stop).await;
    let answer = Ok(CallToolResult::structured(json!({"model": "m.gguf"})));
    let elapsed = Duration::from_millis(7);
    node1
        .analytics
        .tool_called("jetsonmind-compute", "text_generate", elapsed, &answer);

    let client = testing::connect(UnitServer::new(node2.data.clone(), McpConfig::default())).await;
    let peer = client.peer();
    let analytics = until_read(
        "node2 showing node1's call",
        || testing::read_json::<Value>(peer, PERFORMANCE_ANALYTICS),
        |analytics| analytics.pointer("/cluster/nodes/node1/tools/0/calls") == Some(&json!(1)),
    )
    .await;
    assert_eq!(
        analytics["cluster"]["nodes"]["node1"]["tools"][0]["tool"],
        "text_generate"
    );
    assert_eq!(analytics["cluster"]["totals"]["tools"][0]["calls"], 1);
    assert!(
        analytics["series"].is_array(),
        "node2's own content stays: {analytics}"
    );

    let metrics = until_read(
        "node2's metrics listing both nodes",
        || testing::read_json::<Value>(peer, SYSTEM_METRICS),
        |metrics| metrics["cluster"]["totals"]["nodes"] == 2,
    )
    .await;
    let nodes = metrics["cluster"]["nodes"].as_object().unwrap();
    assert_eq!(nodes.keys().collect::<Vec<_>>(), ["node1", "node2"]);
    assert!(nodes["node1"]["metrics"]["memory"].is_object(), "{metrics}");
    assert!(
        metrics["cpu"]["cores"].is_u64(),
        "node2's own content stays: {metrics}"
    );

    // node1 leaves: gone from the view, though its snapshot is still young.
    within("node1 leaving", node1.membership.leave()).await;
    until_read(
        "node2 forgetting node1",
        || testing::read_json::<Value>(peer, SYSTEM_METRICS),
        |metrics| metrics["cluster"]["nodes"].get("node1").is_none(),
    )
    .await;
    stop.cancel();
}
