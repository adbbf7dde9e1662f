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

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use jetsonmind_contract::access::ToolFlags;
use jetsonmind_contract::inference::model_named;
use jetsonmind_contract::replica::{REPLICA_STATUS_URI, ReplicaReport, is_busy};
use jetsonmind_contract::route::{self, Hop};
use jetsonmind_core::auth::{Principal, ToolAccess, delegate};
use jetsonmind_core::config::{ControlConfig, GatewayConfig, HybridConfig};
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, CallToolResult, JsonObject, ReadResourceResult, ResourceContents,
};
use jetsonmind_core::tool_error;
use jetsonmind_core::trace::TraceContext;
use jetsonmind_core::upstream::{
    Connector, Offer, ProgressRoutes, ProgressSink, ResourceChange, Upstream, UpstreamId,
    UpstreamStatus,
};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::breaker::{Breaker, BreakerSettings, BreakerState};
use crate::egress::{Egress, EgressRequest, EgressRules};
use crate::link::{LinkError, McpLink, Relay, ReplicaLink};
use crate::routing::{self, Blocked, Decision, Need, Policy, ReplicaState, Strategy, Tier};

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
    pub fn new(control: &ControlConfig, gateway: &GatewayConfig) -> Self {
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
            health_timeout: Duration::from_millis(gateway.health_timeout_ms),
            relist_interval: Duration::from_millis(gateway.relist_interval_ms),
            egress: Arc::default(),
        }
    }

    /// With the hybrid tier's egress rules.
    pub fn with_hybrid(mut self, hybrid: &HybridConfig) -> Self {
        self.egress = Arc::new(EgressRules::new(hybrid));
        self
    }
}

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
    origin: Origin,
    breaker: Mutex<Breaker>,
    outstanding: AtomicUsize,
    draining: AtomicBool,
    latency_ms: Mutex<Option<f64>>,
    report: Mutex<Option<ReplicaReport>>,
    /// Of the calls the report counted, those that were not ours.
    external_busy: AtomicUsize,
    served: AtomicU64,
    failed: AtomicU64,
}

/// How much the newest call moves the latency average.
const LATENCY_WEIGHT: f64 = 0.2;

impl Replica {
    fn new(link: Arc<dyn ReplicaLink>, origin: Origin, breaker: BreakerSettings) -> Self {
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
    fn node<'a>(&'a self, local: Option<&'a str>) -> Option<&'a str> {
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

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().expect("breaker lock")
    }

    fn record_latency(&self, elapsed: Duration) {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let mut latency = self.latency_ms.lock().expect("latency lock");
        *latency = Some(match *latency {
            None => ms,
            Some(avg) => avg + LATENCY_WEIGHT * (ms - avg),
        });
    }

    fn state(&self, now: Instant, local_node: Option<&str>, cloud_cost: f64) -> ReplicaState {
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

    /// Stop the process `scale_cluster` started for it, if any.
    pub async fn stop_process(&self) {
        let Origin::Started(child) = &self.origin else {
            return;
        };
        let child = child.lock().expect("child lock").take();
        if let Some(mut child) = child {
            terminate(&mut child).await;
        }
    }
}

/// SIGTERM, a grace period, then SIGKILL.
async fn terminate(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we own; no memory is touched.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Counts a call in flight on a replica until dropped; then wakes the calls
/// waiting for room.
struct InFlight<'a> {
    replica: &'a Replica,
    released: &'a Notify,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.replica.outstanding.fetch_sub(1, Ordering::SeqCst);
        self.released.notify_waiters();
    }
}

/// Counts a call waiting for room until dropped.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How one try on one replica ended.
pub enum Attempt {
    /// The replica answered (a tool error is an answer too).
    Answered(CallToolResult),
    /// The replica refused the request at the protocol level.
    Refused(McpError),
    /// The caller cancelled.
    Cancelled,
    /// The replica could not be used or broke mid-call; `started` says
    /// whether the call may have begun running there.
    Failed { error: String, started: bool },
}

/// What `monitor_health` shows of one replica.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaHealth {
    #[serde(flatten)]
    pub connection: UpstreamStatus,
    /// The cluster node it runs on (none on a single device).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub breaker: BreakerState,
    pub failures_in_a_row: u32,
    pub draining: bool,
    pub started_here: bool,
    pub outstanding: usize,
    pub served: u64,
    pub failed: u64,
    pub latency_ms: Option<f64>,
    pub utilization: Option<f64>,
    pub report: Option<ReplicaReport>,
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

