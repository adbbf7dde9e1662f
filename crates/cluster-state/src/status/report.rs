//! What `jetsonmind cluster status` shows, made of a [`ClusterReading`]: a
//! row per node (readiness from heartbeats and replicas, calls, memory), a
//! row per model (where it is stored and loaded), the placements, the
//! cluster's totals, and the hub's backup when there is one; as JSON or as a
//! table ([`render`]).

mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jetsonmind_core::config::ClusterConfig;
use jetsonmind_data::cluster_view::{
    MetricsTotals, NodeSnapshot, Snapshots, ToolTotals, metrics_totals, tool_totals, worst,
};
use serde::Serialize;
use serde_json::Value;

use super::{ClusterReading, Member};
use crate::backup::CloudReading;

pub use table::render;

/// What `cluster status` shows.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub nodes: Vec<NodeRow>,
    /// The model registry; `None` while no model was ever published.
    pub models: Option<Vec<ModelRow>>,
    /// How many replicas of which model run where (`<cluster>_placements`),
    /// when it exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placements: Option<Vec<Value>>,
    pub totals: Totals,
    /// With a cloud hub (`hybrid.hub_domain`): the uplink, the cloud's nodes
    /// and the backups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud: Option<CloudReading>,
}

/// The whole cluster, from the nodes' telemetry.
#[derive(Debug, Serialize)]
pub struct Totals {
    pub metrics: MetricsTotals,
    pub tools: Vec<ToolTotals>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Readiness {
    /// Heartbeating, and its replicas up.
    Ready,
    /// A heartbeat missed, or none of its replicas up.
    NotReady,
    /// Every one of its replicas is draining.
    Draining,
}

/// One node, as its last heartbeat and telemetry say.
#[derive(Debug, Serialize)]
pub struct NodeRow {
    pub node: String,
    pub status: Readiness,
    pub age_secs: u64,
    pub heartbeat_age_ms: u64,
    pub version: String,
    pub servers: Vec<String>,
    pub shared: Vec<String>,
    pub replicas_healthy: usize,
    pub replicas_total: usize,
    pub loaded_models: Vec<String>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub temperature_c: Option<f64>,
    /// Calls its servers ran (a gateway's forwarded calls are counted by
    /// the server that ran them), and their worst p99.
    pub calls: Option<u64>,
    pub p99_ms: Option<f64>,
    /// Each replica that runs there, as its control plane reports it.
    pub replicas: Vec<Value>,
    /// Its last telemetry snapshot (none when too old or never published).
    pub telemetry: Option<NodeSnapshot>,
}

/// One model of the cluster's registry.
#[derive(Debug, Serialize)]
pub struct ModelRow {
    pub name: String,
    pub size_bytes: Option<u64>,
    /// Live nodes whose store holds it.
    pub holders: Vec<String>,
    /// Live nodes that have it loaded.
    pub loaded_on: Vec<String>,
    /// The registry entry as published.
    pub entry: Value,
}

/// The server whose calls are the others' calls, forwarded.
const GATEWAY: &str = "jetsonmind-gateway";

/// The status `reading` shows, as the cluster `config` judges it (how old a
/// heartbeat may be); `cloud`, the hub's backup of it, when it has a hub.
pub fn report(
    reading: &ClusterReading,
    config: &ClusterConfig,
    cloud: Option<CloudReading>,
) -> ClusterStatus {
    let snapshots = &reading.telemetry;
    let members = &reading.members;
    let (placements, drained) = split_placements(reading.placements.as_ref());
    ClusterStatus {
        cluster: config.name.clone(),
        nodes: members
            .values()
            .map(|member| {
                let drained = drained.contains(&member.status.node);
                node_row(member, snapshots, drained, config)
            })
            .collect(),
        models: reading
            .models
            .as_ref()
            .map(|registry| model_rows(registry, members)),
        placements,
        totals: Totals {
            metrics: metrics_totals(snapshots),
            tools: tool_totals(snapshots),
        },
        cloud,
    }
}

/// The placements bucket's model placements (`model.<name>`), and the
/// nodes drained (`drain.<node>`).
fn split_placements(
    bucket: Option<&BTreeMap<String, Value>>,
) -> (Option<Vec<Value>>, BTreeSet<String>) {
    let Some(bucket) = bucket else {
        return (None, BTreeSet::new());
    };
    let with_prefix = |prefix: &'static str| {
        let entries = bucket.iter();
        entries.filter_map(move |(key, value)| Some((key.strip_prefix(prefix)?, value)))
    };
    let placements = with_prefix("model.").map(|(_, value)| value.clone());
    let drained = with_prefix("drain.").map(|(node, _)| node.to_string());
    (Some(placements.collect()), drained.collect())
}

