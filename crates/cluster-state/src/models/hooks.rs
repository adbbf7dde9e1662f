//! The cluster's models for servers that know nothing of NATS: the data
//! server's [`ModelDistribution`] (publish, and what the cluster holds
//! where) and compute's [`ModelSource`] (pull what a call needs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use jetsonmind_cluster::View;
use jetsonmind_compute::models::ModelSource;
use jetsonmind_contract::replica::ReplicaReport;
use jetsonmind_data::distribution::{BoxFuture, ModelDistribution, TransferCallback};
use jetsonmind_store::ModelStore;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::{ClusterModels, ModelEntry, check_key};
use crate::StateError;

/// This node's side of the cluster's models: its store, and the
/// membership view that says which node holds and runs what.
pub struct ModelHooks {
    models: ClusterModels,
    store: Arc<ModelStore>,
    view: watch::Receiver<View>,
    /// One pull per model at a time: calls that need the same model wait
    /// for that pull instead of downloading it again.
    pulling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A model of the cluster, and where it is.
#[derive(Debug, Clone, Serialize)]
pub struct Placed {
    #[serde(flatten)]
    pub entry: ModelEntry,
    /// The live nodes whose store holds it.
    pub held_by: Vec<String>,
    /// The live nodes that have it loaded.
    pub loaded_by: Vec<String>,
}

impl ModelHooks {
    pub fn new(models: ClusterModels, store: Arc<ModelStore>, view: watch::Receiver<View>) -> Self {
        Self {
            models,
            store,
            view,
            pulling: Mutex::default(),
        }
    }

    /// Every model of the registry with the nodes that hold and run it.
    pub async fn placed(&self) -> Result<Vec<Placed>, StateError> {
        let (held, loaded) = where_models_are(&self.view.borrow());
        let nodes = |of: &BTreeMap<String, BTreeSet<String>>, model: &str| -> Vec<String> {
            of.get(model).into_iter().flatten().cloned().collect()
        };
        Ok(self
            .models
            .list()
            .await?
            .into_iter()
            .map(|entry| Placed {
                held_by: nodes(&held, &entry.name),
                loaded_by: nodes(&loaded, &entry.name),
                entry,
            })
            .collect())
    }

    /// Pull `name` unless the store has it: whether the cluster had it.
    async fn pull_once(
        &self,
        name: String,
        progress: TransferCallback,
    ) -> Result<bool, StateError> {
        if check_key(&name).is_err() || self.models.entry(&name).await?.is_none() {
            return Ok(false);
        }
        let lock = self.pull_lock(&name);
        let _pulling = lock.lock().await;
        if self.store.get(&name).is_ok() {
            return Ok(true);
        }
        self.models.pull(&self.store, &name, progress).await?;
        Ok(true)
    }

    fn pull_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut pulling = self.pulling.lock().unwrap_or_else(|p| p.into_inner());
        pulling.entry(name.to_string()).or_default().clone()
    }
}

/// Which live nodes hold each model in their store, and which have it
/// loaded, from the compute reports in their heartbeats.
fn where_models_are(
    view: &View,
) -> (
    BTreeMap<String, BTreeSet<String>>,
    BTreeMap<String, BTreeSet<String>>,
) {
    let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut loaded: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (node, status) in view {
        let replicas = status.replicas.as_array().into_iter().flatten();
        let reports = replicas.filter_map(|replica| {
            serde_json::from_value::<ReplicaReport>(replica.get("report")?.clone()).ok()
        });
        for report in reports {
            let stored = report
                .model_bytes
                .keys()
                .chain(report.unusable_models.keys());
            for model in stored {
                held.entry(model.clone()).or_default().insert(node.clone());
            }
            for model in &report.loaded {
                let nodes = loaded.entry(model.name.clone()).or_default();
                nodes.insert(node.clone());
            }
        }
    }
    (held, loaded)
}

fn json(value: impl Serialize) -> Result<Value, String> {
    serde_json::to_value(value).map_err(|e| e.to_string())
}

impl ModelDistribution for ModelHooks {
    fn publish(
        &self,
        name: String,
        progress: TransferCallback,
    ) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(async move {
            let entry = self.models.publish(&self.store, &name, progress).await;
            json(entry.map_err(|e| e.to_string())?)
        })
    }

    fn unpublish(&self, name: String) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(async move {
            json(
                self.models
                    .unpublish(&name)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        })
    }

    fn available(&self) -> BoxFuture<'_, Result<Value, String>> {
        Box::pin(async move {
            let models = self.placed().await.map_err(|e| e.to_string())?;
            Ok(serde_json::json!({ "name": self.models.cluster(), "models": json(models)? }))
        })
    }
}

impl ModelSource for ModelHooks {
    fn fetch(
        &self,
        name: String,
        progress: TransferCallback,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send + '_>> {
        Box::pin(async move {
            self.pull_once(name, progress)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsonmind_cluster::NodeStatus;
    use jetsonmind_contract::replica::LoadedModel;

    fn node(name: &str, stored: &[&str], loaded: &[&str]) -> (String, NodeStatus) {
        let report = ReplicaReport {
            model_bytes: stored.iter().map(|m| (m.to_string(), 1)).collect(),
            loaded: loaded
                .iter()
                .map(|m| LoadedModel {
                    name: m.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        // From JSON, as heartbeats arrive: fields added later take their defaults.
        let status: NodeStatus = serde_json::from_value(serde_json::json!({
            "node": name,
            "version": "",
            "servers": [],
            "shared": [],
            "started_unix": 0,
            "heartbeat_unix": 0,
            "replicas": [{ "name": "compute-local", "report": report }],
        }))
        .unwrap();
        (name.into(), status)
    }

    #[test]
    fn holders_and_runners_come_from_the_heartbeats() {
        let view: View = [
            node("n1", &["a.gguf", "b.gguf"], &["a.gguf"]),
            node("n2", &["b.gguf"], &["b.gguf"]),
            ("n3".to_string(), node("n3", &[], &[]).1),
        ]
        .into_iter()
        .collect();
        let (held, loaded) = where_models_are(&view);
        let names = |nodes: &BTreeSet<String>| nodes.iter().cloned().collect::<Vec<_>>();
        assert_eq!(names(&held["a.gguf"]), ["n1"]);
        assert_eq!(names(&held["b.gguf"]), ["n1", "n2"]);
        assert_eq!(names(&loaded["b.gguf"]), ["n2"]);
        assert!(!held.contains_key("c.gguf"));
    }
}
