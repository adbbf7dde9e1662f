//! Performance analytics: per server, tool and model, how many calls, how
//! many failed, latency percentiles and generation speed, over sliding
//! windows; also as Prometheus text for `/metrics`.
//!
//! Kept in memory: the recent samples of each (server, tool, model) in a
//! bounded ring, and lifetime counters. When opened on a database, new
//! samples and counter increments are written every flush interval (and at
//! shutdown), and read back at start, so a restart keeps its history.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use jetsonmind_store::db::{self, DbError, now_ms};

use jetsonmind_core::CallObserver;
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::CallToolResult;
use serde::{Deserialize, Serialize};

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

#[derive(Clone)]
struct Sample {
    at: Instant,
    /// The same moment as Unix milliseconds, for the database.
    at_ms: i64,
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
    persistence: Option<Mutex<Persistence>>,
    /// Where each call goes as a record too (a cluster's analytics stream).
    sink: OnceLock<Arc<dyn CallSink>>,
}

/// One call as the analytics saw it: what a cluster keeps of each call
/// (never its arguments or its answer).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallRecord {
    pub server: String,
    pub tool: String,
    /// Empty for tools that use no model.
    pub model: String,
    pub ok: bool,
    pub latency_ms: f64,
    pub completion_tokens: u64,
    /// When it ended, Unix milliseconds.
    pub at_ms: i64,
}

/// Takes each call's record as it ends. Called on the call's own task: it
/// must not block (queue the record and return).
pub trait CallSink: Send + Sync {
    fn record(&self, call: CallRecord);
}

/// What has not been written yet, and where it goes.
struct Persistence {
    conn: Connection,
    retention: Duration,
    samples: Vec<(Key, Sample)>,
    increments: BTreeMap<Key, Totals>,
}

/// Counter increments of one series since the last flush.
#[derive(Default, Clone, Copy)]
struct Totals {
    calls: u64,
    errors: u64,
    latency_ms_sum: f64,
    completion_tokens: u64,
}

/// Unwritten samples kept when the database cannot be written (disk full):
/// beyond this the oldest are dropped rather than growing without bound.
const MAX_PENDING: usize = 100_000;

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

/// One tool of one server in short, its models together: what a node
/// tells the cluster of its calls.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolSummary {
    pub server: String,
    pub tool: String,
    /// Since the analytics began (lifetime counters).
    pub calls: u64,
    pub errors: u64,
    pub completion_tokens: u64,
    /// Latency percentiles over [`SUMMARY_WINDOW`]; none without calls there.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The window of a [`ToolSummary`]'s percentiles (the "5m" window).
pub const SUMMARY_WINDOW: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
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
            at_ms: now_ms(),
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            ok,
            tokens_per_second: field("/timings/generation_tokens_per_second")
                .and_then(|v| v.as_f64())
                .filter(|_| !cached),
        };
        let tokens = field("/usage/completion_tokens")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if let Some(sink) = self.sink.get() {
            sink.record(CallRecord {
                server: key.server.clone(),
                tool: key.tool.clone(),
                model: key.model.clone(),
                ok: sample.ok,
                latency_ms: sample.latency_ms,
                completion_tokens: tokens,
                at_ms: sample.at_ms,
            });
        }
        self.record(key, sample, tokens);
    }
}

impl Analytics {
    /// Send each call's record to `sink` too, from now on. Only the first
    /// call counts.
    pub fn share_calls(&self, sink: Arc<dyn CallSink>) {
        let _ = self.sink.set(sink);
    }

    /// Analytics kept in the database of `data_dir`, with the history it
    /// already holds (samples younger than `retention`).
    pub fn open(data_dir: &Path, retention: Duration) -> Result<Self, DbError> {
        let conn = db::open(data_dir)?;
        let series = load(&conn, retention).map_err(|source| DbError::Sqlite {
            path: data_dir.join(db::DB_FILE),
            source,
        })?;
        Ok(Self {
            series: Mutex::new(series),
            persistence: Some(Mutex::new(Persistence {
                conn,
                retention,
                samples: Vec::new(),
                increments: BTreeMap::new(),
            })),
            sink: OnceLock::new(),
        })
    }

    fn record(&self, key: Key, sample: Sample, completion_tokens: u64) {
        let increment = Totals {
            calls: 1,
            errors: u64::from(!sample.ok),
            latency_ms_sum: sample.latency_ms,
            completion_tokens,
        };
        if let Some(persistence) = &self.persistence {
            let mut pending = persistence.lock().expect("analytics persistence lock");
            pending.add(&key, &sample, increment);
        }
        let mut series = self.series.lock().expect("analytics lock");
        series.entry(key).or_default().add(sample, increment);
    }

