//! The cluster as NATS holds it now, for readers that are not nodes
//! (`jetsonmind cluster status`): the membership bucket, the model registry,
//! the placements and the telemetry stream, read only. Nothing is written
//! and no bucket is made; one that no node made yet reads as absent.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use jetsonmind_cluster::{Bus, NodeStatus};
use jetsonmind_data::cluster_view::Snapshots;
use serde_json::Value;

use crate::views::{ClusterViews, age};
use crate::{StateError, is_not_found};

pub mod report;

/// What the cluster's buckets and stream hold now.
#[derive(Debug, Default)]
pub struct ClusterReading {
    /// The nodes in the membership bucket.
    pub members: BTreeMap<String, Member>,
    /// The model registry (`<cluster>_models`), as JSON by model; `None`
    /// while no node made it.
    pub models: Option<BTreeMap<String, Value>>,
    /// The placements (`<cluster>_placements`), as JSON by model; `None`
    /// while no one made it.
    pub placements: Option<BTreeMap<String, Value>>,
    /// The members' latest telemetry.
    pub telemetry: Snapshots,
}

/// A node's last heartbeat, and how long ago NATS stored it.
#[derive(Debug, Clone)]
pub struct Member {
    pub status: NodeStatus,
    pub heartbeat_age: Duration,
}

impl ClusterReading {
    pub async fn read(bus: &Bus) -> Result<Self, StateError> {
        let js = jetstream::new(bus.client.clone());
        let members = read_members(&js, bus).await?;
        let telemetry = match ClusterViews::find(bus).await? {
            Some(views) => views.read(members.keys().cloned()).await?,
            None => Snapshots::new(),
        };
        Ok(Self {
            models: read_bucket(&js, &bus.bucket_name("models")).await?,
            placements: read_bucket(&js, &bus.bucket_name("placements")).await?,
            members,
            telemetry,
        })
    }
}

async fn read_members(
    js: &jetstream::Context,
    bus: &Bus,
) -> Result<BTreeMap<String, Member>, StateError> {
    let Some(bucket) = existing_kv(js, &bus.members_bucket()).await? else {
        return Ok(BTreeMap::new());
    };
    let mut members = BTreeMap::new();
    for key in keys(&bucket).await? {
        let entry = bucket.entry(key.as_str()).await;
        let entry = entry.map_err(|e| failed(&bucket, &key, e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            continue;
        };
        let status: NodeStatus = serde_json::from_slice(&entry.value)
            .map_err(|e| StateError::Invalid(format!("node {key}: unreadable status: {e}")))?;
        let heartbeat_age = age(entry.created.unix_timestamp_nanos());
        members.insert(
            key,
            Member {
                status,
                heartbeat_age,
            },
        );
    }
    Ok(members)
}

/// Every value of the bucket `name` as JSON, by key; `None` without the bucket.
async fn read_bucket(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<BTreeMap<String, Value>>, StateError> {
    let Some(bucket) = existing_kv(js, name).await? else {
        return Ok(None);
    };
    let mut values = BTreeMap::new();
    for key in keys(&bucket).await? {
        let value = bucket.get(key.as_str()).await;
        let Some(value) = value.map_err(|e| failed(&bucket, &key, e))? else {
            continue;
        };
        let value = serde_json::from_slice(&value)
            .map_err(|e| StateError::Invalid(format!("{name}: {key} is not JSON: {e}")))?;
        values.insert(key, value);
    }
    Ok(Some(values))
}

async fn keys(bucket: &kv::Store) -> Result<BTreeSet<String>, StateError> {
    let listing =
        |e: &dyn std::fmt::Display| StateError::JetStream(format!("listing {}: {e}", bucket.name));
    let mut keys = bucket.keys().await.map_err(|e| listing(&e))?;
    let mut all = BTreeSet::new();
    while let Some(key) = keys.next().await {
        all.insert(key.map_err(|e| listing(&e))?);
    }
    Ok(all)
}

/// The KV bucket `name` if some node made it.
async fn existing_kv(js: &jetstream::Context, name: &str) -> Result<Option<kv::Store>, StateError> {
    match js.get_stream(format!("KV_{name}")).await {
        Ok(_) => {}
        Err(e) if is_not_found(e.kind()) => return Ok(None),
        Err(e) => return Err(StateError::JetStream(format!("looking for {name}: {e}"))),
    }
    let bucket = js.get_key_value(name).await;
    let bucket = bucket.map_err(|e| StateError::JetStream(format!("opening {name}: {e}")))?;
    Ok(Some(bucket))
}

fn failed(bucket: &kv::Store, key: &str, error: impl std::fmt::Display) -> StateError {
    StateError::JetStream(format!("{}: reading {key}: {error}", bucket.name))
}
