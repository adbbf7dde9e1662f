//! What may leave the site: the hybrid tier's policy for one call.
//!
//! Four layers decide it: the default (`[hybrid.egress]`), the tool's
//! (`[hybrid.tools.<tool>]`), the caller's API key (`[hybrid.keys.<id>]`) and
//! the request's own `_meta["jetsonmind/egress"]`. They combine strictly: a
//! call stays at the edge if any layer says so, the lowest latency target
//! wins, and a request can narrow what its key allows but never widen it.
//! The key's budget (or the default's) caps what its cloud calls cost per
//! period. In a cluster, spending is counted in the cluster's KV
//! ([`SharedSpending`]), so a budget holds across the site's nodes; alone, or
//! while the site's NATS cannot be reached, each node counts what it spent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use jetsonmind_core::auth::Principal;
use jetsonmind_core::rmcp::model::RequestMetaObject;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{EgressRule, HybridConfig};

/// The `_meta` key a request narrows its egress with.
pub const EGRESS_META_KEY: &str = "jetsonmind/egress";

/// What a request asks of its own routing (`_meta["jetsonmind/egress"]`,
/// or `route_request`'s `egress`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressRequest {
    /// Never serve this call outside the site.
    #[serde(default)]
    pub edge_only: bool,
    /// Go to the cloud when every site replica would make it wait longer.
    #[serde(default)]
    pub latency_target_ms: Option<u64>,
}

/// Pass the request's egress (only that: the rest of a client's `_meta` is
/// the forwarder's to set) from the `_meta` of a call received to the call
/// forwarded for it.
pub fn carry(received: &RequestMetaObject, forwarded: &mut Option<RequestMetaObject>) {
    if let Some(egress) = received.0.0.get(EGRESS_META_KEY) {
        let meta = forwarded.get_or_insert_with(Default::default);
        meta.0.0.insert(EGRESS_META_KEY.into(), egress.clone());
    }
}

impl EgressRequest {
    /// The request's egress from `meta`; an unreadable one is an error (a
    /// caller that asked for `edge_only` must not be served in the cloud
    /// because of a typo).
    pub fn from_meta(meta: Option<&RequestMetaObject>) -> Result<Option<Self>, String> {
        let Some(value) = meta.and_then(|m| m.0.0.get(EGRESS_META_KEY)) else {
            return Ok(None);
        };
        serde_json::from_value(value.clone())
            .map(Some)
            .map_err(|e| format!("_meta[\"{EGRESS_META_KEY}\"]: {e}"))
    }
}

/// A call's egress, all layers combined.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Egress {
    /// Why it must stay at the edge, when it must.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_only: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_target_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// A caller's budget for the cloud this period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Budget {
    pub limit: f64,
    pub spent: f64,
}

impl Budget {
    /// Whether a call costing `cost` still fits.
    pub fn allows(&self, cost: f64) -> bool {
        self.spent + cost <= self.limit
    }
}

/// The egress rules of one site, and what each caller spent.
#[derive(Default)]
pub struct EgressRules {
    hybrid: HybridConfig,
    /// What each caller spent this period, as last known here.
    spent: Mutex<HashMap<String, Spent>>,
    /// Where the site's nodes count together, once this node joins a cluster.
    shared: OnceLock<Arc<dyn SharedSpending>>,
}

impl std::fmt::Debug for EgressRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressRules")
            .field("hybrid", &self.hybrid)
            .field("shared", &self.shared.get().is_some())
            .finish()
    }
}

/// What a charge found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Charge {
    /// Charged: the caller's total for the period after it.
    Charged(f64),
    /// Refused, the limit would be passed: the total as it stands.
    Refused(f64),
}

/// Where the nodes of a site keep, together, what each caller spent in the
/// cloud per period (the cluster's KV).
pub trait SharedSpending: Send + Sync {
    /// Add `cost` to what `caller` (a principal id) spent in `period`,
    /// unless that would pass `limit`; atomically across the nodes.
    fn add<'a>(
        &'a self,
        caller: &'a str,
        period: u64,
        cost: f64,
        limit: Option<f64>,
    ) -> BoxFuture<'a, Result<Charge, String>>;
}

