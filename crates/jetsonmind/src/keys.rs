//! `jetsonmind keys`: API keys in the data dir, hashed at rest.

use anyhow::Context;
use jetsonmind_core::Config;
use jetsonmind_core::auth::KeyStore;

use crate::cli::KeysCommand;

pub fn run(command: KeysCommand, config: &Config) -> anyhow::Result<()> {
    let store = KeyStore::open(&config.data.dir);
    match command {
        KeysCommand::Create { name, scopes } => {
            let key = store.create(&name, &scopes).context("creating the key")?;
            eprintln!(
                "created key {} ({}) with scopes {}; it is shown once, keep it safe:",
                key.id,
                key.name,
                key.scopes.join(" ")
            );
            println!("{}", key.key);
        }
        KeysCommand::List => {
            for key in store.list()? {
                println!("{}\t{}\t{}", key.id, key.name, key.scopes.join(" "));
            }
        }
        KeysCommand::Revoke { id } => {
            let key = store.revoke(&id)?;
            eprintln!("revoked key {} ({})", key.id, key.name);
        }
    }
    Ok(())
}
