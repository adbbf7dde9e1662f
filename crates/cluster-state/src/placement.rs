//! Placements across the cluster: the desired replicas of each model, and
//! the drained nodes, in a KV bucket (`model.<name>`, `drain.<node>`).
//!
//! Every node reconciles by itself, with no leader: from the same
//! placements and the same membership view each computes the same
//! assignment ([`assign`]), then loads what is assigned to it (pulling the
//! model first if its store lacks it) and unloads what a placement loaded
//! here and no longer assigns here. A node that dies leaves the view, and
//! the assignment moves its replicas to others. Nodes that already run a
//! model keep it (the assignment is sticky), so views that differ for a
//! moment (heartbeats in flight) do not move replicas back and forth.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use jetsonmind_cluster::{Bus, View};
use jetsonmind_contract::replica::ReplicaReport;
use jetsonmind_control::placement::{
    BoxFuture, ClusterPlacement, Placement, PlacementError, PlacementStrategy,
};
use jetsonmind_core::config::is_subject_token;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{StateError, Watched, durable_bucket, follow_bucket, open_bucket};

const MODEL_PREFIX: &str = "model.";
/// How long a change may take to come back through this node's watch.
const SEEN_WITHIN: Duration = Duration::from_secs(10);
const DRAIN_PREFIX: &str = "drain.";
/// The server whose replicas placements place, and drains drain.
pub const PLACED_SERVER: &str = "compute";

/// The placements and drained nodes, as the bucket holds them now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placements {
    pub models: BTreeMap<String, Placement>,
    pub drained: BTreeSet<String>,
}

/// The cluster's placements, as one node uses them.
pub struct ClusterPlacements {
    bucket: kv::Store,
    current: watch::Receiver<Placements>,
    view: watch::Receiver<View>,
    max_temperature_c: f64,
}

impl ClusterPlacements {
    /// Open the bucket and follow it until `shutdown`. Nodes at or over
    /// `max_temperature_c` are placed on last by the `hardware` strategy.
    /// Assignments need the membership view: see [`Self::seeing`].
    pub async fn open(
        bus: &Bus,
        max_temperature_c: f64,
        shutdown: CancellationToken,
    ) -> Result<Self, StateError> {
        let config = durable_bucket(
            bus,
            "placements",
            "JetsonMind placements: desired replicas per model, drained nodes",
            1,
        );
        let bucket = open_bucket(bus, config).await?;
        let (sender, current) = watch::channel(Placements::default());
        tokio::spawn(follow(bucket.clone(), sender, shutdown));
        Ok(Self {
            bucket,
            current,
            view: watch::channel(View::new()).1,
            max_temperature_c,
        })
    }

    /// Place on the nodes of the membership `view` (before, on none).
    pub fn seeing(mut self, view: watch::Receiver<View>) -> Self {
        self.view = view;
        self
    }

    /// The placements now, and each change.
    pub fn follow(&self) -> watch::Receiver<Placements> {
        self.current.clone()
    }

    /// Who should run what, from the placements and the view now.
    pub fn assignment(&self) -> BTreeMap<String, Vec<String>> {
        let placements = self.current.borrow().clone();
        let candidates = candidates(&self.view.borrow(), &placements.drained);
        assign(&placements, &candidates, self.max_temperature_c)
    }

    async fn put(&self, key: String, value: serde_json::Value) -> Result<(), PlacementError> {
        self.bucket
            .put(key, Bytes::from(value.to_string()))
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot write the placement: {e}"))
    }

    async fn delete(&self, key: String) -> Result<(), PlacementError> {
        self.bucket
            .delete(key)
            .await
            .map_err(|e| format!("cannot write the placement: {e}"))
    }

    /// Wait until this node's copy of the bucket shows `done`, so a status
    /// right after a change shows the change.
    async fn until_seen(&self, done: impl Fn(&Placements) -> bool) -> Result<(), PlacementError> {
        let mut current = self.current.clone();
        match tokio::time::timeout(SEEN_WITHIN, current.wait_for(|p| done(p))).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(format!(
                "written, but this node has not seen it within {SEEN_WITHIN:?}: is NATS slow?"
            )),
        }
    }
}