#[derive(Debug, Clone, Copy)]
struct Spent {
    period: u64,
    amount: f64,
}

impl EgressRules {
    pub fn new(hybrid: &HybridConfig) -> Self {
        Self {
            hybrid: hybrid.clone(),
            spent: Mutex::default(),
            shared: OnceLock::new(),
        }
    }

    /// Count spending with the site's other nodes from now on. Only the
    /// first call counts.
    pub fn share_spending(&self, shared: Arc<dyn SharedSpending>) {
        let _ = self.shared.set(shared);
    }

    /// The budget period (`hybrid.budget_period_s`).
    pub fn budget_period_s(&self) -> u64 {
        self.hybrid.budget_period_s
    }

    /// What a cloud call costs.
    pub fn cloud_call_cost(&self) -> f64 {
        self.hybrid.cloud_call_cost
    }

    /// `caller`'s call of `tool`, asking `request`: the layers combined.
    pub fn resolve(
        &self,
        caller: &Principal,
        tool: &str,
        request: Option<&EgressRequest>,
    ) -> Egress {
        let key = self.key_rule(caller);
        let layers = [
            ("the site's default", Some(&self.hybrid.egress)),
            ("the tool's policy", self.hybrid.tools.get(tool)),
            ("the caller's key policy", key),
        ];
        let mut edge_only = layers
            .iter()
            .find(|(_, rule)| rule.and_then(|r| r.edge_only) == Some(true))
            .map(|(layer, _)| format!("edge_only by {layer}"));
        if edge_only.is_none() && request.is_some_and(|r| r.edge_only) {
            edge_only = Some("edge_only by the request".into());
        }
        let latency_target_ms = layers
            .iter()
            .filter_map(|(_, rule)| rule.and_then(|r| r.latency_target_ms))
            .chain(request.and_then(|r| r.latency_target_ms))
            .min()
            .map(|ms| ms as f64);
        let budget = key
            .and_then(|r| r.budget)
            .or(self.hybrid.egress.budget)
            .map(|limit| Budget {
                limit,
                spent: self.spent(caller),
            });
        Egress {
            edge_only,
            latency_target_ms,
            budget,
        }
    }

    /// Charge `caller` for one cloud call, if its budget allows it; false
    /// when it does not (then the call must not go to the cloud). Counted
    /// with the site's other nodes when it can be, else here alone.
    pub async fn charge(&self, caller: &Principal, cost: f64) -> bool {
        let limit = self
            .key_rule(caller)
            .and_then(|r| r.budget)
            .or(self.hybrid.egress.budget);
        let period = self.period_now();
        if let Some(shared) = self.shared.get() {
            match shared.add(&caller.id, period, cost, limit).await {
                Ok(Charge::Charged(total)) => return self.learn(caller, period, total, true),
                Ok(Charge::Refused(total)) => return self.learn(caller, period, total, false),
                Err(error) => tracing::warn!(
                    %error,
                    "cannot count cloud spending with the site's nodes; this node counts alone"
                ),
            }
        }
        self.charge_here(caller, period, cost, limit)
    }

    /// Remember the total the site counted; `charged` passes through.
    fn learn(&self, caller: &Principal, period: u64, total: f64, charged: bool) -> bool {
        let mut spent = self.spent.lock().expect("spending lock");
        spent.insert(
            caller.id.clone(),
            Spent {
                period,
                amount: total,
            },
        );
        charged
    }

    fn charge_here(&self, caller: &Principal, period: u64, cost: f64, limit: Option<f64>) -> bool {
        let mut spent = self.spent.lock().expect("spending lock");
        let entry = spent.entry(caller.id.clone()).or_insert(Spent {
            period,
            amount: 0.0,
        });
        if entry.period != period {
            *entry = Spent {
                period,
                amount: 0.0,
            };
        }
        if limit.is_some_and(|limit| entry.amount + cost > limit) {
            return false;
        }
        entry.amount += cost;
        true
    }

