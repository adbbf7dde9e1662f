//! A fleet: replicas of one MCP server (compute processes, or node gateways
//! of a cluster) that each call is routed among.
//!
//! Every call is decided by [`routing::decide`] on the replicas' state; the
//! chosen replica's breaker is consulted, the call is forwarded, and when the
//! replica fails mid-call (its connection breaks, or a health check finds it
//! dead) an idempotent call is sent to the next replica in the decision's
//! order. When every replica that could serve is at its utilization ceiling
//! the call waits for room, up to `queue_timeout`, and is then shed with a
//! clear error. A server that is not replicated is a fleet of one.
//!
//! `Fleet`'s API is small: who the replicas are (this module), a call routed
//! among them ([`calls`], with [`room`] for waiting while every replica is at
//! its ceiling), reads and subscriptions on the primary ([`reads`]), health
//! checks and draining ([`health`]); a replica's own state is in [`replica`],
//! and stopping a process `scale_cluster` started in [`process`].

mod calls;
mod health;
mod process;
mod reads;
mod replica;
mod room;

pub use calls::Attempt;
pub use health::ReplicaHealth;
pub use replica::{Origin, Replica};

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use jetsonmind_core::upstream::{
    Connector, Offer, ProgressRoutes, ResourceChange, Upstream, UpstreamId,
};
use tokio::sync::{Notify, mpsc};

use crate::breaker::BreakerSettings;
use crate::config::{ControlConfig, HybridConfig};
use crate::egress::EgressRules;
use crate::link::{McpLink, Relay, ReplicaLink};
use crate::routing::{Policy, Tier};

#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub policy: Policy,
    pub breaker: BreakerSettings,
    pub max_attempts: u32,
    pub queue_timeout: Duration,
    pub max_queued: usize,
    pub health_timeout: Duration,
    pub relist_interval: Duration,
    /// What may leave the site, and what each caller spent in the cloud
    /// (shared by every fleet made with these settings).
    pub egress: Arc<EgressRules>,
}

impl FleetSettings {
    /// `[control]`'s policy, with backends checked within `health_timeout`
    /// and listed again at least every `relist_interval` (the gateway's
    /// settings: see its `GatewayConfig::fleet_settings`).
    pub fn new(
        control: &ControlConfig,
        health_timeout: Duration,
        relist_interval: Duration,
    ) -> Self {
        Self {
            policy: Policy {
                strategy: control.strategy,
                utilization_ceiling: control.utilization_ceiling,
                max_temperature_c: control.max_temperature_c,
            },
            breaker: BreakerSettings {
                failures: control.breaker_failures,
                cooldown: Duration::from_millis(control.breaker_cooldown_ms),
            },
            max_attempts: control.max_attempts,
            queue_timeout: Duration::from_millis(control.queue_timeout_ms),
            max_queued: control.max_queued,
            health_timeout,
            relist_interval,
            egress: Arc::default(),
        }
    }

    /// With the hybrid tier's egress rules.
    pub fn with_hybrid(mut self, hybrid: &HybridConfig) -> Self {
        self.egress = Arc::new(EgressRules::new(hybrid));
        self
    }
}

pub struct Fleet {
    pub name: String,
    settings: FleetSettings,
    replicas: RwLock<Vec<Arc<Replica>>>,
    progress: Arc<ProgressRoutes>,
    /// Where the replicas' resource updates go (the gateway relays them).
    changes: OnceLock<mpsc::UnboundedSender<ResourceChange>>,
    released: Notify,
    queued: AtomicUsize,
    /// What the fleet offered when last looked at, and how many times that
    /// changed: whoever builds on the offer (the gateway's view) compares
    /// generations, so a change another checker saw first is not missed.
    observed: Mutex<(bool, Option<Offer>)>,
    generation: AtomicU64,
    /// This node's id, once it joins a cluster.
    node: OnceLock<String>,
    /// Woken when the generation changes (the gateway rebuilds its view).
    on_change: OnceLock<Arc<Notify>>,
}

impl Fleet {
    /// An empty fleet.
    pub fn new(name: impl Into<String>, settings: FleetSettings) -> Self {
        Self {
            name: name.into(),
            settings,
            replicas: RwLock::new(Vec::new()),
            progress: Arc::default(),
            changes: OnceLock::new(),
            released: Notify::new(),
            queued: AtomicUsize::new(0),
            observed: Mutex::new((false, None)),
            generation: AtomicU64::new(0),
            node: OnceLock::new(),
            on_change: OnceLock::new(),
        }
    }

    /// Wake `notify` whenever the offer changes or the fleet comes up or
    /// goes down, whoever saw it. Only the first call counts.
    pub fn wake_on_change(&self, notify: Arc<Notify>) {
        let _ = self.on_change.set(notify);
    }

    /// What may leave the site, and the spending it is counted against
    /// (shared by the fleets made with the same settings).
    pub fn egress(&self) -> &Arc<EgressRules> {
        &self.settings.egress
    }

    /// Name this node (its cluster id): routes and health say where the
    /// fleet's own replicas run. Only the first call counts.
    pub fn set_node(&self, node: &str) {
        let _ = self.node.set(node.to_string());
    }

    fn local_node(&self) -> Option<&str> {
        self.node.get().map(String::as_str)
    }

