//! A caller's cloud budget holds across a site's nodes: charges made at two
//! nodes at once, over a real nats-server, never pass the budget together.

use crate::support;

use std::sync::Arc;

use jetsonmind_cluster_state::spending::ClusterSpending;
use jetsonmind_control::config::{EgressRule, HybridConfig};
use jetsonmind_control::egress::EgressRules;
use jetsonmind_core::auth::{Principal, Scopes};
use support::{NatsServer, connect, node_config, within};

const PERIOD_S: u64 = 3_600;

/// A node's egress rules (caller `k1`'s budget: `budget`), counting with the
/// cluster on `server`.
async fn node_rules(server: &NatsServer, node: &str, budget: f64) -> Arc<EgressRules> {
    let mut hybrid = HybridConfig {
        budget_period_s: PERIOD_S,
        ..HybridConfig::default()
    };
    let rule = EgressRule {
        budget: Some(budget),
        ..EgressRule::default()
    };
    hybrid.keys.insert("k1".into(), rule);
    let rules = Arc::new(EgressRules::new(&hybrid));
    let bus = connect(&node_config(server, node)).await;
    let spending = within("the spending bucket", ClusterSpending::open(&bus, PERIOD_S))
        .await
        .expect("the spending bucket");
    rules.share_spending(Arc::new(spending));
    rules
}

#[tokio::test]
async fn a_budget_holds_across_nodes_charging_at_once() {
    let server = NatsServer::start();
    let (a, b) = (
        node_rules(&server, "a", 5.0).await,
        node_rules(&server, "b", 5.0).await,
    );
    let caller = Principal::api_key("k1", "ci", Scopes::all());
    let charges = (0..12).map(|i| {
        let (rules, caller) = (
            if i % 2 == 0 { a.clone() } else { b.clone() },
            caller.clone(),
        );
        async move { rules.charge(&caller, 1.0).await }
    });
    let charged = within("charging", futures::future::join_all(charges)).await;
    assert_eq!(
        charged.iter().filter(|c| **c).count(),
        5,
        "twelve calls of cost 1 at two nodes, budget 5: {charged:?}"
    );
    // Each node learned the site's total with its last charge.
    assert!(!a.charge(&caller, 1.0).await && !b.charge(&caller, 1.0).await);
    assert_eq!(a.spent(&caller), 5.0);
    assert_eq!(b.spent(&caller), 5.0);
    let other = Principal::api_key("k2", "other", Scopes::all());
    assert!(a.charge(&other, 100.0).await, "k2 has no budget");
}