    /// Write what was recorded since the last flush, and drop samples older
    /// than the retention. Without a database this does nothing.
    pub fn flush(&self) -> Result<(), rusqlite::Error> {
        let Some(persistence) = &self.persistence else {
            return Ok(());
        };
        persistence
            .lock()
            .expect("analytics persistence lock")
            .flush()
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

    /// Per server and tool, its models together: lifetime counters and
    /// the percentiles of the last [`SUMMARY_WINDOW`] over all its samples.
    pub fn tool_summary(&self) -> Vec<ToolSummary> {
        let series = self.series.lock().expect("analytics lock");
        let now = Instant::now();
        let mut tools: BTreeMap<(&str, &str), (ToolSummary, Vec<f64>)> = BTreeMap::new();
        for (key, s) in series.iter() {
            let (summary, recent) = tools
                .entry((key.server.as_str(), key.tool.as_str()))
                .or_insert_with(|| (ToolSummary::empty(&key.server, &key.tool), Vec::new()));
            summary.calls += s.calls;
            summary.errors += s.errors;
            summary.completion_tokens += s.completion_tokens;
            recent.extend(in_window(&s.samples, now, SUMMARY_WINDOW).map(|s| s.latency_ms));
        }
        tools
            .into_values()
            .map(|(mut summary, mut recent)| {
                recent.sort_by(f64::total_cmp);
                summary.p50_ms = percentile(&recent, 0.5);
                summary.p99_ms = percentile(&recent, 0.99);
                summary
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

impl ToolSummary {
    fn empty(server: &str, tool: &str) -> Self {
        Self {
            server: server.to_string(),
            tool: tool.to_string(),
            calls: 0,
            errors: 0,
            completion_tokens: 0,
            p50_ms: None,
            p99_ms: None,
        }
    }
}

impl Series {
    fn add(&mut self, sample: Sample, increment: Totals) {
        self.calls += increment.calls;
        self.errors += increment.errors;
        self.latency_ms_sum += increment.latency_ms_sum;
        self.completion_tokens += increment.completion_tokens;
        if self.samples.len() == SAMPLES_PER_KEY {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }
}

impl Persistence {
    fn add(&mut self, key: &Key, sample: &Sample, increment: Totals) {
        if self.samples.len() == MAX_PENDING {
            self.samples.remove(0);
        }
        self.samples.push((key.clone(), sample.clone()));
        let totals = self.increments.entry(key.clone()).or_default();
        totals.calls += increment.calls;
        totals.errors += increment.errors;
        totals.latency_ms_sum += increment.latency_ms_sum;
        totals.completion_tokens += increment.completion_tokens;
    }

    /// One transaction; what it wrote is forgotten only once it commits.
    fn flush(&mut self) -> Result<(), rusqlite::Error> {
        let cutoff = now_ms() - self.retention.as_millis() as i64;
        let tx = self.conn.transaction()?;
        for (key, totals) in &self.increments {
            // Increments, not values: several processes may share the database.
            tx.execute(
                "INSERT INTO analytics_series VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (server, tool, model) DO UPDATE SET
                   calls = calls + excluded.calls, errors = errors + excluded.errors,
                   latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum,
                   completion_tokens = completion_tokens + excluded.completion_tokens",
                params![
                    key.server,
                    key.tool,
                    key.model,
                    totals.calls as i64,
                    totals.errors as i64,
                    totals.latency_ms_sum,
                    totals.completion_tokens as i64
                ],
            )?;
        }
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO analytics_samples VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (key, s) in &self.samples {
                insert.execute(params![
                    key.server,
                    key.tool,
                    key.model,
                    s.at_ms,
                    s.latency_ms,
                    s.ok,
                    s.tokens_per_second
                ])?;
            }
        }
        tx.execute("DELETE FROM analytics_samples WHERE at_ms < ?1", [cutoff])?;
        tx.commit()?;
        self.samples.clear();
        self.increments.clear();
        Ok(())
    }
}

/// The series the database holds: lifetime counters, samples within `retention`.
fn load(conn: &Connection, retention: Duration) -> rusqlite::Result<BTreeMap<Key, Series>> {
    let mut series: BTreeMap<Key, Series> = BTreeMap::new();
    let key = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Key> {
        Ok(Key {
            server: r.get(0)?,
            tool: r.get(1)?,
            model: r.get(2)?,
        })
    };
    let mut totals = conn.prepare(
        "SELECT server, tool, model, calls, errors, latency_ms_sum, completion_tokens
         FROM analytics_series",
    )?;
    let rows = totals.query_map([], |r| {
        Ok((
            key(r)?,
            Totals {
                calls: r.get::<_, i64>(3)? as u64,
                errors: r.get::<_, i64>(4)? as u64,
                latency_ms_sum: r.get(5)?,
                completion_tokens: r.get::<_, i64>(6)? as u64,
            },
        ))
    })?;
    for row in rows {
        let (key, t) = row?;
        let s = series.entry(key).or_default();
        (s.calls, s.errors, s.latency_ms_sum, s.completion_tokens) =
            (t.calls, t.errors, t.latency_ms_sum, t.completion_tokens);
    }
    let now = (Instant::now(), now_ms());
    let cutoff = now.1 - retention.as_millis() as i64;
    let mut samples = conn.prepare(
        "SELECT server, tool, model, at_ms, latency_ms, ok, tokens_per_second
         FROM analytics_samples WHERE at_ms >= ?1 ORDER BY at_ms",
    )?;
    let rows = samples.query_map([cutoff], |r| {
        let at_ms: i64 = r.get(3)?;
        Ok((
            key(r)?,
            at_ms,
            r.get::<_, f64>(4)?,
            r.get::<_, bool>(5)?,
            r.get::<_, Option<f64>>(6)?,
        ))
    })?;
    for row in rows {
        let (key, at_ms, latency_ms, ok, tokens_per_second) = row?;
        let age = Duration::from_millis(now.1.saturating_sub(at_ms).max(0) as u64);
        // A sample older than this boot's clock can express is left out.
        let Some(at) = now.0.checked_sub(age) else {
            continue;
        };
        let s = series.entry(key).or_default();
        if s.samples.len() == SAMPLES_PER_KEY {
            s.samples.pop_front();
        }
        s.samples.push_back(Sample {
            at,
            at_ms,
            latency_ms,
            ok,
            tokens_per_second,
        });
    }
    Ok(series)
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
    fn a_tool_summary_puts_its_models_together() {
        let analytics = Analytics::default();
        let answer = |model: &str| {
            Ok(CallToolResult::structured(json!({
                "model": model,
                "usage": {"completion_tokens": 3},
            })))
        };
        for ms in 1..=50 {
            let model = if ms % 2 == 0 { "a.gguf" } else { "b.gguf" };
            let elapsed = Duration::from_millis(ms);
            analytics.tool_called("compute", "text_generate", elapsed, &answer(model));
        }
        let failed = Ok(tool_error("no"));
        analytics.tool_called("gateway", "text_generate", Duration::ZERO, &failed);
        let summary = analytics.tool_summary();
        assert_eq!(summary.len(), 2, "{summary:?}");
        let compute = &summary[0];
        assert_eq!(
            (compute.server.as_str(), compute.tool.as_str()),
            ("compute", "text_generate")
        );
        assert_eq!(
            (compute.calls, compute.errors, compute.completion_tokens),
            (50, 0, 150)
        );
        // Percentiles over both models' samples, not either's alone.
        assert_eq!(compute.p50_ms.map(f64::round), Some(25.0));
        assert_eq!(compute.p99_ms.map(f64::round), Some(50.0));
        assert_eq!(
            (summary[1].server.as_str(), summary[1].errors),
            ("gateway", 1)
        );
        let json = serde_json::to_value(compute).unwrap();
        assert_eq!(
            serde_json::from_value::<ToolSummary>(json).unwrap(),
            *compute
        );
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
    fn history_survives_a_restart_and_old_samples_expire() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let analytics = Analytics::open(dir.path(), hour).unwrap();
        for ms in [10, 20, 30] {
            analytics.tool_called(
                "compute",
                "text_generate",
                Duration::from_millis(ms),
                &generation(100.0, false),
            );
        }
        analytics.flush().unwrap();
        // Recorded after the last flush: lost by a crash, as documented.
        analytics.tool_called(
            "data",
            "update_settings",
            Duration::from_millis(1),
            &Ok(tool_error("no")),
        );
        drop(analytics);
        let reopened = Analytics::open(dir.path(), hour).unwrap();
        let report = reopened.report();
        assert_eq!(report.len(), 1);
        assert_eq!((report[0].calls, report[0].completion_tokens), (3, 30));
        let minute = &report[0].windows["1m"];
        assert_eq!(
            (minute.calls, minute.p50_ms.map(f64::round)),
            (3, Some(20.0))
        );
        assert_eq!(minute.tokens_per_second, Some(100.0));
        // Another flush adds to the counters instead of overwriting them.
        reopened.tool_called(
            "compute",
            "text_generate",
            Duration::from_millis(40),
            &generation(100.0, false),
        );
        reopened.flush().unwrap();
        drop(reopened);
        let report = Analytics::open(dir.path(), hour).unwrap().report();
        assert_eq!(report[0].calls, 4);
        // With no retention, the samples go but the lifetime counters stay.
        let expired = Analytics::open(dir.path(), Duration::ZERO).unwrap();
        expired.flush().unwrap();
        drop(expired);
        let report = Analytics::open(dir.path(), hour).unwrap().report();
        assert_eq!(report[0].calls, 4);
        assert_eq!(report[0].windows["1h"].calls, 0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.0));
    }
}
