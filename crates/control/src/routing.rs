//! Which replica serves a call, and why: a pure function of the replicas'
//! state, so every decision can be shown (`route_request`) and tested.
//!
//! First the guards take replicas out: down, breaker open, draining, too hot,
//! at the utilization ceiling, or short of memory for a model they would have
//! to load. The rest are ranked by the strategy; the first is chosen and the
//! others are the order in which a failed idempotent call is retried.
//!
//! In a cluster, affinity ranks by where the model is: loaded, then in the
//! replica's store, and when no replica has it at all (only the cluster's
//! registry does), this node's own replica, so that the model is pulled
//! where the call came in.
//!
//! With a cloud tier, the site's replicas (this node's and its cluster's)
//! come first whatever the strategy; the cloud's are used when none of the
//! site's can take the call (at the ceiling, down), when the site's would
//! keep it waiting past the call's latency target, or when only the cloud
//! has the model. A call that must stay at the edge, or whose caller's
//! budget is spent, never goes there. A provider (an OpenAI-compatible
//! endpoint) serves only the models it maps: a call naming another never
//! goes there.

pub use jetsonmind_contract::route::Tier;
use serde::Serialize;

use crate::breaker::BreakerState;
pub use crate::config::Strategy;
use crate::egress::Egress;

/// The guards and the ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub strategy: Strategy,
    /// Largest share of a replica's capacity in use before it takes no more (0..=1).
    pub utilization_ceiling: f64,
    /// Hotter replicas are taken out of rotation until they cool down.
    pub max_temperature_c: f64,
}

/// What the control plane knows of one replica at the moment of a decision.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicaState {
    pub name: String,
    /// The cluster node it runs on (none on a single device).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub endpoint: String,
    pub up: bool,
    pub breaker: Option<BreakerState>,
    /// Being removed: finishes what it has, takes nothing new.
    pub draining: bool,
    /// Calls this control plane has in flight on it.
    pub outstanding: usize,
    /// Calls from elsewhere it reported running or waiting at its last
    /// health check (other gateways may send it work too).
    pub external_busy: usize,
    /// Calls it can hold at once (running slots + queue).
    pub capacity: Option<usize>,
    pub default_model: Option<String>,
    pub loaded_models: Vec<String>,
    /// The models in its store it can load.
    pub stored_models: Vec<String>,
    /// It serves only the models it holds and can load no other (a
    /// provider: the models its config maps).
    pub fixed_models: bool,
    /// Where it runs: this node, another node of the site, or the cloud.
    pub tier: Tier,
    /// What one call costs there (cloud replicas), in the budgets' units.
    pub cost: f64,
    pub temperature_c: Option<f64>,
    /// The most memory a model it has not loaded may take here.
    pub loadable_bytes: Option<u64>,
    /// Recent call latency (moving average), or the health check's round trip
    /// before any call.
    pub latency_ms: Option<f64>,
}

impl ReplicaState {
    /// Calls in flight on it: ours now, and others' as last reported.
    pub fn busy(&self) -> usize {
        self.outstanding + self.external_busy
    }

    /// In-flight work as a share of capacity.
    pub fn utilization(&self) -> Option<f64> {
        let capacity = self.capacity.filter(|c| *c > 0)?;
        Some(self.busy() as f64 / capacity as f64)
    }

    /// Whether `model` (the replica's default when `None`) is loaded here.
    pub fn holds(&self, model: Option<&str>) -> bool {
        let Some(model) = model.or(self.default_model.as_deref()) else {
            return false;
        };
        self.loaded_models.iter().any(|m| same_model(m, model))
    }

    /// Whether `model` (the replica's default when `None`) is in its store.
    pub fn stores(&self, model: Option<&str>) -> bool {
        let Some(model) = model.or(self.default_model.as_deref()) else {
            return false;
        };
        self.stored_models.iter().any(|m| same_model(m, model))
    }

    /// Where the model is, for affinity: loaded, stored, neither.
    fn has(&self, model: Option<&str>) -> Placement {
        match (self.holds(model), self.stores(model)) {
            (true, _) => Placement::Loaded,
            (false, true) => Placement::Stored,
            (false, false) => Placement::Elsewhere,
        }
    }

