//! The cluster's call log: every call a node's servers end is a record
//! ([`CallRecord`]: server, tool, model, outcome, latency, tokens; never
//! arguments or answers) in the stream `<cluster>_analytics`, on the node's
//! subject `jm.<cluster>.calls.<node>`. The site's JetStream stores it
//! whether or not the site's uplink is up; the hub's backup sources it
//! from there (see [`crate::backup`]).
//!
//! Recording never holds a call: the record is queued (at most
//! `cluster.analytics_buffer`; beyond that new records are counted and
//! dropped) and a task publishes the queue in order, each with a message id
//! of its own, retried under that id until stored, so a retry never stores a
//! record twice (JetStream drops duplicates within `duplicate_window`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use jetsonmind_cluster::Bus;
use jetsonmind_data::analytics::{Analytics, CallRecord, CallSink};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::StateError;

/// One call as the cluster keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeCall {
    pub node: String,
    /// This node's count of its records since it started: with `started_ms`,
    /// the record's identity.
    pub seq: u64,
    pub started_ms: i64,
    #[serde(flatten)]
    pub call: CallRecord,
}

impl NodeCall {
    /// The id the record is stored under (JetStream's `Nats-Msg-Id`).
    pub fn id(&self) -> String {
        format!("{}.{}.{}", self.node, self.started_ms, self.seq)
    }
}

/// The stream's name in a cluster.
pub fn stream_name(bus: &Bus) -> String {
    bus.bucket_name("analytics")
}

pub(crate) fn stream_config(bus: &Bus) -> stream::Config {
    stream::Config {
        name: stream_name(bus),
        description: Some("JetsonMind call records: one per call each node served".into()),
        subjects: vec![format!("jm.{}.calls.*", bus.config.name)],
        storage: stream::StorageType::File,
        num_replicas: bus.bucket_replicas(),
        max_age: Duration::from_millis(bus.config.analytics_max_age_ms),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// Record every call `analytics` sees in the cluster's stream, until
/// `shutdown`.
pub async fn join(
    bus: &Bus,
    analytics: &Analytics,
    shutdown: CancellationToken,
) -> Result<(), StateError> {
    let config = stream_config(bus);
    bus.patiently("the analytics stream", || bus.stream(config.clone()))
        .await?;
    let (queue, records) = mpsc::channel(bus.config.analytics_buffer.max(1));
    analytics.share_calls(Arc::new(Queue {
        queue,
        dropped: AtomicU64::new(0),
    }));
    tokio::spawn(publish(bus.clone(), records, shutdown));
    Ok(())
}

struct Queue {
    queue: mpsc::Sender<CallRecord>,
    dropped: AtomicU64,
}

impl CallSink for Queue {
    fn record(&self, call: CallRecord) {
        if self.queue.try_send(call).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Said once per doubling, not once per call.
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "call records dropped: the cluster's analytics stream is not keeping up \
                     (cluster.analytics_buffer)"
                );
            }
        }
    }
}

/// Longest pause between two tries of one record.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

async fn publish(bus: Bus, mut records: mpsc::Receiver<CallRecord>, shutdown: CancellationToken) {
    let js = jetstream::new(bus.client.clone());
    let subject = format!("jm.{}.calls.{}", bus.config.name, bus.node);
    let started_ms = jetsonmind_store::db::now_ms();
    let mut seq = 0;
    loop {
        let call = tokio::select! {
            call = records.recv() => match call {
                Some(call) => call,
                None => return,
            },
            _ = shutdown.cancelled() => return,
        };
        seq += 1;
        let record = NodeCall {
            node: bus.node.clone(),
            seq,
            started_ms,
            call,
        };
        store(&js, &subject, &record, &shutdown).await;
    }
}

/// Publish `record` until JetStream stores it (or shutdown).
async fn store(
    js: &jetstream::Context,
    subject: &str,
    record: &NodeCall,
    shutdown: &CancellationToken,
) {
    let Ok(payload) = serde_json::to_vec(record) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", record.id().as_str());
    let mut backoff = Duration::from_millis(50);
    loop {
        let sent = js
            .publish_with_headers(
                subject.to_string(),
                headers.clone(),
                Bytes::from(payload.clone()),
            )
            .await;
        let stored = match sent {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let Err(error) = stored else { return };
        tracing::debug!(%error, id = %record.id(), "call record not stored yet; retrying");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
