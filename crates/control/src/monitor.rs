//! `monitor_health(component?, threshold?)`: readings of the device, the
//! compute replicas, their models, the cluster's nodes and the tools, each
//! a set of named figures; thresholds over them; and alerts, thresholds kept
//! and evaluated every `control.alert_interval_ms`. An alert fires when a
//! reading crosses its threshold and clears only once every reading is back
//! past it by the hysteresis, so a figure hovering at the line does not
//! flap. A change is published on `jetson://control/alerts` (subscribers are
//! notified, and sessions among them sent an MCP log message), logged, and
//! shown as the Prometheus gauge `jetsonmind_alert_firing`.

#![allow(deprecated)] // rmcp marks MCP logging deprecated (SEP-2577); both eras are served.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jetsonmind_core::ResourceUpdates;
use jetsonmind_core::rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
use jetsonmind_data::analytics::Analytics;
use jetsonmind_telemetry::{LinuxReader, SystemMetrics};
use serde::{Deserialize, Serialize};

use crate::breaker::BreakerState;
use crate::fleet::Fleet;
use crate::optimize::power_watts;
use crate::schema::{Component, Threshold};

/// The resource that lists the alerts and their state.
pub const ALERTS_URI: &str = "jetson://control/alerts";

/// The `logger` of the MCP log messages an alert change sends.
const ALERTS_LOGGER: &str = "jetsonmind.alerts";

/// The file registered alerts are kept in, in the data dir.
const ALERTS_FILE: &str = "alerts.json";

/// What the hysteresis is when a threshold names none: this share of the
/// threshold's value.
const DEFAULT_HYSTERESIS: f64 = 0.05;

impl Threshold {
    /// Whether `value` is in breach; when the alert already fires, whether
    /// it is not yet back past the line by the hysteresis.
    fn breached(&self, value: f64, firing: bool) -> bool {
        let line = self.above.or(self.below).unwrap_or_default();
        let margin = match firing {
            true => self.hysteresis.unwrap_or(line.abs() * DEFAULT_HYSTERESIS),
            false => 0.0,
        };
        match (self.above, self.below) {
            (Some(above), _) => value > above - margin,
            (_, Some(below)) => value < below + margin,
            _ => false,
        }
    }

    fn applies_to(&self, reading: &Reading) -> bool {
        self.tool
            .as_ref()
            .is_none_or(|tool| reading.tool.as_deref() == Some(tool.as_str()))
    }
}

/// One component's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Reading {
    pub component: Component,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    pub figures: BTreeMap<String, f64>,
}

/// A reading in breach of a threshold.
#[derive(Debug, Clone, Serialize)]
pub struct Breach {
    pub component: Component,
    pub id: String,
    pub value: f64,
}

/// The readings of `threshold.metric` in breach (a firing alert's
/// hysteresis when `firing`), and whether any reading has that metric.
pub fn breaches<'r>(
    readings: impl IntoIterator<Item = &'r Reading>,
    threshold: &Threshold,
    firing: bool,
) -> (Vec<Breach>, bool) {
    let mut known = false;
    let breaches = readings
        .into_iter()
        .filter(|r| threshold.applies_to(r))
        .filter_map(|r| {
            let value = *r.figures.get(&threshold.metric)?;
            known = true;
            threshold.breached(value, firing).then(|| Breach {
                component: r.component,
                id: r.id.clone(),
                value,
            })
        })
        .collect();
    (breaches, known)
}

/// Where readings come from.
pub struct Sources {
    pub fleet: Arc<Fleet>,
    pub telemetry: LinuxReader,
    pub telemetry_root: PathBuf,
    pub analytics: Option<Arc<Analytics>>,
}

impl Sources {
    /// Every component's readings now (`only` one component's).
    pub async fn read(&self, only: Option<Component>) -> Vec<Reading> {
        let wanted = |c: Component| only.is_none_or(|o| o == c);
        let mut readings = Vec::new();
        if wanted(Component::Device) {
            let metrics = self.telemetry.snapshot().await;
            let mut reading = device(&metrics, &self.telemetry_root);
            insert_some(
                &mut reading.figures,
                "cpu_clock_percent",
                self.telemetry.cpu_clock_percent(),
            );
            readings.push(reading);
        }
        if wanted(Component::Replicas) {
            readings.extend(self.replicas());
        }
        if wanted(Component::Models) {
            readings.extend(self.models());
        }
        if wanted(Component::Nodes) {
            readings.extend(self.nodes());
        }
        if wanted(Component::Tools) {
            readings.extend(self.tools());
        }
        readings
    }

