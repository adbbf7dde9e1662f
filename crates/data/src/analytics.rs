//! Performance analytics: per server, tool and model, how many calls, how
//! many failed, latency percentiles and generation speed, over sliding
//! windows; also as Prometheus text for `/metrics`.
//!
//! Kept in memory: the recent samples of each (server, tool, model) in a
//! bounded ring, and lifetime counters.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jetsonmind_core::CallObserver;
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::CallToolResult;
use serde::Serialize;

/// Samples kept per (server, tool, model); older ones leave the windows early.
const SAMPLES_PER_KEY: usize = 4096;
/// The windows reported, in seconds.
const WINDOWS: [(u64, &str); 3] = [(60, "1m"), (300, "5m"), (3600, "1h")];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    server: String,
    tool: String,
    model: String,
}

struct Sample {
    at: Instant,
    latency_ms: f64,
    ok: bool,
    tokens_per_second: Option<f64>,
}

#[derive(Default)]
struct Series {
    samples: VecDeque<Sample>,
    calls: u64,
    errors: u64,
    latency_ms_sum: f64,
    completion_tokens: u64,
}

#[derive(Default)]
pub struct Analytics {
    series: Mutex<BTreeMap<Key, Series>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SeriesReport {
    pub server: String,
    pub tool: String,
    /// Empty for tools that use no model.
    pub model: String,
    pub calls: u64,
    pub errors: u64,
    pub completion_tokens: u64,
    pub windows: BTreeMap<String, WindowReport>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WindowReport {
    pub calls: usize,
    pub errors: usize,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub tokens_per_second: Option<f64>,
}

impl CallObserver for Analytics {
    fn tool_called(
        &self,
        server: &str,
        tool: &str,
        elapsed: Duration,
        outcome: &Result<CallToolResult, McpError>,
    ) {
        let structured = outcome
            .as_ref()
            .ok()
            .and_then(|r| r.structured_content.as_ref());
        let field = |path: &str| structured.and_then(|s| s.pointer(path));
        let ok = matches!(outcome, Ok(result) if result.is_error != Some(true));
        let key = Key {
            server: server.to_string(),
            tool: tool.to_string(),
            model: field("/model")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_string(),
        };
        // A cached answer says nothing about generation speed.
        let cached = field("/cached").and_then(|c| c.as_bool()).unwrap_or(false);
        let sample = Sample {
            at: Instant::now(),
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            ok,
            tokens_per_second: field("/timings/generation_tokens_per_second")
                .and_then(|v| v.as_f64())
                .filter(|_| !cached),
        };
        let tokens = field("/usage/completion_tokens")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        self.record(key, sample, tokens);
    }
}

impl Analytics {
    fn record(&self, key: Key, sample: Sample, completion_tokens: u64) {
        let mut series = self.series.lock().expect("analytics lock");
        let entry = series.entry(key).or_default();
        entry.calls += 1;
        entry.errors += u64::from(!sample.ok);
        entry.latency_ms_sum += sample.latency_ms;
        entry.completion_tokens += completion_tokens;
        if entry.samples.len() == SAMPLES_PER_KEY {
            entry.samples.pop_front();
        }
        entry.samples.push_back(sample);
    }

    pub fn report(&self) -> Vec<SeriesReport> {
        let series = self.series.lock().expect("analytics lock");
        let now = Instant::now();
        series
            .iter()
            .map(|(key, s)| SeriesReport {
                server: key.server.clone(),
                tool: key.tool.clone(),
                model: key.model.clone(),
                calls: s.calls,
                errors: s.errors,
                completion_tokens: s.completion_tokens,
                windows: WINDOWS
                    .iter()
                    .map(|(seconds, name)| {
                        (
                            name.to_string(),
                            window(&s.samples, now, Duration::from_secs(*seconds)),
                        )
                    })
                    .collect(),
            })
            .collect()
    }

    /// Prometheus text exposition: lifetime counters and 5-minute quantiles.
    pub fn prometheus(&self) -> String {
        let series = self.series.lock().expect("analytics lock");
        let now = Instant::now();
        let mut out = String::new();
        let labels = |k: &Key| {
            format!(
                "server=\"{}\",tool=\"{}\",model=\"{}\"",
                escape(&k.server),
                escape(&k.tool),
                escape(&k.model)
            )
        };
        out.push_str("# HELP jetsonmind_tool_calls_total Tool calls, by outcome.\n# TYPE jetsonmind_tool_calls_total counter\n");
        for (k, s) in series.iter() {
            let _ = writeln!(
                out,
                "jetsonmind_tool_calls_total{{{},outcome=\"ok\"}} {}",
                labels(k),
                s.calls - s.errors
            );
            let _ = writeln!(
                out,
                "jetsonmind_tool_calls_total{{{},outcome=\"error\"}} {}",
                labels(k),
                s.errors
            );
        }
        out.push_str("# HELP jetsonmind_tool_call_duration_seconds Tool call latency; quantiles over the last 5 minutes.\n");
        out.push_str("# TYPE jetsonmind_tool_call_duration_seconds summary\n");
        for (k, s) in series.iter() {
            let recent = latencies(&s.samples, now, Duration::from_secs(300));
            for q in [0.5, 0.95, 0.99] {
                if let Some(ms) = percentile(&recent, q) {
                    let _ = writeln!(
                        out,
                        "jetsonmind_tool_call_duration_seconds{{{},quantile=\"{q}\"}} {}",
                        labels(k),
                        ms / 1000.0
                    );
                }
            }
            let _ = writeln!(
                out,
                "jetsonmind_tool_call_duration_seconds_sum{{{}}} {}",
                labels(k),
                s.latency_ms_sum / 1000.0
            );
            let _ = writeln!(
                out,
                "jetsonmind_tool_call_duration_seconds_count{{{}}} {}",
                labels(k),
                s.calls
            );
        }
        out.push_str("# HELP jetsonmind_completion_tokens_total Tokens generated.\n# TYPE jetsonmind_completion_tokens_total counter\n");
        for (k, s) in series.iter().filter(|(k, _)| !k.model.is_empty()) {
            let _ = writeln!(
                out,
                "jetsonmind_completion_tokens_total{{{}}} {}",
                labels(k),
                s.completion_tokens
            );
        }
        out
    }
}

fn in_window(
    samples: &VecDeque<Sample>,
    now: Instant,
    span: Duration,
) -> impl Iterator<Item = &Sample> {
    samples
        .iter()
        .filter(move |s| now.duration_since(s.at) <= span)
}

fn latencies(samples: &VecDeque<Sample>, now: Instant, span: Duration) -> Vec<f64> {
    let mut values: Vec<f64> = in_window(samples, now, span)
        .map(|s| s.latency_ms)
        .collect();
    values.sort_by(f64::total_cmp);
    values
}

fn window(samples: &VecDeque<Sample>, now: Instant, span: Duration) -> WindowReport {
    let sorted = latencies(samples, now, span);
    let speeds: Vec<f64> = in_window(samples, now, span)
        .filter_map(|s| s.tokens_per_second)
        .collect();
    WindowReport {
        calls: sorted.len(),
        errors: in_window(samples, now, span).filter(|s| !s.ok).count(),
        p50_ms: percentile(&sorted, 0.5),
        p95_ms: percentile(&sorted, 0.95),
        p99_ms: percentile(&sorted, 0.99),
        tokens_per_second: (!speeds.is_empty())
            .then(|| speeds.iter().sum::<f64>() / speeds.len() as f64),
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsonmind_core::tool_error;
    use serde_json::json;

    fn generation(tokens_per_second: f64, cached: bool) -> Result<CallToolResult, McpError> {
        Ok(CallToolResult::structured(json!({
            "model": "m.gguf",
            "usage": {"completion_tokens": 10},
            "timings": {"generation_tokens_per_second": tokens_per_second},
            "cached": cached,
        })))
    }

    #[test]
    fn counts_errors_percentiles_and_speed() {
        let analytics = Analytics::default();
        for ms in 1..=100 {
            analytics.tool_called(
                "compute",
                "text_generate",
                Duration::from_millis(ms),
                &generation(100.0, false),
            );
        }
        analytics.tool_called(
            "compute",
            "text_generate",
            Duration::from_millis(1),
            &generation(1.0, true),
        );
        analytics.tool_called(
            "control",
            "scale_cluster",
            Duration::from_millis(3),
            &Ok(tool_error("no")),
        );
        let report = analytics.report();
        assert_eq!(report.len(), 2);
        let compute = &report[0];
        assert_eq!(
            (compute.calls, compute.errors, compute.model.as_str()),
            (101, 0, "m.gguf")
        );
        assert_eq!(compute.completion_tokens, 1010);
        let minute = &compute.windows["1m"];
        assert_eq!(minute.calls, 101);
        assert_eq!(minute.p50_ms.map(f64::round), Some(50.0));
        assert_eq!(minute.p99_ms.map(f64::round), Some(99.0));
        // The cached answer's speed is left out of the mean.
        assert_eq!(minute.tokens_per_second, Some(100.0));
        assert_eq!((report[1].errors, report[1].model.as_str()), (1, ""));
    }

    #[test]
    fn prometheus_text() {
        let analytics = Analytics::default();
        analytics.tool_called(
            "compute",
            "text_generate",
            Duration::from_millis(250),
            &generation(50.0, false),
        );
        let text = analytics.prometheus();
        let labels = r#"server="compute",tool="text_generate",model="m.gguf""#;
        assert!(
            text.contains(&format!(
                "jetsonmind_tool_calls_total{{{labels},outcome=\"ok\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "jetsonmind_tool_call_duration_seconds{{{labels},quantile=\"0.5\"}} 0.25\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "jetsonmind_completion_tokens_total{{{labels}}} 10\n"
            )),
            "{text}"
        );
        assert!(text.contains("# TYPE jetsonmind_tool_call_duration_seconds summary"));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.0));
    }
}
