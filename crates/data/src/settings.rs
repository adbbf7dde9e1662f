//! Settings changed at run time: validated against the whole configuration,
//! persisted in `<data dir>/settings.toml`, and published to whoever follows
//! them (the inference cache, the change notifier, subscribers of
//! `jetson://config/settings`).

use std::path::Path;

use jetsonmind_core::config::{ConfigSources, merge, read_settings};
use jetsonmind_core::{Config, CoreError};
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;

/// The keys whose new values take effect without a restart.
const LIVE_PREFIXES: &[&str] = &["cache.", "data.notify_interval_ms"];

/// Settings that decide who is trusted or what runs on the host: only an
/// administrator may change them, whoever else may call `update_settings`.
pub const TRUST_KEYS: &[&str] = &[
    "auth",
    "gateway.backends",
    "http.listen",
    "http.allowed_hosts",
    "http.allowed_origins",
    "control.replicas",
    "control.allow_power_changes",
    "control.nvpmodel_query_command",
    "control.nvpmodel_set_command",
    "control.jetson_clocks_command",
    "data.dir",
    "cluster",
];

/// Whether the dotted `key` is, holds, or lies within a trust setting.
fn touches_trust(key: &str) -> bool {
    let within = |outer: &str, inner: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|r| r.starts_with('.'))
    };
    TRUST_KEYS
        .iter()
        .any(|trust| within(trust, key) || within(key, trust))
}

/// Who asks for an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// May change every setting.
    Admin,
    /// May change settings, but not the [`TRUST_KEYS`].
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
    /// Only checked, nothing saved.
    pub dry_run: bool,
}

pub struct Settings {
    sources: ConfigSources,
    current: watch::Sender<Config>,
    /// One update at a time: read, merge, write.
    writing: std::sync::Mutex<()>,
}

impl Settings {
    pub fn new(sources: ConfigSources, config: Config) -> Self {
        Self {
            sources,
            current: watch::Sender::new(config),
            writing: std::sync::Mutex::new(()),
        }
    }

    /// Settings over a configuration with no file and no environment
    /// (tests, or a server built in code).
    pub fn fixed(config: Config) -> Self {
        let sources = ConfigSources {
            data_dir: Some(config.data.dir.clone()),
            ..Default::default()
        };
        Self::new(sources, config)
    }

    pub fn current(&self) -> Config {
        self.current.borrow().clone()
    }

    /// Follow changes: the receiver sees each new configuration.
    pub fn follow(&self) -> watch::Receiver<Config> {
        self.current.subscribe()
    }

