//! Joining the edge cluster (`serve --cluster`): this node's servers on the
//! bus, its heartbeat, and the other nodes' servers in this node's fleets,
//! so this gateway routes among every node's replicas.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use jetsonmind_cluster::membership::unix_now;
use jetsonmind_cluster::sessions::{self, NodeService};
use jetsonmind_cluster::{Bus, Membership, NodeStatus, View};
use jetsonmind_cluster_state::keys::ClusterKeys;
use jetsonmind_cluster_state::models::{ClusterModels, ModelHooks};
use jetsonmind_cluster_state::placement::{self, ClusterPlacements, LocalModels, Placements};
use jetsonmind_cluster_state::settings::ClusterSettings;
use jetsonmind_cluster_state::spending::ClusterSpending;
use jetsonmind_cluster_state::views::ClusterViews;
use jetsonmind_cluster_state::{backup, calls};
use jetsonmind_compute::ComputeServer;
use jetsonmind_control::ControlServer;
use jetsonmind_control::config::ControlConfig;
use jetsonmind_control::config::HybridConfig;
use jetsonmind_control::fleet::Fleet;
use jetsonmind_control::routing::Tier;
use jetsonmind_core::Config;
use jetsonmind_core::auth::KeyStore;
use jetsonmind_core::upstream::OpenPipe;
use jetsonmind_data::DataServer;
use jetsonmind_data::analytics::Analytics;
use jetsonmind_data::settings::Settings;
use jetsonmind_store::ModelStore;
use jetsonmind_telemetry::JetsonReader;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What this node holds in common with the cluster once it joins.
pub struct NodeState {
    pub settings: Arc<Settings>,
    pub keys: Arc<KeyStore>,
    /// Publishes this node's telemetry, and shows the cluster's.
    pub data: Arc<DataServer>,
    /// Every call this node's servers end, recorded in the cluster's stream.
    pub analytics: Arc<Analytics>,
}

/// The servers of this node that use the cluster's models, and their store.
pub struct ModelUsers {
    pub store: Arc<ModelStore>,
    /// Publishes, and lists the cluster's models.
    pub data: Arc<DataServer>,
    /// Pulls the models calls name that only the cluster has, and runs the
    /// replicas placements ask of this node.
    pub compute: Option<Arc<ComputeServer>>,
    /// Places models across the cluster (`scale_cluster`).
    pub control: Arc<ControlServer>,
}

/// Join the cluster `config.cluster` names, serving `served` and following
/// the other nodes' shared servers into `fleets` (by fleet name), until
/// `shutdown`.
pub async fn join(
    config: &Config,
    served: Vec<(String, OpenPipe)>,
    fleets: Vec<Arc<Fleet>>,
    state: NodeState,
    models: ModelUsers,
    shutdown: &CancellationToken,
) -> anyhow::Result<ClusterNode> {
    let bus = Bus::connect(&config.cluster).await?;
    let data = state.data.clone();
    count_spending_together(config, &bus, &fleets).await?;
    calls::join(&bus, &state.analytics, shutdown.clone())
        .await
        .context("opening the cluster's analytics stream")?;
    share_state(&bus, state, shutdown).await?;
    for fleet in &fleets {
        fleet.set_node(&bus.node);
    }
    let servers: Vec<String> = served.iter().map(|(name, _)| name.clone()).collect();
    let service = NodeService::start(&bus, served, shutdown.clone())
        .await
        .context("serving this node's servers on the bus")?;
    let placements = ClusterPlacements::open(
        &bus,
        config.section::<ControlConfig>().max_temperature_c,
        shutdown.clone(),
    )
    .await
    .context("opening the cluster's placements")?;
    let status = node_status(
        &bus,
        &config.cluster.share,
        servers,
        fleets.clone(),
        placements.follow(),
    );
    let membership = Membership::join(&bus, status, shutdown.clone())
        .await
        .context("joining the cluster's membership")?;
    let placements = Arc::new(placements.seeing(membership.view()));
    ClusterViews::open(&bus)
        .await
        .context("opening the cluster's telemetry stream")?
        .join(data, membership.view(), shutdown.clone());
    share_models(&bus, &models, membership.view()).await?;
    place_models(config, &bus, models, placements.clone(), shutdown);
    if config.section::<HybridConfig>().enabled() {
        reach_the_cloud(config, &bus, fleets.clone(), shutdown);
        if config.section::<HybridConfig>().backup {
            let streams =
                backup::backed_up(&bus, config.section::<HybridConfig>().backup_model_files);
            let (hub, copies) = (
                &config.section::<HybridConfig>().hub_domain,
                config.section::<HybridConfig>().backup_replicas,
            );
            backup::keep_in_cloud(&bus, hub, streams, copies, shutdown.clone());
        }
    }
    tokio::spawn(follow(
        bus,
        membership.view(),
        placements.follow(),
        fleets,
        shutdown.clone(),
    ));
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
    ClusterSettings::open(bus, state.settings.schema().clone())
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
    keys.mirror(state.keys, shutdown.clone())
        .await
        .context("mirroring the cluster's api keys")?;
    Ok(())
}