fn node_row(
    member: &Member,
    snapshots: &Snapshots,
    drained: bool,
    config: &ClusterConfig,
) -> NodeRow {
    let Member {
        status,
        heartbeat_age,
    } = member.clone();
    let replicas: Vec<Value> = status.replicas.as_array().cloned().unwrap_or_default();
    let telemetry = snapshots.get(&status.node).cloned();
    let (calls, p99_ms) = served_calls(telemetry.as_ref());
    let memory = telemetry.as_ref().and_then(NodeSnapshot::memory);
    NodeRow {
        // Drained as the placements say, or as the node's heartbeat says
        // (it may have seen its drain before this reader).
        status: readiness(&replicas, heartbeat_age, drained || status.draining, config),
        age_secs: jetsonmind_cluster::membership::unix_now().saturating_sub(status.started_unix),
        heartbeat_age_ms: heartbeat_age.as_millis() as u64,
        replicas_healthy: replicas.iter().filter(|r| healthy(r)).count(),
        replicas_total: replicas.len(),
        loaded_models: loaded_models(&replicas).into_iter().collect(),
        memory_used_bytes: memory.map(|(used, _)| used),
        memory_total_bytes: memory.map(|(_, total)| total),
        temperature_c: telemetry.as_ref().and_then(NodeSnapshot::max_temperature_c),
        calls,
        p99_ms,
        replicas,
        telemetry,
        node: status.node,
        version: status.version,
        servers: status.servers,
        shared: status.shared,
    }
}

/// The calls a node's servers ran (a gateway's calls are counted again
/// by the server that ran them) and their worst p99; none without telemetry.
fn served_calls(telemetry: Option<&NodeSnapshot>) -> (Option<u64>, Option<f64>) {
    let Some(telemetry) = telemetry else {
        return (None, None);
    };
    let served = telemetry.tools.iter().filter(|tool| tool.server != GATEWAY);
    served.fold((Some(0), None), |(calls, p99), tool| {
        (calls.map(|c| c + tool.calls), worst(p99, tool.p99_ms))
    })
}

/// NotReady once a heartbeat is missed (two periods: one may be on its
/// way) or when none of its replicas is up; Draining when the node is
/// drained (placements) or all its replicas drain.
fn readiness(
    replicas: &[Value],
    heartbeat_age: Duration,
    drained: bool,
    config: &ClusterConfig,
) -> Readiness {
    let missed = heartbeat_age > Duration::from_millis(2 * config.heartbeat_ms);
    let flag =
        |replica: &Value, name: &str| replica.get(name).and_then(Value::as_bool) == Some(true);
    if missed || (!replicas.is_empty() && !replicas.iter().any(|r| flag(r, "up"))) {
        return Readiness::NotReady;
    }
    if drained || (!replicas.is_empty() && replicas.iter().all(|r| flag(r, "draining"))) {
        return Readiness::Draining;
    }
    Readiness::Ready
}

/// Up, its breaker not open, and not draining.
fn healthy(replica: &Value) -> bool {
    let up = replica.get("up").and_then(Value::as_bool) == Some(true);
    let draining = replica.get("draining").and_then(Value::as_bool) == Some(true);
    let open = replica.get("breaker").and_then(Value::as_str) == Some("open");
    up && !draining && !open
}

/// The models any of `replicas` has loaded.
fn loaded_models(replicas: &[Value]) -> BTreeSet<String> {
    replicas
        .iter()
        .filter_map(|r| r.pointer("/report/loaded")?.as_array())
        .flatten()
        .filter_map(|model| Some(model.get("name")?.as_str()?.to_string()))
        .collect()
}

/// The models the store of any of `replicas` holds.
fn stored_models(replicas: &[Value]) -> BTreeSet<String> {
    let reports = replicas.iter().filter_map(|r| r.get("report"));
    reports
        .flat_map(|report| {
            let usable = report.get("model_bytes").and_then(Value::as_object);
            let unusable = report.get("unusable_models").and_then(Value::as_object);
            usable
                .into_iter()
                .chain(unusable)
                .flat_map(|models| models.keys().cloned())
        })
        .collect()
}

