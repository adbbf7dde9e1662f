//! API keys shared by the cluster: a KV bucket holds each key's id, name,
//! scopes and hash (never the key), and every node mirrors it into its own
//! key file, which its gateway reads on each request.
//!
//! Revoking deletes the key's entry; the delete marker stays in the bucket,
//! so a node that was away when a key was revoked cannot bring the key back
//! when it rejoins with the key still in its file.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use jetsonmind_cluster::{Bus, ClusterError};
use jetsonmind_core::auth::KeyStore;
use jetsonmind_core::auth::keys::{NewKey, StoredKey, already_added, mint};
use tokio_util::sync::CancellationToken;

use crate::{StateError, Watched, durable_bucket, follow_bucket, open_bucket};

/// The cluster's keys bucket, as one node uses it.
#[derive(Clone)]
pub struct ClusterKeys {
    bucket: kv::Store,
    /// For a node's first reading, retried as the buckets' first opening
    /// is ([`Bus::patiently`]): a NATS cluster that just lost or got back a
    /// server answers slowly for a while.
    bus: Bus,
}

impl ClusterKeys {
    /// Open the bucket (made by the first node that needs it).
    pub async fn open(bus: &Bus) -> Result<Self, StateError> {
        let config = durable_bucket(
            bus,
            "keys",
            "JetsonMind API keys: id, name, scopes and sha256 of each key",
            1,
        );
        let bucket = open_bucket(bus, config).await?;
        Ok(Self {
            bucket,
            bus: bus.clone(),
        })
    }

    /// Create a key with `scopes` for the whole cluster; shown once.
    pub async fn create(&self, name: &str, scopes: &[String]) -> Result<NewKey, StateError> {
        let (stored, new) = mint(name, scopes).map_err(|e| StateError::Invalid(e.to_string()))?;
        self.bucket
            .create(&stored.id, encode(&stored)?)
            .await
            .map_err(StateError::jetstream)?;
        Ok(new)
    }

    /// Add `key`, made elsewhere, for the whole cluster: `Ok(false)` when
    /// it is there already, an error when another key has its id.
    pub async fn add(&self, key: StoredKey) -> Result<bool, StateError> {
        let there = self.get(&key.id).await?;
        if already_added(there.as_ref(), &key).map_err(|e| StateError::Invalid(e.to_string()))? {
            return Ok(false);
        }
        self.bucket
            .create(&key.id, encode(&key)?)
            .await
            .map_err(StateError::jetstream)?;
        Ok(true)
    }

    /// Revoke key `id` at every node.
    pub async fn revoke(&self, id: &str) -> Result<StoredKey, StateError> {
        let key = self
            .get(id)
            .await?
            .ok_or_else(|| StateError::Invalid(format!("no api key with id `{id}`")))?;
        self.bucket
            .delete(id)
            .await
            .map_err(StateError::jetstream)?;
        Ok(key)
    }

    /// The live keys (without secrets).
    pub async fn list(&self) -> Result<Vec<StoredKey>, StateError> {
        let mut ids = self.bucket.keys().await.map_err(StateError::jetstream)?;
        let mut keys = Vec::new();
        while let Some(id) = ids.next().await {
            let id = id.map_err(StateError::jetstream)?;
            if let Some(key) = self.get(&id).await? {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// [`Self::list`], retried for a while (a node joining).
    async fn list_patiently(&self) -> Result<Vec<StoredKey>, StateError> {
        let listed = self
            .bus
            .patiently("listing the cluster's api keys", || async {
                self.list().await.map_err(|e| match e {
                    StateError::Cluster(e) => e,
                    StateError::JetStream(why) => ClusterError::JetStream(why),
                    other => ClusterError::JetStream(other.to_string()),
                })
            })
            .await?;
        Ok(listed)
    }

    async fn get(&self, id: &str) -> Result<Option<StoredKey>, StateError> {
        match self.bucket.get(id).await.map_err(StateError::jetstream)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Offer the keys of `store` the cluster has never seen (a node that
    /// joins with keys of its own). A key the cluster revoked stays revoked.
    /// Returns how many were added.
    pub async fn offer(&self, store: &KeyStore) -> Result<usize, StateError> {
        let mut added = 0;
        for key in store
            .list()
            .map_err(|e| StateError::Invalid(e.to_string()))?
        {
            // Revision 0: only when the bucket never held this id, not
            // even as a delete marker.
            match self.bucket.update(&key.id, encode(&key)?, 0).await {
                Ok(_) => added += 1,
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(StateError::jetstream(e)),
            }
        }
        Ok(added)
    }

    /// Make `store`'s file hold the cluster's keys now, and keep it so until
    /// `shutdown`. Returns once the file holds them, so a node serves no key
    /// the cluster revoked while it was away.
    pub async fn mirror(
        &self,
        store: Arc<KeyStore>,
        shutdown: CancellationToken,
    ) -> Result<(), StateError> {
        let keys = self.list_patiently().await?;
        store
            .replace(keys)
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        tokio::spawn(follow_bucket(
            self.bucket.clone(),
            ">",
            shutdown,
            mirror_into(store),
        ));
        Ok(())
    }
}

/// A follower of the keys bucket that writes `store`'s file each time the
/// watch has caught up (not per entry of the first snapshot).
fn mirror_into(store: Arc<KeyStore>) -> impl FnMut(Watched) + Send {
    let mut keys: BTreeMap<String, StoredKey> = BTreeMap::new();
    move |watched| {
        let entry = match watched {
            Watched::Again => return keys.clear(),
            Watched::Entry(entry) => entry,
        };
        match entry.operation {
            kv::Operation::Put => match decode(&entry.value) {
                Ok(key) => {
                    keys.insert(entry.key.clone(), key);
                }
                Err(e) => tracing::warn!(id = %entry.key, error = %e, "unreadable api key entry"),
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                keys.remove(&entry.key);
            }
        }
        if entry.delta == 0
            && let Err(e) = store.replace(keys.values().cloned().collect())
        {
            tracing::warn!(error = %e, "cannot mirror the cluster's api keys");
        }
    }
}

fn encode(key: &StoredKey) -> Result<Bytes, StateError> {
    serde_json::to_vec(key)
        .map(Bytes::from)
        .map_err(|e| StateError::Invalid(e.to_string()))
}

fn decode(bytes: &[u8]) -> Result<StoredKey, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Invalid(format!("api key entry: {e}")))
}