/// Let this node's servers publish to, list and pull from the cluster's
/// models (where each is held and loaded: from the membership `view`).
async fn share_models(
    bus: &Bus,
    users: &ModelUsers,
    view: watch::Receiver<View>,
) -> anyhow::Result<()> {
    let models = ClusterModels::open(bus)
        .await
        .context("opening the cluster's model buckets")?;
    let hooks = Arc::new(ModelHooks::new(models, users.store.clone(), view));
    users.data.join_cluster(hooks.clone());
    if let Some(compute) = &users.compute {
        compute.set_model_source(hooks);
    }
    Ok(())
}

/// Let `scale_cluster` place models across the cluster, and run here the
/// replicas the placements assign to this node.
fn place_models(
    config: &Config,
    bus: &Bus,
    users: ModelUsers,
    placements: Arc<ClusterPlacements>,
    shutdown: &CancellationToken,
) {
    users.control.join_cluster(placements.clone());
    // A node without a local compute replica runs no placements.
    if let Some(compute) = users.compute {
        placement::reconcile(
            placements,
            bus.node.clone(),
            Arc::new(PlacedHere(compute)),
            Duration::from_millis(config.cluster.reconcile_ms),
            shutdown.clone(),
        );
    }
}

/// This node's compute, as placements drive it.
struct PlacedHere(Arc<ComputeServer>);

impl LocalModels for PlacedHere {
    fn keep_loaded(
        &self,
        model: &str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        let model = model.to_string();
        Box::pin(async move { self.0.keep_loaded(&model).await.map_err(|e| e.to_string()) })
    }

    fn release(&self, model: &str) -> Result<(), String> {
        self.0.release(model).map_err(|e| e.to_string())
    }
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
    placements: watch::Receiver<Placements>,
) -> impl Fn() -> NodeStatus + Send + Sync + 'static {
    let node = bus.node.clone();
    let jetson = JetsonReader::new("/");
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
            draining: placements.borrow().drained.contains(&node),
            power_mode: jetson
                .read()
                .and_then(|device| device.power_mode)
                .and_then(|mode| mode.name),
        }
    }
}

/// Keep each fleet's cluster replicas in step with the live nodes that
/// share its server.
async fn follow(
    bus: Bus,
    mut view: watch::Receiver<View>,
    mut placements: watch::Receiver<Placements>,
    fleets: Vec<Arc<Fleet>>,
    shutdown: CancellationToken,
) {
    loop {
        let nodes = view.borrow_and_update().clone();
        let drained = placements.borrow_and_update().drained.clone();
        for fleet in &fleets {
            let others = nodes.values().filter(|status| status.node != bus.node);
            follow_tier(&bus, &bus.config.name, Tier::Site, others, fleet);
            // A drained node's data and control still serve it.
            if fleet.name == placement::PLACED_SERVER {
                fleet.drain_nodes(&drained);
            }
        }
        tokio::select! {
            changed = view.changed() => if changed.is_err() { return },
            changed = placements.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Add each cloud node (the cluster `hybrid.cloud_cluster` at the hub's
/// domain) to the fleets of the servers it shares, as cloud replicas that
/// routing uses only as the egress policy allows; they leave when the
/// uplink is down.
fn reach_the_cloud(
    config: &Config,
    bus: &Bus,
    fleets: Vec<Arc<Fleet>>,
    shutdown: &CancellationToken,
) {
    let hybrid = &config.section::<HybridConfig>();
    let mut view = Membership::watch(
        bus,
        &hybrid.hub_domain,
        &hybrid.cloud_cluster,
        shutdown.clone(),
    );
    let (bus, cloud, shutdown) = (bus.clone(), hybrid.cloud_cluster.clone(), shutdown.clone());
    tracing::info!(hub = %hybrid.hub_domain, %cloud, "routing to the cloud tier as policy allows");
    tokio::spawn(async move {
        loop {
            let nodes = view.borrow_and_update().clone();
            for fleet in &fleets {
                follow_tier(&bus, &cloud, Tier::Cloud, nodes.values(), fleet);
            }
            tokio::select! {
                changed = view.changed() => if changed.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

/// Make `fleet`'s replicas of `tier` those of `nodes` (of `cluster`) that
/// share its server.
fn follow_tier<'a>(
    bus: &Bus,
    cluster: &str,
    tier: Tier,
    nodes: impl Iterator<Item = &'a NodeStatus>,
    fleet: &Arc<Fleet>,
) {
    let sharing = nodes
        .filter(|status| status.shared.contains(&fleet.name))
        .map(|status| {
            let connector = sessions::connector_in(bus, cluster, &status.node, &fleet.name);
            (status.node.clone(), connector)
        })
        .collect();
    if fleet.follow_nodes(tier, sharing) {
        // Connect the newcomers now, not at the next health check.
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.check().await });
    }
}

/// Budgets hold across the site: every node counts cloud spending in the
/// cluster's bucket (the fleets share one set of egress rules).
async fn count_spending_together(
    config: &Config,
    bus: &Bus,
    fleets: &[Arc<Fleet>],
) -> anyhow::Result<()> {
    let spending = ClusterSpending::open(bus, config.section::<HybridConfig>().budget_period_s)
        .await
        .context("opening the cluster's spending bucket")?;
    let spending = Arc::new(spending);
    for fleet in fleets {
        fleet.egress().share_spending(spending.clone());
    }
    Ok(())
}