    /// This node's own replica, not another node's.
    pub fn is_local(&self) -> bool {
        self.tier == Tier::Node
    }

    /// One more call would still keep it under the ceiling.
    fn has_room(&self, ceiling: f64) -> bool {
        match self.capacity.filter(|c| *c > 0) {
            None => true,
            Some(capacity) => {
                let busy = self.busy();
                (busy + 1) as f64 <= ceiling * capacity as f64 || busy == 0
            }
        }
    }
}

/// Where a replica has the model a call names; better first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Placement {
    Loaded,
    Stored,
    Elsewhere,
}

/// Store names may be given with or without `.gguf`.
pub fn same_model(a: &str, b: &str) -> bool {
    let bare = |s: &str| s.strip_suffix(".gguf").unwrap_or(s).to_string();
    bare(a) == bare(b)
}

/// What a call needs.
#[derive(Debug, Clone, Default)]
pub struct Need<'a> {
    pub tool: &'a str,
    /// The model the call names; `None`: each replica's default.
    pub model: Option<&'a str>,
    /// Memory a replica needs free to load the model, when known.
    pub model_bytes: Option<u64>,
    /// What may leave the site.
    pub egress: Egress,
}

/// Why a replica cannot take the call now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Exclusion {
    Down,
    BreakerOpen,
    Draining,
    Hot {
        temperature_c: f64,
        limit_c: f64,
    },
    Saturated {
        utilization: f64,
        ceiling: f64,
    },
    NoMemory {
        needed_bytes: u64,
        free_bytes: u64,
    },
    /// A cloud replica, for a call that must stay at the edge.
    EdgeOnly {
        because: String,
    },
    /// A cloud replica, for a caller whose budget is spent.
    OverBudget {
        spent: f64,
        limit: f64,
        cost: f64,
    },
    /// It serves a fixed set of models, not this one (none: the call names
    /// no model and it has no default).
    ModelNotServed {
        model: Option<String>,
    },
}

impl Exclusion {
    fn explain(&self) -> String {
        match self {
            Exclusion::Down => "down: failed its last health check".into(),
            Exclusion::BreakerOpen => "circuit breaker open after repeated failures".into(),
            Exclusion::Draining => "draining: being removed, or its node is drained".into(),
            Exclusion::Hot {
                temperature_c,
                limit_c,
            } => format!("too hot: {temperature_c:.1} °C, limit {limit_c:.1} °C"),
            Exclusion::Saturated {
                utilization,
                ceiling,
            } => format!(
                "at its utilization ceiling: {:.0}% in use, ceiling {:.0}%",
                utilization * 100.0,
                ceiling * 100.0
            ),
            Exclusion::NoMemory {
                needed_bytes,
                free_bytes,
            } => format!(
                "not enough free memory to load the model: needs {} MiB, {} MiB free",
                needed_bytes >> 20,
                free_bytes >> 20
            ),
            Exclusion::EdgeOnly { because } => format!("in the cloud; the call is {because}"),
            Exclusion::OverBudget { spent, limit, cost } => format!(
                "in the cloud; the caller's budget is spent ({spent:.2} of {limit:.2}, a call costs {cost:.2})"
            ),
            Exclusion::ModelNotServed { model: Some(model) } => {
                format!("serves only the models it maps, not `{model}`")
            }
            Exclusion::ModelNotServed { model: None } => {
                "serves only the models it maps, and the call names none".into()
            }
        }
    }
}

/// One replica in a decision.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub replica: String,
    /// 1 = chosen; absent when excluded.
    pub rank: Option<usize>,
    pub why: String,
    pub excluded: Option<Exclusion>,
    pub holds_model: bool,
    pub outstanding: usize,
    pub utilization: Option<f64>,
    pub latency_ms: Option<f64>,
    pub temperature_c: Option<f64>,
}

