//! Settings changed at run time: validated against the whole configuration,
//! persisted, and published to whoever follows them (the inference cache,
//! the change notifier, subscribers of `jetson://config/settings`).
//!
//! On one device every setting is saved in `<data dir>/settings.toml`. In a
//! cluster, the cluster-wide ones (all but each section's node keys:
//! [`Schema::node_keys`]) are written to the
//! cluster's shared settings instead ([`SharedSettings`], compare-and-set on
//! a revision), and every node applies what the cluster holds as a layer
//! over its own file ([`Settings::apply_shared`]), kept in
//! `<data dir>/cluster_settings.json` so a restarted node starts with it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jetsonmind_core::config::{
    CLUSTER_SETTINGS_FILE, ClusterLayer, ConfigSources, SETTINGS_FILE, Schema, merge, read_settings,
};
use jetsonmind_core::{Config, CoreError};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;

/// `values` without the keys `schema` says are a node's own.
fn strip_node_keys(values: &mut toml::Table, schema: &Schema) {
    for key in schema.node_keys() {
        set_key(values, key, None);
    }
}

/// Who asks for an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// May change every setting.
    Admin,
    /// May change settings, but not the trust keys ([`Schema::trust_keys`]).
    Operator,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot save the settings: {0}")]
    Save(String),
    #[error("{0} decide(s) who is trusted: only the admin scope may change them")]
    Forbidden(String),
    #[error(
        "conflict: {} changed elsewhere since revision {base} (the cluster's settings are at \
         revision {revision} now); read jetson://config/settings and retry",
        keys.join(", ")
    )]
    Conflict {
        keys: Vec<String>,
        base: u64,
        revision: u64,
    },
    #[error("the cluster's settings cannot be reached: {0}")]
    Unavailable(String),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the cluster-wide settings of a cluster live (the cluster-state
/// crate keeps them in JetStream).
pub trait SharedSettings: Send + Sync {
    /// Set (`Some`) or reset (`None`) each dotted key, unless one of them
    /// changed after revision `base`: then [`SettingsError::Conflict`],
    /// naming them. Changes to other keys since `base` are kept. Returns the
    /// settings as written.
    fn write(
        &self,
        changes: Vec<(String, Option<toml::Value>)>,
        base: u64,
    ) -> BoxFuture<'_, Result<ClusterLayer, SettingsError>>;
}

/// What an update did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Update {
    /// The keys changed (dotted paths); a `null` value reset the key.
    pub changed: Vec<String>,
    /// Of those, the ones in effect now.
    pub effective_now: Vec<String>,
    /// The ones that take effect when the server restarts.
    pub after_restart: Vec<String>,
    /// The ones an environment variable or flag overrides for this run.
    pub overridden: Vec<String>,
    /// The ones written for the whole cluster (the rest are this node's).
    pub cluster_wide: Vec<String>,
    /// The revision of the cluster's settings after the update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Only checked, nothing saved.
    pub dry_run: bool,
}

/// Which settings are the cluster's and which this node's.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Scope {
    /// Whether cluster-wide settings are written to a cluster.
    pub cluster: bool,
    /// The revision of the cluster's settings applied here (0: none); pass
    /// it as `if_revision` to `update_settings`.
    pub revision: u64,
    /// The keys the cluster sets, in effect here.
    pub cluster_values: Vec<String>,
    /// The keys that stay with each node.
    pub node_keys: Vec<&'static str>,
    /// The keys that decide who is trusted: only `admin` changes them.
    pub trust_keys: Vec<&'static str>,
}

/// How long an update waits for nothing in particular: a bound on writing
/// to the cluster, which answers in milliseconds when reachable.
const SHARED_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Settings {
    sources: ConfigSources,
    current: watch::Sender<Config>,
    /// One update at a time: read, merge, write.
    writing: tokio::sync::Mutex<()>,
    /// The cluster's settings as applied here.
    layer: watch::Sender<ClusterLayer>,
    /// One cluster layer taken at a time.
    taking: std::sync::Mutex<()>,
    shared: OnceLock<Arc<dyn SharedSettings>>,
}

