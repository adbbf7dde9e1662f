//! Settings and API keys shared by a cluster, over a real nats-server: a
//! change at one node holds at the others, concurrent changes to one key
//! conflict, and a revoked key stays revoked everywhere.

use crate::support;

use std::path::Path;
use std::sync::Arc;

use jetsonmind_cluster_state::keys::ClusterKeys;
use jetsonmind_cluster_state::settings::ClusterSettings;
use jetsonmind_compute::config::ComputeConfig;
use jetsonmind_core::Config;
use jetsonmind_core::auth::KeyStore;
use jetsonmind_core::config::{ConfigSources, Schema};
use jetsonmind_data::config::CacheConfig;
use jetsonmind_data::settings::{Authority, Settings, SettingsError};
use serde_json::{Map, Value, json};
use support::{NatsServer, connect, node_config, until, within};
use tokio_util::sync::CancellationToken;

/// The sections these tests share across the cluster.
fn schema() -> Schema {
    Schema::new().with::<ComputeConfig>().with::<CacheConfig>()
}

/// The settings of a node whose data dir is `dir`, as `serve` loads them.
fn settings_in(dir: &Path) -> Arc<Settings> {
    let sources = ConfigSources {
        data_dir: Some(dir.to_path_buf()),
        schema: schema(),
        ..Default::default()
    };
    let config: Config = sources.load().expect("the node's configuration");
    Arc::new(Settings::new(sources, config))
}

/// A node's settings joined to the cluster on `server`.
async fn joined(
    server: &NatsServer,
    node: &str,
    dir: &Path,
    stop: &CancellationToken,
) -> Arc<Settings> {
    let bus = connect(&node_config(server, node)).await;
    let settings = settings_in(dir);
    let shared = within(
        "opening the settings bucket",
        ClusterSettings::open(&bus, schema()),
    )
    .await
    .expect("the settings bucket");
    within("joining", shared.join(settings.clone(), stop.clone()))
        .await
        .expect("joining the cluster's settings");
    settings
}

fn patch(value: Value) -> Map<String, Value> {
    value.as_object().expect("a patch is an object").clone()
}

async fn set(
    settings: &Settings,
    value: Value,
    if_revision: Option<u64>,
) -> Result<jetsonmind_data::settings::Update, SettingsError> {
    within(
        "updating the settings",
        settings.update(&patch(value), false, Authority::Admin, if_revision),
    )
    .await
}

#[tokio::test]
async fn a_change_at_one_node_holds_at_every_node_and_a_concurrent_one_conflicts() {
    let server = NatsServer::start();
    let stop = CancellationToken::new();
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node1 = joined(&server, "node1", dir1.path(), &stop).await;
    let node2 = joined(&server, "node2", dir2.path(), &stop).await;

    let update = set(
        &node1,
        json!({"cache": {"ttl_secs": 60}, "compute": {"threads": 3}}),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        update.cluster_wide,
        ["cache.ttl_secs"],
        "threads is the node's own"
    );
    until("node2 applying cache.ttl_secs", || {
        node2.current().section::<CacheConfig>().ttl_secs == 60
    })
    .await;
    assert_eq!(node1.current().section::<ComputeConfig>().threads, 3);
    assert_ne!(
        node2.current().section::<ComputeConfig>().threads,
        3,
        "a node's own key stays with it"
    );
    let scope = node2.scope();
    assert!(
        scope.cluster && scope.cluster_values == ["cache.ttl_secs"],
        "{scope:?}"
    );

    // Both read the same revision; node1 changes the key first.
    let seen = node2.scope().revision;
    assert_eq!(node1.scope().revision, seen);
    set(&node1, json!({"cache": {"ttl_secs": 61}}), Some(seen))
        .await
        .unwrap();
    let conflict = set(&node2, json!({"cache": {"ttl_secs": 62}}), Some(seen))
        .await
        .unwrap_err();
    assert!(
        matches!(&conflict, SettingsError::Conflict { keys, .. } if keys == &["cache.ttl_secs"]),
        "{conflict}"
    );
    assert!(
        conflict.to_string().contains("cache.ttl_secs"),
        "{conflict}"
    );
    // Another key changed from the same revision merges.
    set(&node2, json!({"cache": {"max_bytes": 4096}}), Some(seen))
        .await
        .unwrap();
    until("both nodes agreeing", || {
        [&node1, &node2].iter().all(|node| {
            let cache = node.current().section::<CacheConfig>().clone();
            cache.ttl_secs == 61 && cache.max_bytes == 4096
        })
    })
    .await;

    // Two changes of one key from the same revision at once: one wins.
    let base = node1.scope().revision;
    let (a, b) = tokio::join!(
        set(&node1, json!({"cache": {"ttl_secs": 70}}), Some(base)),
        set(&node2, json!({"cache": {"ttl_secs": 80}}), Some(base)),
    );
    let won = [&a, &b].iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{a:?} {b:?}");
    assert!(
        [&a, &b]
            .iter()
            .any(|r| matches!(r, Err(SettingsError::Conflict { .. })))
    );

    // A node started again has the cluster's settings before it joins.
    let winner = if a.is_ok() { 70 } else { 80 };
    until("node2 applying the winner", || {
        node2.current().section::<CacheConfig>().ttl_secs == winner
    })
    .await;
    stop.cancel();
    assert_eq!(
        settings_in(dir2.path())
            .current()
            .section::<CacheConfig>()
            .ttl_secs,
        winner
    );
}

