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
use jetsonmind_cluster_state::models::{ClusterModels, check_key};
use jetsonmind_cluster_state::settings::ClusterSettings;
use jetsonmind_core::Config;
use jetsonmind_core::auth::KeyStore;
use jetsonmind_core::config::{ConfigSources, read_settings};
use jetsonmind_data::settings::{Authority, Settings};
use jetsonmind_store::ModelStore;
use serde_json::json;

/// Share this device with the cluster `config.cluster` names, and record
/// the cluster in its settings.
pub async fn join(
    config: &Config,
    sources: &ConfigSources,
    publish_models: bool,
    check_only: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.cluster.enabled(),
        "no cluster to join: pass --cluster nats://HOST:4222"
    );
    // Everything that could refuse is checked before anything is shared.
    let bus = Bus::connect(&config.cluster).await?;
    let store = Arc::new(ModelStore::open(&config.data.dir)?);
    if publish_models {
        let names: Vec<String> = store.list()?.into_iter().map(|m| m.name).collect();
        let unfit: Vec<&String> = names.iter().filter(|n| check_key(n).is_err()).collect();
        anyhow::ensure!(
            unfit.is_empty(),
            "models whose names a cluster cannot hold (letters, digits, - _ = / . only, no \
             leading, trailing or double dot): {unfit:?}; import them under other names first"
        );
    }
    let models = ClusterModels::open(&bus).await?;
    let settings_bucket = ClusterSettings::open(&bus, config.schema()).await?;
    let keys_bucket = ClusterKeys::open(&bus).await?;
    if check_only {
        println!(
            "ready to join cluster {} as {}",
            config.cluster.name, bus.node
        );
        return Ok(());
    }
    let local = read_settings(&config.data.dir)?;
    let adopted = settings_bucket
        .adopt(&local)
        .await
        .context("sharing the settings")?;
    println!(
        "settings: {} shared ({}); {} the cluster sets otherwise, its values kept ({}); {} \
         deciding who is trusted kept to this node ({}): an admin sets them for the cluster \
         with update_settings",
        adopted.added.len(),
        adopted.added.join(", "),
        adopted.differing.len(),
        adopted.differing.join(", "),
        adopted.trusted.len(),
        adopted.trusted.join(", ")
    );
    let keys = KeyStore::open(&config.data.dir);
    let offered = keys_bucket.offer(&keys).await?;
    println!(
        "api keys: {offered} of {} shared (the others the cluster had, or revoked)",
        keys.list()?.len()
    );
    if publish_models {
        publish_all(&models, &store).await?;
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

/// Publish every model of the store the cluster lacks. A model the cluster
/// holds under the same name with other content is the cluster's: left as
/// it is, and said.
async fn publish_all(cluster: &ClusterModels, store: &Arc<ModelStore>) -> anyhow::Result<()> {
    for model in store.list()? {
        match cluster.entry(&model.name).await? {
            Some(entry) if entry.sha256 == model.sha256 => {
                println!("model {}: already in the cluster", model.name);
                continue;
            }
            Some(entry) => {
                println!(
                    "model {}: the cluster has another model of this name (sha256 {}), kept; \
                     import this one under another name to share it",
                    model.name, entry.sha256
                );
                continue;
            }
            None => {}
        }
        let bar = ProgressBar::new(model.size_bytes).with_style(
            ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("a valid template"),
        );
        bar.set_message(format!("publishing {}", model.name));
        let entry = cluster
            .publish(store, &model.name, |done, total| {
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
