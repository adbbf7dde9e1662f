//! `jetsonmind restore --from-cloud`: a site that lost its NATS servers'
//! state (a replaced device, a wiped disk) gets it back from the cloud hub's
//! backup (`jetsonmind_cluster_state::backup`). What the site still has is
//! left alone: it is newer than any backup.

use std::time::Instant;

use anyhow::{Context, bail};
use jetsonmind_cluster::Bus;
use jetsonmind_cluster_state::backup::{self, Restored};
use jetsonmind_control::config::HybridConfig;
use jetsonmind_core::Config;

pub async fn restore_command(config: &Config) -> anyhow::Result<()> {
    if !config.cluster.enabled() || !config.section::<HybridConfig>().enabled() {
        bail!(
            "--from-cloud needs the site's NATS servers ([cluster] urls) and the hub's domain \
             (hybrid.hub_domain)"
        );
    }
    let started = Instant::now();
    let bus = Bus::connect(&config.cluster).await?;
    // The model files' Object Store is not rebuilt here: its models are
    // published again (`jetsonmind models publish`) where they are kept.
    let streams: Vec<String> = backup::backed_up(&bus, false);
    let restored =
        backup::restore_from_cloud(&bus, &config.section::<HybridConfig>().hub_domain, &streams)
            .await
            .context("restoring from the hub")?;
    for (stream, outcome) in &restored {
        match outcome {
            Restored::Kept { messages } => {
                println!("{stream}: kept (the site has it: {messages} records)")
            }
            Restored::Rebuilt {
                entries,
                first_sequence,
            } => println!(
                "{stream}: restored from the hub ({entries} entries; numbered on from {first_sequence})"
            ),
            Restored::NotBackedUp => println!("{stream}: the hub has no backup of it"),
        }
    }
    eprintln!(
        "restored from hub `{}` in {:.1} s; start the site's nodes: each takes its settings and keys \
         from the site as it joins",
        config.section::<HybridConfig>().hub_domain,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
