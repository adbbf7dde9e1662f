//! Health checks (connecting replicas that are down, reading the status
//! of those that report one), what `monitor_health` shows, and draining.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jetsonmind_contract::replica::{REPLICA_STATUS_URI, ReplicaReport};
use jetsonmind_core::rmcp::model::{ReadResourceResult, ResourceContents};
use jetsonmind_core::upstream::UpstreamStatus;
use serde::Serialize;

use super::{Fleet, Replica};
use crate::breaker::BreakerState;

/// What `monitor_health` shows of one replica.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaHealth {
    #[serde(flatten)]
    pub connection: UpstreamStatus,
    /// The cluster node it runs on (none on a single device).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub breaker: BreakerState,
    pub failures_in_a_row: u32,
    pub draining: bool,
    pub started_here: bool,
    pub outstanding: usize,
    pub served: u64,
    pub failed: u64,
    pub latency_ms: Option<f64>,
    pub utilization: Option<f64>,
    pub report: Option<ReplicaReport>,
}

impl Fleet {
    /// Check every replica once (connecting those that are down) and read
    /// the status of those that report one. Whoever builds on the offer
    /// learns of a change by [`Fleet::generation`], whichever check saw it.
    pub async fn check(&self) {
        let replicas = self.replicas();
        let checks = replicas.iter().map(|replica| self.check_replica(replica));
        futures::future::join_all(checks).await;
        self.observe();
    }

    async fn check_replica(&self, replica: &Arc<Replica>) {
        let timeout = self.settings.health_timeout;
        replica.link.check(&self.relay(), timeout).await;
        if !replica.link.is_up() {
            replica.breaker().record_failure(Instant::now());
            return;
        }
        let reports = replica
            .link
            .offer()
            .is_some_and(|o| o.resources.iter().any(|r| r.uri == REPLICA_STATUS_URI));
        if !reports {
            replica.breaker().record_check_passed(Instant::now());
            return;
        }
        let ours = replica.outstanding();
        let read = replica.link.read_resource(REPLICA_STATUS_URI);
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(result)) => {
                let report = parse_report(&result);
                if report.is_none() {
                    tracing::warn!(replica = %replica.name(), "unreadable replica status");
                }
                // Our own calls are counted live; keep only the others' from the report.
                let external = report
                    .as_ref()
                    .map_or(0, |r| (r.running + r.waiting).saturating_sub(ours));
                replica.external_busy.store(external, Ordering::SeqCst);
                *replica.report.lock().expect("report lock") = report;
                replica.breaker().record_check_passed(Instant::now());
            }
            Ok(Err(_)) | Err(_) => replica.link.mark_down("status read failed or timed out"),
        }
    }

    /// Every replica's health, for `monitor_health` and `manage_connections`.
    pub fn health(&self) -> Vec<ReplicaHealth> {
        let now = Instant::now();
        self.replicas()
            .iter()
            .map(|r| {
                let state = r.state(
                    now,
                    self.local_node(),
                    self.settings.egress.cloud_call_cost(),
                );
                let breaker = r.breaker();
                ReplicaHealth {
                    connection: r.link.status(),
                    node: state.node.clone(),
                    breaker: breaker.state(now),
                    failures_in_a_row: breaker.failures_in_a_row(),
                    draining: state.draining,
                    started_here: r.was_started_here(),
                    outstanding: state.outstanding,
                    served: r.served.load(Ordering::Relaxed),
                    failed: r.failed.load(Ordering::Relaxed),
                    latency_ms: state.latency_ms,
                    utilization: state.utilization(),
                    report: r.report(),
                }
            })
            .collect()
    }

    /// Take `replica` out of rotation and wait, up to `timeout`, for its
    /// calls to finish.
    pub async fn drain(&self, replica: &Replica, timeout: Duration) -> bool {
        replica.draining.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while replica.outstanding() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            let released = self.released.notified();
            let _ = tokio::time::timeout(Duration::from_millis(100), released).await;
        }
        true
    }
}

/// The status report in a read of a replica's [`REPLICA_STATUS_URI`].
pub(super) fn parse_report(result: &ReadResourceResult) -> Option<ReplicaReport> {
    result.contents.iter().find_map(|content| match content {
        ResourceContents::TextResourceContents { text, .. } => serde_json::from_str(text).ok(),
        #[allow(unreachable_patterns)]
        _ => None,
    })
}
