//! What a dashboard shows at one moment: every node's figures, every
//! replica's health, every model's generation rate.

use serde::Serialize;
use serde_json::Value;

/// One refresh: every node, every replica, every model's generation rate.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    pub nodes: Vec<Node>,
    pub replicas: Vec<Replica>,
    pub models: Vec<ModelRate>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Node {
    pub name: String,
    pub cores: Option<u64>,
    pub cpu_percent: Option<f64>,
    pub memory_total_bytes: Option<u64>,
    pub memory_available_bytes: Option<u64>,
    pub gpu_percent: Option<f64>,
    pub temperature_c: Option<f64>,
    pub power_watts: Option<f64>,
    pub fan_percent: Option<f64>,
    pub power_mode: Option<String>,
}

impl Node {
    pub fn memory_used_bytes(&self) -> Option<u64> {
        Some(
            self.memory_total_bytes?
                .saturating_sub(self.memory_available_bytes?),
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Replica {
    pub name: String,
    /// The node it runs on, where the gateway knows it.
    pub node: Option<String>,
    pub up: bool,
    pub breaker: String,
    pub in_flight: u64,
    pub latency_ms: Option<f64>,
    pub loaded: Vec<String>,
}

/// Tokens per second a model generated over the last minute, all its tools.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelRate {
    pub model: String,
    pub tokens_per_second: Option<f64>,
    pub calls_last_minute: u64,
}

impl Snapshot {
    /// From `jetson://system/metrics`, `monitor_health`'s structured result
    /// and `jetson://performance/analytics`.
    pub fn read(metrics: &Value, health: &Value, analytics: &Value) -> Self {
        Self {
            nodes: nodes(metrics),
            replicas: replicas(health),
            models: model_rates(analytics),
        }
    }
}

/// The cluster's nodes when the metrics hold them, else this one device.
pub(crate) fn nodes(metrics: &Value) -> Vec<Node> {
    match metrics.pointer("/cluster/nodes").and_then(Value::as_object) {
        Some(nodes) if !nodes.is_empty() => nodes
            .iter()
            .map(|(name, part)| node(name, part.get("metrics").unwrap_or(part)))
            .collect(),
        _ => {
            let name = metrics["hostname"].as_str().unwrap_or("this device");
            vec![node(name, metrics)]
        }
    }
}

fn node(name: &str, m: &Value) -> Node {
    let jetson = &m["jetson"];
    Node {
        name: name.to_string(),
        cores: m.pointer("/cpu/cores").and_then(Value::as_u64),
        cpu_percent: m.pointer("/cpu/usage_percent").and_then(Value::as_f64),
        memory_total_bytes: m.pointer("/memory/total_bytes").and_then(Value::as_u64),
        memory_available_bytes: m.pointer("/memory/available_bytes").and_then(Value::as_u64),
        gpu_percent: jetson
            .pointer("/gpu/load_percent")
            .and_then(Value::as_f64)
            .or_else(|| max_of(&m["gpus"], "utilization_gpu_percent")),
        temperature_c: max_of(&m["thermal_zones"], "celsius"),
        power_watts: sum_of(&jetson["rails"], "power_mw")
            .or_else(|| sum_of(&m["gpus"], "power_mw"))
            .map(|mw| mw / 1000.0),
        fan_percent: jetson["fan_percent"].as_f64(),
        power_mode: jetson
            .pointer("/power_mode/name")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

fn numbers<'a>(list: &'a Value, field: &'a str) -> impl Iterator<Item = f64> + 'a {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(move |item| item[field].as_f64())
}

fn max_of(list: &Value, field: &str) -> Option<f64> {
    numbers(list, field).reduce(f64::max)
}

fn sum_of(list: &Value, field: &str) -> Option<f64> {
    numbers(list, field).reduce(|a, b| a + b)
}

fn replicas(health: &Value) -> Vec<Replica> {
    let list = health["replicas"].as_array().into_iter().flatten();
    list.map(|r| Replica {
        name: r["name"].as_str().unwrap_or("?").to_string(),
        node: r["node"].as_str().map(str::to_string),
        up: r["up"].as_bool().unwrap_or(false),
        breaker: r["breaker"].as_str().unwrap_or("?").to_string(),
        in_flight: r["outstanding"].as_u64().unwrap_or(0),
        latency_ms: r["latency_ms"].as_f64(),
        loaded: r
            .pointer("/report/loaded")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| m["name"].as_str().map(str::to_string))
            .collect(),
    })
    .collect()
}

/// The server whose series count a model's calls: a gateway in front of it
/// records the same calls again.
pub(crate) const COMPUTE_SERVER: &str = "jetsonmind-compute";

fn model_rates(analytics: &Value) -> Vec<ModelRate> {
    let mut rates: Vec<ModelRate> = Vec::new();
    for series in analytics["series"].as_array().into_iter().flatten() {
        let model = series["model"].as_str().unwrap_or_default();
        if model.is_empty() || series["server"] != COMPUTE_SERVER {
            continue;
        }
        let minute = &series["windows"]["1m"];
        let at = match rates.iter().position(|r| r.model == model) {
            Some(at) => at,
            None => {
                rates.push(ModelRate {
                    model: model.to_string(),
                    ..ModelRate::default()
                });
                rates.len() - 1
            }
        };
        let rate = &mut rates[at];
        rate.calls_last_minute += minute["calls"].as_u64().unwrap_or(0);
        if let Some(tps) = minute["tokens_per_second"].as_f64() {
            *rate.tokens_per_second.get_or_insert(0.0) += tps;
        }
    }
    rates
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_jetson_in_a_cluster_reads_as_its_figures() {
        let jetson = json!({
            "cpu": {"cores": 6, "usage_percent": 12.5},
            "memory": {"total_bytes": 8_000_000_000u64, "available_bytes": 6_000_000_000u64},
            "thermal_zones": [{"name": "cpu", "celsius": 51.0}, {"name": "gpu", "celsius": 49.5}],
            "jetson": {"gpu": {"load_percent": 40.0}, "rails": [{"power_mw": 3000}, {"power_mw": 1500}],
                       "fan_percent": 30.0, "power_mode": {"id": 0, "name": "15W"}},
            "gpus": []
        });
        let metrics =
            json!({"cluster": {"nodes": {"orin1": {"metrics": jetson}, "orin2": {"metrics": {}}}}});
        let health = json!({"replicas": [{"name": "compute@orin2", "node": "orin2", "up": true,
            "breaker": "closed", "outstanding": 2, "latency_ms": 80.5,
            "report": {"loaded": [{"name": "smol.gguf"}]}}]});
        let minute = |calls, rate| json!({"1m": {"calls": calls, "tokens_per_second": rate}});
        let analytics = json!({"series": [
            {"server": COMPUTE_SERVER, "tool": "text_generate", "model": "smol.gguf", "windows": minute(3, 40.0)},
            {"server": COMPUTE_SERVER, "tool": "code_complete", "model": "smol.gguf", "windows": minute(1, 10.0)},
            {"server": "jetsonmind-gateway", "tool": "text_generate", "model": "smol.gguf", "windows": minute(3, 40.0)},
            {"server": COMPUTE_SERVER, "tool": "embeddings", "model": "", "windows": minute(9, 0.0)}]});
        let snapshot = Snapshot::read(&metrics, &health, &analytics);
        let orin1 = &snapshot.nodes[0];
        assert_eq!(
            (orin1.name.as_str(), orin1.cores, orin1.cpu_percent),
            ("orin1", Some(6), Some(12.5))
        );
        assert_eq!(orin1.memory_used_bytes(), Some(2_000_000_000));
        assert_eq!(
            (orin1.gpu_percent, orin1.temperature_c),
            (Some(40.0), Some(51.0))
        );
        assert_eq!(
            (orin1.power_watts, orin1.fan_percent),
            (Some(4.5), Some(30.0))
        );
        assert_eq!(orin1.power_mode.as_deref(), Some("15W"));
        assert_eq!(
            snapshot.nodes[1].memory_used_bytes(),
            None,
            "unknown stays unknown"
        );
        assert_eq!(snapshot.replicas[0].loaded, ["smol.gguf"]);
        assert_eq!(snapshot.replicas[0].node.as_deref(), Some("orin2"));
        assert_eq!(
            snapshot.models,
            [ModelRate {
                model: "smol.gguf".into(),
                tokens_per_second: Some(50.0),
                calls_last_minute: 4,
            }]
        );
    }

    #[test]
    fn one_device_is_named_by_its_host_and_a_discrete_gpu_counts() {
        let metrics = json!({"hostname": "box", "cpu": {"cores": 2}, "thermal_zones": [],
            "gpus": [{"utilization_gpu_percent": 70, "power_mw": 120000}]});
        let snapshot = Snapshot::read(&metrics, &json!({}), &json!({}));
        let node = &snapshot.nodes[0];
        assert_eq!((node.name.as_str(), node.gpu_percent), ("box", Some(70.0)));
        assert_eq!((node.power_watts, node.temperature_c), (Some(120.0), None));
        assert!(snapshot.replicas.is_empty() && snapshot.models.is_empty());
    }
}
