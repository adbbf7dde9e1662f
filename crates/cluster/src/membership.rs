//! Who is in the cluster: each node heartbeats its status into a JetStream
//! KV bucket (one key per node, entries age out after `node_ttl_ms`), and
//! every node watches the bucket.
//!
//! The view is watched, not polled: a node that leaves deletes its key, and
//! every watcher hears it at once; a node that dies stops writing, and its
//! entry ages out (the bucket's limit markers tell watchers). Each watcher
//! also forgets a node it has not heard from for `node_ttl_ms` by its own
//! clock, so a node cut off from NATS drops the others from its view too,
//! and everyone comes back with the next heartbeats once the link heals.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Bus, ClusterError};

/// What a node says of itself in each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub version: String,
    /// Its servers, each reachable at its subject for directed calls.
    pub servers: Vec<String>,
    /// The servers other nodes route calls to (they join their fleets).
    pub shared: Vec<String>,
    pub started_unix: u64,
    pub heartbeat_unix: u64,
    /// Every replica the node runs, as its control plane sees them
    /// (capacity, in flight, queue, loaded models, memory, temperature).
    #[serde(default)]
    pub replicas: serde_json::Value,
    /// Drained: it takes no new calls and runs no placements.
    #[serde(default)]
    pub draining: bool,
    /// The device's power mode (nvpmodel's name on a Jetson), if it has one.
    #[serde(default)]
    pub power_mode: Option<String>,
}

/// The live nodes, by id (this node included).
pub type View = BTreeMap<String, NodeStatus>;

/// This node's membership: its heartbeat and its view of the others.
pub struct Membership {
    view: watch::Receiver<View>,
    /// Ends the heartbeat and the watch (so does the shutdown token).
    leave: CancellationToken,
    /// The heartbeat, which deletes this node's key as it ends.
    heartbeat: JoinHandle<()>,
}

impl Membership {
    /// Join: heartbeat `status()` every `heartbeat_ms` and watch the others,
    /// until `shutdown` (then this node's key is deleted, so the others see
    /// it leave at once).
    pub async fn join(
        bus: &Bus,
        status: impl Fn() -> NodeStatus + Send + Sync + 'static,
        shutdown: CancellationToken,
    ) -> Result<Self, ClusterError> {
        let status = Arc::new(status);
        let bucket = first_beat(bus, &status()).await?;
        let (sender, view) = watch::channel(View::new());
        let leave = shutdown.child_token();
        let heartbeat = tokio::spawn(heartbeat(
            bucket.clone(),
            bus.clone(),
            status,
            leave.clone(),
        ));
        tokio::spawn(follow(bucket, bus.clone(), sender, leave.clone()));
        Ok(Self {
            view,
            leave,
            heartbeat,
        })
    }

    /// Leave now, and return once this node's key is deleted (or NATS could
    /// not be reached to delete it). A process that exits right after its
    /// shutdown token fires may not get to delete it: call this first, and
    /// the others see it leave at once instead of after `node_ttl_ms`.
    pub async fn leave(self) {
        self.leave.cancel();
        let _ = self.heartbeat.await;
    }