    /// Apply `patch` (sections of keys, as in the TOML file; `null` resets a
    /// key to its default), check the result, save it, publish it.
    pub fn update(
        &self,
        patch: &Map<String, Value>,
        dry_run: bool,
        authority: Authority,
    ) -> Result<Update, SettingsError> {
        let _one_at_a_time = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.sources.settings_path().map_err(invalid)?;
        let data_dir = path.parent().unwrap_or(Path::new("."));
        let mut settings = read_settings(data_dir).map_err(invalid)?;
        let mut changed = Vec::new();
        apply_patch(&mut settings, patch, "", &mut changed)?;
        if changed.is_empty() {
            return Err(SettingsError::Invalid("no settings given".into()));
        }
        let trust: Vec<&str> = changed
            .iter()
            .map(String::as_str)
            .filter(|key| touches_trust(key))
            .collect();
        if authority != Authority::Admin && !trust.is_empty() {
            return Err(SettingsError::Forbidden(trust.join(", ")));
        }
        let config = self.check(&settings, &changed)?;
        let overridden = overridden_keys(&config, &settings, &changed);
        let (effective_now, after_restart) = changed
            .iter()
            .filter(|k| !overridden.contains(k))
            .cloned()
            .partition(|k| LIVE_PREFIXES.iter().any(|p| k.starts_with(p)));
        if !dry_run {
            save(&path, &settings)?;
            self.current.send_replace(config);
        }
        Ok(Update {
            changed,
            effective_now,
            after_restart,
            overridden,
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

/// Write atomically: a crash leaves the old file or the new, never half of one.
fn save(path: &Path, settings: &toml::Table) -> Result<(), SettingsError> {
    use std::io::Write;
    let fail = |e: std::io::Error| SettingsError::Save(format!("{}: {e}", path.display()));
    let text = format!(
        "# Run-time settings of JetsonMind, written by update_settings.\n\
         # They win over the config file; environment variables and flags win over them.\n{}",
        toml::to_string_pretty(settings).map_err(|e| SettingsError::Save(e.to_string()))?
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let partial = path.with_extension("toml.partial");
    let mut file = std::fs::File::create(&partial).map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&partial, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(dir: &Path, env: &[(&str, &str)]) -> Settings {
        let sources = ConfigSources {
            file: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            data_dir: Some(dir.to_path_buf()),
        };
        let config = sources.load().unwrap();
        Settings::new(sources, config)
    }

    fn patch(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn updates_are_checked_saved_published_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let live = settings(dir.path(), &[]);
        let mut follower = live.follow();
        let update = live
            .update(
                &patch(json!({"cache": {"ttl_secs": 60}, "compute": {"parallel": 2}})),
                false,
                Authority::Admin,
            )
            .unwrap();
        assert_eq!(update.changed, ["cache.ttl_secs", "compute.parallel"]);
        assert_eq!(update.effective_now, ["cache.ttl_secs"]);
        assert_eq!(update.after_restart, ["compute.parallel"]);
        assert!(follower.has_changed().unwrap());
        assert_eq!(follower.borrow_and_update().cache.ttl_secs, 60);
        let restarted = settings(dir.path(), &[]);
        assert_eq!(restarted.current().cache.ttl_secs, 60);
        assert_eq!(restarted.current().compute.parallel, 2);
        // null resets to the default.
        restarted
            .update(
                &patch(json!({"cache": {"ttl_secs": null}})),
                false,
                Authority::Admin,
            )
            .unwrap();
        assert_eq!(settings(dir.path(), &[]).current().cache.ttl_secs, 3600);
    }

    #[test]
    fn errors_name_the_key_and_nothing_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let live = settings(dir.path(), &[]);
        let cases = [
            (json!({"cache": {"ttl_secs": "soon"}}), "cache.ttl_secs"),
            (json!({"cache": {"ttl_sec": 5}}), "ttl_sec"),
            (json!({"compute": {"parallel": 0}}), "parallel"),
            (json!({"nosuch": {"x": 1}}), "nosuch"),
            (json!({"data": {"dir": "/tmp/x"}}), "data.dir"),
            (json!({"cache": 5}), "cache"),
            (json!({}), "no settings"),
        ];
        for (bad, named) in cases {
            let err = live
                .update(&patch(bad.clone()), false, Authority::Admin)
                .unwrap_err();
            assert!(err.to_string().contains(named), "{bad}: {err}");
        }
        assert!(!dir.path().join("settings.toml").exists());
        assert_eq!(live.current(), settings(dir.path(), &[]).current());
    }

    #[test]
    fn environment_wins_and_dry_runs_save_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let live = settings(dir.path(), &[("JETSONMIND_CACHE__TTL_SECS", "7")]);
        let update = live
            .update(
                &patch(json!({"cache": {"ttl_secs": 60, "max_bytes": 4096}})),
                false,
                Authority::Admin,
            )
            .unwrap();
        assert_eq!(update.overridden, ["cache.ttl_secs"]);
        assert_eq!(update.effective_now, ["cache.max_bytes"]);
        assert_eq!(live.current().cache.ttl_secs, 7);
        let dry = live
            .update(
                &patch(json!({"cache": {"max_bytes": 8192}})),
                true,
                Authority::Admin,
            )
            .unwrap();
        assert!(dry.dry_run);
        assert_eq!(live.current().cache.max_bytes, 4096);
    }

    #[test]
    fn only_an_admin_changes_who_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let live = settings(dir.path(), &[]);
        let before = live.current();
        for attack in [
            json!({"auth": {"oauth": {"issuer": "https://evil", "jwks_url": "https://evil/jwks",
                                      "audience": "x"}}}),
            json!({"auth": null}),
            json!({"http": {"allowed_hosts": ["evil.example"]}}),
            json!({"http": null}),
            json!({"gateway": {"backends": []}}),
            json!({"control": {"nvpmodel_set_command": ["sh", "-c", "id"]}}),
        ] {
            let err = live
                .update(&patch(attack.clone()), false, Authority::Operator)
                .unwrap_err();
            assert!(
                err.to_string().contains("only the admin scope"),
                "{attack}: {err}"
            );
        }
        assert_eq!(live.current(), before, "nothing changed");
        assert!(!dir.path().join("settings.toml").exists(), "nothing saved");
        let ordinary = patch(json!({"cache": {"ttl_secs": 5}}));
        live.update(&ordinary, false, Authority::Operator).unwrap();
        let trusted = patch(json!({"http": {"allowed_hosts": ["edge.example"]}}));
        live.update(&trusted, true, Authority::Admin).unwrap();
    }
}