    /// Check every replica once (connecting those that are down) and read
    /// the status of those that report one. Whoever builds on the offer
    /// learns of a change by [`Fleet::generation`], whichever check saw it.
    pub async fn check(&self) {
        let replicas = self.replicas();
        let checks = replicas.iter().map(|replica| self.check_replica(replica));
        futures::future::join_all(checks).await;
        self.observe();
    }

    async fn check_replica(&self, replica: &Arc<Replica>) {
        let timeout = self.settings.health_timeout;
        replica.link.check(&self.relay(), timeout).await;
        if !replica.link.is_up() {
            replica.breaker().record_failure(Instant::now());
            return;
        }
        let reports = replica
            .link
            .offer()
            .is_some_and(|o| o.resources.iter().any(|r| r.uri == REPLICA_STATUS_URI));
        if !reports {
            replica.breaker().record_check_passed(Instant::now());
            return;
        }
        let ours = replica.outstanding();
        let read = replica.link.read_resource(REPLICA_STATUS_URI);
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(result)) => {
                let report = parse_report(&result);
                if report.is_none() {
                    tracing::warn!(replica = %replica.name(), "unreadable replica status");
                }
                // Our own calls are counted live; keep only the others' from the report.
                let external = report
                    .as_ref()
                    .map_or(0, |r| (r.running + r.waiting).saturating_sub(ours));
                replica.external_busy.store(external, Ordering::SeqCst);
                *replica.report.lock().expect("report lock") = report;
                replica.breaker().record_check_passed(Instant::now());
            }
            Ok(Err(_)) | Err(_) => replica.link.mark_down("status read failed or timed out"),
        }
    }

    /// The replicas' state as routing sees it.
    pub fn states(&self) -> Vec<ReplicaState> {
        let now = Instant::now();
        let node = self.local_node();
        let cloud_cost = self.settings.egress.cloud_call_cost();
        self.replicas()
            .iter()
            .map(|r| r.state(now, node, cloud_cost))
            .collect()
    }

    /// Where a call of `tool` with `arguments` would go now, and why.
    pub fn decide(
        &self,
        tool: &str,
        arguments: &JsonObject,
        strategy: Option<Strategy>,
        tried: &BTreeSet<String>,
        egress: &Egress,
    ) -> Decision {
        let states: Vec<ReplicaState> = self
            .states()
            .into_iter()
            .filter(|s| !tried.contains(&s.name))
            .collect();
        let model = model_named(arguments);
        let model_bytes = self.model_bytes(model);
        let need = Need {
            tool,
            model,
            model_bytes,
            egress: egress.clone(),
        };
        let mut policy = self.settings.policy.clone();
        if let Some(strategy) = strategy {
            policy.strategy = strategy;
        }
        routing::decide(&need, &states, &policy)
    }

    /// What a model takes when loaded, as any replica reports it.
    fn model_bytes(&self, model: Option<&str>) -> Option<u64> {
        self.replicas().iter().find_map(|r| {
            let report = r.report()?;
            let model = model.unwrap_or(&report.default_model).to_string();
            report
                .model_bytes
                .iter()
                .find(|(name, _)| routing::same_model(name, &model))
                .map(|(_, bytes)| *bytes)
        })
    }

    /// Whether a call of `tool` may run twice: the tool says it is read-only
    /// or idempotent.
    pub fn is_idempotent(&self, tool: &str) -> bool {
        self.primary()
            .and_then(|primary| primary.link.tool(tool))
            .is_some_and(|t| ToolFlags::of(&t).may_run_twice())
    }

    /// What authorizes `tool` on `replica`: the tool as the replica lists it.
    /// A tool it does not list (yet) is checked as an ordinary tool here and
    /// refused or checked by the replica itself.
    fn access_at(replica: &Replica, tool: &str) -> ToolAccess {
        replica
            .link
            .tool(tool)
            .map(|t| ToolAccess::of(&t))
            .unwrap_or_else(|| ToolAccess::scoped(tool))
    }

    /// Route `params` to a replica, failing over and waiting for room as
    /// the settings say. The result's `_meta` says where it ran.
    pub async fn call_tool(
        &self,
        params: CallToolRequestParams,
        caller: &Principal,
        strategy: Option<Strategy>,
        sink: Option<ProgressSink>,
        cancel: &CancellationToken,
    ) -> Result<CallToolResult, McpError> {
        let tool = params.name.to_string();
        let arguments = params.arguments.clone().unwrap_or_default();
        let mut egress = self.egress_of(&params, caller)?;
        let retry = self.is_idempotent(&tool);
        let mut tried = BTreeSet::new();
        let mut failures: Vec<String> = Vec::new();
        let deadline = Instant::now() + self.settings.queue_timeout;
        loop {
            let decision = match self
                .decision_with_room(
                    &tool, &arguments, strategy, &tried, &egress, deadline, cancel,
                )
                .await
            {
                Ok(decision) => decision,
                Err(refusal) => return refusal.into_result(&self.name, &tool, &failures),
            };
            let Some(replica) = decision.chosen().and_then(|name| self.replica(name)) else {
                continue;
            };
            if replica.tier().is_cloud()
                && !self.charge_for_cloud(&replica, caller, &mut egress).await
            {
                continue;
            }
            tried.insert(replica.name().to_string());
            let attempt = self
                .call_on(&replica, params.clone(), caller, sink.clone(), cancel)
                .await;
            match attempt {
                // Nothing ran there (its slots and queue were full, by load
                // this router did not see): another replica, or room.
                Attempt::Answered(result)
                    if is_busy(&result) && tried.len() < self.settings.max_attempts as usize =>
                {
                    failures.push(format!("{}: busy", replica.name()));
                    tracing::debug!(fleet = %self.name, replica = %replica.name(), %tool, "replica busy; routing again");
                }
                Attempt::Answered(mut result) => {
                    let hop = Hop {
                        backend: self.name.clone(),
                        replica: replica.name().to_string(),
                        node: replica.node(self.local_node()).map(str::to_string),
                        attempts: tried.len(),
                        tier: replica.tier(),
                    };
                    route::append(result.meta.get_or_insert_with(Default::default), &hop);
                    return Ok(result);
                }
                Attempt::Refused(error) => return Err(error),
                Attempt::Cancelled => {
                    return Err(McpError::internal_error("cancelled by the client", None));
                }
                Attempt::Failed { error, started } => {
                    failures.push(format!("{}: {error}", replica.name()));
                    let may_retry = retry || !started;
                    if !may_retry {
                        return Ok(tool_error(format!(
                            "replica `{}` of `{}` failed during {tool}: {error}; not retried \
                             because {tool} is not marked idempotent",
                            replica.name(),
                            self.name
                        )));
                    }
                    if tried.len() >= self.settings.max_attempts as usize {
                        return Ok(tool_error(format!(
                            "{tool} failed on {} replica(s) of `{}`: {}",
                            tried.len(),
                            self.name,
                            failures.join("; ")
                        )));
                    }
                    tracing::warn!(fleet = %self.name, replica = %replica.name(), %tool, %error, "retrying on another replica");
                }
            }
        }
    }

    /// What may leave the site for `caller`'s call `params`: the hybrid
    /// tier's rules and the request's own `_meta`.
    pub fn egress_of(
        &self,
        params: &CallToolRequestParams,
        caller: &Principal,
    ) -> Result<Egress, McpError> {
        let request = EgressRequest::from_meta(params.meta.as_ref())
            .map_err(|e| McpError::invalid_params(e, None))?;
        Ok(self
            .settings
            .egress
            .resolve(caller, &params.name, request.as_ref()))
    }

    /// Charge `caller` for a call on `replica` (of the cloud) at its cost;
    /// when its budget has no room left for it (another call took it since
    /// the decision), say so in `egress`, so the next decision leaves out
    /// the cloud replicas that no longer fit.
    pub async fn charge_for_cloud(
        &self,
        replica: &Replica,
        caller: &Principal,
        egress: &mut Egress,
    ) -> bool {
        let rules = &self.settings.egress;
        if rules
            .charge(caller, replica.cost(rules.cloud_call_cost()))
            .await
        {
            return true;
        }
        // A cheaper replica may still fit: record what is spent, not "all".
        if let Some(budget) = &mut egress.budget {
            budget.spent = rules.spent(caller);
        }
        false
    }

    /// A decision with a replica to go to, waiting for room while every
    /// replica that could serve is at its ceiling.
    #[allow(clippy::too_many_arguments)]
    async fn decision_with_room(
        &self,
        tool: &str,
        arguments: &JsonObject,
        strategy: Option<Strategy>,
        tried: &BTreeSet<String>,
        egress: &Egress,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<Decision, Refusal> {
        let mut queued = None;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let decision = self.decide(tool, arguments, strategy, tried, egress);
            match decision.blocked {
                None => return Ok(decision),
                Some(Blocked::NoneAvailable) => return Err(Refusal::Unavailable(decision.reason)),
                Some(Blocked::Saturated) => {}
            }
            if queued.is_none() {
                if self.queued.fetch_add(1, Ordering::SeqCst) >= self.settings.max_queued {
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                    return Err(Refusal::Shed(decision.reason));
                }
                queued = Some(Queued(&self.queued));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Refusal::Shed(decision.reason));
            }
            // Reported load changes with health checks, not only with our
            // own calls ending: look again now and then.
            let pause = (deadline - now).min(Duration::from_millis(250));
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep(pause) => {}
                _ = cancel.cancelled() => return Err(Refusal::Cancelled),
            }
        }
    }

    /// One try of `params` on `replica` as `caller`, bypassing routing but
    /// not its breaker.
    ///
    /// Every call this node sends to a replica passes here, whoever asked for
    /// it (a client through the gateway, `aggregate_responses`,
    /// `route_request`, `manage_resources`), so here it is authorized: as
    /// `caller`, on the tool's own name and access level at the replica. The
    /// caller goes along in `_meta`, and the replica checks again.
    pub async fn call_on(
        &self,
        replica: &Replica,
        mut params: CallToolRequestParams,
        caller: &Principal,
        sink: Option<ProgressSink>,
        cancel: &CancellationToken,
    ) -> Attempt {
        let access = Self::access_at(replica, &params.name);
        if !caller.may_call(&access) {
            return Attempt::Refused(caller.refusal(&access));
        }
        delegate(&mut params.meta, caller);
        TraceContext::propagate(&mut params.meta);
        if !replica.link.is_up() {
            return Attempt::Failed {
                error: "down".into(),
                started: false,
            };
        }
        if !replica.breaker().try_acquire(Instant::now()) {
            return Attempt::Failed {
                error: "circuit breaker open".into(),
                started: false,
            };
        }
        replica.outstanding.fetch_add(1, Ordering::SeqCst);
        let _in_flight = InFlight {
            replica,
            released: &self.released,
        };
        let started = Instant::now();
        let relay = self.relay();
        let outcome = replica.link.call_tool(&relay, params, sink, cancel).await;
        match outcome {
            Ok(result) => {
                replica.breaker().record_success();
                replica.record_latency(started.elapsed());
                replica.served.fetch_add(1, Ordering::Relaxed);
                Attempt::Answered(result)
            }
            Err(LinkError::Cancelled) => {
                replica.breaker().release_trial();
                Attempt::Cancelled
            }
            Err(LinkError::Refused(error)) => {
                replica.breaker().record_success();
                Attempt::Refused(error)
            }
            Err(LinkError::Unavailable(error)) => {
                replica.breaker().release_trial();
                Attempt::Failed {
                    error,
                    started: false,
                }
            }
            // The link is down now: calls still on it end, and the next
            // health check reconnects or finds it dead.
            Err(LinkError::Broken(error)) => {
                replica.breaker().record_failure(Instant::now());
                replica.failed.fetch_add(1, Ordering::Relaxed);
                Attempt::Failed {
                    error,
                    started: true,
                }
            }
        }
    }

    /// Read from the primary, failing over to the next replica up when the
    /// primary's connection breaks.
    pub async fn read_resource(&self, uri: &str) -> Result<ReadResourceResult, McpError> {
        let mut last_error = None;
        for replica in self.replicas().into_iter().filter(|r| r.link.is_up()) {
            match replica.link.read_resource(uri).await {
                Ok(result) => return Ok(result),
                Err(LinkError::Refused(error)) => return Err(error),
                Err(LinkError::Cancelled) => {
                    return Err(McpError::internal_error("cancelled", None));
                }
                Err(LinkError::Unavailable(e) | LinkError::Broken(e)) => {
                    last_error = Some(format!("{}: {e}", replica.name()));
                }
            }
        }
        Err(McpError::internal_error(
            format!(
                "`{}` is unavailable{}",
                self.name,
                last_error.map(|e| format!(" ({e})")).unwrap_or_default()
            ),
            None,
        ))
    }

    /// Hold exactly `wanted` subscriptions, on the primary only.
    pub async fn sync_subscriptions(&self, wanted: &BTreeSet<String>) {
        let primary = self.primary().map(|p| p.link.id());
        let none = BTreeSet::new();
        for replica in self.replicas() {
            let uris = match Some(replica.link.id()) == primary {
                true => wanted,
                false => &none,
            };
            replica.link.sync_subscriptions(uris).await;
        }
    }

    /// Every replica's health, for `monitor_health` and `manage_connections`.
    pub fn health(&self) -> Vec<ReplicaHealth> {
        let now = Instant::now();
        self.replicas()
            .iter()
            .map(|r| {
                let state = r.state(
                    now,
                    self.local_node(),
                    self.settings.egress.cloud_call_cost(),
                );
                let breaker = r.breaker();
                ReplicaHealth {
                    connection: r.link.status(),
                    node: state.node.clone(),
                    breaker: breaker.state(now),
                    failures_in_a_row: breaker.failures_in_a_row(),
                    draining: state.draining,
                    started_here: r.was_started_here(),
                    outstanding: state.outstanding,
                    served: r.served.load(Ordering::Relaxed),
                    failed: r.failed.load(Ordering::Relaxed),
                    latency_ms: state.latency_ms,
                    utilization: state.utilization(),
                    report: r.report(),
                }
            })
            .collect()
    }

    /// Take `replica` out of rotation and wait, up to `timeout`, for its
    /// calls to finish.
    pub async fn drain(&self, replica: &Replica, timeout: Duration) -> bool {
        replica.draining.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while replica.outstanding() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            let released = self.released.notified();
            let _ = tokio::time::timeout(Duration::from_millis(100), released).await;
        }
        true
    }
}

/// Why a call got no replica.
enum Refusal {
    Unavailable(String),
    Shed(String),
    Cancelled,
}

impl Refusal {
    fn into_result(
        self,
        fleet: &str,
        tool: &str,
        failures: &[String],
    ) -> Result<CallToolResult, McpError> {
        let earlier = match failures.is_empty() {
            true => String::new(),
            false => format!(" (after failures: {})", failures.join("; ")),
        };
        match self {
            Refusal::Cancelled => Err(McpError::internal_error("cancelled by the client", None)),
            Refusal::Unavailable(reason) => Ok(tool_error(format!(
                "`{fleet}` is unavailable for {tool}: {reason}{earlier}; try again shortly"
            ))),
            Refusal::Shed(reason) => Ok(tool_error(format!(
                "overloaded: {tool} was shed: {reason}; try again shortly{earlier}"
            ))),
        }
    }
}

/// Say where a result came from: this fleet's hop, appended to its route.
fn parse_report(result: &ReadResourceResult) -> Option<ReplicaReport> {
    result.contents.iter().find_map(|content| match content {
        ResourceContents::TextResourceContents { text, .. } => serde_json::from_str(text).ok(),
        #[allow(unreachable_patterns)]
        _ => None,
    })
}