impl Settings {
    pub fn new(sources: ConfigSources, config: Config) -> Self {
        let layer = sources
            .settings_dir()
            .and_then(|dir| ClusterLayer::read(&dir))
            .unwrap_or_default();
        Self {
            sources,
            current: watch::Sender::new(config),
            writing: tokio::sync::Mutex::new(()),
            layer: watch::Sender::new(layer),
            taking: std::sync::Mutex::new(()),
            shared: OnceLock::new(),
        }
    }

    /// Settings over a configuration with no file and no environment
    /// (tests, or a server built in code): its own sections are the ones
    /// settings may change.
    pub fn fixed(config: Config) -> Self {
        let sources = ConfigSources {
            data_dir: Some(config.data.dir.clone()),
            schema: config.schema(),
            ..Default::default()
        };
        Self::new(sources, config)
    }

    /// The sections these settings hold, and what each key is to them.
    pub fn schema(&self) -> &Schema {
        &self.sources.schema
    }

    pub fn current(&self) -> Config {
        self.current.borrow().clone()
    }

    /// The value saved for dotted `key` (this node's file under the
    /// cluster's layer), if any: what resetting it would drop.
    pub fn saved(&self, key: &str) -> Result<Option<toml::Value>, SettingsError> {
        let dir = self.sources.settings_dir().map_err(invalid)?;
        let local = read_settings(&dir).map_err(invalid)?;
        let layer = self.layer.borrow().clone();
        Ok(get_key(&layered(&local, &layer.values), key))
    }

    /// Follow changes: the receiver sees each new configuration.
    pub fn follow(&self) -> watch::Receiver<Config> {
        self.current.subscribe()
    }

    /// From now on, write cluster-wide settings to `shared` (once: a node
    /// joins one cluster).
    pub fn share_with(&self, shared: Arc<dyn SharedSettings>) -> Result<(), SettingsError> {
        self.shared
            .set(shared)
            .map_err(|_| SettingsError::Invalid("the settings are already shared".into()))
    }

    /// Which settings are the cluster's and which this node's.
    pub fn scope(&self) -> Scope {
        let layer = self.layer.borrow();
        let mut cluster_values = Vec::new();
        leaf_keys(&layer.values, "", &mut cluster_values);
        Scope {
            cluster: self.shared.get().is_some(),
            revision: layer.revision,
            cluster_values,
            node_keys: self.schema().node_keys(),
            trust_keys: self.schema().trust_keys(),
        }
    }

    /// The cluster's settings at `layer.revision`, unless this node has
    /// applied that revision or a later one: kept in the data dir, then in
    /// effect here. A node's own keys in it are ignored (they never come
    /// from the cluster), and a layer this node cannot run with is refused
    /// (logged), so it never reaches the file it starts from.
    pub fn apply_shared(&self, layer: ClusterLayer) {
        self.take_layer(layer, false);
    }

    /// The cluster's settings as they are now, whatever revision this node
    /// had before: a node joining (perhaps another cluster, or one whose
    /// store was wiped) takes what the cluster holds, empty included.
    pub fn join_shared(&self, layer: ClusterLayer) {
        self.take_layer(layer, true);
    }

    fn take_layer(&self, mut layer: ClusterLayer, whatever_revision: bool) {
        strip_node_keys(&mut layer.values, self.schema());
        // One at a time, so the file always ends with the newest layer.
        let _one_at_a_time = self.taking.lock().unwrap_or_else(|p| p.into_inner());
        let applied = self.layer.borrow().clone();
        if (!whatever_revision && layer.revision <= applied.revision) || layer == applied {
            return;
        }
        let loaded = self
            .sources
            .settings_dir()
            .and_then(|dir| read_settings(&dir))
            .and_then(|local| self.sources.load_with(&layered(&local, &layer.values)));
        let config = match loaded {
            Ok(config) => config,
            Err(e) => {
                tracing::warn!(
                    revision = layer.revision,
                    error = %strip_config_prefix(&e),
                    "the cluster's settings do not fit this node; keeping the last ones that did"
                );
                return;
            }
        };
        if let Err(e) = self.save_layer(&layer) {
            tracing::warn!(error = %e, "cannot keep the cluster's settings in the data dir");
        }
        self.layer.send_replace(layer);
        self.current.send_if_modified(|current| {
            let changed = *current != config;
            *current = config;
            changed
        });
    }

