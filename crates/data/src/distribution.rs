//! The cluster's models as the data server offers them: publishing a model
//! of this node's store to the cluster, and what the cluster holds. Set once
//! the node joins a cluster (the cluster-state crate implements it on
//! JetStream); on one device there is none.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub use jetsonmind_core::upstream::forward::TransferCallback;

/// The cluster's model registry and files, as this node uses them. Errors
/// are the message the caller sees.
pub trait ModelDistribution: Send + Sync {
    /// Publish the store's model `name` to the cluster: its files uploaded
    /// and checked, then its registry entry (returned) written.
    fn publish(
        &self,
        name: String,
        progress: TransferCallback,
    ) -> BoxFuture<'_, Result<Value, String>>;

    /// Take `name` out of the cluster's registry (files no other model
    /// shares go too): the entry it had.
    fn unpublish(&self, name: String) -> BoxFuture<'_, Result<Value, String>>;

    /// The cluster's models, each with the nodes that hold it in their store
    /// and those that have it loaded.
    fn available(&self) -> BoxFuture<'_, Result<Value, String>>;
}
