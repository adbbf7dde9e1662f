//! The site's state, backed up to the cloud hub: for each of the site's
//! streams and buckets, the hub holds a mirror of the same name in its own
//! JetStream domain, which the hub's servers fill from the site's domain
//! through the leaf link.
//!
//! A mirror is JetStream's store-and-forward: it records how far it got in
//! the site's stream, so when a cut uplink comes back it resumes there; what
//! was written while the link was down arrives, once, in order. We write no
//! copying of our own. A record the site's limits dropped before the link
//! came back (`cluster.analytics_max_age_ms`, the buckets' history) is not
//! in the backup either: size them for the longest outage to ride out.
//!
//! Every node of a site keeps the mirrors in place (the first to reach the
//! hub makes them; a hub that lost one gets it again). Mirrors are named as
//! the site's streams, which are named by the site's cluster name: two sites
//! on one hub must use different cluster names, and a mirror of another
//! site's stream under the same name is reported, never replaced.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use jetsonmind_cluster::{Bus, ClusterError};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::StateError;
use crate::is_not_found;

/// How often the mirrors are checked once all are in place.
const RECHECK: Duration = Duration::from_secs(30);

/// The site streams the hub backs up: the KV buckets (settings, API keys,
/// model registry, placements, cloud spending), the telemetry and the call
/// records; the
/// model files' Object Store when `model_files`.
pub fn backed_up(bus: &Bus, model_files: bool) -> Vec<String> {
    let kv = ["settings", "keys", "models", "placements", "spending"]
        .map(|what| format!("KV_{}", bus.bucket_name(what)));
    let streams = [bus.bucket_name("telemetry"), crate::calls::stream_name(bus)];
    let files = model_files.then(|| format!("OBJ_{}", bus.bucket_name("model_files")));
    kv.into_iter().chain(streams).chain(files).collect()
}

