//! `jetsonmind models …`: the model store from the command line; `publish`
//! and `pull` move models between it and the cluster `[cluster]` names.

use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use jetsonmind_cluster::Bus;
use jetsonmind_cluster_state::models::ClusterModels;
use jetsonmind_core::Config;
use jetsonmind_store::{ImportOptions, ModelInfo, ModelStore};

use crate::cli::ModelsCommand;

pub async fn run(command: ModelsCommand, config: &Config) -> anyhow::Result<()> {
    let store = ModelStore::open(&config.data.dir)
        .with_context(|| format!("opening the model store in {}", config.data.dir.display()))?;
    match command {
        ModelsCommand::Publish { name } => {
            let cluster = cluster_models(config).await?;
            let bar = byte_bar();
            let entry = cluster
                .publish(&store, &name, |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await
                .with_context(|| format!("publishing {name}"))?;
            bar.finish_and_clear();
            println!(
                "published {} to cluster {} ({} files, {} bytes, sha256 {})",
                entry.name,
                cluster.cluster(),
                entry.files.len(),
                entry.size_bytes,
                entry.sha256
            );
        }
        ModelsCommand::Pull { name } => {
            let cluster = cluster_models(config).await?;
            let bar = byte_bar();
            let model = cluster
                .pull(&Arc::new(store), &name, |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await
                .with_context(|| format!("pulling {name}"))?;
            bar.finish_and_clear();
            println!(
                "pulled {} ({}, {} bytes, sha256 {}) from {}",
                model.name,
                describe(&model),
                model.size_bytes,
                model.sha256,
                model.source
            );
        }
        ModelsCommand::Import {
            path,
            name,
            source,
            license,
            link,
        } => {
            let options = ImportOptions {
                name,
                source,
                license,
                link,
            };
            let bar = byte_bar();
            let model = store
                .import(&path, &options, |copied, total| {
                    bar.set_length(total);
                    bar.set_position(copied);
                })
                .with_context(|| format!("importing {}", path.display()))?;
            bar.finish_and_clear();
            println!(
                "imported {} ({}, {} bytes, sha256 {})",
                model.name,
                describe(&model),
                model.size_bytes,
                model.sha256
            );
        }
        ModelsCommand::List { json } => {
            let models = store.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&models)?);
                return Ok(());
            }
            for model in &models {
                println!(
                    "{}\t{}\t{} bytes\tsha256 {}",
                    model.name,
                    describe(model),
                    model.size_bytes,
                    &model.sha256[..12.min(model.sha256.len())]
                );
            }
        }
        ModelsCommand::Verify { name } => {
            let check = store.verify(&name)?;
            for file in &check.files {
                match &file.problem {
                    None => println!("ok\t{}", file.path),
                    Some(problem) => println!("FAILED\t{}: {problem}", file.path),
                }
            }
            anyhow::ensure!(check.ok, "{name}: some files do not match their sha256");
        }
        ModelsCommand::Remove { name } => {
            let model = store.remove(&name)?;
            println!("removed {}", model.name);
        }
    }
    Ok(())
}

/// A progress bar of bytes, for copies and transfers.
fn byte_bar() -> ProgressBar {
    ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("a valid template"),
    )
}

/// The cluster's models, through the NATS servers `[cluster]` names.
async fn cluster_models(config: &Config) -> anyhow::Result<ClusterModels> {
    anyhow::ensure!(
        config.cluster.enabled(),
        "no cluster to reach: set cluster.urls in the config file (or \
         JETSONMIND_CLUSTER__URLS='[\"nats://HOST:4222\"]')"
    );
    let bus = Bus::connect(&config.cluster).await?;
    Ok(ClusterModels::open(&bus).await?)
}

/// `gguf llama Q4_1` — format and what the file says of itself.
fn describe(model: &ModelInfo) -> String {
    [
        Some(model.format.as_str()),
        model.architecture.as_deref(),
        model.quantization.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ")
}