#[tokio::test]
async fn keys_created_anywhere_work_everywhere_and_revoked_ones_stay_revoked() {
    let server = NatsServer::start();
    let stop = CancellationToken::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let stores: Vec<_> = dirs
        .iter()
        .map(|d| Arc::new(KeyStore::open(d.path())))
        .collect();
    let own = stores[0]
        .create("before-the-cluster", &["tools:*".into()])
        .unwrap();
    let stale_copy = std::fs::read(stores[0].path()).unwrap();

    let bus = connect(&node_config(&server, "node1")).await;
    let keys = within("opening the keys bucket", ClusterKeys::open(&bus))
        .await
        .unwrap();
    assert_eq!(keys.offer(&stores[0]).await.unwrap(), 1);
    assert_eq!(keys.offer(&stores[0]).await.unwrap(), 0, "offered once");
    for store in &stores[..2] {
        keys.mirror(store.clone(), stop.clone()).await.unwrap();
    }
    until("node2 accepting node1's key", || {
        stores[1].verify(&own.key).is_some()
    })
    .await;

    let made = keys
        .create("ci", &["tools:text_generate".into()])
        .await
        .unwrap();
    until("node2 accepting a key made in the cluster", || {
        stores[1]
            .verify(&made.key)
            .is_some_and(|(_, scopes)| scopes.grants("tools:text_generate"))
    })
    .await;
    assert!(
        keys.create("bad", &["tool:everything".into()])
            .await
            .is_err()
    );

    keys.revoke(&own.id).await.unwrap();
    until("every node refusing the revoked key", || {
        stores[..2]
            .iter()
            .all(|store| store.verify(&own.key).is_none())
    })
    .await;
    assert!(stores[0].verify(&made.key).is_some(), "the others stay");

    // A node that was away comes back with the revoked key in its file.
    std::fs::write(stores[2].path(), stale_copy).unwrap();
    assert!(stores[2].verify(&own.key).is_some());
    assert_eq!(keys.offer(&stores[2]).await.unwrap(), 0, "not brought back");
    keys.mirror(stores[2].clone(), stop.clone()).await.unwrap();
    assert!(
        stores[2].verify(&own.key).is_none(),
        "refused before the node serves"
    );
    assert!(keys.list().await.unwrap().iter().all(|k| k.id != own.id));
    stop.cancel();
}

#[tokio::test]
async fn a_joining_node_adds_the_settings_the_cluster_lacks_and_keeps_the_clusters() {
    let server = NatsServer::start();
    let stop = CancellationToken::new();
    let dir1 = tempfile::tempdir().unwrap();
    let node1 = joined(&server, "node1", dir1.path(), &stop).await;
    set(&node1, json!({"cache": {"max_bytes": 4096}}), None)
        .await
        .unwrap();

    let newcomer = connect(&node_config(&server, "node2")).await;
    let shared = ClusterSettings::open(&newcomer, schema()).await.unwrap();
    let local: toml::Table = toml::from_str(
        "[cache]\nttl_secs = 77\nmax_bytes = 1\n[compute]\nthreads = 2\n[auth]\nrequired = true\n",
    )
    .unwrap();
    let adopted = shared.adopt(&local).await.unwrap();
    assert_eq!(adopted.added, ["cache.ttl_secs"]);
    assert_eq!(adopted.differing, ["cache.max_bytes"]);
    assert_eq!(
        adopted.trusted,
        ["auth.required"],
        "who is trusted is not a newcomer's to say"
    );
    until("node1 applying the newcomer's setting", || {
        node1.current().section::<CacheConfig>().ttl_secs == 77
    })
    .await;
    assert_eq!(
        node1.current().section::<CacheConfig>().max_bytes,
        4096,
        "the cluster's value wins"
    );
    assert_ne!(
        node1.current().section::<ComputeConfig>().threads,
        2,
        "a node's own key is not shared"
    );
    let again = shared.adopt(&local).await.unwrap();
    assert!(again.added.is_empty(), "{again:?}");
    stop.cancel();
}