/// Why no replica was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Blocked {
    /// Every replica that could serve is at its ceiling: wait, or shed.
    Saturated,
    /// None can serve at all.
    NoneAvailable,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub strategy: Strategy,
    /// The chosen replica's tier (none when none was chosen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    pub tool: String,
    pub model: Option<String>,
    /// The chosen replica, then the fallbacks, best first.
    pub order: Vec<String>,
    pub blocked: Option<Blocked>,
    pub reason: String,
    pub candidates: Vec<Candidate>,
}

impl Decision {
    pub fn chosen(&self) -> Option<&str> {
        self.order.first().map(String::as_str)
    }
}

/// Rank `replicas` for `need` under `policy`.
pub fn decide(need: &Need, replicas: &[ReplicaState], policy: &Policy) -> Decision {
    let mut candidates: Vec<(usize, Candidate)> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| (i, candidate(need, r, policy)))
        .collect();
    let mut eligible: Vec<usize> = candidates
        .iter()
        .filter(|(_, c)| c.excluded.is_none())
        .map(|(i, _)| *i)
        .collect();
    let edge_lacks_model = eligible
        .iter()
        .filter(|i| !replicas[**i].tier.is_cloud())
        .all(|i| replicas[*i].has(need.model) == Placement::Elsewhere);
    // Only the cloud has the model: there, rather than pulled here.
    let cloud_first = edge_lacks_model
        && eligible.iter().any(|i| {
            replicas[*i].tier.is_cloud() && replicas[*i].has(need.model) != Placement::Elsewhere
        });
    // No replica that can take the call has the model: it comes from the
    // cluster, best to this node.
    let pull_here = edge_lacks_model && !cloud_first;
    let ranking = Ranking {
        strategy: policy.strategy,
        need,
        pull_here,
        cloud_first,
    };
    eligible.sort_by(|a, b| ranking.order(&replicas[*a], &replicas[*b]));
    for (rank, index) in eligible.iter().enumerate() {
        let candidate = &mut candidates[*index].1;
        candidate.rank = Some(rank + 1);
        candidate.why = ranking.why(&replicas[*index], rank);
    }
    let order: Vec<String> = eligible.iter().map(|i| replicas[*i].name.clone()).collect();
    let blocked = match order.is_empty() {
        false => None,
        true => Some(
            match candidates
                .iter()
                .any(|(_, c)| matches!(c.excluded, Some(Exclusion::Saturated { .. })))
            {
                true => Blocked::Saturated,
                false => Blocked::NoneAvailable,
            },
        ),
    };
    let tier = eligible.first().map(|i| replicas[*i].tier);
    let mut reason = summary(policy, &order, &candidates, blocked);
    if tier == Some(Tier::Cloud) {
        reason.push_str(&format!(
            "; to the cloud: {}",
            why_cloud(need, replicas, &candidates, cloud_first)
        ));
    }
    Decision {
        strategy: policy.strategy,
        tier,
        tool: need.tool.to_string(),
        model: need.model.map(str::to_string),
        order,
        blocked,
        reason,
        candidates: candidates.into_iter().map(|(_, c)| c).collect(),
    }
}

fn candidate(need: &Need, replica: &ReplicaState, policy: &Policy) -> Candidate {
    let excluded = exclusion(need, replica, policy);
    Candidate {
        replica: replica.name.clone(),
        rank: None,
        why: excluded
            .as_ref()
            .map(Exclusion::explain)
            .unwrap_or_default(),
        excluded,
        holds_model: replica.holds(need.model),
        outstanding: replica.outstanding,
        utilization: replica.utilization(),
        latency_ms: replica.latency_ms,
        temperature_c: replica.temperature_c,
    }
}