impl ClusterPlacement for ClusterPlacements {
    fn place(&self, placement: Placement) -> BoxFuture<'_, Result<(), PlacementError>> {
        Box::pin(async move {
            let key = model_key(&placement.model)?;
            match placement.replicas {
                0 => self.delete(key).await?,
                _ => self.put(key, json!(placement)).await?,
            }
            let wanted = placement.clone();
            self.until_seen(move |p| match wanted.replicas {
                0 => !p.models.contains_key(&wanted.model),
                _ => p.models.get(&wanted.model) == Some(&wanted),
            })
            .await
        })
    }

    fn drain(&self, node: String, drained: bool) -> BoxFuture<'_, Result<(), PlacementError>> {
        Box::pin(async move {
            if !is_subject_token(&node) {
                return Err(format!("`{node}` is not a node id"));
            }
            let key = format!("{DRAIN_PREFIX}{node}");
            match drained {
                true => self.put(key, json!({ "node": node })).await?,
                false => self.delete(key).await?,
            }
            self.until_seen(move |p| p.drained.contains(&node) == drained)
                .await
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<serde_json::Value, PlacementError>> {
        Box::pin(async move {
            let placements = self.current.borrow().clone();
            let view = self.view.borrow().clone();
            let running = candidates(&view, &BTreeSet::new());
            let assignment = self.assignment();
            let models: Vec<serde_json::Value> = placements
                .models
                .values()
                .map(|placement| {
                    let loaded_on: Vec<&str> = running
                        .iter()
                        .filter(|c| c.loaded.contains(&placement.model))
                        .map(|c| c.node.as_str())
                        .collect();
                    json!({
                        "model": placement.model,
                        "replicas": placement.replicas,
                        "strategy": placement.strategy,
                        "assigned": assignment.get(&placement.model).cloned().unwrap_or_default(),
                        "loaded_on": loaded_on,
                    })
                })
                .collect();
            Ok(json!({ "placements": models, "drained": placements.drained }))
        })
    }
}

/// Keep `current` equal to the bucket until `shutdown`.
async fn follow(
    bucket: kv::Store,
    current: watch::Sender<Placements>,
    shutdown: CancellationToken,
) {
    let mut seen = Placements::default();
    follow_bucket(bucket, ">", shutdown, move |watched| match watched {
        Watched::Again => seen = Placements::default(),
        Watched::Entry(entry) => {
            apply(&mut seen, &entry);
            // Published once the watch has caught up.
            if entry.delta == 0 {
                current.send_if_modified(|now| {
                    let changed = *now != seen;
                    *now = seen.clone();
                    changed
                });
            }
        }
    })
    .await
}

fn apply(placements: &mut Placements, entry: &kv::Entry) {
    let put = entry.operation == kv::Operation::Put;
    if let Some(model) = entry.key.strip_prefix(MODEL_PREFIX) {
        let parsed = put
            .then(|| serde_json::from_slice::<Placement>(&entry.value))
            .transpose();
        match parsed {
            Ok(Some(placement)) if placement.model == model => {
                placements.models.insert(model.to_string(), placement);
            }
            Ok(None) => {
                placements.models.remove(model);
            }
            _ => tracing::warn!(key = %entry.key, "unreadable placement"),
        }
    } else if let Some(node) = entry.key.strip_prefix(DRAIN_PREFIX) {
        match put {
            true => placements.drained.insert(node.to_string()),
            false => placements.drained.remove(node),
        };
    }
}

fn model_key(model: &str) -> Result<String, PlacementError> {
    let valid = !model.is_empty()
        && !model.starts_with('.')
        && !model.ends_with('.')
        && !model.contains("..")
        && model
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=/.".contains(c));
    match valid {
        true => Ok(format!("{MODEL_PREFIX}{model}")),
        false => Err(format!(
            "`{model}` cannot be placed: a model placed across a cluster is named with letters, \
             digits and - _ = / . only"
        )),
    }
}

/// A node that may run compute replicas, as its heartbeat describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidate {
    pub node: String,
    pub loaded: BTreeSet<String>,
    pub free_memory_bytes: Option<u64>,
    pub temperature_c: Option<f64>,
    /// The device's power mode (nvpmodel's name: `15W`, `MAXN`), if any.
    pub power_mode: Option<String>,
}

