//! The control server: which compute replica serves what, model placement
//! within the memory budget, health, power modes and scaling.
//!
//! The decisions live in this crate as a library ([`fleet::Fleet`], with
//! [`routing`] and [`breaker`]) that the gateway routes every call through;
//! the [`ControlServer`] shows and steers them over MCP.

pub mod allocation;
pub mod breaker;
pub mod config;
pub mod egress;
pub mod fleet;
pub mod link;
pub mod monitor;
pub mod optimize;
pub mod placement;
pub mod power;
pub mod routing;
pub mod scale;
pub mod schema;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jetsonmind_contract::access::AccessLevel;
use jetsonmind_contract::allocation::AllocationStrategy;
use jetsonmind_contract::inference::{LOAD_MODEL, ModelAction, TEXT_GENERATE, UNLOAD_MODEL};
use jetsonmind_core::auth::Principal;
use jetsonmind_core::config::Config;
use jetsonmind_core::content::{json_resource, json_tool_result};
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, CallToolResult, JsonObject, ReadResourceResult, Resource,
};
use jetsonmind_core::upstream::{Connector, Upstream};
use jetsonmind_core::{
    Catalog, McpUnit, ResourceUpdates, ToolCall, UnitIdentity, tool_error, tool_from,
};
use jetsonmind_data::analytics::Analytics;
use jetsonmind_data::settings::{Authority, Settings};
use jetsonmind_telemetry::LinuxReader;
use serde_json::{Value, json};

use crate::config::ControlConfig;
use crate::egress::{EGRESS_META_KEY, Egress};
use crate::fleet::{Attempt, Fleet, Origin, Replica};
use crate::monitor::{ALERTS_URI, Alerts, Sources};
use crate::optimize::Optimizer;
use crate::placement::{ClusterPlacement, Placement};
use crate::power::Power;
use crate::scale::Launcher;
use crate::schema::*;

pub struct ControlServer {
    catalog: Arc<Catalog>,
    fleet: Arc<Fleet>,
    optimizer: Optimizer,
    /// Where `optimize_system` and `manage_resources` write settings.
    settings: Option<Arc<Settings>>,
    /// Where `monitor_health` reads the device, the replicas and the tools.
    sources: Sources,
    alerts: Arc<Alerts>,
    launcher: Option<Launcher>,
    max_replicas: usize,
    drain_timeout: Duration,
    /// One scaling action at a time.
    scaling: tokio::sync::Mutex<()>,
    started: AtomicUsize,
    /// The cluster's placements, once this node joins a cluster.
    cluster: OnceLock<Arc<dyn ClusterPlacement>>,
}

fn catalog() -> Catalog {
    let tools = vec![
        tool_from::<RouteRequestArgs>(
            "route_request",
            "Pick the compute replica for a call (model affinity, load, latency, temperature) and say why.",
        ),
        AccessLevel::Admin.mark(tool_from::<OptimizeSystemArgs>(
            "optimize_system",
            "Tune this device for a `target_metric` (latency, throughput, efficiency, thermal) by \
             measuring candidate engine settings (threads, parallel slots, batch size) on the \
             real loaded model within a time budget, then applying the best through the \
             settings (`dry_run` only measures; `revert` restores what it replaced). Returns \
             every candidate's figures and why the winner won. Also reports or sets the power \
             mode and clocks on a Jetson (`report`, `set_power_mode`, `max_clocks`).",
        )),
        AccessLevel::Admin.mark(tool_from::<ManageResourcesArgs>(
            "manage_resources",
            "List, load or unload models within the memory budget; or set how this device \
             keeps models in memory (`allocation_strategy`: balanced, pinned with `models`, \
             on_demand, or preload: the models recent calls used most, loaded now).",
        )),
        tool_from::<MonitorHealthArgs>(
            "monitor_health",
            "Health of the compute replicas (liveness, queue depth, memory, temperature, latency); \
             or the figures of a `component` (device, replicas, models, nodes, tools); with a \
             `threshold`, the readings in breach; with `alert` (admin), keep the threshold as an \
             alert that fires and clears with hysteresis, listed at jetson://control/alerts.",
        ),
        AccessLevel::Admin.mark(tool_from::<ScaleClusterArgs>(
            "scale_cluster",
            "Show, add or remove compute replicas on this machine; in a cluster, place a \
             model's replicas across the nodes (`place` with `model`, `replicas` and \
             `strategy`: spread, pack, or hardware: by temperature headroom, free memory and \
             power mode), and drain or undrain a node.",
        )),
    ];
    let resources = vec![
        Resource::new(ALERTS_URI, "control-alerts")
            .with_description(
                "The alerts monitor_health keeps: each threshold, whether it fires, the \
                 readings in breach, when it last changed. Subscribe to hear it change.",
            )
            .with_mime_type("application/json"),
    ];
    Catalog::new(tools, resources, Vec::new()).expect("the control catalog is valid")
}