    /// Make the cluster's settings this node's own, for good (the node leaves
    /// its cluster): the cluster-wide values last applied go into
    /// `settings.toml` over the file's (they were the ones in effect), the
    /// layer kept for the cluster goes, and `cluster.urls` and
    /// `cluster.node` set at run time are reset. Returns the keys taken over.
    pub fn leave_cluster(&self) -> Result<Vec<String>, SettingsError> {
        let dir = self.sources.settings_dir().map_err(invalid)?;
        let mut local = read_settings(&dir).map_err(invalid)?;
        let layer = self.layer.borrow().clone();
        let mut kept = Vec::new();
        leaf_keys(&layer.values, "", &mut kept);
        merge(&mut local, &layer.values);
        for key in ["cluster.urls", "cluster.node"] {
            set_key(&mut local, key, None);
        }
        save(&dir.join(SETTINGS_FILE), &local)?;
        match std::fs::remove_file(dir.join(CLUSTER_SETTINGS_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(SettingsError::Save(format!("{CLUSTER_SETTINGS_FILE}: {e}")));
            }
            _ => {}
        }
        self.layer.send_replace(ClusterLayer::default());
        self.reload();
        Ok(kept)
    }

    /// The configuration again from the files and the cluster's layer.
    fn reload(&self) {
        let layer = self.layer.borrow().clone();
        let loaded = self
            .sources
            .settings_dir()
            .and_then(|dir| read_settings(&dir))
            .and_then(|local| self.sources.load_with(&layered(&local, &layer.values)));
        match loaded {
            Ok(config) => {
                self.current.send_if_modified(|current| {
                    let changed = *current != config;
                    *current = config;
                    changed
                });
            }
            Err(e) => tracing::warn!(
                revision = layer.revision,
                error = %strip_config_prefix(&e),
                "the cluster's settings do not fit this node; keeping the last ones that did"
            ),
        }
    }

    /// Apply `patch` (sections of keys, as in the TOML file; `null` resets a
    /// key to its default), check the result, save it, publish it. In a
    /// cluster, the cluster-wide keys are written to the cluster unless one
    /// of them changed after revision `if_revision` (default: the one
    /// applied here).
    pub async fn update(
        &self,
        patch: &Map<String, Value>,
        dry_run: bool,
        authority: Authority,
        if_revision: Option<u64>,
    ) -> Result<Update, SettingsError> {
        let _one_at_a_time = self.writing.lock().await;
        let path = self.sources.settings_path().map_err(invalid)?;
        let data_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let local = read_settings(&data_dir).map_err(invalid)?;
        let layer = self.layer.borrow().clone();
        let mut view = layered(&local, &layer.values);
        let mut changed = Vec::new();
        apply_patch(&mut view, patch, "", &mut changed)?;
        if changed.is_empty() {
            return Err(SettingsError::Invalid("no settings given".into()));
        }
        let trust: Vec<&str> = changed
            .iter()
            .map(String::as_str)
            .filter(|key| self.schema().touches_trust(key))
            .collect();
        if authority != Authority::Admin && !trust.is_empty() {
            return Err(SettingsError::Forbidden(trust.join(", ")));
        }
        let shared = self.shared.get().cloned();
        let (cluster_wide, own): (Vec<String>, Vec<String>) = changed
            .iter()
            .cloned()
            .partition(|key| shared.is_some() && !self.schema().is_node_key(key));
        let mut new_local = local.clone();
        let mut new_layer = layer.values.clone();
        for key in &own {
            set_key(&mut new_local, key, get_key(&view, key));
            // On one device a value kept from a cluster must not hide it.
            set_key(&mut new_layer, key, None);
        }
        for key in &cluster_wide {
            set_key(&mut new_layer, key, get_key(&view, key));
        }
        let config = self.check(&layered(&new_local, &new_layer), &changed)?;
        let overridden = overridden_keys(&config, &view, &changed);
        let (effective_now, after_restart) = changed
            .iter()
            .filter(|k| !overridden.contains(k))
            .cloned()
            .partition(|k| self.schema().is_live(k));
        let mut revision = None;
        if !dry_run {
            if let Some(shared) = shared.filter(|_| !cluster_wide.is_empty()) {
                let changes = cluster_wide
                    .iter()
                    .map(|key| (key.clone(), get_key(&view, key)))
                    .collect();
                let base = if_revision.unwrap_or(layer.revision);
                let written =
                    tokio::time::timeout(SHARED_WRITE_TIMEOUT, shared.write(changes, base))
                        .await
                        .map_err(|_| SettingsError::Unavailable("no answer in time".into()))??;
                revision = Some(written.revision);
                self.apply_shared(written);
            }
            if new_local != local {
                save(&path, &new_local)?;
            }
            if self.shared.get().is_none() && new_layer != layer.values {
                let kept = ClusterLayer {
                    revision: layer.revision,
                    values: new_layer,
                };
                self.save_layer(&kept)?;
                self.layer.send_replace(kept);
            }
            self.reload();
        }
        Ok(Update {
            changed,
            effective_now,
            after_restart,
            overridden,
            cluster_wide,
            revision,
            dry_run,
        })
    }
    /// The whole configuration with `settings`; an error names the key at fault.
    fn check(&self, settings: &toml::Table, changed: &[String]) -> Result<Config, SettingsError> {
        match self.sources.load_with(settings) {
            Ok(config) => Ok(config),
            // Find the key: the first change that fails on its own.
            Err(whole) => Err(SettingsError::Invalid(
                changed
                    .iter()
                    .find_map(|key| {
                        let alone = only_key(settings, key)?;
                        let error = self.sources.load_with(&alone).err()?;
                        Some(format!("{key}: {}", strip_config_prefix(&error)))
                    })
                    .unwrap_or_else(|| strip_config_prefix(&whole)),
            )),
        }
    }
}