fn exclusion(need: &Need, replica: &ReplicaState, policy: &Policy) -> Option<Exclusion> {
    if !replica.up {
        return Some(Exclusion::Down);
    }
    if replica.breaker == Some(BreakerState::Open) {
        return Some(Exclusion::BreakerOpen);
    }
    if replica.draining {
        return Some(Exclusion::Draining);
    }
    if replica.tier.is_cloud() {
        let egress = &need.egress;
        if let Some(because) = &egress.edge_only {
            return Some(Exclusion::EdgeOnly {
                because: because.clone(),
            });
        }
        if let Some(budget) = egress.budget.filter(|b| !b.allows(replica.cost)) {
            return Some(Exclusion::OverBudget {
                spent: budget.spent,
                limit: budget.limit,
                cost: replica.cost,
            });
        }
    }
    if replica.fixed_models && !replica.holds(need.model) {
        return Some(Exclusion::ModelNotServed {
            model: need.model.map(str::to_string),
        });
    }
    if let Some(temperature_c) = replica.temperature_c
        && temperature_c > policy.max_temperature_c
    {
        return Some(Exclusion::Hot {
            temperature_c,
            limit_c: policy.max_temperature_c,
        });
    }
    if let (Some(needed_bytes), Some(free_bytes)) = (need.model_bytes, replica.loadable_bytes)
        && !replica.holds(need.model)
        && needed_bytes > free_bytes
    {
        return Some(Exclusion::NoMemory {
            needed_bytes,
            free_bytes,
        });
    }
    if !replica.has_room(policy.utilization_ceiling) {
        return Some(Exclusion::Saturated {
            utilization: replica.utilization().unwrap_or(1.0),
            ceiling: policy.utilization_ceiling,
        });
    }
    None
}

/// Expected wait: latency times the calls ahead, plus this one. Unknown
/// latency counts as fast (a new replica gets tried).
fn expected_wait(replica: &ReplicaState) -> f64 {
    replica.latency_ms.unwrap_or(0.0) * (replica.busy() + 1) as f64
}

/// How one decision ranks its eligible replicas.
struct Ranking<'a> {
    strategy: Strategy,
    need: &'a Need<'a>,
    /// No replica has the model: affinity puts this node's own first.
    pull_here: bool,
    /// Only the cloud has the model.
    cloud_first: bool,
}

/// A replica's place before any strategy: the site's within the latency
/// target, then the cloud, then the site's past it (only the cloud having the
/// model puts the cloud first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reach {
    First,
    Cloud,
    Late,
}

impl Ranking<'_> {
    fn reach(&self, replica: &ReplicaState) -> Reach {
        match replica.tier {
            Tier::Cloud if self.cloud_first => Reach::First,
            Tier::Cloud => Reach::Cloud,
            _ if past_target(replica, &self.need.egress) => Reach::Late,
            _ => Reach::First,
        }
    }

    fn order(&self, a: &ReplicaState, b: &ReplicaState) -> std::cmp::Ordering {
        self.reach(a)
            .cmp(&self.reach(b))
            .then_with(|| self.by_strategy(a, b))
    }

    fn by_strategy(&self, a: &ReplicaState, b: &ReplicaState) -> std::cmp::Ordering {
        let by_busy = || a.busy().cmp(&b.busy());
        let by_latency = || {
            let (x, y) = (a.latency_ms.unwrap_or(0.0), b.latency_ms.unwrap_or(0.0));
            x.total_cmp(&y)
        };
        let by_wait = || expected_wait(a).total_cmp(&expected_wait(b));
        let by_name = || a.name.cmp(&b.name);
        let model = self.need.model;
        let by_pull_here = || match self.pull_here {
            true => b.is_local().cmp(&a.is_local()),
            false => std::cmp::Ordering::Equal,
        };
        match self.strategy {
            Strategy::Affinity => a
                .has(model)
                .cmp(&b.has(model))
                .then_with(by_pull_here)
                .then_with(by_busy)
                .then_with(by_latency)
                .then_with(by_name),
            Strategy::LeastOutstanding => by_busy().then_with(by_latency).then_with(by_name),
            Strategy::Latency => by_wait().then_with(by_busy).then_with(by_name),
        }
    }

    fn why(&self, replica: &ReplicaState, rank: usize) -> String {
        let model = match replica.has(self.need.model) {
            Placement::Loaded => "model loaded",
            Placement::Stored => "model in its store",
            Placement::Elsewhere if self.pull_here && replica.is_local() => {
                "model not loaded, pulled here from the cluster"
            }
            Placement::Elsewhere => "model not loaded",
        };
        let latency = replica
            .latency_ms
            .map_or("latency unknown".to_string(), |l| format!("{l:.1} ms"));
        let facts = match self.strategy {
            Strategy::Affinity => format!("{model}, {} in flight, {latency}", replica.busy()),
            Strategy::LeastOutstanding => format!("{} in flight, {latency}", replica.busy()),
            Strategy::Latency => format!(
                "expected wait {:.1} ms ({} in flight, {latency})",
                expected_wait(replica),
                replica.busy()
            ),
        };
        match rank {
            0 => format!("chosen: {facts}"),
            _ => format!("fallback {rank}: {facts}"),
        }
    }
}

