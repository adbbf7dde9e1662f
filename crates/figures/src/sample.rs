//! One point of the dashboard's charts: each node's load, the calls and
//! tokens per second since the point before, and each tool's latency
//! percentiles over the last minute.

use serde::Serialize;
use serde_json::Value;

use crate::snapshot::{COMPUTE_SERVER, Node, nodes};

/// The server whose series count the calls that came in: every call a
/// client makes passes the gateway once, whichever server then answers it.
const GATEWAY_SERVER: &str = "jetsonmind-gateway";

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Unix time of the reading, in milliseconds.
    pub at_ms: u64,
    pub nodes: Vec<Node>,
    /// Calls through the gateway since it started (a counter).
    pub calls: u64,
    /// Tokens the language models generated since they started (a counter).
    pub tokens: u64,
    /// Per second since the sample before; `None` for the first.
    pub calls_per_second: Option<f64>,
    pub tokens_per_second: Option<f64>,
    pub latency: Vec<ToolLatency>,
}

/// A tool's latency over the last minute, per model (empty for tools that
/// use none); only tools called in that minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ToolLatency {
    pub tool: String,
    pub model: String,
    pub calls: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Sample {
    /// From `jetson://system/metrics` and `jetson://performance/analytics`
    /// read at `at_ms`; rates against `before`, the previous sample.
    pub fn read(at_ms: u64, metrics: &Value, analytics: &Value, before: Option<&Sample>) -> Self {
        let series = || analytics["series"].as_array().into_iter().flatten();
        let total = |server: &str, field: &str| -> u64 {
            series()
                .filter(|s| s["server"] == server)
                .filter_map(|s| s[field].as_u64())
                .sum()
        };
        let mut sample = Self {
            at_ms,
            nodes: nodes(metrics),
            calls: total(GATEWAY_SERVER, "calls"),
            tokens: total(COMPUTE_SERVER, "completion_tokens"),
            latency: series()
                .filter(|s| s["server"] == GATEWAY_SERVER)
                .filter_map(latency)
                .collect(),
            ..Self::default()
        };
        if let Some(before) = before.filter(|b| b.at_ms < at_ms) {
            let seconds = (at_ms - before.at_ms) as f64 / 1000.0;
            // A counter that went down restarted: no rate across it.
            let rate = |now: u64, then: u64| (now >= then).then(|| (now - then) as f64 / seconds);
            sample.calls_per_second = rate(sample.calls, before.calls);
            sample.tokens_per_second = rate(sample.tokens, before.tokens);
        }
        sample
    }
}

fn latency(series: &Value) -> Option<ToolLatency> {
    let minute = &series["windows"]["1m"];
    let calls = minute["calls"].as_u64().filter(|&n| n > 0)?;
    Some(ToolLatency {
        tool: series["tool"].as_str()?.to_string(),
        model: series["model"].as_str().unwrap_or_default().to_string(),
        calls,
        p50_ms: minute["p50_ms"].as_f64(),
        p95_ms: minute["p95_ms"].as_f64(),
        p99_ms: minute["p99_ms"].as_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn analytics(gateway_calls: u64, tokens: u64) -> Value {
        let minute = json!({"1m": {"calls": 2, "p50_ms": 10.0, "p95_ms": 30.0, "p99_ms": 31.0}});
        json!({"series": [
            {"server": GATEWAY_SERVER, "tool": "text_generate", "model": "smol.gguf",
             "calls": gateway_calls, "completion_tokens": tokens, "windows": minute},
            {"server": GATEWAY_SERVER, "tool": "monitor_health", "model": "", "calls": 1,
             "windows": {"1m": {"calls": 0}}},
            {"server": COMPUTE_SERVER, "tool": "text_generate", "model": "smol.gguf",
             "calls": gateway_calls, "completion_tokens": tokens, "windows": minute}]})
    }

    #[test]
    fn rates_are_counted_between_samples_and_not_across_a_restart() {
        let metrics = json!({"hostname": "box", "cpu": {"usage_percent": 20.0}});
        let first = Sample::read(1_000, &metrics, &analytics(10, 100), None);
        assert_eq!((first.calls, first.tokens), (11, 100));
        assert_eq!(first.calls_per_second, None);
        let second = Sample::read(3_000, &metrics, &analytics(14, 160), Some(&first));
        assert_eq!(second.calls_per_second, Some(2.0));
        assert_eq!(second.tokens_per_second, Some(30.0));
        let restarted = Sample::read(4_000, &metrics, &analytics(0, 0), Some(&second));
        assert_eq!(restarted.tokens_per_second, None);
        assert_eq!(second.nodes[0].cpu_percent, Some(20.0));
    }

    #[test]
    fn latency_is_the_gateway_s_last_minute_of_tools_called_in_it() {
        let sample = Sample::read(1_000, &json!({}), &analytics(10, 100), None);
        assert_eq!(
            sample.latency,
            [ToolLatency {
                tool: "text_generate".into(),
                model: "smol.gguf".into(),
                calls: 2,
                p50_ms: Some(10.0),
                p95_ms: Some(30.0),
                p99_ms: Some(31.0),
            }]
        );
    }
}
