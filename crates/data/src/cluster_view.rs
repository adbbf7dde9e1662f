//! The whole cluster in this node's `jetson://system/metrics` and
//! `jetson://performance/analytics`. Every node of a cluster publishes a
//! [`NodeSnapshot`] of both every `cluster.telemetry_interval_ms`; once this
//! node joins, a [`ClusterView`] (the cluster-state crate implements it on
//! JetStream) reads the latest of each live node, and the two resources
//! gain a `cluster` field: every node's part, and the totals. On one device
//! there is no view, and the resources are this node's alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::analytics::ToolSummary;
use crate::settings::BoxFuture;

/// What one node tells the cluster of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSnapshot {
    pub node: String,
    /// When the node took it, by its own clock.
    pub published_unix_ms: u64,
    /// Its own `jetson://system/metrics`.
    pub metrics: Value,
    /// Its calls, per server and tool ([`crate::analytics::Analytics::tool_summary`]).
    pub tools: Vec<ToolSummary>,
}

/// The latest snapshot of each live node, by node id.
pub type Snapshots = BTreeMap<String, NodeSnapshot>;

/// The cluster's snapshots, as this node reads them.
pub trait ClusterView: Send + Sync {
    /// The latest snapshot of every live node (this one included); nodes
    /// that left, or whose last snapshot is too old, are not there. An
    /// error is the message the reader sees.
    fn snapshots(&self) -> BoxFuture<'_, Result<Snapshots, String>>;
}

impl NodeSnapshot {
    /// Memory in use (all but what can be allocated without swapping) and
    /// in all, in bytes.
    pub fn memory(&self) -> Option<(u64, u64)> {
        let total = self.metrics.pointer("/memory/total_bytes")?.as_u64()?;
        let available = self.metrics.pointer("/memory/available_bytes")?.as_u64()?;
        Some((total.saturating_sub(available), total))
    }

    /// The hottest thermal zone.
    pub fn max_temperature_c(&self) -> Option<f64> {
        self.metrics
            .get("thermal_zones")?
            .as_array()?
            .iter()
            .filter_map(|zone| zone.get("celsius")?.as_f64())
            .reduce(f64::max)
    }

    fn cpu_cores(&self) -> u64 {
        let cores = self.metrics.pointer("/cpu/cores");
        cores.and_then(Value::as_u64).unwrap_or(0)
    }
}

/// The cluster's machines together.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsTotals {
    pub nodes: usize,
    pub cpu_cores: u64,
    /// Summed over the nodes that report memory.
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    /// The hottest thermal zone of any node.
    pub max_temperature_c: Option<f64>,
}

/// One server's tool over the whole cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolTotals {
    pub server: String,
    pub tool: String,
    /// The nodes whose server ran it.
    pub nodes: usize,
    pub calls: u64,
    pub errors: u64,
    pub completion_tokens: u64,
    /// The worst node's p99 (percentiles do not add up).
    pub worst_p99_ms: Option<f64>,
}

pub fn metrics_totals(snapshots: &Snapshots) -> MetricsTotals {
    let memory: Vec<(u64, u64)> = snapshots
        .values()
        .filter_map(NodeSnapshot::memory)
        .collect();
    MetricsTotals {
        nodes: snapshots.len(),
        cpu_cores: snapshots.values().map(NodeSnapshot::cpu_cores).sum(),
        memory_used_bytes: memory.iter().map(|(used, _)| used).sum(),
        memory_total_bytes: memory.iter().map(|(_, total)| total).sum(),
        max_temperature_c: snapshots
            .values()
            .filter_map(NodeSnapshot::max_temperature_c)
            .reduce(f64::max),
    }
}

/// Per server and tool, by server then tool.
pub fn tool_totals(snapshots: &Snapshots) -> Vec<ToolTotals> {
    let mut totals: BTreeMap<(&str, &str), ToolTotals> = BTreeMap::new();
    for tool in snapshots.values().flat_map(|s| &s.tools) {
        let total = totals
            .entry((&tool.server, &tool.tool))
            .or_insert_with(|| ToolTotals {
                server: tool.server.clone(),
                tool: tool.tool.clone(),
                nodes: 0,
                calls: 0,
                errors: 0,
                completion_tokens: 0,
                worst_p99_ms: None,
            });
        total.nodes += 1;
        total.calls += tool.calls;
        total.errors += tool.errors;
        total.completion_tokens += tool.completion_tokens;
        total.worst_p99_ms = worst(total.worst_p99_ms, tool.p99_ms);
    }
    totals.into_values().collect()
}