impl ControlServer {
    /// A control plane over `fleet` (the compute replicas). `launcher`
    /// starts more replicas on this machine; without one `scale_cluster`
    /// can only report.
    pub fn new(fleet: Arc<Fleet>, config: &Config, launcher: Option<Launcher>) -> Self {
        let root = config.telemetry.root.clone();
        Self {
            catalog: Arc::new(catalog()),
            fleet: fleet.clone(),
            optimizer: Optimizer {
                telemetry_root: root.clone(),
                defaults: config.section::<ControlConfig>().optimize.clone(),
                power: Power::new(&root, config.section::<ControlConfig>()),
            },
            settings: None,
            sources: Sources {
                fleet: fleet.clone(),
                telemetry: LinuxReader::new(&root),
                telemetry_root: root,
                analytics: None,
            },
            alerts: Arc::default(),
            launcher,
            max_replicas: config.section::<ControlConfig>().max_replicas,
            drain_timeout: Duration::from_millis(
                config.section::<ControlConfig>().drain_timeout_ms,
            ),
            scaling: tokio::sync::Mutex::new(()),
            started: AtomicUsize::new(0),
            cluster: OnceLock::new(),
        }
    }

    /// Place models across the cluster this node joined (only the first
    /// call counts).
    pub fn join_cluster(&self, placement: Arc<dyn ClusterPlacement>) {
        let _ = self.cluster.set(placement);
    }

    /// Power commands read this root instead of `/` (tests).
    pub fn with_power(mut self, power: Power) -> Self {
        self.optimizer.power = power;
        self
    }

    /// `optimize_system` applies and reverts engine settings through
    /// `settings`; without them it can only measure (`dry_run`).
    /// Registered alerts are kept in the settings' data dir.
    pub fn with_settings(mut self, settings: Arc<Settings>) -> Self {
        self.alerts.keep_in(&settings.current().data.dir);
        self.settings = Some(settings);
        self
    }

    /// `manage_resources` preloads the models these analytics saw used most.
    pub fn with_analytics(mut self, analytics: Arc<Analytics>) -> Self {
        self.sources.analytics = Some(analytics);
        self
    }

    /// Read temperatures and power rails under `root` instead of `/` (tests).
    pub fn with_telemetry_root(mut self, root: impl Into<std::path::PathBuf>) -> Self {
        let root = root.into();
        self.sources.telemetry = LinuxReader::new(&root);
        self.sources.telemetry_root = root.clone();
        self.optimizer.telemetry_root = root;
        self
    }

    /// The registered alerts (their Prometheus gauge, for `/metrics`).
    pub fn alerts(&self) -> &Arc<Alerts> {
        &self.alerts
    }