/// The watts a power mode allows: `15W` is 15, `MAXN` (no cap) more than
/// any; unknown names and no mode rank last.
fn power_budget_w(mode: Option<&str>) -> f64 {
    let Some(mode) = mode else { return 0.0 };
    if mode.to_ascii_uppercase().starts_with("MAXN") {
        return f64::INFINITY;
    }
    let digits: String = mode
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse().unwrap_or(0.0)
}

/// What a heartbeat's replica entries (the control plane's replica
/// health) say, as far as placement reads them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReplicaEntry {
    node: Option<String>,
    up: bool,
    report: Option<ReplicaReport>,
}

/// The live nodes that share compute and are not `drained`, by id.
pub fn candidates(view: &View, drained: &BTreeSet<String>) -> Vec<Candidate> {
    view.values()
        .filter(|status| status.shared.iter().any(|s| s == PLACED_SERVER))
        .filter(|status| !drained.contains(&status.node))
        .map(|status| {
            let replicas: Vec<ReplicaEntry> =
                serde_json::from_value(status.replicas.clone()).unwrap_or_default();
            let own = replicas
                .into_iter()
                .filter(|r| r.up && r.node.as_deref() == Some(status.node.as_str()));
            let mut candidate = Candidate {
                node: status.node.clone(),
                power_mode: status.power_mode.clone(),
                ..Default::default()
            };
            for report in own.filter_map(|replica| replica.report) {
                candidate
                    .loaded
                    .extend(report.loaded.into_iter().map(|m| m.name));
                candidate.temperature_c = max(candidate.temperature_c, report.temperature_c);
                candidate.free_memory_bytes =
                    candidate.free_memory_bytes.or(report.free_memory_bytes);
            }
            candidate
        })
        .collect()
}