/// The larger of two optional latencies.
pub fn worst(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.into_iter().chain(b).reduce(f64::max)
}

/// `cluster` of `jetson://system/metrics`: each node's metrics, and the totals.
pub fn metrics_view(snapshots: &Snapshots) -> Value {
    let nodes: serde_json::Map<String, Value> = snapshots
        .iter()
        .map(|(node, s)| {
            let part = json!({"published_unix_ms": s.published_unix_ms, "metrics": s.metrics});
            (node.clone(), part)
        })
        .collect();
    json!({"nodes": nodes, "totals": metrics_totals(snapshots)})
}

/// `cluster` of `jetson://performance/analytics`: each node's tools, and
/// the totals per tool.
pub fn analytics_view(snapshots: &Snapshots) -> Value {
    let nodes: serde_json::Map<String, Value> = snapshots
        .iter()
        .map(|(node, s)| {
            let part = json!({"published_unix_ms": s.published_unix_ms, "tools": s.tools});
            (node.clone(), part)
        })
        .collect();
    json!({"nodes": nodes, "totals": {"tools": tool_totals(snapshots)}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(server: &str, calls: u64, p99_ms: Option<f64>) -> ToolSummary {
        ToolSummary {
            server: server.into(),
            tool: "text_generate".into(),
            calls,
            errors: 1,
            completion_tokens: 10 * calls,
            p50_ms: p99_ms,
            p99_ms,
        }
    }

    fn snapshot(node: &str, memory: Value, zones: &[f64], tools: Vec<ToolSummary>) -> NodeSnapshot {
        let zones: Vec<Value> = zones
            .iter()
            .map(|c| json!({"name": "z", "celsius": c}))
            .collect();
        NodeSnapshot {
            node: node.into(),
            published_unix_ms: 1,
            metrics: json!({"cpu": {"cores": 4}, "memory": memory, "thermal_zones": zones}),
            tools,
        }
    }

    fn cluster() -> Snapshots {
        let gib = 1u64 << 30;
        let memory = json!({"total_bytes": 8 * gib, "available_bytes": 6 * gib});
        let nodes = [
            snapshot(
                "n1",
                memory.clone(),
                &[40.0, 55.5],
                vec![tool("c", 3, Some(90.0))],
            ),
            snapshot(
                "n2",
                memory,
                &[61.0],
                vec![tool("c", 4, Some(120.0)), tool("g", 7, None)],
            ),
            // A node that reports no memory nor temperature still counts.
            snapshot("n3", json!({}), &[], vec![tool("c", 1, None)]),
        ];
        nodes.into_iter().map(|s| (s.node.clone(), s)).collect()
    }

    #[test]
    fn metrics_totals_add_memory_and_take_the_hottest_zone() {
        let gib = 1u64 << 30;
        let totals = metrics_totals(&cluster());
        assert_eq!((totals.nodes, totals.cpu_cores), (3, 12));
        assert_eq!(
            (totals.memory_used_bytes, totals.memory_total_bytes),
            (4 * gib, 16 * gib)
        );
        assert_eq!(totals.max_temperature_c, Some(61.0));
        assert_eq!(metrics_totals(&Snapshots::new()).max_temperature_c, None);
    }

    #[test]
    fn tool_totals_add_calls_and_take_the_worst_p99() {
        let totals = tool_totals(&cluster());
        assert_eq!(totals.len(), 2, "{totals:?}");
        let c = &totals[0];
        assert_eq!(
            (c.server.as_str(), c.nodes, c.calls, c.errors),
            ("c", 3, 8, 3)
        );
        assert_eq!((c.completion_tokens, c.worst_p99_ms), (80, Some(120.0)));
        assert_eq!(
            (totals[1].server.as_str(), totals[1].worst_p99_ms),
            ("g", None)
        );
    }

    #[test]
    fn the_views_name_every_node() {
        let snapshots = cluster();
        let metrics = metrics_view(&snapshots);
        assert_eq!(metrics["nodes"]["n2"]["metrics"]["cpu"]["cores"], 4);
        assert_eq!(metrics["totals"]["nodes"], 3);
        let analytics = analytics_view(&snapshots);
        assert_eq!(analytics["nodes"]["n1"]["tools"][0]["calls"], 3);
        assert_eq!(analytics["totals"]["tools"][0]["calls"], 8);
    }
}