impl Settings {
    /// Keep `layer` in the data dir, atomically.
    fn save_layer(&self, layer: &ClusterLayer) -> Result<(), SettingsError> {
        let dir = self.sources.settings_dir().map_err(invalid)?;
        let text =
            serde_json::to_string_pretty(layer).map_err(|e| SettingsError::Save(e.to_string()))?;
        write_atomically(&dir.join(CLUSTER_SETTINGS_FILE), text.as_bytes())
    }
}

/// `local` with the cluster's `values` over it.
fn layered(local: &toml::Table, values: &toml::Table) -> toml::Table {
    let mut view = local.clone();
    merge(&mut view, values);
    view
}

/// The value at dotted `key`, if set.
pub fn get_key(table: &toml::Table, key: &str) -> Option<toml::Value> {
    let (parents, last) = match key.rsplit_once('.') {
        Some((parents, last)) => (Some(parents), last),
        None => (None, key),
    };
    let mut node = table;
    for part in parents.into_iter().flat_map(|p| p.split('.')) {
        node = node.get(part)?.as_table()?;
    }
    node.get(last).cloned()
}

/// Set (`Some`) or remove (`None`) dotted `key`; sections left empty go.
pub fn set_key(table: &mut toml::Table, key: &str, value: Option<toml::Value>) {
    match key.split_once('.') {
        None => match value {
            Some(value) => {
                table.insert(key.to_string(), value);
            }
            None => {
                table.remove(key);
            }
        },
        Some((section, rest)) => {
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let Some(inner) = entry.as_table_mut() {
                set_key(inner, rest, value);
                if inner.is_empty() {
                    table.remove(section);
                }
            }
        }
    }
}

/// Every dotted key of `table` that holds a value (not a section).
pub fn leaf_keys(table: &toml::Table, prefix: &str, keys: &mut Vec<String>) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        match value {
            toml::Value::Table(inner) => leaf_keys(inner, &format!("{path}."), keys),
            _ => keys.push(path),
        }
    }
}

fn invalid(error: CoreError) -> SettingsError {
    SettingsError::Invalid(strip_config_prefix(&error))
}

fn strip_config_prefix(error: &CoreError) -> String {
    let text = error.to_string();
    let text = text.strip_prefix("config: ").unwrap_or(&text);
    // toml's messages carry a caret diagram of the generated table; the
    // first line says what is wrong.
    text.lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with("TOML parse error"))
        .unwrap_or(text)
        .trim()
        .to_string()
}

