//! Placements across a cluster: how many replicas of a model should run
//! and by which strategy, and which nodes are drained. `scale_cluster`
//! asks for them; the cluster keeps them and every node reconciles (the
//! cluster-state crate implements [`ClusterPlacement`] on JetStream).

use std::future::Future;
use std::pin::Pin;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How the nodes for a model's replicas are chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlacementStrategy {
    /// One replica per node, on the nodes with the fewest models.
    #[default]
    Spread,
    /// Onto the nodes already running the most models, keeping others free.
    Pack,
    /// By the device: nodes under the temperature limit first, then by free
    /// memory, then by temperature headroom, then by power mode (the
    /// highest-power mode first).
    Hardware,
}

/// The desired replicas of one model across the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub model: String,
    pub replicas: usize,
    #[serde(default)]
    pub strategy: PlacementStrategy,
}

/// A placement error, as the caller sees it.
pub type PlacementError = String;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The cluster's placements, as `scale_cluster` changes and shows them.
pub trait ClusterPlacement: Send + Sync {
    /// Keep `placement.replicas` replicas of its model (0 removes it).
    fn place(&self, placement: Placement) -> BoxFuture<'_, Result<(), PlacementError>>;
    /// Drain `node` (it takes no new calls, its placements move) or bring
    /// it back.
    fn drain(&self, node: String, drained: bool) -> BoxFuture<'_, Result<(), PlacementError>>;
    /// The placements, where each is placed and runs, and the drained nodes.
    fn status(&self) -> BoxFuture<'_, Result<serde_json::Value, PlacementError>>;
}
