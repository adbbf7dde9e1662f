//! `jetsonmind cluster status`: the edge cluster as NATS holds it now, read
//! the way any node reads it (membership bucket, model registry,
//! placements, telemetry stream), without joining: nothing is written and
//! no bucket is made. What it shows: `jetsonmind_cluster_state::status::report`.

use std::time::Duration;

use jetsonmind_cluster::Bus;
use jetsonmind_cluster_state::backup;
use jetsonmind_cluster_state::status::ClusterReading;
use jetsonmind_cluster_state::status::report::{ClusterStatus, render, report};
use jetsonmind_control::config::HybridConfig;
use jetsonmind_core::Config;

pub async fn status(json: bool, config: &Config) -> anyhow::Result<()> {
    let cluster = &config.cluster;
    anyhow::ensure!(
        cluster.enabled(),
        "no cluster to look at: pass --cluster nats://HOST:4222 or set [cluster] urls"
    );
    let limit = Duration::from_millis(cluster.status_timeout_ms);
    let status = tokio::time::timeout(limit, read_status(config))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no answer from NATS at {} within {limit:?} (cluster.status_timeout_ms)",
                cluster.urls.join(",")
            )
        })??;
    match json {
        true => println!("{}", serde_json::to_string_pretty(&status)?),
        false => print!("{}", render(&status)),
    }
    Ok(())
}

async fn read_status(whole: &Config) -> anyhow::Result<ClusterStatus> {
    let config = &whole.cluster;
    let bus = Bus::connect(config).await?;
    let hybrid = &whole.section::<HybridConfig>();
    let cloud = match hybrid.enabled() {
        true => {
            let streams = backup::backed_up(&bus, hybrid.backup_model_files);
            Some(
                backup::read_cloud(&bus, &hybrid.hub_domain, &hybrid.cloud_cluster, &streams).await,
            )
        }
        false => None,
    };
    let reading = ClusterReading::read(&bus).await?;
    Ok(report(&reading, config, cloud))
}
