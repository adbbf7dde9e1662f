//! `jetsonmind models …`: the model store from the command line.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use jetsonmind_core::Config;
use jetsonmind_data::models::{ModelDir, import_gguf};

use crate::cli::ModelsCommand;

pub fn run(command: ModelsCommand, config: &Config) -> anyhow::Result<()> {
    let dir = config.models_dir();
    match command {
        ModelsCommand::Import { file, name } => {
            let bar = ProgressBar::new(0).with_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("a valid template"),
            );
            let imported = import_gguf(&file, &dir, name.as_deref(), |copied, total| {
                bar.set_length(total);
                bar.set_position(copied);
            })
            .with_context(|| format!("importing {}", file.display()))?;
            bar.finish_and_clear();
            println!(
                "imported {} ({} bytes, sha256 {})",
                imported.path.display(),
                imported.size_bytes,
                imported.sha256
            );
        }
        ModelsCommand::List => {
            let list = ModelDir::new(dir)
                .list()
                .map_err(|e| anyhow::anyhow!(e.message.to_string()))?;
            for model in list.models {
                println!(
                    "{}\t{}\t{} bytes",
                    model.name, model.format, model.size_bytes
                );
            }
        }
    }
    Ok(())
}