/// Merge a JSON patch into the TOML settings, recording dotted keys changed.
fn apply_patch(
    table: &mut toml::Table,
    patch: &Map<String, Value>,
    prefix: &str,
    changed: &mut Vec<String>,
) -> Result<(), SettingsError> {
    for (key, value) in patch {
        let path = format!("{prefix}{key}");
        match value {
            Value::Null => {
                table.remove(key);
                changed.push(path);
            }
            // A section: merge key by key, unless it replaces a non-table.
            Value::Object(inner) if !inner.is_empty() => {
                let entry = table
                    .entry(key.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let Some(section) = entry.as_table_mut() else {
                    return Err(SettingsError::Invalid(format!("{path}: is not a section")));
                };
                apply_patch(section, inner, &format!("{path}."), changed)?;
                if section.is_empty() {
                    table.remove(key);
                }
            }
            other => {
                let value = toml::Value::try_from(other).map_err(|e| {
                    SettingsError::Invalid(format!("{path}: cannot be a setting: {e}"))
                })?;
                table.insert(key.clone(), value);
                changed.push(path);
            }
        }
    }
    Ok(())
}

/// `settings` reduced to the one dotted `key` (with its parents).
fn only_key(settings: &toml::Table, key: &str) -> Option<toml::Table> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut value = toml::Value::Table(settings.clone());
    for part in &parts {
        value = value.as_table()?.get(*part)?.clone();
    }
    let mut single = toml::Table::new();
    let (last, parents) = parts.split_last()?;
    let mut leaf = toml::Table::new();
    leaf.insert(last.to_string(), value);
    for parent in parents.iter().rev() {
        let mut outer = toml::Table::new();
        outer.insert(parent.to_string(), toml::Value::Table(leaf));
        leaf = outer;
    }
    merge(&mut single, &leaf);
    Some(single)
}

/// Keys whose value in the effective configuration is not the one set:
/// an environment variable or flag wins for this run.
fn overridden_keys(config: &Config, settings: &toml::Table, changed: &[String]) -> Vec<String> {
    let effective = toml::Value::try_from(config).ok();
    let lookup = |root: Option<&toml::Value>, key: &str| {
        key.split('.')
            .try_fold(root?, |node, part| node.as_table()?.get(part))
            .cloned()
    };
    let settings = toml::Value::Table(settings.clone());
    changed
        .iter()
        .filter(|key| {
            let wanted = lookup(Some(&settings), key);
            wanted.is_some() && wanted != lookup(effective.as_ref(), key)
        })
        .cloned()
        .collect()
}

/// Save `settings.toml`.
fn save(path: &Path, settings: &toml::Table) -> Result<(), SettingsError> {
    let text = format!(
        "# Run-time settings of JetsonMind, written by update_settings.\n\
         # They win over the config file; environment variables and flags win over them.\n{}",
        toml::to_string_pretty(settings).map_err(|e| SettingsError::Save(e.to_string()))?
    );
    write_atomically(path, text.as_bytes())
}