    /// What `caller` spent this period.
    pub fn spent(&self, caller: &Principal) -> f64 {
        let period = self.period_now();
        let spent = self.spent.lock().expect("spending lock");
        spent
            .get(&caller.id)
            .filter(|s| s.period == period)
            .map_or(0.0, |s| s.amount)
    }

    /// The rule for `caller`'s key: by key id (`key:ID` or `ID`), or by
    /// the principal's whole id (an OAuth subject).
    fn key_rule(&self, caller: &Principal) -> Option<&EgressRule> {
        let bare = caller.id.strip_prefix("key:").unwrap_or(&caller.id);
        self.hybrid
            .keys
            .get(bare)
            .or_else(|| self.hybrid.keys.get(&caller.id))
    }

    fn period_now(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        now / self.hybrid.budget_period_s.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsonmind_core::auth::Scopes;

    fn caller(id: &str) -> Principal {
        Principal::api_key(id.strip_prefix("key:").unwrap(), id, Scopes::all())
    }

    fn rule(edge_only: Option<bool>, latency: Option<u64>, budget: Option<f64>) -> EgressRule {
        EgressRule {
            edge_only,
            latency_target_ms: latency,
            budget,
        }
    }

    fn rules() -> EgressRules {
        let mut hybrid = HybridConfig {
            hub_domain: "hub".into(),
            ..HybridConfig::default()
        };
        hybrid.egress = rule(None, Some(800), None);
        hybrid
            .tools
            .insert("code_complete".into(), rule(Some(true), None, None));
        hybrid
            .keys
            .insert("k1".into(), rule(Some(false), Some(300), Some(2.0)));
        EgressRules::new(&hybrid)
    }

    #[test]
    fn the_strictest_layer_wins_and_a_request_only_narrows() {
        let rules = rules();
        let k1 = caller("key:k1");
        let plain = rules.resolve(&k1, "text_generate", None);
        assert_eq!(plain.edge_only, None);
        assert_eq!(plain.latency_target_ms, Some(300.0), "the key's is lower");
        // The key says edge_only = false; the tool's true still holds.
        let code = rules.resolve(&k1, "code_complete", None);
        assert!(code.edge_only.unwrap().contains("tool"));
        let asked = EgressRequest {
            edge_only: true,
            latency_target_ms: Some(5_000),
        };
        let narrowed = rules.resolve(&k1, "text_generate", Some(&asked));
        assert!(narrowed.edge_only.unwrap().contains("request"));
        assert_eq!(narrowed.latency_target_ms, Some(300.0), "never widened");
        let other = rules.resolve(&caller("key:k2"), "text_generate", None);
        assert_eq!(other.latency_target_ms, Some(800.0));
        assert_eq!(other.budget, None, "no budget: unlimited");
    }

    #[tokio::test]
    async fn a_budget_is_charged_per_caller_until_spent() {
        let rules = rules();
        let k1 = caller("key:k1");
        assert!(rules.charge(&k1, 1.5).await);
        assert!(!rules.charge(&k1, 1.0).await, "1.5 + 1.0 > 2.0");
        assert!(rules.charge(&k1, 0.5).await);
        let budget = rules.resolve(&k1, "text_generate", None).budget.unwrap();
        assert_eq!((budget.spent, budget.limit), (2.0, 2.0));
        assert!(!budget.allows(0.1));
        assert!(
            rules.charge(&caller("key:k2"), 100.0).await,
            "k2 has no budget"
        );
    }

    #[test]
    fn an_unreadable_request_is_an_error_not_ignored() {
        let mut meta = RequestMetaObject::default();
        meta.0.0.insert(
            EGRESS_META_KEY.into(),
            serde_json::json!({"edge_ony": true}),
        );
        let error = EgressRequest::from_meta(Some(&meta)).unwrap_err();
        assert!(error.contains("edge_ony"), "{error}");
        meta.0.0.insert(
            EGRESS_META_KEY.into(),
            serde_json::json!({"edge_only": true}),
        );
        assert!(
            EgressRequest::from_meta(Some(&meta))
                .unwrap()
                .unwrap()
                .edge_only
        );
        assert_eq!(EgressRequest::from_meta(None), Ok(None));
    }
}