    /// Evaluate the alerts every `interval` while the server lives.
    pub fn evaluate_alerts_every(self: &Arc<Self>, interval: Duration) {
        let server = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(server) = server.upgrade() else {
                    return;
                };
                server.evaluate_alerts().await;
            }
        });
    }

    async fn evaluate_alerts(&self) {
        let alerts = self.alerts.list();
        if alerts.is_empty() {
            return;
        }
        // Only the components some alert watches (all, for one that names none).
        let only = match alerts.iter().map(|a| a.component).collect::<BTreeSet<_>>() {
            components if components.len() == 1 => components.into_iter().next().flatten(),
            _ => None,
        };
        let readings = self.sources.read(only).await;
        self.alerts.evaluate(&readings);
    }

    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    async fn route_request(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        let args: RouteRequestArgs = call.parse()?;
        let arguments = args.arguments.unwrap_or_default();
        if let Some(offer) = self.fleet.offer()
            && offer.tool(&args.tool).is_none()
        {
            return Ok(tool_error(format!(
                "the compute replicas offer no tool `{}`",
                args.tool
            )));
        }
        let mut params = CallToolRequestParams::new(args.tool.clone()).with_arguments(arguments);
        if let Some(egress) = &args.egress {
            let meta = params.meta.get_or_insert_with(Default::default);
            meta.0.0.insert(EGRESS_META_KEY.into(), json!(egress));
        }
        let egress = self.fleet.egress_of(&params, &call.caller)?;
        let decision = self.fleet.decide(
            &args.tool,
            params.arguments.as_ref().unwrap_or(&JsonObject::new()),
            args.strategy,
            &BTreeSet::new(),
            &egress,
        );
        if args.dry_run.unwrap_or(true) {
            return Ok(json_tool_result(
                &json!({ "decision": decision, "egress": egress }),
            ));
        }
        let result = self
            .fleet
            .call_tool(
                params,
                &call.caller,
                args.strategy,
                call.context.progress.clone(),
                &call.context.cancel,
            )
            .await?;
        Ok(json_tool_result(
            &json!({ "decision": decision, "result": result }),
        ))
    }

    async fn optimize_system(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        let args: OptimizeSystemArgs = call.parse()?;
        let action = match (args.action, args.target_metric) {
            (Some(action), _) => action,
            (None, Some(_)) => OptimizeAction::Optimize,
            (None, None) => {
                return Ok(tool_error(
                    "give `target_metric` (latency, throughput, efficiency or thermal) to tune \
                     this device, or an `action`: revert, report, set_power_mode, max_clocks",
                ));
            }
        };
        let outcome = match action {
            OptimizeAction::Optimize => {
                let (fleet, caller, context) = (&self.fleet, &call.caller, &call.context);
                let settings = self.settings.as_deref();
                self.optimizer
                    .optimize(fleet, settings, &args, caller, context)
                    .await
            }
            OptimizeAction::Revert => match &self.settings {
                Some(settings) => optimize::revert(settings, &self.optimizer.power).await,
                None => Err("this control server cannot write settings".into()),
            },
            power => self
                .optimizer
                .power
                .run(power, args.mode)
                .await
                .map_err(|e| e.to_string()),
        };
        Ok(match outcome {
            Ok(value) => json_tool_result(&value),
            Err(e) => tool_error(e),
        })
    }

    async fn monitor(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        let args: MonitorHealthArgs = call.parse()?;
        if args.alert.is_some() || args.remove_alert.is_some() {
            return Ok(self.change_alerts(args, &call.caller));
        }
        if let Some(threshold) = &args.threshold
            && let Err(e) = threshold.check()
        {
            return Ok(tool_error(e));
        }
        if args.component.is_none() && args.threshold.is_none() {
            return Ok(self.monitor_health(args));
        }
        let readings = self.sources.read(args.component).await;
        let Some(threshold) = &args.threshold else {
            return Ok(json_tool_result(&json!({ "readings": readings })));
        };
        let (breaches, known) = monitor::breaches(&readings, threshold, false);
        if !known {
            let metrics: BTreeSet<&String> =
                readings.iter().flat_map(|r| r.figures.keys()).collect();
            return Ok(tool_error(format!(
                "no reading has the metric `{}`; these do: {}",
                threshold.metric,
                metrics.into_iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(json_tool_result(&json!({
            "threshold": threshold,
            "in_breach": breaches,
            "readings": readings,
        })))
    }

    /// Register or remove an alert (admin).
    fn change_alerts(&self, args: MonitorHealthArgs, caller: &Principal) -> CallToolResult {
        if !caller.is_admin() {
            return tool_error("forbidden: registering or removing alerts needs the admin scope");
        }
        let changed = match (args.alert, args.remove_alert, args.threshold) {
            (Some(_), Some(_), _) => Err("give `alert` or `remove_alert`, not both".to_string()),
            (Some(_), None, None) => Err("`alert` needs a `threshold`".to_string()),
            (Some(name), None, Some(threshold)) => threshold
                .check()
                .and_then(|()| self.alerts.register(name, args.component, threshold)),
            (None, Some(name), _) => match self.alerts.remove(&name) {
                Ok(true) => Ok(()),
                Ok(false) => Err(format!("no alert named `{name}`")),
                Err(e) => Err(e),
            },
            (None, None, _) => Ok(()),
        };
        match changed {
            Ok(()) => json_tool_result(&json!({ "alerts": self.alerts.list() })),
            Err(e) => tool_error(e),
        }
    }

    fn monitor_health(&self, args: MonitorHealthArgs) -> CallToolResult {
        let replicas: Vec<_> = self
            .fleet
            .health()
            .into_iter()
            .filter(|r| {
                args.replica
                    .as_ref()
                    .is_none_or(|n| &r.connection.name == n)
            })
            .collect();
        if let Some(name) = &args.replica
            && replicas.is_empty()
        {
            return tool_error(format!("no replica named `{name}`"));
        }
        let healthy = replicas
            .iter()
            .filter(|r| r.connection.up && r.breaker == breaker::BreakerState::Closed)
            .count();
        let firing: Vec<_> = self
            .alerts
            .list()
            .into_iter()
            .filter(|a| a.firing)
            .collect();
        json_tool_result(&json!({
            "fleet": self.fleet.name,
            "healthy": healthy,
            "total": replicas.len(),
            "replicas": replicas,
            "alerts_firing": firing,
        }))
    }

    async fn manage_resources(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        let args: ManageResourcesArgs = call.parse()?;
        if let Some(strategy) = args.allocation_strategy {
            return Ok(self.set_allocation(strategy, &args, &call).await);
        }
        let Some(action) = args.action else {
            return Ok(tool_error(
                "give `action` (list, load, unload) or `allocation_strategy` (balanced, pinned, \
                 on_demand, preload)",
            ));
        };
        if action == ResourceAction::List {
            return Ok(self.list_resources());
        }
        let Some(model) = args.model.clone() else {
            return Ok(tool_error("`model` is required for load and unload"));
        };
        let targets = match self.targets(action, args.replica.as_deref(), &model) {
            Ok(targets) => targets,
            Err(message) => return Ok(tool_error(message)),
        };
        let (tool, keep_alive_secs) = match action {
            ResourceAction::Load => (LOAD_MODEL, args.keep_alive_secs),
            _ => (UNLOAD_MODEL, None),
        };
        let arguments = ModelAction {
            model,
            keep_alive_secs,
        }
        .arguments();
        let mut outcomes = Vec::new();
        let mut failed = false;
        for replica in targets {
            let params = CallToolRequestParams::new(tool).with_arguments(arguments.clone());
            let attempt = self
                .fleet
                .call_on(&replica, params, &call.caller, None, &call.context.cancel)
                .await;
            let (ok, outcome) = describe_attempt(attempt);
            failed |= !ok;
            outcomes.push(json!({ "replica": replica.name(), "ok": ok, "outcome": outcome }));
        }
        let mut result = json_tool_result(&json!({ "results": outcomes }));
        result.is_error = Some(failed);
        Ok(result)
    }

    fn list_resources(&self) -> CallToolResult {
        let replicas: Vec<Value> = self
            .fleet
            .replicas()
            .iter()
            .map(|r| {
                let report = r.report();
                json!({
                    "replica": r.name(),
                    "up": r.link.is_up(),
                    "memory_budget_bytes": report.as_ref().map(|r| r.memory_budget_bytes),
                    "memory_used_bytes": report.as_ref().map(|r| r.memory_used_bytes),
                    "loadable_bytes": report.as_ref().map(|r| r.loadable_bytes),
                    "loaded": report.as_ref().map(|r| r.loaded.clone()),
                    "model_bytes": report.as_ref().map(|r| r.model_bytes.clone()),
                })
            })
            .collect();
        json_tool_result(&json!({ "replicas": replicas }))
    }

    /// Save how models are kept; with `preload`, load the most used now.
    async fn set_allocation(
        &self,
        strategy: AllocationStrategy,
        args: &ManageResourcesArgs,
        call: &ToolCall,
    ) -> CallToolResult {
        let Some(settings) = &self.settings else {
            return tool_error("this control server cannot write settings");
        };
        let models = args.models.clone().unwrap_or_default();
        let update = match allocation::set(settings, strategy, &models).await {
            Ok(update) => update,
            Err(e) => return tool_error(e),
        };
        let preloaded = match strategy {
            AllocationStrategy::Preload => match self.preload(args, call).await {
                Ok(preloaded) => preloaded,
                Err(e) => return tool_error(format!("saved, but preloading failed: {e}")),
            },
            _ => Value::Null,
        };
        json_tool_result(&json!({
            "allocation_strategy": strategy,
            "update": update,
            "preloaded": preloaded,
        }))
    }

    async fn preload(&self, args: &ManageResourcesArgs, call: &ToolCall) -> Result<Value, String> {
        let analytics = self
            .sources
            .analytics
            .as_ref()
            .ok_or("this control server has no call analytics to rank models by")?;
        let replica = optimize::local_replica(&self.fleet, args.replica.as_deref())?;
        let (caller, cancel) = (&call.caller, &call.context.cancel);
        allocation::preload(&self.fleet, &replica, &analytics.report(), caller, cancel).await
    }

    /// The replicas a load or unload acts on.
    fn targets(
        &self,
        action: ResourceAction,
        replica: Option<&str>,
        model: &str,
    ) -> Result<Vec<Arc<Replica>>, String> {
        if let Some(name) = replica {
            return self
                .fleet
                .replica(name)
                .map(|r| vec![r])
                .ok_or_else(|| format!("no replica named `{name}`"));
        }
        match action {
            ResourceAction::Load => {
                let mut arguments = JsonObject::new();
                arguments.insert("model".into(), Value::String(model.to_string()));
                // A model is loaded on the site, never in the cloud.
                let site = Egress {
                    edge_only: Some("loading models on the site".into()),
                    ..Egress::default()
                };
                let decision =
                    self.fleet
                        .decide(TEXT_GENERATE, &arguments, None, &BTreeSet::new(), &site);
                decision
                    .chosen()
                    .and_then(|name| self.fleet.replica(name))
                    .map(|r| vec![r])
                    .ok_or(decision.reason)
            }
            _ => {
                let holding: Vec<_> = self
                    .fleet
                    .replicas()
                    .into_iter()
                    .filter(|r| {
                        r.report().is_some_and(|report| {
                            report
                                .loaded
                                .iter()
                                .any(|m| routing::same_model(&m.name, model))
                        })
                    })
                    .collect();
                match holding.is_empty() {
                    true => Err(format!("no replica has `{model}` loaded")),
                    false => Ok(holding),
                }
            }
        }
    }

    async fn scale_cluster(&self, args: ScaleClusterArgs) -> CallToolResult {
        let _one_at_a_time = self.scaling.lock().await;
        let count = args.count.unwrap_or(1) as usize;
        match args.action {
            ScaleAction::Status => self.scale_status().await,
            ScaleAction::Add => self.add_replicas(count).await,
            ScaleAction::Remove => self.remove_replicas(count, args.replica.as_deref()).await,
            ScaleAction::Place | ScaleAction::Drain | ScaleAction::Undrain => {
                self.scale_across_cluster(args).await
            }
        }
    }

    /// The cluster scope of `scale_cluster`: placements and drains.
    async fn scale_across_cluster(&self, args: ScaleClusterArgs) -> CallToolResult {
        let Some(cluster) = self.cluster.get() else {
            return tool_error(
                "placing models and draining nodes needs a cluster: this node has not joined \
                 one (`jetsonmind serve --cluster nats://HOST:4222`)",
            );
        };
        let done = match args.action {
            ScaleAction::Place => {
                let (Some(model), Some(replicas)) = (args.model, args.replicas) else {
                    return tool_error("`place` needs `model` and `replicas`");
                };
                let placement = Placement {
                    model,
                    replicas: replicas as usize,
                    strategy: args.strategy.unwrap_or_default(),
                };
                cluster.place(placement).await
            }
            drain => {
                let Some(node) = args.node else {
                    return tool_error("`drain` and `undrain` need `node`");
                };
                cluster.drain(node, drain == ScaleAction::Drain).await
            }
        };
        match done {
            Ok(()) => self.scale_status().await,
            Err(e) => tool_error(e),
        }
    }

    async fn scale_status(&self) -> CallToolResult {
        let replicas: Vec<Value> = self
            .fleet
            .replicas()
            .iter()
            .map(|r| {
                json!({
                    "name": r.name(),
                    "endpoint": r.link.describe(),
                    "up": r.link.is_up(),
                    "started_here": r.was_started_here(),
                    "outstanding": r.outstanding(),
                })
            })
            .collect();
        let cluster = match self.cluster.get() {
            Some(cluster) => match cluster.status().await {
                Ok(status) => status,
                Err(e) => json!({ "error": e }),
            },
            None => Value::Null,
        };
        json_tool_result(&json!({
            "replicas": replicas,
            "max_replicas": self.max_replicas,
            "can_start_replicas": self.launcher.is_some(),
            "cluster": cluster,
        }))
    }

    async fn add_replicas(&self, count: usize) -> CallToolResult {
        let Some(launcher) = &self.launcher else {
            return tool_error(
                "this control server cannot start replicas: it was not given a jetsonmind binary",
            );
        };
        let have = self.fleet.replicas().len();
        if have + count > self.max_replicas {
            return tool_error(format!(
                "cannot add {count}: {have} replica(s) now, at most {} (control.max_replicas)",
                self.max_replicas
            ));
        }
        let mut added = Vec::new();
        for _ in 0..count {
            match launcher.start().await {
                Ok(started) => {
                    let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
                    let name = format!("{}-started-{n}", self.fleet.name);
                    let connector = Connector::Http {
                        url: started.url.clone(),
                        bearer: Some(started.secret),
                    };
                    let upstream = Upstream::new(&name, connector);
                    let origin = Origin::Started(std::sync::Mutex::new(Some(started.child)));
                    self.fleet.add(upstream, origin);
                    added.push(json!({ "name": name, "endpoint": started.url }));
                }
                Err(e) => {
                    self.fleet.check().await;
                    return tool_error(format!(
                        "started {} of {count} replica(s); the next failed: {e}",
                        added.len()
                    ));
                }
            }
        }
        // Bring them into rotation now rather than at the next health check.
        self.fleet.check().await;
        let up: Vec<String> = self
            .fleet
            .replicas()
            .iter()
            .filter(|r| r.link.is_up())
            .map(|r| r.name().to_string())
            .collect();
        json_tool_result(&json!({ "added": added, "up": up }))
    }

    async fn remove_replicas(&self, count: usize, named: Option<&str>) -> CallToolResult {
        let victims: Vec<Arc<Replica>> = match named {
            Some(name) => match self.fleet.replica(name) {
                Some(r) if r.was_started_here() => vec![r],
                Some(_) => {
                    return tool_error(format!(
                        "replica `{name}` was not started by scale_cluster; take it out of the \
                         configuration instead"
                    ));
                }
                None => return tool_error(format!("no replica named `{name}`")),
            },
            None => {
                let started: Vec<_> = self
                    .fleet
                    .replicas()
                    .into_iter()
                    .filter(|r| r.was_started_here())
                    .collect();
                if started.len() < count {
                    return tool_error(format!(
                        "cannot remove {count}: only {} replica(s) were started by scale_cluster",
                        started.len()
                    ));
                }
                started.into_iter().rev().take(count).collect()
            }
        };
        let mut removed = Vec::new();
        for replica in victims {
            let drained = self.fleet.drain(&replica, self.drain_timeout).await;
            self.fleet.remove(replica.name());
            replica.stop_process().await;
            removed.push(json!({ "name": replica.name(), "drained": drained }));
        }
        json_tool_result(&json!({ "removed": removed }))
    }
}

/// Apply `patch` (sections of keys, as in the config file) through the
/// settings, as an administrator: what the update did.
async fn write_settings(settings: &Settings, patch: &Value) -> Result<Value, String> {
    let patch = patch.as_object().cloned().unwrap_or_default();
    let update = settings
        .update(&patch, false, Authority::Admin, None)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::to_value(update).map_err(|e| e.to_string())
}

/// Whether a direct call succeeded, and what to show of it.
fn describe_attempt(attempt: Attempt) -> (bool, Value) {
    match attempt {
        Attempt::Answered(result) => {
            let ok = result.is_error != Some(true);
            let value = result
                .structured_content
                .clone()
                .or_else(|| {
                    result
                        .content
                        .first()
                        .and_then(|c| c.as_text())
                        .map(|t| Value::String(t.text.clone()))
                })
                .unwrap_or(Value::Null);
            (ok, value)
        }
        Attempt::Refused(error) => (false, Value::String(error.message.to_string())),
        Attempt::Cancelled => (false, Value::String("cancelled".into())),
        Attempt::Failed { error, .. } => (false, Value::String(error)),
    }
}

impl McpUnit for ControlServer {
    fn identity(&self) -> UnitIdentity {
        UnitIdentity {
            name: "jetsonmind-control",
            title: "JetsonMind control",
            instructions: "The control plane: routing, model placement, health, power modes and scaling \
                           of the compute replicas.",
        }
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.catalog.clone()
    }

    /// Ready while a compute replica is up to route to.
    fn readiness(&self) -> jetsonmind_core::lifecycle::Readiness {
        match self.fleet.is_up() {
            true => Ok(()),
            false => Err("no compute replica is up".into()),
        }
    }

    fn updates(&self) -> Option<Arc<ResourceUpdates>> {
        Some(self.alerts.updates.clone())
    }

    async fn read_resource(
        &self,
        uri: &str,
        _caller: &Principal,
    ) -> Result<ReadResourceResult, McpError> {
        match uri {
            ALERTS_URI => json_resource(uri, &json!({ "alerts": self.alerts.list() })),
            _ => Err(jetsonmind_core::error::no_resource_at(uri)),
        }
    }

    async fn call_tool(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        match call.name.as_str() {
            "route_request" => self.route_request(call).await,
            "monitor_health" => self.monitor(call).await,
            "manage_resources" => self.manage_resources(call).await,
            "optimize_system" => self.optimize_system(call).await,
            "scale_cluster" => Ok(self.scale_cluster(call.parse()?).await),
            other => Err(McpError::invalid_params(
                format!("unknown tool: {other}"),
                None,
            )),
        }
    }
}
