//! The cluster's views: every node publishes a snapshot of its metrics and
//! analytics ([`NodeSnapshot`]) every `cluster.telemetry_interval_ms` to the
//! stream `<cluster>_telemetry`, on its own subject
//! `jm.<cluster>.telemetry.<node>`. The stream is on disk, replicated as the
//! cluster's buckets are, keeps `telemetry_history` snapshots per node and
//! none older than `telemetry_max_age_ms`.
//!
//! Reading is a direct get of the last message on each live node's subject
//! (any replica answers): no consumer, nothing to follow. A node that left
//! the membership, or whose last snapshot is older than the max age, is
//! left out.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, StorageType};
use bytes::Bytes;
use jetsonmind_cluster::{Bus, View};
use jetsonmind_data::DataServer;
use jetsonmind_data::cluster_view::{ClusterView, NodeSnapshot, Snapshots};
use jetsonmind_data::settings::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::StateError;
use crate::is_not_found;

/// The cluster's telemetry stream, as one node (or the CLI) uses it.
pub struct ClusterViews {
    bus: Bus,
    stream: stream::Stream,
}

impl ClusterViews {
    /// Open the stream (made by the first node that needs it). A stream
    /// made by another node keeps that node's limits.
    pub async fn open(bus: &Bus) -> Result<Self, StateError> {
        let config = stream_config(bus);
        let stream = bus
            .patiently("the telemetry stream", || bus.stream(config.clone()))
            .await?;
        Ok(Self {
            bus: bus.clone(),
            stream,
        })
    }

    /// The stream if a node has made it; never makes it (for readers that
    /// are not nodes, such as `jetsonmind cluster status`).
    pub async fn find(bus: &Bus) -> Result<Option<Self>, StateError> {
        let js = jetstream::new(bus.client.clone());
        match js.get_stream(bus.bucket_name("telemetry")).await {
            Ok(stream) => Ok(Some(Self {
                bus: bus.clone(),
                stream,
            })),
            Err(e) if is_not_found(e.kind()) => Ok(None),
            Err(e) => Err(StateError::JetStream(format!("the telemetry stream: {e}"))),
        }
    }

    /// Join: publish this node's snapshot now and every
    /// `telemetry_interval_ms` until `shutdown`, and show the live nodes'
    /// (`members`) in `data`'s metrics and analytics.
    pub fn join(
        self,
        data: Arc<DataServer>,
        members: watch::Receiver<View>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let this = Arc::new(self);
        data.show_cluster(Arc::new(LiveSnapshots {
            views: this.clone(),
            members,
        }));
        tokio::spawn(this.clone().publish_every(data, shutdown));
        this
    }

    /// Publish `snapshot` on its node's subject, once the stream has it.
    pub async fn publish(&self, snapshot: &NodeSnapshot) -> Result<(), StateError> {
        let payload = serde_json::to_vec(snapshot).map_err(StateError::jetstream)?;
        let subject = self.bus.telemetry_subject(&snapshot.node);
        let js = jetstream::new(self.bus.client.clone());
        let published = js.publish(subject, Bytes::from(payload)).await;
        let ack = published.map_err(|e| StateError::JetStream(format!("telemetry: {e}")))?;
        ack.await
            .map(|_| ())
            .map_err(|e| StateError::JetStream(format!("telemetry not stored: {e}")))
    }

    /// The latest snapshot of each of `nodes` that has one younger than
    /// this reader's `telemetry_max_age_ms`.
    pub async fn read(
        &self,
        nodes: impl IntoIterator<Item = String>,
    ) -> Result<Snapshots, StateError> {
        let reads = nodes.into_iter().map(|node| async move {
            let snapshot = self.latest(&node).await;
            snapshot.map(|found| found.map(|snapshot| (node, snapshot)))
        });
        let found = futures::future::try_join_all(reads).await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// `node`'s last snapshot, unless it has none or it is too old.
    async fn latest(&self, node: &str) -> Result<Option<NodeSnapshot>, StateError> {
        let subject = self.bus.telemetry_subject(node);
        let message = match self.stream.direct_get_last_for_subject(subject).await {
            Ok(message) => message,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::JetStream(format!("{node}'s telemetry: {e}"))),
        };
        let max_age = Duration::from_millis(self.bus.config.telemetry_max_age_ms);
        if age(message.time.unix_timestamp_nanos()) > max_age {
            return Ok(None);
        }
        match serde_json::from_slice::<NodeSnapshot>(&message.payload) {
            Ok(snapshot) if snapshot.node == node => Ok(Some(snapshot)),
            _ => {
                tracing::warn!(%node, "unreadable telemetry snapshot in the stream; left out");
                Ok(None)
            }
        }
    }

    /// Publish `data`'s snapshot every `telemetry_interval_ms`.
    async fn publish_every(self: Arc<Self>, data: Arc<DataServer>, shutdown: CancellationToken) {
        let period = Duration::from_millis(self.bus.config.telemetry_interval_ms);
        loop {
            let snapshot = data.node_snapshot(&self.bus.node).await;
            if let Err(e) = self.publish(&snapshot).await {
                // Cut off from NATS, or the stream was deleted: make it
                // again, or no snapshot lands until someone does.
                tracing::debug!(error = %e, "telemetry not published; will retry");
                let _ = self.bus.stream(stream_config(&self.bus)).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

/// The data server's view: the snapshots of the nodes the membership
/// shows live now.
struct LiveSnapshots {
    views: Arc<ClusterViews>,
    members: watch::Receiver<View>,
}

impl ClusterView for LiveSnapshots {
    fn snapshots(&self) -> BoxFuture<'_, Result<Snapshots, String>> {
        let nodes: Vec<String> = self.members.borrow().keys().cloned().collect();
        Box::pin(async move { self.views.read(nodes).await.map_err(|e| e.to_string()) })
    }
}

pub(crate) fn stream_config(bus: &Bus) -> stream::Config {
    stream::Config {
        name: bus.bucket_name("telemetry"),
        description: Some("JetsonMind telemetry: each node's recent metrics and analytics".into()),
        subjects: vec![bus.telemetry_subject("*")],
        max_age: Duration::from_millis(bus.config.telemetry_max_age_ms),
        max_messages_per_subject: bus.config.telemetry_history,
        storage: StorageType::File,
        num_replicas: bus.bucket_replicas(),
        // Readers get the last snapshot of a subject from any replica.
        allow_direct: true,
        ..Default::default()
    }
}

/// How long ago a stream message stamped `unix_nanos` (the NATS server's
/// clock) was stored, by this machine's clock; zero for the future.
pub(crate) fn age(unix_nanos: i128) -> Duration {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    Duration::from_nanos(u64::try_from(now - unix_nanos).unwrap_or(0))
}