    /// The view now, and a receiver that hears each change.
    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Watch, without joining, the nodes of the cluster `cluster` whose
    /// servers are in the JetStream domain `domain` (the cloud's, seen from a
    /// site through its leaf link), until `shutdown`. While that domain
    /// cannot be reached (the uplink is down, or no such node has written a
    /// heartbeat yet) the view empties within `node_ttl_ms`, and fills again
    /// once it can.
    pub fn watch(
        bus: &Bus,
        domain: &str,
        cluster: &str,
        shutdown: CancellationToken,
    ) -> watch::Receiver<View> {
        let (sender, view) = watch::channel(View::new());
        let js = jetstream::with_domain(bus.client.clone(), domain);
        let bucket = format!("{cluster}_members");
        let tick = Duration::from_millis(bus.config.heartbeat_ms);
        let bus = bus.clone();
        tokio::spawn(async move {
            let store = loop {
                match js.get_key_value(&bucket).await {
                    Ok(store) => break store,
                    Err(e) => {
                        tracing::debug!(error = %e, %bucket, "no such membership yet; retrying")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = shutdown.cancelled() => return,
                }
            };
            follow(store, bus, sender, shutdown).await;
        });
        view
    }
}

/// Open the bucket and write this node's first heartbeat.
async fn first_beat(bus: &Bus, status: &NodeStatus) -> Result<kv::Store, ClusterError> {
    bus.patiently("the membership bucket", || async {
        let bucket = open_bucket(bus).await?;
        beat(&bucket, &bus.node, status).await?;
        Ok(bucket)
    })
    .await
}

/// The shortest life NATS gives an age-out marker.
const MIN_MARKER_TTL: Duration = Duration::from_secs(1);

/// The membership bucket, created by the first node that needs it.
async fn open_bucket(bus: &Bus) -> Result<kv::Store, ClusterError> {
    let ttl = Duration::from_millis(bus.config.node_ttl_ms);
    bus.key_value(kv::Config {
        bucket: bus.members_bucket(),
        description: "JetsonMind nodes: one key per live node, its last heartbeat".into(),
        history: 1,
        max_age: ttl,
        // Watchers hear an entry age out (server 2.11+). The server keeps
        // such a marker at least a second, and refuses the bucket otherwise.
        limit_markers: Some(ttl.max(MIN_MARKER_TTL)),
        storage: jetstream::stream::StorageType::Memory,
        num_replicas: bus.bucket_replicas(),
        ..Default::default()
    })
    .await
}

async fn beat(bucket: &kv::Store, node: &str, status: &NodeStatus) -> Result<(), ClusterError> {
    let value = serde_json::to_vec(status).map_err(|e| ClusterError::JetStream(e.to_string()))?;
    bucket
        .put(node, Bytes::from(value))
        .await
        .map(|_| ())
        .map_err(|e| ClusterError::JetStream(format!("heartbeat: {e}")))
}

async fn heartbeat(
    mut bucket: kv::Store,
    bus: Bus,
    status: Arc<impl Fn() -> NodeStatus + Send + Sync>,
    shutdown: CancellationToken,
) {
    let period = Duration::from_millis(bus.config.heartbeat_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.cancelled() => break,
        }
        if let Err(e) = beat(&bucket, &bus.node, &status()).await {
            // Cut off from NATS: the others forget this node; it comes back
            // with the first heartbeat that gets through.
            tracing::debug!(error = %e, "heartbeat not delivered");
            // Or the NATS servers restarted and lost the bucket (it lives
            // in memory): make it again, or no heartbeat ever lands.
            if let Ok(reopened) = open_bucket(&bus).await {
                bucket = reopened;
            }
        }
    }
    let _ = bucket.delete(&bus.node).await;
}

/// Keep `view` up to date from the bucket, re-watching after errors.
async fn follow(
    bucket: kv::Store,
    bus: Bus,
    view: watch::Sender<View>,
    shutdown: CancellationToken,
) {
    let ttl = Duration::from_millis(bus.config.node_ttl_ms);
    let tick = Duration::from_millis(bus.config.heartbeat_ms);
    let mut heard: BTreeMap<String, (NodeStatus, Instant)> = BTreeMap::new();
    while !shutdown.is_cancelled() {
        let mut entries = match bucket.watch_with_history(">").await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch the membership bucket; retrying");
                expire(&mut heard, ttl, &view);
                tokio::select! {
                    _ = tokio::time::sleep(tick) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        loop {
            tokio::select! {
                entry = entries.next() => match entry {
                    Some(Ok(entry)) => apply(&mut heard, entry),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "membership watch broke; re-watching");
                        break;
                    }
                    None => break,
                },
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.cancelled() => return,
            }
            expire(&mut heard, ttl, &view);
        }
    }
}

fn apply(heard: &mut BTreeMap<String, (NodeStatus, Instant)>, entry: kv::Entry) {
    match entry.operation {
        kv::Operation::Put => match serde_json::from_slice::<NodeStatus>(&entry.value) {
            Ok(status) if status.node == entry.key => {
                heard.insert(entry.key, (status, Instant::now()));
            }
            _ => {
                tracing::warn!(key = %entry.key, "unreadable node status in the membership bucket")
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => {
            heard.remove(&entry.key);
        }
    }
}

/// Forget nodes not heard from within `ttl`, and publish the view when it
/// changed.
fn expire(
    heard: &mut BTreeMap<String, (NodeStatus, Instant)>,
    ttl: Duration,
    view: &watch::Sender<View>,
) {
    let now = Instant::now();
    heard.retain(|_, (_, at)| now.duration_since(*at) < ttl);
    let live: View = heard
        .iter()
        .map(|(node, (status, _))| (node.clone(), status.clone()))
        .collect();
    view.send_if_modified(|current| {
        let changed = current.keys().ne(live.keys())
            || current
                .iter()
                .zip(&live)
                .any(|((_, a), (_, b))| a.shared != b.shared || a.draining != b.draining);
        *current = live;
        changed
    });
}

/// Seconds since the epoch, for status stamps.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