    fn replicas(&self) -> Vec<Reading> {
        self.fleet
            .states()
            .into_iter()
            .map(|s| {
                let mut figures = BTreeMap::new();
                let flag = |b: bool| if b { 1.0 } else { 0.0 };
                figures.insert("up".into(), flag(s.up));
                figures.insert(
                    "breaker_open".into(),
                    flag(s.breaker.is_some_and(|b| b != BreakerState::Closed)),
                );
                figures.insert("draining".into(), flag(s.draining));
                figures.insert("outstanding".into(), s.busy() as f64);
                insert_some(&mut figures, "capacity", s.capacity.map(|c| c as f64));
                insert_some(&mut figures, "latency_ms", s.latency_ms);
                insert_some(&mut figures, "temperature_c", s.temperature_c);
                reading(Component::Replicas, s.name, figures)
            })
            .collect()
    }

    fn models(&self) -> Vec<Reading> {
        let mut readings = Vec::new();
        for replica in self.fleet.replicas() {
            let Some(report) = replica.report() else {
                continue;
            };
            for model in report.loaded {
                let figures = BTreeMap::from([
                    ("bytes".to_string(), model.bytes as f64),
                    ("in_use".to_string(), model.in_use as f64),
                    ("idle_secs".to_string(), model.idle_secs),
                ]);
                let id = format!("{}/{}", replica.name(), model.name);
                readings.push(reading(Component::Models, id, figures));
            }
        }
        readings
    }

    fn nodes(&self) -> Vec<Reading> {
        let mut nodes: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for state in self.fleet.states() {
            let node = state.node.clone().unwrap_or_else(|| "this node".into());
            let (up, down) = nodes.entry(node).or_default();
            match state.up {
                true => *up += 1.0,
                false => *down += 1.0,
            }
        }
        nodes
            .into_iter()
            .map(|(node, (up, down))| {
                let figures = BTreeMap::from([
                    ("replicas_up".to_string(), up),
                    ("replicas_down".to_string(), down),
                ]);
                reading(Component::Nodes, node, figures)
            })
            .collect()
    }

    fn tools(&self) -> Vec<Reading> {
        let Some(analytics) = &self.analytics else {
            return Vec::new();
        };
        analytics
            .tool_summary()
            .into_iter()
            .map(|t| {
                let mut figures = BTreeMap::from([
                    ("calls".to_string(), t.calls as f64),
                    ("errors".to_string(), t.errors as f64),
                ]);
                if t.calls > 0 {
                    figures.insert("error_rate".into(), t.errors as f64 / t.calls as f64);
                }
                insert_some(&mut figures, "p50_ms", t.p50_ms);
                insert_some(&mut figures, "p99_ms", t.p99_ms);
                let mut reading = reading(
                    Component::Tools,
                    format!("{}/{}", t.server, t.tool),
                    figures,
                );
                reading.tool = Some(t.tool);
                reading
            })
            .collect()
    }
}

fn reading(component: Component, id: String, figures: BTreeMap<String, f64>) -> Reading {
    Reading {
        component,
        id,
        tool: None,
        figures,
    }
}

fn insert_some(figures: &mut BTreeMap<String, f64>, name: &str, value: Option<f64>) {
    if let Some(value) = value {
        figures.insert(name.into(), value);
    }
}

fn device(metrics: &SystemMetrics, root: &Path) -> Reading {
    let mut figures = BTreeMap::new();
    let hottest = metrics
        .thermal_zones
        .iter()
        .map(|z| z.celsius)
        .fold(None, |hottest: Option<f64>, c| {
            Some(hottest.map_or(c, |h| h.max(c)))
        });
    insert_some(&mut figures, "temperature_c", hottest);
    insert_some(&mut figures, "cpu_percent", metrics.cpu.usage_percent);
    insert_some(
        &mut figures,
        "memory_used_percent",
        metrics.memory.used_percent,
    );
    let disk = metrics
        .disks
        .iter()
        .filter(|d| d.total_bytes > 0)
        .map(|d| (1.0 - d.available_bytes as f64 / d.total_bytes as f64) * 100.0)
        .fold(None, |worst: Option<f64>, p| {
            Some(worst.map_or(p, |w| w.max(p)))
        });
    insert_some(&mut figures, "disk_used_percent", disk);
    insert_some(&mut figures, "power_w", power_watts(root));
    let gpu = metrics.jetson.as_ref().and_then(|j| j.gpu.as_ref());
    insert_some(
        &mut figures,
        "gpu_load_percent",
        gpu.and_then(|g| g.load_percent),
    );
    let gpu_clock = gpu.and_then(|g| Some(g.freq_mhz? / g.max_freq_mhz? * 100.0));
    insert_some(&mut figures, "gpu_clock_percent", gpu_clock);
    reading(Component::Device, "device".into(), figures)
}

