//! The hybrid tier: an edge site whose NATS servers are leaf nodes of a
//! cloud hub. The site keeps working alone; the hub adds cloud replicas
//! (routed to by policy) and holds a backup of the site's state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use jetsonmind_core::config::{Section, is_subject_token};
use jetsonmind_core::{Config, CoreError};

mod providers;
pub use providers::ProviderConfig;

/// Off (no cloud tier) while `hub_domain` is empty.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HybridConfig {
    /// The JetStream domain of the cloud hub this site's NATS servers are
    /// leaf nodes of; empty: no cloud tier.
    pub hub_domain: String,
    /// The cluster name the cloud nodes join at the hub: their replicas
    /// serve every site.
    pub cloud_cluster: String,
    /// Back this site's streams and buckets up to the hub (the hub sources
    /// them, so what is written while the uplink is down arrives later).
    pub backup: bool,
    /// Also back up the model files (the Object Store), not only the
    /// registry that names them.
    pub backup_model_files: bool,
    /// Copies the hub keeps of each backup (its own NATS servers, 1 to 5).
    pub backup_replicas: usize,
    /// What one call served in the cloud costs, in the budgets' units.
    pub cloud_call_cost: f64,
    /// A budget's period: spending starts again at each multiple of it
    /// (since the Unix epoch).
    pub budget_period_s: u64,
    /// What may leave the site when no key, tool or request says otherwise.
    pub egress: EgressRule,
    /// Per tool (the tool's own name, as compute offers it).
    pub tools: BTreeMap<String, EgressRule>,
    /// Per API key id (as `jetsonmind keys list` shows it).
    pub keys: BTreeMap<String, EgressRule>,
    /// OpenAI-compatible endpoints serving compute's text tools as replicas
    /// of the cloud tier (no hub needed).
    pub providers: Vec<ProviderConfig>,
}

impl Default for HybridConfig {
    fn default() -> Self {
        Self {
            hub_domain: String::new(),
            cloud_cluster: "cloud".into(),
            backup: true,
            backup_model_files: false,
            backup_replicas: 1,
            cloud_call_cost: 1.0,
            budget_period_s: 86_400,
            egress: EgressRule::default(),
            tools: BTreeMap::new(),
            keys: BTreeMap::new(),
            providers: Vec::new(),
        }
    }
}

/// One layer of the egress policy. Layers combine strictly: a call stays at
/// the edge if any layer (the default, its tool, its key, its request) says
/// so, the lowest latency target wins, and the key's budget is the budget.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EgressRule {
    /// Never served outside the site.
    pub edge_only: Option<bool>,
    /// Send to the cloud when every site replica would make the call wait
    /// longer than this (expected queueing, from recent latencies).
    pub latency_target_ms: Option<u64>,
    /// Most spent in the cloud per period (`budget_period_s`); 0 allows
    /// nothing, none is unlimited.
    pub budget: Option<f64>,
}

impl HybridConfig {
    /// Whether this site reaches a cloud hub.
    pub fn enabled(&self) -> bool {
        !self.hub_domain.is_empty()
    }

    fn check(&self) -> Result<(), CoreError> {
        let fail = |msg: String| Err(CoreError::Config(format!("hybrid.{msg}")));
        if self.enabled() && !is_subject_token(&self.hub_domain) {
            return fail(format!(
                "hub_domain `{}`: use letters, digits, `-` and `_` only",
                self.hub_domain
            ));
        }
        if !is_subject_token(&self.cloud_cluster) {
            return fail(format!(
                "cloud_cluster `{}`: use letters, digits, `-` and `_` only",
                self.cloud_cluster
            ));
        }
        if !(self.cloud_call_cost >= 0.0 && self.cloud_call_cost.is_finite()) {
            return fail("cloud_call_cost must be a finite number >= 0".into());
        }
        if self.budget_period_s == 0 {
            return fail("budget_period_s must be at least 1".into());
        }
        if !(1..=5).contains(&self.backup_replicas) {
            return fail("backup_replicas must be 1 to 5".into());
        }
        providers::validate(&self.providers)
            .map_err(|e| CoreError::Config(format!("hybrid.{e}")))?;
        let rules = std::iter::once(("egress".to_string(), &self.egress))
            .chain(self.tools.iter().map(|(t, r)| (format!("tools.{t}"), r)))
            .chain(self.keys.iter().map(|(k, r)| (format!("keys.{k}"), r)));
        for (at, rule) in rules {
            if rule.budget.is_some_and(|b| !(b >= 0.0 && b.is_finite())) {
                return fail(format!("{at}.budget must be a finite number >= 0"));
            }
        }
        Ok(())
    }
}

impl Section for HybridConfig {
    const NAME: &'static str = "hybrid";
    // Where calls and backups may go beyond the site.
    const TRUST_KEYS: &'static [&'static str] = &["hybrid"];

    fn validate(&self, config: &Config) -> Result<(), CoreError> {
        if self.enabled() && !config.cluster.enabled() {
            return Err(CoreError::Config(
                "hybrid.hub_domain needs a cluster (cluster.urls, `serve --cluster`)".into(),
            ));
        }
        self.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<Config, CoreError> {
        jetsonmind_testkit::config_with::<HybridConfig>(env)
    }

    #[test]
    fn a_cloud_tier_needs_a_cluster_and_sane_budgets() {
        let hub = ("JETSONMIND_HYBRID__HUB_DOMAIN", "hub");
        let err = load(&[hub]).unwrap_err();
        assert!(err.to_string().contains("needs a cluster"), "{err}");
        let cluster = ("JETSONMIND_CLUSTER__URLS", "[\"nats://127.0.0.1:4222\"]");
        let config = load(&[cluster, hub]).unwrap();
        assert!(config.section::<HybridConfig>().enabled());
        let mut bad = config.clone();
        bad.section_mut::<HybridConfig>().keys.insert(
            "k1".into(),
            EgressRule {
                budget: Some(-1.0),
                ..Default::default()
            },
        );
        let err = bad.validate().unwrap_err();
        assert!(err.to_string().contains("hybrid.keys.k1.budget"), "{err}");
    }
}