fn max(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The nodes that should run each placed model. Deterministic: every node
/// computes the same from the same input. Models are placed in name order;
/// for each, the candidates already running it come first (so replicas stay
/// where they are), then the others, each group ranked by the strategy.
pub fn assign(
    placements: &Placements,
    candidates: &[Candidate],
    max_temperature_c: f64,
) -> BTreeMap<String, Vec<String>> {
    let mut planned: BTreeMap<String, usize> = BTreeMap::new();
    let mut assignment = BTreeMap::new();
    for placement in placements.models.values() {
        let mut ranked: Vec<&Candidate> = candidates.iter().collect();
        ranked.sort_by(|a, b| {
            let runs = |c: &Candidate| !c.loaded.contains(&placement.model);
            runs(a)
                .cmp(&runs(b))
                .then_with(|| rank(placement.strategy, a, b, &planned, max_temperature_c))
        });
        let nodes: Vec<String> = ranked
            .into_iter()
            .take(placement.replicas)
            .map(|c| c.node.clone())
            .collect();
        for node in &nodes {
            *planned.entry(node.clone()).or_default() += 1;
        }
        assignment.insert(placement.model.clone(), nodes);
    }
    assignment
}

/// `a` before `b` under `strategy`; ties go by node id.
fn rank(
    strategy: PlacementStrategy,
    a: &Candidate,
    b: &Candidate,
    planned: &BTreeMap<String, usize>,
    max_temperature_c: f64,
) -> std::cmp::Ordering {
    let load = |c: &Candidate| planned.get(&c.node).copied().unwrap_or(0) + c.loaded.len();
    let by = match strategy {
        PlacementStrategy::Spread => load(a).cmp(&load(b)),
        PlacementStrategy::Pack => load(b).cmp(&load(a)),
        PlacementStrategy::Hardware => {
            let hot = |c: &Candidate| c.temperature_c.is_some_and(|t| t >= max_temperature_c);
            let free = |c: &Candidate| c.free_memory_bytes.unwrap_or(0);
            let temperature = |c: &Candidate| c.temperature_c.unwrap_or(max_temperature_c);
            let power = |c: &Candidate| power_budget_w(c.power_mode.as_deref());
            hot(a)
                .cmp(&hot(b))
                .then(free(b).cmp(&free(a)))
                .then(temperature(a).total_cmp(&temperature(b)))
                .then(power(b).total_cmp(&power(a)))
        }
    };
    by.then_with(|| a.node.cmp(&b.node))
}

/// This node's compute, as placements drive it.
pub trait LocalModels: Send + Sync {
    /// Load `model` and keep it loaded (pulling it first if the store lacks it).
    fn keep_loaded(
        &self,
        model: &str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
    /// Unload `model` (a placement no longer wants it here).
    fn release(&self, model: &str) -> Result<(), String>;
}

/// Reconcile this node with the placements until `shutdown`: load what is
/// assigned here, unload what a placement loaded here and no longer
/// assigns here. Checked on every change and every `interval`.
pub fn reconcile(
    placements: Arc<ClusterPlacements>,
    node: String,
    local: Arc<dyn LocalModels>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut changes = placements.follow();
        let mut reconciler = Reconciler {
            node,
            local,
            placed: BTreeMap::new(),
            loading: Arc::default(),
            reload_after: interval * 3,
        };
        loop {
            reconciler.step(&placements);
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

struct Reconciler {
    node: String,
    local: Arc<dyn LocalModels>,
    /// Models a placement loaded here, and when.
    placed: BTreeMap<String, Instant>,
    /// Loads in progress (each runs in a task of its own).
    loading: Arc<std::sync::Mutex<BTreeSet<String>>>,
    /// A placed model the heartbeat has not shown loaded for this long
    /// after its load was evicted: load it again.
    reload_after: Duration,
}

impl Reconciler {
    fn step(&mut self, placements: &ClusterPlacements) {
        let assignment = placements.assignment();
        let mine: BTreeSet<&String> = assignment
            .iter()
            .filter(|(_, nodes)| nodes.contains(&self.node))
            .map(|(model, _)| model)
            .collect();
        let loaded_here = candidates(&placements.view.borrow(), &BTreeSet::new())
            .into_iter()
            .find(|c| c.node == self.node)
            .map(|c| c.loaded)
            .unwrap_or_default();
        for model in &mine {
            let evicted = self.placed.get(*model).is_some_and(|at| {
                at.elapsed() > self.reload_after && !loaded_here.contains(*model)
            });
            if !self.placed.contains_key(*model) || evicted {
                self.load((*model).clone());
            }
        }
        // A model still loading is released once its load is done (the next
        // step), or it would stay loaded with no placement to unload it.
        let loading = self.loading.lock().expect("loading lock").clone();
        let released: Vec<String> = self
            .placed
            .keys()
            .filter(|model| !mine.contains(model) && !loading.contains(*model))
            .cloned()
            .collect();
        for model in released {
            self.placed.remove(&model);
            match self.local.release(&model) {
                Ok(()) => tracing::info!(%model, "placement moved: unloaded here"),
                Err(e) => tracing::warn!(%model, error = %e, "placement moved, cannot unload"),
            }
        }
    }

    fn load(&mut self, model: String) {
        if !self
            .loading
            .lock()
            .expect("loading lock")
            .insert(model.clone())
        {
            return;
        }
        self.placed.insert(model.clone(), Instant::now());
        let (local, loading) = (self.local.clone(), self.loading.clone());
        tokio::spawn(async move {
            match local.keep_loaded(&model).await {
                Ok(()) => tracing::info!(%model, "placed here: loaded"),
                Err(e) => tracing::warn!(%model, error = %e, "placed here, cannot load"),
            }
            loading.lock().expect("loading lock").remove(&model);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, loaded: &[&str]) -> Candidate {
        Candidate {
            node: name.into(),
            loaded: loaded.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        }
    }

    fn placements(models: &[(&str, usize, PlacementStrategy)]) -> Placements {
        Placements {
            models: models
                .iter()
                .map(|(model, replicas, strategy)| {
                    let placement = Placement {
                        model: model.to_string(),
                        replicas: *replicas,
                        strategy: *strategy,
                    };
                    (model.to_string(), placement)
                })
                .collect(),
            drained: BTreeSet::new(),
        }
    }

    #[test]
    fn spread_puts_replicas_on_the_least_busy_nodes_and_keeps_them_where_they_run() {
        let nodes = [node("a", &["x"]), node("b", &[]), node("c", &[])];
        let wanted = placements(&[("m", 2, PlacementStrategy::Spread)]);
        assert_eq!(assign(&wanted, &nodes, 80.0)["m"], ["b", "c"]);
        // Where it already runs, it stays, whatever the ranking says.
        let nodes = [node("a", &["x", "m"]), node("b", &[]), node("c", &[])];
        assert_eq!(assign(&wanted, &nodes, 80.0)["m"], ["a", "b"]);
        // Two placements spread over each other.
        let two = placements(&[
            ("m", 1, PlacementStrategy::Spread),
            ("n", 1, PlacementStrategy::Spread),
        ]);
        let idle = [node("a", &[]), node("b", &[])];
        let assignment = assign(&two, &idle, 80.0);
        assert_ne!(assignment["m"], assignment["n"]);
    }

    #[test]
    fn pack_fills_busy_nodes_first_and_replicas_never_exceed_the_nodes() {
        let nodes = [node("a", &[]), node("b", &["x", "y"]), node("c", &["x"])];
        let wanted = placements(&[("m", 2, PlacementStrategy::Pack)]);
        assert_eq!(assign(&wanted, &nodes, 80.0)["m"], ["b", "c"]);
        let many = placements(&[("m", 5, PlacementStrategy::Pack)]);
        assert_eq!(assign(&many, &nodes, 80.0)["m"].len(), 3);
    }

    #[test]
    fn hardware_avoids_hot_nodes_then_prefers_free_memory_then_cool_then_power() {
        let mut hot = node("hot", &[]);
        (hot.temperature_c, hot.free_memory_bytes) = (Some(85.0), Some(64 << 30));
        let mut roomy = node("roomy", &[]);
        (roomy.temperature_c, roomy.free_memory_bytes) = (Some(60.0), Some(16 << 30));
        let mut cool = node("cool", &[]);
        (cool.temperature_c, cool.free_memory_bytes) = (Some(40.0), Some(8 << 30));
        let mut warm = node("warm", &[]);
        (warm.temperature_c, warm.free_memory_bytes) = (Some(55.0), Some(8 << 30));
        let wanted = placements(&[("m", 3, PlacementStrategy::Hardware)]);
        let nodes = [hot.clone(), roomy, cool.clone(), warm];
        assert_eq!(
            assign(&wanted, &nodes, 80.0)["m"],
            ["roomy", "cool", "warm"]
        );
        // Equal otherwise, the higher power budget wins.
        let mut strong = cool.clone();
        strong.node = "strong".into();
        strong.power_mode = Some("25W".into());
        cool.power_mode = Some("15W".into());
        let wanted = placements(&[("m", 1, PlacementStrategy::Hardware)]);
        assert_eq!(
            assign(&wanted, &[cool.clone(), strong.clone(), hot], 80.0)["m"],
            ["strong"]
        );
        let mut maxn = cool;
        maxn.node = "maxn".into();
        maxn.power_mode = Some("MAXN_SUPER".into());
        assert_eq!(assign(&wanted, &[strong, maxn], 80.0)["m"], ["maxn"]);
    }

    #[test]
    fn model_names_that_are_not_keys_are_refused() {
        assert!(model_key("SmolLM2-135M-Instruct.Q4_1.gguf").is_ok());
        for bad in ["", ".x", "x.", "a..b", "with space", "star*"] {
            assert!(model_key(bad).is_err(), "{bad}");
        }
    }
}
