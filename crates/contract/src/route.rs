//! The route record: where a call ran, one hop per router it passed
//! (a gateway's fleet, a node of the cluster, a replica), in the result's
//! `_meta`. Each router appends its hop as the result passes back, so the
//! last hop is the one nearest the client and the first the one nearest the
//! server that ran the call.

use rmcp::model::MetaObject;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `_meta` key under which a routed result says where it ran.
pub const ROUTE_META_KEY: &str = "jetsonmind/route";

/// One router's part of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    /// The backend (fleet) that routed the call.
    pub backend: String,
    /// The replica it chose.
    pub replica: String,
    /// The cluster node that replica runs on (none on a single device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Replicas tried, the last one answering.
    pub attempts: usize,
    /// How far from the router the replica was.
    #[serde(default)]
    pub tier: Tier,
}

/// How far a call went: the router's own node, another node of its site
/// (edge cluster), or the cloud (a cloud node or a provider). Ordered from
/// near to far.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    #[default]
    Node,
    Site,
    Cloud,
}

impl Tier {
    /// Whether a call served here has left the site.
    pub fn is_cloud(self) -> bool {
        self == Tier::Cloud
    }
}

/// Append `hop` to the route in `meta`.
pub fn append(meta: &mut MetaObject, hop: &Hop) {
    let hop = serde_json::to_value(hop).unwrap_or(Value::Null);
    let route = meta
        .0
        .entry(ROUTE_META_KEY.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    match route {
        Value::Array(hops) => hops.push(hop),
        // A server that records one hop as an object: keep it as the first.
        earlier => *earlier = Value::Array(vec![earlier.take(), hop]),
    }
}

/// The hops recorded in `meta`, first to last; those that do not read as
/// hops are left out.
pub fn hops(meta: &MetaObject) -> Vec<Hop> {
    match meta.0.get(ROUTE_META_KEY) {
        Some(Value::Array(hops)) => hops
            .iter()
            .filter_map(|hop| serde_json::from_value(hop.clone()).ok())
            .collect(),
        Some(hop) => serde_json::from_value(hop.clone()).into_iter().collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(backend: &str, node: Option<&str>) -> Hop {
        Hop {
            backend: backend.into(),
            replica: format!("{backend}-1"),
            node: node.map(str::to_string),
            attempts: 1,
            tier: Tier::Node,
        }
    }

    #[test]
    fn each_router_appends_its_hop() {
        let mut meta = MetaObject::new();
        append(&mut meta, &hop("compute", Some("n3")));
        append(&mut meta, &hop("edge", None));
        assert_eq!(
            hops(&meta),
            vec![hop("compute", Some("n3")), hop("edge", None)]
        );
    }

    #[test]
    fn a_single_hop_object_becomes_the_first_hop() {
        let mut meta = MetaObject::new();
        meta.0.insert(
            ROUTE_META_KEY.into(),
            serde_json::to_value(hop("old", None)).unwrap(),
        );
        append(&mut meta, &hop("new", None));
        assert_eq!(hops(&meta), vec![hop("old", None), hop("new", None)]);
    }
}
