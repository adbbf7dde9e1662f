//! Joining the edge cluster (`serve --cluster`): this node's servers on the
//! bus, its heartbeat, and the other nodes' servers in this node's fleets,
//! so this gateway routes among every node's replicas.

use std::sync::Arc;

use anyhow::Context;
use jetsonmind_cluster::membership::unix_now;
use jetsonmind_cluster::sessions::{self, NodeService};
use jetsonmind_cluster::{Bus, Membership, NodeStatus, View};
use jetsonmind_cluster_state::keys::ClusterKeys;
use jetsonmind_cluster_state::settings::ClusterSettings;
use jetsonmind_control::fleet::Fleet;
use jetsonmind_core::Config;
use jetsonmind_core::auth::KeyStore;
use jetsonmind_core::upstream::OpenPipe;
use jetsonmind_data::settings::Settings;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What this node holds in common with the cluster once it joins.
pub struct NodeState {
    pub settings: Arc<Settings>,
    pub keys: Arc<KeyStore>,
}

/// Join the cluster `config.cluster` names, serving `served` and following
/// the other nodes' shared servers into `fleets` (by fleet name), until
/// `shutdown`.
pub async fn join(
    config: &Config,
    served: Vec<(String, OpenPipe)>,
    fleets: Vec<Arc<Fleet>>,
    state: NodeState,
    shutdown: &CancellationToken,
) -> anyhow::Result<ClusterNode> {
    let bus = Bus::connect(&config.cluster).await?;
    share_state(&bus, state, shutdown).await?;
    for fleet in &fleets {
        fleet.set_node(&bus.node);
    }
    let servers: Vec<String> = served.iter().map(|(name, _)| name.clone()).collect();
    let service = NodeService::start(&bus, served, shutdown.clone())
        .await
        .context("serving this node's servers on the bus")?;
    let status = node_status(&bus, &config.cluster.share, servers, fleets.clone());
    let membership = Membership::join(&bus, status, shutdown.clone())
        .await
        .context("joining the cluster's membership")?;
    tokio::spawn(follow(bus, membership.view(), fleets, shutdown.clone()));
    Ok(ClusterNode {
        service,
        membership,
    })
}

/// Apply the cluster's settings and keys here, and share this node's.
async fn share_state(
    bus: &Bus,
    state: NodeState,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    ClusterSettings::open(bus)
        .await?
        .join(state.settings, shutdown.clone())
        .await
        .context("sharing the settings")?;
    let keys = ClusterKeys::open(bus).await?;
    let offered = keys
        .offer(&state.keys)
        .await
        .context("sharing the api keys")?;
    if offered > 0 {
        tracing::info!(
            keys = offered,
            "this node's api keys now work at every node"
        );
    }
    keys.mirror(state.keys, shutdown.clone());
    Ok(())
}

/// This node in the cluster, until it leaves.
pub struct ClusterNode {
    service: NodeService,
    membership: Membership,
}

impl ClusterNode {
    /// Stop serving and delete this node's key, so the others see it leave
    /// at once (not when its heartbeat ages out).
    pub async fn leave(self) {
        self.service.stop().await;
        self.membership.leave().await;
    }
}

/// What this node says of itself in each heartbeat: its servers, the ones
/// it shares, and every replica of its fleets that runs here.
fn node_status(
    bus: &Bus,
    share: &[String],
    servers: Vec<String>,
    fleets: Vec<Arc<Fleet>>,
) -> impl Fn() -> NodeStatus + Send + Sync + 'static {
    let node = bus.node.clone();
    let shared: Vec<String> = share
        .iter()
        .filter(|name| servers.contains(name))
        .cloned()
        .collect();
    let started = unix_now();
    move || {
        let replicas: Vec<serde_json::Value> = fleets
            .iter()
            .flat_map(|fleet| fleet.health())
            .filter(|replica| replica.node.as_deref() == Some(node.as_str()))
            .filter_map(|replica| serde_json::to_value(replica).ok())
            .collect();
        NodeStatus {
            node: node.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            servers: servers.clone(),
            shared: shared.clone(),
            started_unix: started,
            heartbeat_unix: unix_now(),
            replicas: replicas.into(),
        }
    }
}

/// Keep each fleet's cluster replicas in step with the live nodes that
/// share its server.
async fn follow(
    bus: Bus,
    mut view: watch::Receiver<View>,
    fleets: Vec<Arc<Fleet>>,
    shutdown: CancellationToken,
) {
    loop {
        let nodes = view.borrow_and_update().clone();
        for fleet in &fleets {
            let sharing = nodes
                .values()
                .filter(|status| status.node != bus.node && status.shared.contains(&fleet.name))
                .map(|status| {
                    let connector = sessions::connector(&bus, &status.node, &fleet.name);
                    (status.node.clone(), connector)
                })
                .collect();
            if fleet.follow_nodes(sharing) {
                // Connect the newcomers now, not at the next health check.
                let fleet = fleet.clone();
                tokio::spawn(async move { fleet.check().await });
            }
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}