/// Whether `replica` (of the site) would keep a call waiting past its target.
fn past_target(replica: &ReplicaState, egress: &Egress) -> bool {
    egress
        .latency_target_ms
        .is_some_and(|target| expected_wait(replica) > target)
}

/// Why a call goes to the cloud rather than the site.
fn why_cloud(
    need: &Need,
    replicas: &[ReplicaState],
    candidates: &[(usize, Candidate)],
    cloud_first: bool,
) -> String {
    if cloud_first {
        return "only the cloud has the model".into();
    }
    let site: Vec<(&ReplicaState, &Candidate)> = candidates
        .iter()
        .map(|(i, c)| (&replicas[*i], c))
        .filter(|(r, _)| !r.tier.is_cloud())
        .collect();
    if site.is_empty() {
        return "the site has no replica".into();
    }
    let saturated = site
        .iter()
        .filter(|(_, c)| matches!(c.excluded, Some(Exclusion::Saturated { .. })))
        .count();
    if site.iter().all(|(_, c)| c.excluded.is_some()) {
        return match saturated {
            0 => "no site replica can serve".into(),
            n => format!(
                "{n} of the site's {} replica(s) at the utilization ceiling, none free",
                site.len()
            ),
        };
    }
    match need.egress.latency_target_ms {
        Some(target) => format!(
            "every site replica would keep the call waiting past its latency target ({target:.0} ms)"
        ),
        None => "the site's replicas rank after it".into(),
    }
}

