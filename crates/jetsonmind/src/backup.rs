//! `jetsonmind backup` and `jetsonmind restore` (the archive itself:
//! `jetsonmind_backup`), and `restore --from-cloud` (`cloud`).

pub mod cloud;

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::Context;
use jetsonmind_backup::{
    CONFIG_ENTRY, Source, archive_name, create, parent_of, restore, size_report,
};
use jetsonmind_core::Config;
use jetsonmind_core::config::ConfigSources;

/// `jetsonmind backup`: the sizes on stderr, the archive's path on stdout
/// (for scripts).
pub fn backup_command(
    config: &Config,
    config_file: Option<&Path>,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let data_dir = &config.data.dir;
    let output = output.unwrap_or_else(|| {
        data_dir
            .join("backups")
            .join(archive_name(SystemTime::now()))
    });
    let source = Source {
        data_dir,
        config_file,
        node: node_name(config),
    };
    let manifest = create(&source, &output)?;
    eprintln!(
        "backed up {} in {:.1?}:\n{}",
        data_dir.display(),
        started.elapsed(),
        size_report(&manifest.files)
    );
    println!("{}", output.display());
    Ok(())
}

/// `jetsonmind restore`, into the data dir `sources` name (without reading
/// its settings: they may be what the restore mends).
pub fn restore_command(sources: &ConfigSources, archive: &Path, force: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let settings = sources.settings_path().context("finding the data dir")?;
    let data_dir = parent_of(&settings);
    let restored = restore(data_dir, archive, force)?;
    let manifest = &restored.manifest;
    println!(
        "restored {} (node {}, {}) into {} in {:.1?}",
        archive.display(),
        manifest.node,
        manifest.created,
        data_dir.display(),
        started.elapsed()
    );
    if let Some(aside) = &restored.aside {
        println!("what was there before is kept in {}", aside.display());
    }
    if let Some(file) = &manifest.config_file {
        println!(
            "its config file (was {}) is restored as {}: pass it with --config",
            file.display(),
            data_dir.join(CONFIG_ENTRY).display()
        );
    }
    Ok(())
}

/// The node's name: `cluster.node`, else the host name.
fn node_name(config: &Config) -> String {
    match config.cluster.node.is_empty() {
        true => jetsonmind_store::host_name(),
        false => config.cluster.node.clone(),
    }
}
