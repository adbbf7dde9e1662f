//! What a JetsonMind cluster holds in common, on NATS JetStream: everything
//! a user changes at one node holds at every node.
//!
//! - [`settings`]: cluster-wide settings in one KV document, written with
//!   compare-and-set on its revision and applied live by every node.
//! - [`keys`]: API key hashes and scopes in a KV bucket, mirrored into each
//!   node's key file; a revoked key is a delete marker, refused everywhere.
//! - [`models`]: model files in an Object Store (chunked, sha256) with a
//!   registry in KV; nodes pull what they must run and check it.
//! - [`views`]: each node's telemetry and analytics in a stream, so any
//!   node shows the whole cluster's metrics and analytics; [`status`]
//!   reads all of the above for `jetsonmind cluster status`.
//! - [`calls`]: a record of every call each node served, in a stream.
//! - [`spending`]: what each caller spent in the cloud, counted by all the
//!   site's nodes together (budgets hold across the site).
//! - [`backup`]: with a cloud hub, the hub mirrors the site's streams and
//!   buckets (store-and-forward across a cut uplink).
//!
//! JetStream replicates, orders and stores all of it; nothing here is a
//! protocol of our own.

pub mod backup;
pub mod calls;
pub mod keys;
pub mod models;
pub mod placement;
pub mod settings;
pub mod spending;
pub mod status;
pub mod views;

use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{ErrorCode, kv, stream::StorageType};
use futures::StreamExt;
use jetsonmind_cluster::{Bus, ClusterError};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("NATS JetStream: {0}")]
    JetStream(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] jetsonmind_store::StoreError),
    #[error("no model named `{0}` is published in the cluster")]
    NotPublished(String),
    #[error("{file}: its content has digest {actual}, not the {expected} published; refused")]
    DigestMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("{file}: nothing arrived for {after:?} (cluster.model_stall_ms); download abandoned")]
    Stalled {
        file: String,
        after: std::time::Duration,
    },
}

impl StateError {
    fn jetstream(error: impl std::fmt::Display) -> Self {
        Self::JetStream(error.to_string())
    }
}

/// Whether a stream lookup failed only because there is no such stream
/// (a bucket nobody has written yet), which readers take as "nothing".
pub(crate) fn is_not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// Open the KV bucket `config` names, once it serves reads: a replicated
/// bucket just made answers "no responders" until its stream has a leader,
/// and nodes that start together race to make it.
async fn open_bucket(bus: &Bus, config: kv::Config) -> Result<kv::Store, StateError> {
    let what = format!("the bucket {}", config.bucket);
    let opened = bus
        .patiently(&what, || async {
            let bucket = bus.key_value(config.clone()).await?;
            // A key no one writes: reading it proves the stream answers.
            bucket
                .get("ready")
                .await
                .map_err(|e| ClusterError::JetStream(format!("{what}: {e}")))?;
            Ok(bucket)
        })
        .await?;
    Ok(opened)
}

/// What a bucket's follower hears.
enum Watched {
    /// A new watch begins (the first, or again after one broke): the
    /// current entries follow, then each change.
    Again,
    Entry(kv::Entry),
}

/// Follow the entries of `bucket` matching `key` (a key or a wildcard) into
/// `on`, until `shutdown`. A watch that breaks (a NATS server restarted or
/// lost) is started again after a pause, from the current entries.
async fn follow_bucket(
    bucket: kv::Store,
    key: &str,
    shutdown: CancellationToken,
    mut on: impl FnMut(Watched) + Send,
) {
    while !shutdown.is_cancelled() {
        match bucket.watch_with_history(key).await {
            Ok(mut changes) => {
                on(Watched::Again);
                loop {
                    let change = tokio::select! {
                        change = changes.next() => change,
                        _ = shutdown.cancelled() => return,
                    };
                    match change {
                        Some(Ok(entry)) => on(Watched::Entry(entry)),
                        Some(Err(e)) => {
                            tracing::debug!(bucket = %bucket.name, error = %e, "watch broke; watching again");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) => tracing::debug!(bucket = %bucket.name, error = %e, "cannot watch"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// A KV bucket of the cluster's state (`<cluster>_<what>`): on disk,
/// replicated as the cluster's buckets are.
fn durable_bucket(bus: &Bus, what: &str, description: &str, history: i64) -> kv::Config {
    kv::Config {
        bucket: bus.bucket_name(what),
        description: description.into(),
        history,
        storage: StorageType::File,
        num_replicas: bus.bucket_replicas(),
        ..Default::default()
    }
}
