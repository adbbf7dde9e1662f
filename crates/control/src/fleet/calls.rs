//! A call routed among the replicas: the decision, the tries in its order
//! (an idempotent call fails over), the cloud tier's egress and spending,
//! and one try on one replica, where the call is authorized as its caller.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use jetsonmind_contract::access::ToolFlags;
use jetsonmind_contract::inference::model_named;
use jetsonmind_contract::replica::is_busy;
use jetsonmind_contract::route::{self, Hop};
use jetsonmind_core::auth::{Principal, ToolAccess, delegate};
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{CallToolRequestParams, CallToolResult, JsonObject};
use jetsonmind_core::tool_error;
use jetsonmind_core::trace::TraceContext;
use jetsonmind_core::upstream::ProgressSink;
use tokio_util::sync::CancellationToken;

use super::room::InFlight;
use super::{Fleet, Replica};
use crate::egress::{Egress, EgressRequest};
use crate::link::LinkError;
use crate::routing::{self, Decision, Need, ReplicaState, Strategy};

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

impl Fleet {
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
    pub(super) fn model_bytes(&self, model: Option<&str>) -> Option<u64> {
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
    pub(super) fn access_at(replica: &Replica, tool: &str) -> ToolAccess {
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
        let _in_flight = InFlight::begin(replica, &self.released);
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
}
