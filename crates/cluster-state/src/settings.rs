//! Cluster-wide settings: one document in a KV bucket, written with
//! compare-and-set on its revision, watched by every node.
//!
//! One document, not one key per setting, so an update of several keys is
//! applied whole or not at all. Conflicts are still told per key: the
//! document records, for each key, the revision the change that last set it
//! was made from. A change made from revision `base` conflicts with a key
//! whose last change was made from `base` or later (that change came after
//! what the caller saw); changes to other keys since `base` are merged.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::jetstream::kv;
use bytes::Bytes;
use jetsonmind_cluster::Bus;
use jetsonmind_core::config::{ClusterLayer, Schema};
use jetsonmind_data::settings::{
    BoxFuture, Settings, SettingsError, SharedSettings, get_key, leaf_keys, set_key,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{StateError, Watched, durable_bucket, follow_bucket, open_bucket};

/// The one key of the settings bucket.
const DOCUMENT: &str = "settings";

/// The cluster's settings as stored.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Document {
    /// Sections of keys, as in the config file.
    values: toml::Table,
    /// For each dotted key changed, the revision its last change was made from.
    changed_from: BTreeMap<String, u64>,
    /// The node that wrote this revision.
    written_by: String,
}

/// The cluster's settings bucket, as one node uses it.
pub struct ClusterSettings {
    bucket: kv::Store,
    node: String,
    /// Which keys are a node's own and which decide trust.
    schema: Schema,
}

impl ClusterSettings {
    /// Open the bucket (made by the first node that needs it), for settings
    /// of `schema`'s sections.
    pub async fn open(bus: &Bus, schema: Schema) -> Result<Self, StateError> {
        let config = durable_bucket(
            bus,
            "settings",
            "JetsonMind cluster-wide settings: one document, written compare-and-set",
            5,
        );
        let bucket = open_bucket(bus, config).await?;
        Ok(Self {
            bucket,
            node: bus.node.clone(),
            schema,
        })
    }