fn summary(
    policy: &Policy,
    order: &[String],
    candidates: &[(usize, Candidate)],
    blocked: Option<Blocked>,
) -> String {
    let strategy = serde_json::to_value(policy.strategy)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    match (order.first(), blocked) {
        (Some(chosen), _) => {
            let why = candidates
                .iter()
                .find(|(_, c)| &c.replica == chosen)
                .map(|(_, c)| c.why.trim_start_matches("chosen: ").to_string())
                .unwrap_or_default();
            format!(
                "{chosen} by {strategy} ({why}); {} fallback(s)",
                order.len() - 1
            )
        }
        (None, Some(Blocked::Saturated)) => format!(
            "every replica that could serve is at its utilization ceiling ({:.0}%)",
            policy.utilization_ceiling * 100.0
        ),
        (None, _) if candidates.is_empty() => "no replicas are registered".into(),
        (None, _) => {
            let reasons: Vec<String> = candidates
                .iter()
                .map(|(_, c)| format!("{}: {}", c.replica, c.why))
                .collect();
            format!("no replica can serve: {}", reasons.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(name: &str) -> ReplicaState {
        ReplicaState {
            name: name.into(),
            up: true,
            breaker: Some(BreakerState::Closed),
            capacity: Some(10),
            default_model: Some("small.gguf".into()),
            tier: Tier::Site,
            ..ReplicaState::default()
        }
    }

    fn cloud(name: &str) -> ReplicaState {
        ReplicaState {
            tier: Tier::Cloud,
            cost: 1.0,
            ..replica(name)
        }
    }

    fn policy(strategy: Strategy) -> Policy {
        Policy {
            strategy,
            utilization_ceiling: 0.8,
            max_temperature_c: 85.0,
        }
    }

    fn need(model: Option<&str>) -> Need<'_> {
        Need {
            tool: "text_generate",
            model,
            ..Need::default()
        }
    }

    #[test]
    fn affinity_prefers_the_replica_holding_the_model_even_when_busier() {
        let mut a = replica("a");
        a.outstanding = 3;
        a.loaded_models = vec!["big.gguf".into()];
        let b = replica("b");
        let d = decide(&need(Some("big")), &[b, a], &policy(Strategy::Affinity));
        assert_eq!(d.order, vec!["a", "b"]);
        assert!(d.reason.contains("model loaded"), "{}", d.reason);
        let d = decide(
            &need(Some("big")),
            &[replica("b"), {
                let mut a = replica("a");
                a.outstanding = 3;
                a
            }],
            &policy(Strategy::Affinity),
        );
        assert_eq!(
            d.order,
            vec!["b", "a"],
            "without the model, least busy wins"
        );
    }

    /// Loaded beats stored beats neither; and a model no replica has (the
    /// cluster's registry does) goes to this node's own replica, even when
    /// busier, so it is pulled where the call came in.
    #[test]
    fn affinity_prefers_loaded_then_stored_then_this_node_for_a_pull() {
        let mut stored = replica("stored@n2");
        stored.stored_models = vec!["big.gguf".into()];
        let mut loaded = replica("loaded@n3");
        loaded.loaded_models = vec!["big.gguf".into()];
        loaded.stored_models = vec!["big.gguf".into()];
        loaded.outstanding = 2;
        let mut local = replica("local");
        local.tier = Tier::Node;
        local.outstanding = 1;
        let replicas = [local.clone(), stored.clone(), loaded];
        let d = decide(&need(Some("big")), &replicas, &policy(Strategy::Affinity));
        assert_eq!(d.order, vec!["loaded@n3", "stored@n2", "local"]);
        let d = decide(
            &need(Some("big")),
            &[local.clone(), stored],
            &policy(Strategy::Affinity),
        );
        assert_eq!(d.order, vec!["stored@n2", "local"]);
        assert!(d.reason.contains("model in its store"), "{}", d.reason);

        let elsewhere = replica("idle@n2");
        let d = decide(
            &need(Some("big")),
            &[elsewhere.clone(), local.clone()],
            &policy(Strategy::Affinity),
        );
        assert_eq!(d.order, vec!["local", "idle@n2"]);
        assert!(d.reason.contains("pulled here"), "{}", d.reason);
        // A model some replica has: this node gets no preference.
        let mut other = replica("other@n3");
        other.stored_models = vec!["small.gguf".into()];
        let d = decide(
            &need(Some("small")),
            &[local, elsewhere, other],
            &policy(Strategy::Affinity),
        );
        assert_eq!(d.order, vec!["other@n3", "idle@n2", "local"]);
    }

    #[test]
    fn the_default_model_counts_for_calls_that_name_none() {
        let mut a = replica("a");
        a.loaded_models = vec!["small.gguf".into()];
        a.outstanding = 2;
        let d = decide(&need(None), &[replica("b"), a], &policy(Strategy::Affinity));
        assert_eq!(d.chosen(), Some("a"));
    }

    #[test]
    fn least_outstanding_then_latency() {
        let mut a = replica("a");
        a.outstanding = 2;
        let mut b = replica("b");
        b.outstanding = 1;
        b.latency_ms = Some(50.0);
        let mut c = replica("c");
        c.outstanding = 1;
        c.latency_ms = Some(10.0);
        let d = decide(&need(None), &[a, b, c], &policy(Strategy::LeastOutstanding));
        assert_eq!(d.order, vec!["c", "b", "a"]);
    }

    #[test]
    fn latency_weighs_the_queue() {
        let mut fast_busy = replica("fast");
        fast_busy.latency_ms = Some(10.0);
        fast_busy.outstanding = 5; // expected 60 ms
        let mut slow_idle = replica("slow");
        slow_idle.latency_ms = Some(40.0); // expected 40 ms
        let d = decide(
            &need(None),
            &[fast_busy, slow_idle],
            &policy(Strategy::Latency),
        );
        assert_eq!(d.order, vec!["slow", "fast"]);
    }

    #[test]
    fn guards_take_replicas_out_with_their_reason() {
        let mut down = replica("down");
        down.up = false;
        let mut open = replica("open");
        open.breaker = Some(BreakerState::Open);
        let mut hot = replica("hot");
        hot.temperature_c = Some(91.5);
        let mut draining = replica("draining");
        draining.draining = true;
        let mut full = replica("full");
        full.outstanding = 8;
        let ok = replica("ok");
        let d = decide(
            &need(None),
            &[down, open, hot, draining, full, ok],
            &policy(Strategy::Affinity),
        );
        assert_eq!(d.order, vec!["ok"]);
        let why = |name: &str| {
            d.candidates
                .iter()
                .find(|c| c.replica == name)
                .unwrap()
                .why
                .clone()
        };
        assert!(why("down").starts_with("down"));
        assert!(why("open").contains("breaker"));
        assert!(why("hot").contains("91.5"), "{}", why("hot"));
        assert!(why("draining").contains("draining"));
        assert!(why("full").contains("80%"), "{}", why("full"));
        assert!(why("ok").starts_with("chosen"));
    }

    #[test]
    fn the_ceiling_blocks_as_saturated_and_an_idle_replica_always_has_room() {
        let mut a = replica("a");
        a.capacity = Some(5);
        a.outstanding = 4; // 4/5 = 80%: one more would be 100%
        let d = decide(&need(None), &[a], &policy(Strategy::Affinity));
        assert_eq!(d.blocked, Some(Blocked::Saturated));
        assert!(d.reason.contains("ceiling"), "{}", d.reason);

        let mut tiny = replica("tiny");
        tiny.capacity = Some(1);
        let d = decide(&need(None), &[tiny], &policy(Strategy::Affinity));
        assert_eq!(d.chosen(), Some("tiny"), "capacity 1 still takes one call");
    }

    #[test]
    fn load_from_other_clients_adds_to_ours() {
        let mut a = replica("a");
        a.outstanding = 1;
        a.external_busy = 7;
        let b = replica("b");
        let d = decide(&need(None), &[a, b], &policy(Strategy::LeastOutstanding));
        assert_eq!(d.order, vec!["b"]);
    }

    #[test]
    fn a_replica_without_room_for_the_model_is_skipped_unless_it_holds_it() {
        let mut a = replica("a");
        a.loadable_bytes = Some(100 << 20);
        let mut b = replica("b");
        b.loadable_bytes = Some(100 << 20);
        b.loaded_models = vec!["big.gguf".into()];
        let need = Need {
            tool: "text_generate",
            model: Some("big.gguf"),
            model_bytes: Some(500 << 20),
            ..Need::default()
        };
        let d = decide(&need, &[a, b], &policy(Strategy::LeastOutstanding));
        assert_eq!(d.order, vec!["b"]);
    }

    #[test]
    fn nothing_available_says_why_for_each() {
        let mut a = replica("a");
        a.up = false;
        let d = decide(&need(None), &[a], &policy(Strategy::Affinity));
        assert_eq!(d.blocked, Some(Blocked::NoneAvailable));
        assert!(d.reason.contains("a: down"), "{}", d.reason);
        let d = decide(&need(None), &[], &policy(Strategy::Affinity));
        assert_eq!(d.reason, "no replicas are registered");
    }

    fn full(mut replica: ReplicaState) -> ReplicaState {
        replica.capacity = Some(1);
        replica.outstanding = 1;
        replica
    }

    #[test]
    fn the_cloud_serves_only_what_the_site_cannot_take() {
        let mut idle_cloud = cloud("compute@cloud.c1");
        idle_cloud.latency_ms = Some(1.0);
        let mut busy_site = replica("compute@n2");
        busy_site.outstanding = 5;
        busy_site.latency_ms = Some(500.0);
        let d = decide(
            &need(None),
            &[idle_cloud.clone(), busy_site.clone()],
            &policy(Strategy::Latency),
        );
        assert_eq!(d.order, vec!["compute@n2", "compute@cloud.c1"]);
        assert_eq!(d.tier, Some(Tier::Site));

        let d = decide(
            &need(None),
            &[idle_cloud.clone(), full(busy_site)],
            &policy(Strategy::Affinity),
        );
        assert_eq!(d.order, vec!["compute@cloud.c1"]);
        assert_eq!(d.tier, Some(Tier::Cloud));
        assert!(
            d.reason
                .contains("to the cloud: 1 of the site's 1 replica(s) at the utilization ceiling"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn edge_only_and_a_spent_budget_keep_a_call_off_the_cloud() {
        let site = full(replica("compute@n2"));
        let mut edge_only = need(None);
        edge_only.egress.edge_only = Some("edge_only by the request".into());
        let d = decide(
            &edge_only,
            &[cloud("c"), site.clone()],
            &policy(Strategy::Affinity),
        );
        assert_eq!(d.blocked, Some(Blocked::Saturated), "waits for the site");
        let why = &d.candidates[0].why;
        assert!(why.contains("edge_only by the request"), "{why}");

        let mut broke = need(None);
        broke.egress.budget = Some(crate::egress::Budget {
            limit: 3.0,
            spent: 2.5,
        });
        let d = decide(&broke, &[cloud("c"), site], &policy(Strategy::Affinity));
        assert_eq!(d.blocked, Some(Blocked::Saturated));
        assert!(
            d.candidates[0].why.contains("budget is spent"),
            "{}",
            d.candidates[0].why
        );
    }

    #[test]
    fn a_site_past_the_latency_target_or_without_the_model_yields_to_the_cloud() {
        let mut slow = replica("compute@n2");
        slow.latency_ms = Some(400.0);
        slow.outstanding = 2; // expected wait 1200 ms
        let mut target = need(None);
        target.egress.latency_target_ms = Some(1_000.0);
        let d = decide(
            &target,
            &[slow.clone(), cloud("c")],
            &policy(Strategy::Affinity),
        );
        assert_eq!(d.order, vec!["c", "compute@n2"]);
        assert!(
            d.reason.contains("past its latency target (1000 ms)"),
            "{}",
            d.reason
        );
        target.egress.latency_target_ms = Some(2_000.0);
        let d = decide(
            &target,
            &[slow.clone(), cloud("c")],
            &policy(Strategy::Affinity),
        );
        assert_eq!(d.chosen(), Some("compute@n2"));

        let mut holder = cloud("c");
        holder.loaded_models = vec!["big.gguf".into()];
        let mut local = replica("local");
        local.tier = Tier::Node;
        let d = decide(
            &need(Some("big")),
            &[local, slow, holder],
            &policy(Strategy::Affinity),
        );
        assert_eq!(d.chosen(), Some("c"));
        assert!(
            d.reason.contains("only the cloud has the model"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn a_provider_takes_only_the_models_it_maps() {
        let mut provider = cloud("openai");
        provider.fixed_models = true;
        provider.loaded_models = vec!["cloud-mini".into()];
        provider.default_model = Some(String::new());
        let mut local = replica("local");
        local.tier = Tier::Node;
        let d = decide(
            &need(Some("cloud-mini")),
            &[local.clone(), provider.clone()],
            &policy(Strategy::Affinity),
        );
        assert_eq!(d.order, vec!["openai", "local"], "only it has the model");
        // The site at its ceiling: still not the provider, which lacks the model.
        for model in [Some("small"), None] {
            let d = decide(
                &need(model),
                &[full(local.clone()), provider.clone()],
                &policy(Strategy::Affinity),
            );
            assert_eq!(d.chosen(), None, "{model:?}");
            let why = &d.candidates[1].why;
            assert!(why.contains("serves only the models it maps"), "{why}");
        }
        provider.default_model = Some("cloud-mini".into());
        let d = decide(
            &need(None),
            &[full(local), provider],
            &policy(Strategy::Affinity),
        );
        assert_eq!(
            d.chosen(),
            Some("openai"),
            "its default serves calls naming none"
        );
    }
}