/// Write atomically: a crash leaves the old file or the new, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SettingsError> {
    use std::io::Write;
    let fail = |e: std::io::Error| SettingsError::Save(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut partial = PathBuf::from(path);
    partial.as_mut_os_string().push(".partial");
    let mut file = std::fs::File::create(&partial).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&partial, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheConfig;
    use jetsonmind_core::config::{Schema, Section};
    use serde::Deserialize;
    use serde_json::json;

    /// Stand-ins for two other servers' sections: settings hold any section
    /// the schema names, and know which keys are live, trusted or a node's.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Engine {
        context_size: u32,
        parallel: usize,
        threads: usize,
    }

    impl Default for Engine {
        fn default() -> Self {
            Self {
                context_size: 4096,
                parallel: 0,
                threads: 0,
            }
        }
    }

    impl Section for Engine {
        const NAME: &'static str = "compute";

        fn validate(&self, _: &Config) -> Result<(), CoreError> {
            match self.parallel > 64 {
                true => Err(CoreError::Config("compute.parallel is at most 64".into())),
                false => Ok(()),
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Power {
        nvpmodel_set_command: Vec<String>,
    }

    impl Default for Power {
        fn default() -> Self {
            Self {
                nvpmodel_set_command: vec!["nvpmodel".into(), "-m".into(), "{mode}".into()],
            }
        }
    }

    impl Section for Power {
        const NAME: &'static str = "control";
        const TRUST_KEYS: &'static [&'static str] = &["control.nvpmodel_set_command"];
        const NODE_KEYS: &'static [&'static str] = &["control.nvpmodel_set_command"];
    }

    fn settings(dir: &Path, env: &[(&str, &str)]) -> Settings {
        let sources = ConfigSources {
            file: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            data_dir: Some(dir.to_path_buf()),
            schema: Schema::new()
                .with::<CacheConfig>()
                .with::<Engine>()
                .with::<Power>(),
        };
        let config = sources.load().unwrap();
        Settings::new(sources, config)
    }

    /// `cache.ttl_secs` as a node restarted on `dir` has it.
    fn ttl_after_a_restart(dir: &Path) -> u64 {
        settings(dir, &[])
            .current()
            .section::<CacheConfig>()
            .ttl_secs
    }

    fn patch(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn updates_are_checked_saved_published_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let live = settings(dir.path(), &[]);
        let mut follower = live.follow();
        let update = live
            .update(
                &patch(json!({"cache": {"ttl_secs": 60}, "compute": {"context_size": 2048}})),
                false,
                Authority::Admin,
                None,
            )
            .await
            .unwrap();
        assert_eq!(update.changed, ["cache.ttl_secs", "compute.context_size"]);
        assert_eq!(update.effective_now, ["cache.ttl_secs"]);
        assert_eq!(update.after_restart, ["compute.context_size"]);
        assert!(follower.has_changed().unwrap());
        assert_eq!(
            follower
                .borrow_and_update()
                .section::<CacheConfig>()
                .ttl_secs,
            60
        );
        let restarted = settings(dir.path(), &[]);
        assert_eq!(restarted.current().section::<CacheConfig>().ttl_secs, 60);
        assert_eq!(restarted.current().section::<Engine>().context_size, 2048);
        // null resets to the default.
        restarted
            .update(
                &patch(json!({"cache": {"ttl_secs": null}})),
                false,
                Authority::Admin,
                None,
            )
            .await
            .unwrap();
        assert_eq!(ttl_after_a_restart(dir.path()), 3600);
    }

    #[tokio::test]
    async fn errors_name_the_key_and_nothing_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let live = settings(dir.path(), &[]);
        let cases = [
            (json!({"cache": {"ttl_secs": "soon"}}), "cache.ttl_secs"),
            (json!({"cache": {"ttl_sec": 5}}), "ttl_sec"),
            (json!({"compute": {"parallel": 65}}), "parallel"),
            (json!({"nosuch": {"x": 1}}), "nosuch"),
            (json!({"data": {"dir": "/tmp/x"}}), "data.dir"),
            (json!({"cache": 5}), "cache"),
            (json!({}), "no settings"),
        ];
        for (bad, named) in cases {
            let err = live
                .update(&patch(bad.clone()), false, Authority::Admin, None)
                .await
                .unwrap_err();
            assert!(err.to_string().contains(named), "{bad}: {err}");
        }
        assert!(!dir.path().join("settings.toml").exists());
        assert_eq!(live.current(), settings(dir.path(), &[]).current());
    }

    #[tokio::test]
    async fn environment_wins_and_dry_runs_save_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let live = settings(dir.path(), &[("JETSONMIND_CACHE__TTL_SECS", "7")]);
        let update = live
            .update(
                &patch(json!({"cache": {"ttl_secs": 60, "max_bytes": 4096}})),
                false,
                Authority::Admin,
                None,
            )
            .await
            .unwrap();
        assert_eq!(update.overridden, ["cache.ttl_secs"]);
        assert_eq!(update.effective_now, ["cache.max_bytes"]);
        assert_eq!(live.current().section::<CacheConfig>().ttl_secs, 7);
        let dry = live
            .update(
                &patch(json!({"cache": {"max_bytes": 8192}})),
                true,
                Authority::Admin,
                None,
            )
            .await
            .unwrap();
        assert!(dry.dry_run);
        assert_eq!(live.current().section::<CacheConfig>().max_bytes, 4096);
    }

    #[tokio::test]
    async fn leaving_the_cluster_keeps_its_settings_as_this_nodes_own() {
        let dir = tempfile::tempdir().unwrap();
        let node = settings(dir.path(), &[]);
        node.update(
            &patch(json!({"cache": {"ttl_secs": 5, "max_bytes": 4096},
                          "cluster": {"urls": ["nats://a:4222"], "node": "n1"}})),
            false,
            Authority::Admin,
            None,
        )
        .await
        .unwrap();
        let values: toml::Table = toml::from_str("[cache]\nttl_secs = 60\n").unwrap();
        node.apply_shared(ClusterLayer {
            revision: 3,
            values,
        });
        assert_eq!(
            node.current().section::<CacheConfig>().ttl_secs,
            60,
            "the cluster's value wins"
        );
        assert!(dir.path().join(CLUSTER_SETTINGS_FILE).exists());

        assert_eq!(node.leave_cluster().unwrap(), ["cache.ttl_secs"]);
        assert!(!dir.path().join(CLUSTER_SETTINGS_FILE).exists());
        let restarted = settings(dir.path(), &[]).current();
        assert_eq!(
            restarted.section::<CacheConfig>().ttl_secs,
            60,
            "kept as this node's own"
        );
        assert_eq!(restarted.section::<CacheConfig>().max_bytes, 4096);
        assert!(restarted.cluster.urls.is_empty() && restarted.cluster.node.is_empty());
    }

    #[tokio::test]
    async fn the_clusters_settings_never_set_node_keys_nor_what_this_node_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let node = settings(dir.path(), &[]);
        let layer = |revision, text: &str| ClusterLayer {
            revision,
            values: toml::from_str(text).unwrap(),
        };
        node.apply_shared(layer(
            5,
            "[cache]\nttl_secs = 9\n[control]\nnvpmodel_set_command = [\"sh\", \"-c\", \"id\"]\n",
        ));
        assert_eq!(node.current().section::<CacheConfig>().ttl_secs, 9);
        assert_ne!(
            node.current().section::<Power>().nvpmodel_set_command[0],
            "sh"
        );
        assert_eq!(node.scope().cluster_values, ["cache.ttl_secs"]);
        // A newer node's key this one does not know: refused, nothing kept.
        node.apply_shared(layer(6, "[cache]\nttl_secs = 10\nfrom_the_future = 1\n"));
        assert_eq!(
            (
                node.scope().revision,
                node.current().section::<CacheConfig>().ttl_secs
            ),
            (5, 9)
        );
        let kept = ClusterLayer::read(dir.path()).unwrap();
        assert_eq!(kept.revision, 5);
        // Older revisions are ignored, unless the node joins a cluster anew.
        node.apply_shared(layer(2, "[cache]\nttl_secs = 2\n"));
        assert_eq!(node.current().section::<CacheConfig>().ttl_secs, 9);
        node.join_shared(layer(2, "[cache]\nttl_secs = 2\n"));
        assert_eq!(
            (
                node.scope().revision,
                node.current().section::<CacheConfig>().ttl_secs
            ),
            (2, 2)
        );
        // A kept layer that no longer loads does not stop the node.
        let broken = r#"{"revision": 7, "values": {"cache": {"nosuch": 1}}}"#;
        std::fs::write(dir.path().join(CLUSTER_SETTINGS_FILE), broken).unwrap();
        assert_eq!(ttl_after_a_restart(dir.path()), 3600);
    }

    #[tokio::test]
    async fn only_an_admin_changes_who_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let live = settings(dir.path(), &[]);
        let before = live.current();
        for attack in [
            json!({"auth": {"oauth": {"issuer": "https://evil", "jwks_url": "https://evil/jwks",
                                      "audience": "x"}}}),
            json!({"auth": null}),
            json!({"http": {"allowed_hosts": ["evil.example"]}}),
            json!({"http": null}),
            // A server section's own trust key (the real ones: the binary's tests).
            json!({"control": {"nvpmodel_set_command": ["sh", "-c", "id"]}}),
            json!({"telemetry": {"tegrastats_command": ["sh", "-c", "id"]}}),
            json!({"telemetry": {"root": "/tmp/a-board-of-my-own"}}),
        ] {
            let err = live
                .update(&patch(attack.clone()), false, Authority::Operator, None)
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("only the admin scope"),
                "{attack}: {err}"
            );
        }
        assert_eq!(live.current(), before, "nothing changed");
        assert!(!dir.path().join("settings.toml").exists(), "nothing saved");
        let ordinary = patch(json!({"cache": {"ttl_secs": 5}}));
        live.update(&ordinary, false, Authority::Operator, None)
            .await
            .unwrap();
        let trusted = patch(json!({"http": {"allowed_hosts": ["edge.example"]}}));
        live.update(&trusted, true, Authority::Admin, None)
            .await
            .unwrap();
    }
}