/// Keep a mirror of each of `streams` at the hub (JetStream domain
/// `hub_domain`) until `shutdown`, retrying while the hub cannot be reached.
pub fn keep_in_cloud(
    bus: &Bus,
    hub_domain: &str,
    streams: Vec<String>,
    replicas: usize,
    shutdown: CancellationToken,
) {
    let backup = Backup {
        site: jetstream::new(bus.client.clone()),
        hub: jetstream::with_domain(bus.client.clone(), hub_domain),
        replicas,
        retry: Duration::from_millis(bus.config.heartbeat_ms.max(500) * 2),
    };
    let hub_domain = hub_domain.to_string();
    tokio::spawn(async move {
        let Some(site_domain) = backup.site_domain(&shutdown).await else {
            return;
        };
        tracing::info!(site = %site_domain, hub = %hub_domain, streams = streams.len(), "backing the site up to the hub");
        let mut reported = BTreeSet::new();
        loop {
            let mut pending = false;
            for name in &streams {
                match backup.ensure(name, &site_domain).await {
                    Ok(()) => {}
                    Err(Problem::NotYet(why)) => {
                        tracing::debug!(stream = %name, %why, "backup mirror not in place yet");
                        pending = true;
                    }
                    Err(Problem::Conflict(why)) => {
                        if reported.insert(name.clone()) {
                            tracing::error!(stream = %name, "{why}");
                        }
                    }
                }
            }
            let pause = if pending { backup.retry } else { RECHECK };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

struct Backup {
    site: jetstream::Context,
    hub: jetstream::Context,
    replicas: usize,
    retry: Duration,
}

enum Problem {
    /// The hub or the site's stream cannot be reached or does not exist yet.
    NotYet(String),
    /// The hub has a stream of that name that is not this site's mirror.
    Conflict(String),
}

impl Backup {
    /// The site's own JetStream domain, as its servers say it; none (never
    /// backed up) when they have none.
    async fn site_domain(&self, shutdown: &CancellationToken) -> Option<String> {
        loop {
            match self.site.query_account().await {
                Ok(account) => match account.domain.filter(|d| !d.is_empty()) {
                    Some(domain) => return Some(domain),
                    None => {
                        tracing::error!(
                            "hybrid.backup: this site's NATS servers have no JetStream domain \
                             (jetstream {{ domain: <site> }}), so the hub cannot reach its streams; \
                             not backed up"
                        );
                        return None;
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "cannot ask the site's JetStream its domain yet")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.retry) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }

    /// The hub has a mirror of the site's stream `name`.
    async fn ensure(&self, name: &str, site_domain: &str) -> Result<(), Problem> {
        let not_yet = |e: &dyn std::fmt::Display| Problem::NotYet(e.to_string());
        match self.hub.get_stream(name).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(|e| not_yet(&e))?;
                return check_mirror(name, &info.config, site_domain);
            }
            Err(e) if is_not_found(e.kind()) => {}
            Err(e) => return Err(not_yet(&e)),
        }
        let mut local = self.site.get_stream(name).await.map_err(|e| not_yet(&e))?;
        let local = local.info().await.map_err(|e| not_yet(&e))?.config.clone();
        let config = mirror_config(&local, site_domain, self.replicas);
        match self.hub.create_stream(config).await {
            Ok(_) => {
                tracing::info!(stream = %name, "the hub now mirrors this site's stream");
                Ok(())
            }
            Err(e) => Err(not_yet(&e)),
        }
    }
}

/// The hub's mirror of the site stream `local`: same name, same limits
/// (a bucket's history, a stream's age), no subjects of its own, readable as
/// the bucket it mirrors (direct gets).
pub fn mirror_config(local: &stream::Config, site_domain: &str, replicas: usize) -> stream::Config {
    let is_bucket = local.name.starts_with("KV_");
    stream::Config {
        name: local.name.clone(),
        description: Some(format!(
            "JetsonMind backup of {site_domain}'s {}",
            local.name
        )),
        // The site's API by its prefix, not `domain`: async-nats sends both,
        // and the server refuses the field it does not know.
        mirror: Some(stream::Source {
            name: local.name.clone(),
            external: Some(stream::External {
                api_prefix: domain_api(site_domain),
                delivery_prefix: None,
            }),
            ..Default::default()
        }),
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        max_age: local.max_age,
        max_messages_per_subject: local.max_messages_per_subject,
        max_bytes: local.max_bytes,
        discard: local.discard,
        allow_direct: true,
        mirror_direct: is_bucket,
        allow_rollup: local.allow_rollup,
        deny_delete: local.deny_delete,
        ..Default::default()
    }
}

/// Where a JetStream domain's API answers across leaf links.
fn domain_api(domain: &str) -> String {
    format!("$JS.{domain}.API")
}

fn check_mirror(name: &str, hub: &stream::Config, site_domain: &str) -> Result<(), Problem> {
    let mirrors_us = hub.mirror.as_ref().is_some_and(|m| {
        m.name == name
            && (m.domain.as_deref() == Some(site_domain)
                || m.external
                    .as_ref()
                    .is_some_and(|e| e.api_prefix == domain_api(site_domain)))
    });
    match mirrors_us {
        true => Ok(()),
        false => Err(Problem::Conflict(format!(
            "the hub already has a stream {name} that is not a mirror of site {site_domain}'s: \
             is another site using the same cluster.name? This site's {name} is not backed up"
        ))),
    }
}

/// The cloud tier as a site sees it (`jetsonmind cluster status`).
#[derive(Debug, Clone, Serialize)]
pub struct CloudReading {
    pub hub_domain: String,
    /// The hub answered through the site's leaf link.
    pub reachable: bool,
    /// The cloud's live nodes (its membership bucket's keys).
    pub cloud_nodes: Vec<String>,
    /// Each of the site's backed-up streams, as the hub holds it.
    pub backups: Vec<BackupState>,
}

/// One stream's backup at the hub.
#[derive(Debug, Clone, Serialize)]
pub struct BackupState {
    pub stream: String,
    /// Records at the site, and in the hub's mirror (`None`: no mirror yet).
    pub site_messages: Option<u64>,
    pub hub_messages: Option<u64>,
    /// Records the mirror says it is behind by.
    pub lag: Option<u64>,
}

/// Read the hub (`hub_domain`) through the leaf link: the cloud cluster
/// `cloud_cluster`'s nodes and the mirrors of `streams`. An unreachable hub
/// is a reading too (`reachable: false`), not an error.
pub async fn read_cloud(
    bus: &Bus,
    hub_domain: &str,
    cloud_cluster: &str,
    streams: &[String],
) -> CloudReading {
    let site = jetstream::new(bus.client.clone());
    let hub = jetstream::with_domain(bus.client.clone(), hub_domain);
    let reachable = hub.query_account().await.is_ok();
    let mut reading = CloudReading {
        hub_domain: hub_domain.to_string(),
        reachable,
        cloud_nodes: Vec::new(),
        backups: Vec::new(),
    };
    if reachable
        && let Ok(members) = hub.get_key_value(format!("{cloud_cluster}_members")).await
        && let Ok(keys) = members.keys().await
    {
        use futures::TryStreamExt;
        reading.cloud_nodes = keys.try_collect().await.unwrap_or_default();
        reading.cloud_nodes.sort();
    }
    for name in streams {
        let (hub_messages, lag) = match reachable {
            true => mirror_state(&hub, name).await,
            false => (None, None),
        };
        reading.backups.push(BackupState {
            stream: name.clone(),
            site_messages: messages(&site, name).await,
            hub_messages,
            lag,
        });
    }
    reading
}

async fn messages(js: &jetstream::Context, name: &str) -> Option<u64> {
    let mut stream = js.get_stream(name).await.ok()?;
    Some(stream.info().await.ok()?.state.messages)
}

async fn mirror_state(hub: &jetstream::Context, name: &str) -> (Option<u64>, Option<u64>) {
    let Ok(mut stream) = hub.get_stream(name).await else {
        return (None, None);
    };
    match stream.info().await {
        Ok(info) => (
            Some(info.state.messages),
            info.mirror.as_ref().map(|m| m.lag),
        ),
        Err(_) => (None, None),
    }
}

/// What [`restore_from_cloud`] did with one of the site's streams.
#[derive(Debug, Clone, PartialEq)]
pub enum Restored {
    /// The site still has it (with this many records): the site's copy is
    /// the newer one, left alone.
    Kept { messages: u64 },
    /// Made again at the site, numbered on from the hub's copy (so the hub's
    /// mirror goes on from where it was), with the bucket's entries put back
    /// (`entries`: values and delete markers; 0 for a stream, whose history
    /// stays at the hub).
    Rebuilt { entries: usize, first_sequence: u64 },
    /// The hub has no copy of it.
    NotBackedUp,
}

/// Put back at the site, from the hub's mirrors, each of `streams` the site
/// has lost (missing, or made again empty): its buckets with every key's
/// last value or delete marker (a revoked API key stays revoked), its
/// streams empty but numbered on from the hub's copy. Run it with the site's
/// nodes stopped; they rebuild their own files from the site when they join.
pub async fn restore_from_cloud(
    bus: &Bus,
    hub_domain: &str,
    streams: &[String],
) -> Result<Vec<(String, Restored)>, StateError> {
    let site = jetstream::new(bus.client.clone());
    let hub = jetstream::with_domain(bus.client.clone(), hub_domain);
    let mut done = Vec::new();
    for name in streams {
        let restored = restore_one(bus, &site, &hub, name).await?;
        done.push((name.clone(), restored));
    }
    Ok(done)
}

async fn restore_one(
    bus: &Bus,
    site: &jetstream::Context,
    hub: &jetstream::Context,
    name: &str,
) -> Result<Restored, StateError> {
    // Patiently: a site server just started again (after losing its state)
    // answers for the hub's domain before its leaf link carries the hub's
    // API, with errors that say nothing of the hub.
    let lookup = || async {
        match hub.get_stream(name).await {
            Ok(stream) => Ok(Some(stream)),
            Err(e) if is_not_found(e.kind()) => Ok(None),
            Err(e) => Err(ClusterError::JetStream(format!("the hub's {name}: {e}"))),
        }
    };
    let backup = match bus.patiently(&format!("the hub's {name}"), lookup).await? {
        Some(mut stream) => stream.info().await.map_err(StateError::jetstream)?.clone(),
        None => return Ok(Restored::NotBackedUp),
    };
    match site.get_stream(name).await {
        Ok(mut stream) => {
            let messages = stream
                .info()
                .await
                .map_err(StateError::jetstream)?
                .state
                .messages;
            if messages > 0 {
                return Ok(Restored::Kept { messages });
            }
            site.delete_stream(name)
                .await
                .map_err(StateError::jetstream)?;
        }
        Err(e) if is_not_found(e.kind()) => {}
        Err(e) => return Err(StateError::JetStream(format!("the site's {name}: {e}"))),
    }
    let first_sequence = backup.state.last_sequence + 1;
    let mut config = site_config(bus, name, &backup.config)?;
    config.first_sequence = Some(first_sequence);
    site.create_stream(config)
        .await
        .map_err(|e| StateError::JetStream(format!("making the site's {name} again: {e}")))?;
    let entries = match name.strip_prefix("KV_") {
        Some(bucket) if backup.state.messages > 0 => replay_bucket(site, hub, bucket).await?,
        _ => 0,
    };
    Ok(Restored::Rebuilt {
        entries,
        first_sequence,
    })
}

/// The site stream `name` as the nodes make it: a bucket as the hub's copy
/// says (its limits), with its own subjects; the telemetry and call streams
/// from their own settings.
fn site_config(
    bus: &Bus,
    name: &str,
    backup: &stream::Config,
) -> Result<stream::Config, StateError> {
    if let Some(bucket) = name.strip_prefix("KV_") {
        return Ok(stream::Config {
            name: name.to_string(),
            description: backup.description.clone(),
            subjects: vec![format!("$KV.{bucket}.>")],
            storage: stream::StorageType::File,
            num_replicas: bus.bucket_replicas(),
            max_messages_per_subject: backup.max_messages_per_subject,
            max_bytes: backup.max_bytes,
            max_age: backup.max_age,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            ..Default::default()
        });
    }
    if *name == crate::calls::stream_name(bus) {
        return Ok(crate::calls::stream_config(bus));
    }
    if *name == bus.bucket_name("telemetry") {
        return Ok(crate::views::stream_config(bus));
    }
    Err(StateError::Invalid(format!(
        "{name}: not a stream a site backs up, so not restored"
    )))
}

/// Put every key of the hub's copy of `bucket` back into the site's: its
/// last value, or its delete marker. Returns how many.
async fn replay_bucket(
    site: &jetstream::Context,
    hub: &jetstream::Context,
    bucket: &str,
) -> Result<usize, StateError> {
    use futures::StreamExt;
    let backup = hub
        .get_key_value(bucket)
        .await
        .map_err(StateError::jetstream)?;
    let restored = site
        .get_key_value(bucket)
        .await
        .map_err(StateError::jetstream)?;
    let mut entries = backup
        .watch_with_history(">")
        .await
        .map_err(StateError::jetstream)?;
    let mut count = 0;
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(StateError::jetstream)?;
        let pending = entry.delta;
        let put = match entry.operation {
            kv::Operation::Put => restored
                .put(&entry.key, entry.value)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            kv::Operation::Delete | kv::Operation::Purge => {
                restored.delete(&entry.key).await.map_err(|e| e.to_string())
            }
        };
        put.map_err(|e| StateError::JetStream(format!("{bucket}.{}: {e}", entry.key)))?;
        count += 1;
        if pending == 0 {
            break;
        }
    }
    Ok(count)
}
