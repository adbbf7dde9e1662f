//! One replica: its link, where it came from, its breaker, the calls it is
//! serving, and its state as routing sees it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jetsonmind_contract::replica::ReplicaReport;

use crate::breaker::{Breaker, BreakerSettings};
use crate::link::ReplicaLink;
use crate::routing::{ReplicaState, Tier};

/// Where a replica came from, which decides whether `scale_cluster` may
/// remove it.
pub enum Origin {
    /// Named in the config, or this process's own server.
    Configured,
    /// Started by `scale_cluster`; stopped when removed or when this process ends.
    Started(Mutex<Option<tokio::process::Child>>),
    /// Another node serves it, of this site (`Tier::Site`) or of the cloud
    /// (`Tier::Cloud`); it leaves when the node does.
    Discovered { node: String, tier: Tier },
    /// An OpenAI-compatible endpoint of the config (`hybrid.providers`): of
    /// the cloud tier, no cluster node, serving only the models it maps, at
    /// `cost` per call.
    Provider { cost: f64 },
}

pub struct Replica {
    /// How calls reach it (MCP over HTTP, stdio, a pipe or NATS; or directly).
    pub link: Arc<dyn ReplicaLink>,
    pub(super) origin: Origin,
    pub(super) breaker: Mutex<Breaker>,
    pub(super) outstanding: AtomicUsize,
    pub(super) draining: AtomicBool,
    pub(super) latency_ms: Mutex<Option<f64>>,
    pub(super) report: Mutex<Option<ReplicaReport>>,
    /// Of the calls the report counted, those that were not ours.
    pub(super) external_busy: AtomicUsize,
    pub(super) served: AtomicU64,
    pub(super) failed: AtomicU64,
}

/// How much the newest call moves the latency average.
const LATENCY_WEIGHT: f64 = 0.2;

impl Replica {
    pub(super) fn new(
        link: Arc<dyn ReplicaLink>,
        origin: Origin,
        breaker: BreakerSettings,
    ) -> Self {
        Self {
            link,
            origin,
            breaker: Mutex::new(Breaker::new(breaker)),
            outstanding: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            latency_ms: Mutex::new(None),
            report: Mutex::new(None),
            external_busy: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        self.link.name()
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }

    pub fn was_started_here(&self) -> bool {
        matches!(self.origin, Origin::Started(_))
    }

    /// The cluster node that serves it, when another node does.
    pub fn remote_node(&self) -> Option<&str> {
        match &self.origin {
            Origin::Discovered { node, .. } => Some(node),
            _ => None,
        }
    }

    /// How far from this node it runs.
    pub fn tier(&self) -> Tier {
        match &self.origin {
            Origin::Discovered { tier, .. } => *tier,
            Origin::Provider { .. } => Tier::Cloud,
            _ => Tier::Node,
        }
    }

    /// The cluster node it runs on: another's, or this one's (`local`); a
    /// provider runs on none.
    pub(super) fn node<'a>(&'a self, local: Option<&'a str>) -> Option<&'a str> {
        match &self.origin {
            Origin::Provider { .. } => None,
            _ => self.remote_node().or(local),
        }
    }

    /// What one call costs there, in the budgets' units: a provider's own
    /// price, or `cloud_cost` for the cloud's nodes; nothing on the site.
    pub fn cost(&self, cloud_cost: f64) -> f64 {
        match (&self.origin, self.tier()) {
            (Origin::Provider { cost }, _) => *cost,
            (_, Tier::Cloud) => cloud_cost,
            _ => 0.0,
        }
    }

    pub fn report(&self) -> Option<ReplicaReport> {
        self.report.lock().expect("report lock").clone()
    }

    pub(super) fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().expect("breaker lock")
    }

    pub(super) fn record_latency(&self, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let mut latency = self.latency_ms.lock().expect("latency lock");
        *latency = Some(match *latency {
            None => ms,
            Some(avg) => avg + LATENCY_WEIGHT * (ms - avg),
        });
    }

    pub(super) fn state(
        &self,
        now: Instant,
        local_node: Option<&str>,
        cloud_cost: f64,
    ) -> ReplicaState {
        let report = self.report();
        let latency = *self.latency_ms.lock().expect("latency lock");
        ReplicaState {
            name: self.name().to_string(),
            node: self.node(local_node).map(str::to_string),
            endpoint: self.link.describe(),
            up: self.link.is_up(),
            breaker: Some(self.breaker().state(now)),
            draining: self.draining.load(Ordering::SeqCst),
            outstanding: self.outstanding(),
            external_busy: self.external_busy.load(Ordering::SeqCst),
            capacity: report.as_ref().map(|r| r.capacity),
            default_model: report.as_ref().map(|r| r.default_model.clone()),
            loaded_models: report
                .as_ref()
                .map(|r| r.loaded.iter().map(|m| m.name.clone()).collect())
                .unwrap_or_default(),
            stored_models: report
                .as_ref()
                .map(|r| r.model_bytes.keys().cloned().collect())
                .unwrap_or_default(),
            fixed_models: matches!(self.origin, Origin::Provider { .. }),
            tier: self.tier(),
            cost: self.cost(cloud_cost),
            temperature_c: report.as_ref().and_then(|r| r.temperature_c),
            loadable_bytes: report.as_ref().map(|r| r.loadable_bytes),
            latency_ms: latency
                .or_else(|| self.link.last_check().map(|d| d.as_secs_f64() * 1000.0)),
        }
    }
}
