//! `jetsonmind keys`: API keys, hashed at rest. On one device they live in
//! the data dir; with `[cluster]` set they are the cluster's, and every
//! node mirrors them into its own key file.

use anyhow::Context;
use jetsonmind_cluster::Bus;
use jetsonmind_cluster_state::keys::ClusterKeys;
use jetsonmind_core::Config;
use jetsonmind_core::auth::KeyStore;
use jetsonmind_core::auth::keys::{NewKey, StoredKey, supplied};

use crate::cli::KeysCommand;

pub async fn run(command: KeysCommand, config: &Config) -> anyhow::Result<()> {
    match config.cluster.enabled() {
        true => {
            let bus = Bus::connect(&config.cluster).await?;
            on(&ClusterKeys::open(&bus).await?, command).await
        }
        false => on(&KeyStore::open(&config.data.dir), command).await,
    }
}

/// Where keys are kept: this node's key file, or the cluster's bucket.
trait Keys {
    async fn create(&self, name: &str, scopes: &[String]) -> anyhow::Result<NewKey>;
    async fn add(&self, key: StoredKey) -> anyhow::Result<bool>;
    async fn list(&self) -> anyhow::Result<Vec<StoredKey>>;
    async fn revoke(&self, id: &str) -> anyhow::Result<StoredKey>;
}

impl Keys for KeyStore {
    async fn create(&self, name: &str, scopes: &[String]) -> anyhow::Result<NewKey> {
        Ok(KeyStore::create(self, name, scopes)?)
    }
    async fn add(&self, key: StoredKey) -> anyhow::Result<bool> {
        Ok(KeyStore::add(self, key)?)
    }
    async fn list(&self) -> anyhow::Result<Vec<StoredKey>> {
        Ok(KeyStore::list(self)?)
    }
    async fn revoke(&self, id: &str) -> anyhow::Result<StoredKey> {
        Ok(KeyStore::revoke(self, id)?)
    }
}

impl Keys for ClusterKeys {
    async fn create(&self, name: &str, scopes: &[String]) -> anyhow::Result<NewKey> {
        Ok(ClusterKeys::create(self, name, scopes).await?)
    }
    async fn add(&self, key: StoredKey) -> anyhow::Result<bool> {
        Ok(ClusterKeys::add(self, key).await?)
    }
    async fn list(&self) -> anyhow::Result<Vec<StoredKey>> {
        Ok(ClusterKeys::list(self).await?)
    }
    async fn revoke(&self, id: &str) -> anyhow::Result<StoredKey> {
        Ok(ClusterKeys::revoke(self, id).await?)
    }
}

async fn on(keys: &impl Keys, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            name,
            scopes,
            key_from_env: Some(var),
        } => {
            let key = supplied_key(&name, &scopes, &var)?;
            added(&key, keys.add(key.clone()).await.context("adding the key")?);
        }
        KeysCommand::Create { name, scopes, .. } => created(
            &keys
                .create(&name, &scopes)
                .await
                .context("creating the key")?,
        ),
        KeysCommand::List => listed(&keys.list().await?),
        KeysCommand::Revoke { id } => revoked(&keys.revoke(&id).await?),
    }
    Ok(())
}

fn created(key: &NewKey) {
    eprintln!(
        "created key {} ({}) with scopes {}; it is shown once, keep it safe:",
        key.id,
        key.name,
        key.scopes.join(" ")
    );
    println!("{}", key.key);
}

/// The key in `$var`, checked, as it is stored.
fn supplied_key(name: &str, scopes: &[String], var: &str) -> anyhow::Result<StoredKey> {
    let key = std::env::var(var).with_context(|| format!("--key-from-env: {var} is not set"))?;
    supplied(name, scopes, key.trim()).with_context(|| format!("the key in {var}"))
}

fn added(key: &StoredKey, new: bool) {
    match new {
        true => eprintln!(
            "added key {} ({}) with scopes {}",
            key.id,
            key.name,
            key.scopes.join(" ")
        ),
        false => eprintln!("key {} ({}) is there already", key.id, key.name),
    }
}

fn listed(keys: &[StoredKey]) {
    for key in keys {
        println!("{}\t{}\t{}", key.id, key.name, key.scopes.join(" "));
    }
}

fn revoked(key: &StoredKey) {
    eprintln!("revoked key {} ({})", key.id, key.name);
}