    /// Share `settings` with the cluster: apply what the cluster holds now,
    /// write this node's cluster-wide changes to it from now on, and apply
    /// every later change until `shutdown`.
    pub async fn join(
        self,
        settings: Arc<Settings>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, StateError> {
        let this = Arc::new(self);
        settings.join_shared(this.read().await?.unwrap_or_default());
        settings
            .share_with(this.clone())
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        tokio::spawn(this.clone().follow(settings, shutdown));
        Ok(this)
    }

    /// The cluster's settings now, if any were ever written.
    pub async fn read(&self) -> Result<Option<ClusterLayer>, StateError> {
        Ok(self
            .document()
            .await?
            .map(|(document, revision)| ClusterLayer {
                revision,
                values: document.values,
            }))
    }

    /// Add this node's cluster-wide `settings` (a `settings.toml`) that the
    /// cluster does not set yet; the cluster's own values win. Returns the
    /// keys added and the keys the cluster already sets differently.
    pub async fn adopt(&self, settings: &toml::Table) -> Result<Adopted, StateError> {
        let mut local = Vec::new();
        leaf_keys(settings, "", &mut local);
        local.retain(|key| !self.schema.is_node_key(key));
        // Who is trusted is the cluster's admin's to decide, not a newcomer's.
        let (trusted, local): (Vec<String>, Vec<String>) = local
            .into_iter()
            .partition(|key| self.schema.touches_trust(key));
        loop {
            let (document, revision) = self.document().await?.unwrap_or_default();
            let (set, unset): (Vec<String>, Vec<String>) = local
                .iter()
                .cloned()
                .partition(|key| get_key(&document.values, key).is_some());
            let differing = set
                .into_iter()
                .filter(|key| get_key(&document.values, key) != get_key(settings, key))
                .collect();
            if unset.is_empty() {
                return Ok(Adopted {
                    added: unset,
                    differing,
                    trusted,
                });
            }
            let changes = unset
                .iter()
                .map(|key| (key.clone(), get_key(settings, key)))
                .collect();
            match self.write_changes(changes, revision).await {
                Ok(_) => {
                    return Ok(Adopted {
                        added: unset,
                        differing,
                        trusted,
                    });
                }
                // Changed meanwhile: look again.
                Err(SettingsError::Conflict { .. }) => continue,
                Err(e) => return Err(StateError::Invalid(e.to_string())),
            }
        }
    }

    async fn document(&self) -> Result<Option<(Document, u64)>, StateError> {
        let entry = self
            .bucket
            .entry(DOCUMENT)
            .await
            .map_err(StateError::jetstream)?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                Ok(Some((parse(&entry.value)?, entry.revision)))
            }
            Some(entry) => Ok(Some((Document::default(), entry.revision))),
            None => Ok(None),
        }
    }

    /// Apply each new revision to `settings` until `shutdown`.
    async fn follow(self: Arc<Self>, settings: Arc<Settings>, shutdown: CancellationToken) {
        follow_bucket(self.bucket.clone(), DOCUMENT, shutdown, |watched| {
            if let Watched::Entry(entry) = watched {
                apply(&settings, entry);
            }
        })
        .await
    }

    /// Write `changes` made from revision `base`, merging changes to other
    /// keys since; a key changed since `base` is a conflict.
    async fn write_changes(
        &self,
        changes: Vec<(String, Option<toml::Value>)>,
        base: u64,
    ) -> Result<ClusterLayer, SettingsError> {
        if let Some((key, _)) = changes.iter().find(|(key, _)| self.schema.is_node_key(key)) {
            return Err(SettingsError::Invalid(format!(
                "{key} is each node's own setting: it is not written for the cluster"
            )));
        }
        loop {
            let (mut document, revision) = self
                .document()
                .await
                .map_err(unavailable)?
                .unwrap_or_default();
            let conflicts: Vec<String> = changes
                .iter()
                .map(|(key, _)| key)
                .filter(|key| changed_since(&document, key, base))
                .cloned()
                .collect();
            if revision > base && !conflicts.is_empty() {
                return Err(SettingsError::Conflict {
                    keys: conflicts,
                    base,
                    revision,
                });
            }
            for (key, value) in &changes {
                set_key(&mut document.values, key, value.clone());
                // Forget the records of keys a change replaced whole.
                document
                    .changed_from
                    .retain(|other, _| !other.starts_with(&format!("{key}.")));
                document.changed_from.insert(key.clone(), revision);
            }
            document.written_by = self.node.clone();
            let bytes = Bytes::from(serde_json::to_vec(&document).map_err(unavailable)?);
            match self.bucket.update(DOCUMENT, bytes, revision).await {
                Ok(written) => {
                    return Ok(ClusterLayer {
                        revision: written,
                        values: document.values,
                    });
                }
                // Someone wrote in between: look again (their change may be
                // to one of these keys).
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(unavailable(e)),
            }
        }
    }
}

impl SharedSettings for ClusterSettings {
    fn write(
        &self,
        changes: Vec<(String, Option<toml::Value>)>,
        base: u64,
    ) -> BoxFuture<'_, Result<ClusterLayer, SettingsError>> {
        Box::pin(self.write_changes(changes, base))
    }
}

/// What [`ClusterSettings::adopt`] did.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Adopted {
    /// This node's keys the cluster now sets too.
    pub added: Vec<String>,
    /// This node's keys the cluster sets to other values (the cluster's win).
    pub differing: Vec<String>,
    /// This node's trust settings (auth, allowed hosts …): not shared; an
    /// admin sets them for the cluster with `update_settings`.
    pub trusted: Vec<String>,
}

/// Whether `key`, a key within it, or a section holding it was changed by a
/// change made from revision `base` or later.
fn changed_since(document: &Document, key: &str, base: u64) -> bool {
    document.changed_from.iter().any(|(changed, from)| {
        *from >= base
            && (changed == key
                || changed.starts_with(&format!("{key}."))
                || key.starts_with(&format!("{changed}.")))
    })
}

fn apply(settings: &Settings, entry: kv::Entry) {
    let values = match entry.operation {
        kv::Operation::Put => match parse(&entry.value) {
            Ok(document) => document.values,
            Err(e) => {
                tracing::warn!(revision = entry.revision, error = %e, "unreadable cluster settings");
                return;
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => toml::Table::new(),
    };
    settings.apply_shared(ClusterLayer {
        revision: entry.revision,
        values,
    });
}

fn parse(bytes: &[u8]) -> Result<Document, StateError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StateError::Invalid(format!("the cluster's settings document: {e}")))
}

fn unavailable(error: impl std::fmt::Display) -> SettingsError {
    SettingsError::Unavailable(error.to_string())
}