fn model_rows(
    registry: &BTreeMap<String, Value>,
    members: &BTreeMap<String, Member>,
) -> Vec<ModelRow> {
    let replicas_of = |member: &Member| {
        member
            .status
            .replicas
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let nodes_where = |has: &dyn Fn(&[Value]) -> BTreeSet<String>, model: &str| -> Vec<String> {
        members
            .iter()
            .filter(|(_, member)| has(&replicas_of(member)).contains(model))
            .map(|(node, _)| node.clone())
            .collect()
    };
    registry
        .iter()
        .map(|(name, entry)| ModelRow {
            name: name.clone(),
            size_bytes: entry.get("size_bytes").and_then(Value::as_u64),
            holders: nodes_where(&stored_models, name),
            loaded_on: nodes_where(&loaded_models, name),
            entry: entry.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn replica(up: bool, draining: bool, breaker: &str) -> Value {
        json!({"up": up, "draining": draining, "breaker": breaker, "report": {
            "loaded": [{"name": "smol"}], "model_bytes": {"smol": 1, "tiny": 2},
        }})
    }

    #[test]
    fn readiness_follows_heartbeats_and_replicas() {
        let config = ClusterConfig::default();
        let fresh = Duration::from_millis(config.heartbeat_ms);
        let up = replica(true, false, "closed");
        assert_eq!(
            readiness(std::slice::from_ref(&up), fresh, false, &config),
            Readiness::Ready
        );
        assert_eq!(readiness(&[], fresh, false, &config), Readiness::Ready);
        let late = Duration::from_millis(3 * config.heartbeat_ms);
        assert_eq!(
            readiness(std::slice::from_ref(&up), late, false, &config),
            Readiness::NotReady
        );
        let down = replica(false, false, "closed");
        assert_eq!(
            readiness(&[down], fresh, false, &config),
            Readiness::NotReady
        );
        let draining = replica(true, true, "closed");
        assert_eq!(
            readiness(std::slice::from_ref(&draining), fresh, false, &config),
            Readiness::Draining
        );
        assert_eq!(
            readiness(&[draining, up.clone()], fresh, false, &config),
            Readiness::Ready
        );
        let drained = readiness(std::slice::from_ref(&up), fresh, true, &config);
        assert_eq!(drained, Readiness::Draining);
        assert_eq!(readiness(&[up], late, true, &config), Readiness::NotReady);
    }

    #[test]
    fn calls_count_where_they_ran_not_where_they_came_in() {
        let tool = |server: &str, calls, p99_ms| jetsonmind_data::analytics::ToolSummary {
            server: server.into(),
            tool: "text_generate".into(),
            calls,
            errors: 0,
            completion_tokens: 0,
            p50_ms: p99_ms,
            p99_ms,
        };
        let mut snapshot = NodeSnapshot {
            node: "n1".into(),
            published_unix_ms: 0,
            metrics: json!({}),
            tools: vec![
                tool(GATEWAY, 9, Some(900.0)),
                tool("jetsonmind-compute", 4, Some(80.0)),
                tool("jetsonmind-data", 1, None),
            ],
        };
        assert_eq!(served_calls(Some(&snapshot)), (Some(5), Some(80.0)));
        snapshot.tools.clear();
        assert_eq!(served_calls(Some(&snapshot)), (Some(0), None));
        assert_eq!(served_calls(None), (None, None));
    }

    #[test]
    fn placements_and_drained_nodes_come_apart() {
        assert_eq!(split_placements(None), (None, BTreeSet::new()));
        let placed = json!({"model": "smol", "replicas": 2, "strategy": "spread"});
        let bucket = BTreeMap::from([
            ("model.smol".to_string(), placed.clone()),
            ("drain.n2".to_string(), json!({"node": "n2"})),
        ]);
        let (placements, drained) = split_placements(Some(&bucket));
        assert_eq!(placements, Some(vec![placed]));
        assert_eq!(drained, BTreeSet::from(["n2".to_string()]));
    }

    #[test]
    fn a_replica_is_healthy_when_up_closed_and_not_draining() {
        assert!(healthy(&replica(true, false, "closed")));
        assert!(healthy(&replica(true, false, "half_open")));
        assert!(!healthy(&replica(true, false, "open")));
        assert!(!healthy(&replica(true, true, "closed")));
        assert!(!healthy(&replica(false, false, "closed")));
        assert!(!healthy(&json!({})));
    }

    #[test]
    fn models_are_placed_where_the_replicas_say() {
        let member = |node: &str, replicas: Value| {
            let status = json!({"node": node, "version": "t", "servers": [], "shared": [],
                "started_unix": 0, "heartbeat_unix": 0, "replicas": replicas});
            Member {
                status: serde_json::from_value(status).expect("a node status"),
                heartbeat_age: Duration::ZERO,
            }
        };
        let idle = json!([{"report": {"loaded": [], "model_bytes": {"smol": 1}}}]);
        let members = BTreeMap::from([
            (
                "n1".to_string(),
                member("n1", json!([replica(true, false, "closed")])),
            ),
            ("n2".to_string(), member("n2", idle)),
            ("n3".to_string(), member("n3", Value::Null)),
        ]);
        let registry = BTreeMap::from([
            (
                "smol".to_string(),
                json!({"name": "smol", "size_bytes": 42}),
            ),
            ("other".to_string(), json!({"name": "other"})),
        ]);
        let rows = model_rows(&registry, &members);
        let (other, smol) = (&rows[0], &rows[1]);
        assert_eq!(
            (smol.size_bytes, &smol.holders),
            (Some(42), &vec!["n1".to_string(), "n2".into()])
        );
        assert_eq!(smol.loaded_on, ["n1"]);
        assert!(other.holders.is_empty() && other.loaded_on.is_empty());
        assert_eq!(other.size_bytes, None);
    }
}
