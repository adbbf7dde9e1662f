//! `jetsonmind cluster join` and `cluster leave`: one device into a cluster
//! and back, with nothing lost. `scripts/migrate_single_to_cluster.sh`
//! builds on them (with `backup` first and a check through another node
//! after).
//!
//! Joining shares what the device has: its cluster-wide settings the
//! cluster does not set yet (the cluster's own values win), its API keys
//! the cluster has never seen (a key the cluster revoked stays revoked),
//! and, with `--publish-models`, its models; then it records the cluster
//! in the node's own settings, so a plain `jetsonmind serve` joins.
//! Leaving keeps the cluster's settings as the node's own; its key file
//! already holds the cluster's keys, and its models stay in its store.

use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use jetsonmind_cluster::Bus;
use jetsonmind_cluster_state::keys::ClusterKeys;
use jetsonmind_cluster_state::models::ClusterModels;
use jetsonmind_cluster_state::settings::ClusterSettings;
use jetsonmind_core::Config;
use jetsonmind_core::auth::KeyStore;
use jetsonmind_core::config::{ConfigSources, read_settings};
use jetsonmind_data::settings::{Authority, Settings};
use jetsonmind_data::store::ModelStore;
use serde_json::json;

/// Share this device with the cluster `config.cluster` names, and record
/// the cluster in its settings.
pub async fn join(
    config: &Config,
    sources: &ConfigSources,
    publish_models: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.cluster.enabled(),
        "no cluster to join: pass --cluster nats://HOST:4222"
    );
    let bus = Bus::connect(&config.cluster).await?;
    let local = read_settings(&config.data.dir)?;
    let adopted = ClusterSettings::open(&bus)
        .await?
        .adopt(&local)
        .await
        .context("sharing the settings")?;
    println!(
        "settings: {} shared ({}); {} the cluster sets otherwise, its values kept ({})",
        adopted.added.len(),
        adopted.added.join(", "),
        adopted.differing.len(),
        adopted.differing.join(", ")
    );
    let keys = KeyStore::open(&config.data.dir);
    let offered = ClusterKeys::open(&bus).await?.offer(&keys).await?;
    println!(
        "api keys: {offered} of {} shared (the others the cluster had, or revoked)",
        keys.list()?.len()
    );
    if publish_models {
        publish_all(&bus, config).await?;
    }
    let settings = Settings::new(sources.clone(), config.clone());
    let cluster = json!({"cluster": {"urls": config.cluster.urls, "node": bus.node}});
    let patch = cluster.as_object().expect("an object").clone();
    settings
        .update(&patch, false, Authority::Admin, None)
        .await
        .context("recording the cluster in this node's settings")?;
    println!(
        "this node is now {} in cluster {}: `jetsonmind serve` joins it",
        bus.node, config.cluster.name
    );
    Ok(())
}

/// Publish every model of the store the cluster lacks (by name and digest).
async fn publish_all(bus: &Bus, config: &Config) -> anyhow::Result<()> {
    let store = Arc::new(ModelStore::open(&config.data.dir)?);
    let cluster = ClusterModels::open(bus).await?;
    for model in store.list()? {
        let published = cluster.entry(&model.name).await?;
        if published.is_some_and(|entry| entry.sha256 == model.sha256) {
            println!("model {}: already in the cluster", model.name);
            continue;
        }
        let bar = ProgressBar::new(model.size_bytes).with_style(
            ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("a valid template"),
        );
        bar.set_message(format!("publishing {}", model.name));
        let entry = cluster
            .publish(&store, &model.name, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await
            .with_context(|| format!("publishing {}", model.name))?;
        bar.finish_and_clear();
        println!(
            "model {}: published ({} bytes)",
            entry.name, entry.size_bytes
        );
    }
    Ok(())
}

/// Take this node out of its cluster for good, keeping the cluster's
/// settings as its own.
pub fn leave(config: &Config, sources: &ConfigSources) -> anyhow::Result<()> {
    let settings = Settings::new(sources.clone(), config.clone());
    let kept = settings.leave_cluster().context("leaving the cluster")?;
    let keys = KeyStore::open(&config.data.dir).list()?.len();
    let models = ModelStore::open(&config.data.dir)?.list()?.len();
    println!(
        "left the cluster: {} of its settings kept as this node's own ({}); {keys} api keys and \
         {models} models stay; `jetsonmind serve` now runs on its own",
        kept.len(),
        kept.join(", ")
    );
    Ok(())
}
