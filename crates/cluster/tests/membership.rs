//! Cluster membership over a real nats-server: nodes join, see each other,
//! leave by deleting their key, age out when they stop heartbeating, and
//! come back after the NATS server restarts.

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::{self, kv};
use jetsonmind_cluster::membership::unix_now;
use jetsonmind_cluster::{Bus, Membership, NodeStatus, View};
use jetsonmind_core::config::ClusterConfig;
use support::{NatsServer, connect, node_config, within};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A node that joined the cluster, until its token is cancelled.
struct Member {
    bus: Bus,
    view: watch::Receiver<View>,
    leave: CancellationToken,
    membership: Membership,
}

impl Member {
    async fn join(config: ClusterConfig) -> Self {
        let bus = connect(&config).await;
        let leave = CancellationToken::new();
        let membership = within(
            "joining",
            Membership::join(&bus, status_of(&bus.node), leave.clone()),
        )
        .await
        .expect("joining the membership");
        Self {
            view: membership.view(),
            bus,
            leave,
            membership,
        }
    }

    /// Wait until this node's view holds exactly `nodes`.
    async fn sees(&mut self, nodes: &[&str]) {
        let what = format!("{} seeing {nodes:?}", self.bus.node);
        within(&what, self.view.wait_for(|view| view.keys().eq(nodes)))
            .await
            .expect("the view is kept while the node is a member");
    }

    /// Wait until this node hears a heartbeat of `node` after its `after`th.
    async fn hears(&self, node: &str, after: u64) {
        let what = format!("{} hearing from {node} again", self.bus.node);
        within(&what, async {
            while beats_heard(self, node) <= after {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
        .await
    }

    /// The membership bucket's last entry for `node`.
    async fn entry(&self, node: &str) -> Option<kv::Entry> {
        let bucket = jetstream::new(self.bus.client.clone())
            .get_key_value(self.bus.members_bucket())
            .await
            .expect("the membership bucket");
        bucket.entry(node).await.expect("reading the bucket")
    }
}

/// A status that counts its heartbeats (in `replicas`), so a watcher can
/// tell a fresh heartbeat from one it has seen.
fn status_of(node: &str) -> impl Fn() -> NodeStatus + Send + Sync + 'static {
    let node = node.to_string();
    let beats = AtomicU64::new(0);
    move || NodeStatus {
        node: node.clone(),
        version: "test".into(),
        servers: vec!["probe".into()],
        shared: vec![],
        started_unix: 0,
        heartbeat_unix: unix_now(),
        replicas: (beats.fetch_add(1, Ordering::Relaxed) + 1).into(),
        draining: false,
        power_mode: None,
    }
}

/// The heartbeats of `node` that `member` has heard of.
fn beats_heard(member: &Member, node: &str) -> u64 {
    let view = member.view.borrow();
    view.get(node)
        .and_then(|status| status.replicas.as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_see_each_other_and_one_that_leaves_deletes_its_key() {
    let server = NatsServer::start();
    // Long enough that only the delete can explain b leaving a's view.
    let config = |node| ClusterConfig {
        node_ttl_ms: 60_000,
        ..node_config(&server, node)
    };
    let mut a = Member::join(config("a")).await;
    let mut b = Member::join(config("b")).await;
    a.sees(&["a", "b"]).await;
    b.sees(&["a", "b"]).await;
    assert_eq!(a.view.borrow()["b"].servers, ["probe"]);

    b.leave.cancel();
    a.sees(&["a"]).await;
    let left = a.entry("b").await.expect("b's last entry");
    assert_eq!(left.operation, kv::Operation::Delete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_returns_once_the_key_is_deleted() {
    let server = NatsServer::start();
    let mut a = Member::join(node_config(&server, "a")).await;
    let b = Member::join(node_config(&server, "b")).await;
    a.sees(&["a", "b"]).await;

    // What a process does before it exits on SIGTERM.
    within("b leaving", b.membership.leave()).await;
    let left = a.entry("b").await.expect("b's last entry");
    assert_eq!(left.operation, kv::Operation::Delete);
    a.sees(&["a"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_second_node_ttl_still_makes_the_bucket() {
    let server = NatsServer::start();
    let config = ClusterConfig {
        heartbeat_ms: 100,
        node_ttl_ms: 500,
        ..node_config(&server, "a")
    };
    let mut a = Member::join(config).await;
    a.sees(&["a"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_heartbeating_ages_out() {
    let server = NatsServer::start();
    let mut a = Member::join(node_config(&server, "a")).await;
    let b = Member::join(node_config(&server, "b")).await;
    a.sees(&["a", "b"]).await;

    // As if b were killed: no more heartbeats, and no delete either.
    within("closing b's connection", b.bus.client.drain())
        .await
        .expect("draining");
    a.sees(&["a"]).await;
    let gone = within("the bucket forgetting b", async {
        loop {
            match a.entry("b").await {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                other => return other,
            }
        }
    })
    .await;
    assert!(
        gone.as_ref()
            .is_none_or(|entry| entry.operation != kv::Operation::Delete),
        "b aged out, it did not delete its key: {gone:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_come_back_after_the_nats_server_restarts() {
    let mut server = NatsServer::start();
    let mut a = Member::join(node_config(&server, "a")).await;
    let mut b = Member::join(node_config(&server, "b")).await;
    a.sees(&["a", "b"]).await;
    b.sees(&["a", "b"]).await;

    // The restarted server has lost the bucket (it is kept in memory).
    let (a_heard, b_heard) = (beats_heard(&a, "b"), beats_heard(&b, "a"));
    server.restart();
    a.hears("b", a_heard).await;
    b.hears("a", b_heard).await;
    a.sees(&["a", "b"]).await;
    b.sees(&["a", "b"]).await;
}
