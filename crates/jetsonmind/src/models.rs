//! `jetsonmind models …`: the model store from the command line.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use jetsonmind_core::Config;
use jetsonmind_data::store::{ImportOptions, ModelInfo, ModelStore};

use crate::cli::ModelsCommand;

pub fn run(command: ModelsCommand, config: &Config) -> anyhow::Result<()> {
    let store = ModelStore::open(&config.data.dir)
        .with_context(|| format!("opening the model store in {}", config.data.dir.display()))?;
    match command {
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
            let bar = ProgressBar::new(0).with_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("a valid template"),
            );
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