    /// Make the fleet's replicas of `tier` (the site's other nodes, or the
    /// cloud's) exactly one per node in `nodes` (node id, how to reach this
    /// fleet's server there): replicas of nodes that joined are added (they
    /// take calls once a check finds them up), those of nodes that left are
    /// dropped, their calls failing over now. Returns whether anything
    /// changed.
    pub fn follow_nodes(&self, tier: Tier, nodes: Vec<(String, Connector)>) -> bool {
        let wanted: BTreeSet<&str> = nodes.iter().map(|(node, _)| node.as_str()).collect();
        let ours = |r: &Arc<Replica>| r.tier() == tier && r.remote_node().is_some();
        let gone: Vec<Arc<Replica>> = self
            .replicas()
            .into_iter()
            .filter(|r| ours(r) && r.remote_node().is_some_and(|node| !wanted.contains(node)))
            .collect();
        for replica in &gone {
            replica.link.mark_down("its node left the cluster");
            self.remove(replica.name());
            tracing::info!(fleet = %self.name, replica = %replica.name(), "cluster replica left");
        }
        let mut joined = false;
        for (node, connector) in nodes {
            let have = self
                .replicas()
                .iter()
                .any(|r| ours(r) && r.remote_node() == Some(node.as_str()));
            if !have {
                let name = match tier {
                    Tier::Cloud => format!("{}@cloud.{node}", self.name),
                    _ => format!("{}@{node}", self.name),
                };
                tracing::info!(fleet = %self.name, replica = %name, "cluster replica joined");
                self.add(
                    Upstream::new(name, connector),
                    Origin::Discovered { node, tier },
                );
                joined = true;
            }
        }
        joined || !gone.is_empty()
    }

    /// Drain the replicas that run on the cluster nodes `drained` (they take
    /// no new calls; those in flight finish) and undrain the others. The
    /// replicas `scale_cluster` started here are left to it.
    pub fn drain_nodes(&self, drained: &BTreeSet<String>) {
        for replica in self.replicas() {
            // Drains are the site's; the cloud's nodes are its own.
            if replica.was_started_here() || replica.tier().is_cloud() {
                continue;
            }
            let node = replica.remote_node().or(self.local_node());
            let drain = node.is_some_and(|node| drained.contains(node));
            if replica.draining.swap(drain, Ordering::SeqCst) != drain {
                tracing::info!(fleet = %self.name, replica = %replica.name(), drain, "node drain");
            }
        }
    }

    /// Counts changes of the offer (or of the fleet coming up or going
    /// down) that anyone has observed; see [`Fleet::check`].
    pub fn generation(&self) -> u64 {
        self.observe();
        self.generation.load(Ordering::SeqCst)
    }

    /// Record the offer now; a new generation when it differs.
    fn observe(&self) {
        let now = (self.is_up(), self.offer());
        let mut observed = self.observed.lock().expect("observed lock");
        if *observed != now {
            *observed = now;
            self.generation.fetch_add(1, Ordering::SeqCst);
            if let Some(notify) = self.on_change.get() {
                notify.notify_one();
            }
        }
    }

    /// A fleet of one: a server that is not replicated.
    pub fn single(name: &str, connector: Connector, settings: FleetSettings) -> Arc<Self> {
        Self::single_link(
            name,
            Arc::new(McpLink::new(Upstream::new(name, connector))),
            settings,
        )
    }

    /// A fleet of one, reached through `link`.
    pub fn single_link(
        name: &str,
        link: Arc<dyn ReplicaLink>,
        settings: FleetSettings,
    ) -> Arc<Self> {
        let fleet = Self::new(name, settings);
        fleet.add_link(link, Origin::Configured);
        Arc::new(fleet)
    }

    /// Send the replicas' `notifications/resources/updated` to `changes`
    /// (from connections made after this call). Only the first call counts.
    pub fn relay_changes_to(&self, changes: mpsc::UnboundedSender<ResourceChange>) {
        let _ = self.changes.set(changes);
    }

    /// Add a replica; it takes calls once a health check finds it up.
    pub fn add(&self, upstream: Upstream, origin: Origin) -> Arc<Replica> {
        self.add_link(Arc::new(McpLink::new(upstream)), origin)
    }

    /// Add a replica reached through `link`.
    pub fn add_link(&self, link: Arc<dyn ReplicaLink>, origin: Origin) -> Arc<Replica> {
        let replica = Arc::new(Replica::new(link, origin, self.settings.breaker));
        self.replicas
            .write()
            .expect("replicas lock")
            .push(replica.clone());
        replica
    }

    /// Take a replica out of the fleet (calls on it finish).
    pub fn remove(&self, name: &str) -> Option<Arc<Replica>> {
        let mut replicas = self.replicas.write().expect("replicas lock");
        let at = replicas.iter().position(|r| r.name() == name)?;
        Some(replicas.remove(at))
    }

    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        self.replicas.read().expect("replicas lock").clone()
    }

    pub fn replica(&self, name: &str) -> Option<Arc<Replica>> {
        self.replicas().into_iter().find(|r| r.name() == name)
    }

    pub fn contains(&self, upstream: UpstreamId) -> bool {
        self.replicas().iter().any(|r| r.link.id() == upstream)
    }

    /// The replica that answers reads and holds subscriptions: the first
    /// one up, in the order they were added.
    pub fn primary(&self) -> Option<Arc<Replica>> {
        self.replicas().into_iter().find(|r| r.link.is_up())
    }

    pub fn is_up(&self) -> bool {
        self.primary().is_some()
    }

    /// What the fleet offers: its primary's offer (replicas offer the same).
    pub fn offer(&self) -> Option<Offer> {
        self.primary().and_then(|r| r.link.offer())
    }

    /// Where the links send progress and resource changes.
    fn relay(&self) -> Relay {
        Relay {
            progress: self.progress.clone(),
            changes: self.changes.get().cloned(),
            relist_after: self.settings.relist_interval,
        }
    }
}