/// A threshold kept as an alert, and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alert {
    pub name: String,
    /// The component it watches; every component with the metric if none.
    pub component: Option<Component>,
    pub threshold: Threshold,
    #[serde(default)]
    pub firing: bool,
    /// The readings in breach when last evaluated.
    #[serde(default)]
    pub breaches: Vec<BreachRecord>,
    /// Unix milliseconds of the last change (fired or cleared).
    #[serde(default)]
    pub changed_at_ms: Option<i64>,
    /// Times it fired since it was registered.
    #[serde(default)]
    pub fired: u64,
    /// Set when no reading has its metric (a typo, or no such sensor here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BreachRecord {
    pub id: String,
    pub value: f64,
}

/// The registered alerts: kept in the data dir when there is one.
pub struct Alerts {
    alerts: Mutex<BTreeMap<String, Alert>>,
    path: Mutex<Option<PathBuf>>,
    pub updates: Arc<ResourceUpdates>,
}

impl Default for Alerts {
    fn default() -> Self {
        Self {
            alerts: Mutex::default(),
            path: Mutex::default(),
            updates: Arc::new(ResourceUpdates::default()),
        }
    }
}

impl Alerts {
    /// Keep alerts in `dir` from now on, starting with those it holds.
    pub fn keep_in(&self, dir: &Path) {
        let path = dir.join(ALERTS_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            match serde_json::from_str::<Vec<Alert>>(&text) {
                Ok(kept) => {
                    let mut alerts = self.lock();
                    for alert in kept {
                        alerts.insert(alert.name.clone(), alert);
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable alerts file; starting without it")
                }
            }
        }
        *self.path.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Alert>> {
        self.alerts.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self) -> Vec<Alert> {
        self.lock().values().cloned().collect()
    }

    /// Register (or replace) an alert; it is evaluated from the next round.
    pub fn register(
        &self,
        name: String,
        component: Option<Component>,
        threshold: Threshold,
    ) -> Result<(), String> {
        self.lock().insert(
            name.clone(),
            Alert {
                name,
                component,
                threshold,
                firing: false,
                breaches: Vec::new(),
                changed_at_ms: None,
                fired: 0,
                problem: None,
            },
        );
        self.save()?;
        self.updates.publish(ALERTS_URI);
        Ok(())
    }

    pub fn remove(&self, name: &str) -> Result<bool, String> {
        let removed = self.lock().remove(name).is_some();
        if removed {
            self.save()?;
            self.updates.publish(ALERTS_URI);
        }
        Ok(removed)
    }

    fn save(&self) -> Result<(), String> {
        let Some(path) = self.path.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(&self.list()).map_err(|e| e.to_string())?;
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|e| format!("cannot save the alerts in {}: {e}", path.display()))
    }

    /// Evaluate every alert on `readings`; the names that fired or cleared.
    pub fn evaluate(&self, readings: &[Reading]) -> Vec<String> {
        let now_ms = unix_ms();
        let mut changed = Vec::new();
        {
            let mut alerts = self.lock();
            for alert in alerts.values_mut() {
                let watched = readings
                    .iter()
                    .filter(|r| alert.component.is_none_or(|c| c == r.component));
                let (breaches, known) = breaches(watched, &alert.threshold, alert.firing);
                alert.problem = (!known)
                    .then(|| format!("no reading has the metric `{}`", alert.threshold.metric));
                let firing = !breaches.is_empty();
                alert.breaches = breaches
                    .into_iter()
                    .map(|b| BreachRecord {
                        id: b.id,
                        value: b.value,
                    })
                    .collect();
                if firing != alert.firing {
                    alert.firing = firing;
                    alert.changed_at_ms = Some(now_ms);
                    alert.fired += u64::from(firing);
                    changed.push((alert.name.clone(), announce(alert)));
                }
            }
        }
        if !changed.is_empty() {
            if let Err(e) = self.save() {
                tracing::warn!(error = %e, "alert state not saved");
            }
            self.updates.publish(ALERTS_URI);
        }
        changed
            .into_iter()
            .map(|(name, message)| {
                self.updates.log(ALERTS_URI, message);
                name
            })
            .collect()
    }

    /// `jetsonmind_alert_firing{alert="…"}`: 1 while it fires, else 0.
    pub fn prometheus(&self) -> String {
        let alerts = self.lock();
        if alerts.is_empty() {
            return String::new();
        }
        let mut text = String::from(
            "# HELP jetsonmind_alert_firing Whether a registered alert (monitor_health) fires.\n\
             # TYPE jetsonmind_alert_firing gauge\n",
        );
        for alert in alerts.values() {
            let name = alert
                .name
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            text.push_str(&format!(
                "jetsonmind_alert_firing{{alert=\"{name}\"}} {}\n",
                u8::from(alert.firing)
            ));
        }
        text
    }
}

/// Log the change, and the MCP log message that tells the alerts'
/// subscribers of it: a warning when it fires, a notice when it clears.
fn announce(alert: &Alert) -> LoggingMessageNotificationParam {
    let breaches: Vec<String> = alert
        .breaches
        .iter()
        .map(|b| format!("{} = {}", b.id, b.value))
        .collect();
    let breaches = breaches.join(", ");
    let metric = &alert.threshold.metric;
    let (level, message) = match alert.firing {
        true => {
            tracing::warn!(alert = %alert.name, %metric, %breaches, "alert firing");
            let message = format!("alert `{}` firing: {metric} of {breaches}", alert.name);
            (LoggingLevel::Warning, message)
        }
        false => {
            tracing::info!(alert = %alert.name, %metric, "alert cleared");
            let message = format!("alert `{}` cleared: {metric} is back", alert.name);
            (LoggingLevel::Notice, message)
        }
    };
    let data = serde_json::json!({
        "uri": ALERTS_URI,
        "message": message,
        "alert": alert.name,
        "firing": alert.firing,
        "breaches": alert.breaches,
    });
    LoggingMessageNotificationParam::new(level, data).with_logger(ALERTS_LOGGER)
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device_at(celsius: f64) -> Vec<Reading> {
        vec![reading(
            Component::Device,
            "device".into(),
            BTreeMap::from([("temperature_c".to_string(), celsius)]),
        )]
    }

    fn hot() -> Threshold {
        Threshold {
            metric: "temperature_c".into(),
            above: Some(75.0),
            below: None,
            tool: None,
            hysteresis: Some(3.0),
        }
    }

    #[test]
    fn an_alert_fires_over_the_line_and_clears_only_past_the_hysteresis() {
        let alerts = Alerts::default();
        alerts
            .register("hot".into(), Some(Component::Device), hot())
            .unwrap();
        assert!(alerts.evaluate(&device_at(70.0)).is_empty());
        assert_eq!(alerts.evaluate(&device_at(76.0)), ["hot"]);
        assert!(alerts.list()[0].firing);
        assert!(
            alerts.evaluate(&device_at(73.0)).is_empty(),
            "within the hysteresis"
        );
        assert_eq!(alerts.evaluate(&device_at(71.9)), ["hot"]);
        let alert = &alerts.list()[0];
        assert!(!alert.firing && alert.fired == 1);
        assert!(
            alerts
                .prometheus()
                .contains("jetsonmind_alert_firing{alert=\"hot\"} 0")
        );
    }

    #[test]
    fn an_unknown_metric_is_a_problem_not_a_silence() {
        let alerts = Alerts::default();
        let mut typo = hot();
        typo.metric = "temprature_c".into();
        alerts.register("typo".into(), None, typo).unwrap();
        alerts.evaluate(&device_at(99.0));
        let problem = alerts.list()[0].problem.clone().unwrap();
        assert!(problem.contains("temprature_c"), "{problem}");
    }

    #[test]
    fn thresholds_need_one_line() {
        let mut both = hot();
        both.below = Some(1.0);
        assert!(both.check().unwrap_err().contains("not both"));
        let mut neither = hot();
        neither.above = None;
        assert!(neither.check().unwrap_err().contains("`above` or `below`"));
        let mut below = hot();
        (below.above, below.below) = (None, Some(10.0));
        let (breached, known) = breaches(&device_at(5.0), &below, false);
        assert!(known && breached.len() == 1);
    }
}
