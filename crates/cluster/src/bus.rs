//! One node's connection to the cluster's NATS servers, and the names of
//! what the cluster shares there.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use async_nats::{Client, ConnectOptions};
use jetsonmind_core::config::{ClusterConfig, is_subject_token};

use crate::ClusterError;

/// A node on the bus: its NATS client, its id and the cluster's settings.
#[derive(Clone)]
pub struct Bus {
    pub client: Client,
    pub config: ClusterConfig,
    /// This node's id in the cluster.
    pub node: String,
}

impl Bus {
    /// Connect to the cluster's NATS servers. The first connection must
    /// succeed (a typo in a URL says so at start); later losses reconnect
    /// forever, and the node rejoins on its own.
    pub async fn connect(config: &ClusterConfig) -> Result<Self, ClusterError> {
        let node = node_id(config);
        let options = connect_options(config, &node).await?;
        let client =
            options
                .connect(config.urls.as_slice())
                .await
                .map_err(|e| ClusterError::Connect {
                    urls: config.urls.join(","),
                    reason: e.to_string(),
                })?;
        tracing::info!(cluster = %config.name, %node, servers = %config.urls.join(","), "joined the NATS bus");
        Ok(Self {
            client,
            config: config.clone(),
            node,
        })
    }

    /// Where `node` serves its server `server` (directed calls).
    pub fn server_subject(&self, node: &str, server: &str) -> String {
        server_subject(&self.config.name, node, server)
    }

    /// Where any node serving `server` answers: its queue group (one node per
    /// request), for clients that do not care which node serves them.
    pub fn any_subject(&self, server: &str) -> String {
        format!("jm.{}.any.{server}", self.config.name)
    }

    /// Where `node` publishes its telemetry (the cluster's telemetry stream).
    pub fn telemetry_subject(&self, node: &str) -> String {
        format!("jm.{}.telemetry.{node}", self.config.name)
    }

    /// The membership bucket: one key per live node.
    pub fn members_bucket(&self) -> String {
        self.bucket_name("members")
    }

    /// The name of one of the cluster's buckets: `<cluster>_<what>`.
    pub fn bucket_name(&self, what: &str) -> String {
        format!("{}_{what}", self.config.name)
    }

    /// How many copies the cluster's buckets keep: `kv_replicas`, or as
    /// many NATS servers as the cluster has (at most 3): as many as the
    /// server says it has routes to, or the node was given URLs of, if
    /// more (a server that does not advertise, or whose routes are still
    /// forming, tells none).
    pub fn bucket_replicas(&self) -> usize {
        match self.config.kv_replicas {
            0 => {
                let advertised = self.client.server_info().connect_urls.len();
                advertised.max(self.config.urls.len()).clamp(1, 3)
            }
            n => n,
        }
    }

    /// The KV bucket `config.bucket`, created with `config` if no node has
    /// made it yet. Nodes that start together race to create it, and a
    /// replicated bucket just made may have no stream leader yet: wrap the
    /// first opening in [`Self::patiently`].
    pub async fn key_value(&self, config: kv::Config) -> Result<kv::Store, ClusterError> {
        let js = jetstream::new(self.client.clone());
        if let Ok(store) = js.get_key_value(&config.bucket).await {
            return Ok(store);
        }
        match js.create_key_value(config.clone()).await {
            Ok(store) => Ok(store),
            Err(created) => js
                .get_key_value(&config.bucket)
                .await
                .map_err(|_| bucket_error(&config.bucket, created)),
        }
    }

    /// The object store `config.bucket`, opened as [`Self::key_value`]
    /// opens a KV bucket.
    pub async fn object_store(
        &self,
        config: object_store::Config,
    ) -> Result<object_store::ObjectStore, ClusterError> {
        let js = jetstream::new(self.client.clone());
        if let Ok(store) = js.get_object_store(&config.bucket).await {
            return Ok(store);
        }
        match js.create_object_store(config.clone()).await {
            Ok(store) => Ok(store),
            Err(created) => js
                .get_object_store(&config.bucket)
                .await
                .map_err(|_| bucket_error(&config.bucket, created)),
        }
    }

    /// The stream `config.name`, created with `config` if no node has made
    /// it yet, opened as [`Self::key_value`] opens a KV bucket.
    pub async fn stream(&self, config: stream::Config) -> Result<stream::Stream, ClusterError> {
        let js = jetstream::new(self.client.clone());
        if let Ok(stream) = js.get_stream(&config.name).await {
            return Ok(stream);
        }
        match js.create_stream(config.clone()).await {
            Ok(stream) => Ok(stream),
            Err(created) => js
                .get_stream(&config.name)
                .await
                .map_err(|_| bucket_error(&config.name, created)),
        }
    }

    /// Retry `attempt` (what): until it succeeds or `node_ttl_ms`, at least
    /// 10 s, has passed. For a node's first use of the cluster's buckets.
    pub async fn patiently<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, ClusterError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ClusterError>>,
    {
        let patience = Duration::from_millis(self.config.node_ttl_ms).max(Duration::from_secs(10));
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match attempt().await {
                Ok(done) => return Ok(done),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "{what}: not ready; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The most a single NATS message may carry on this connection.
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.config.probe_timeout_ms)
    }
}

/// Where `node` of the cluster `cluster` serves `server`.
pub fn server_subject(cluster: &str, node: &str, server: &str) -> String {
    format!("jm.{cluster}.node.{node}.{server}")
}

/// The prefix of this cluster's reply subjects. Under the cluster's own
/// `jm.<cluster>.` subjects, so that one rule on a site's leaf link
/// (`deny_exports: ["jm.<cluster>.>"]`) keeps everything the site says among
/// its nodes, replies included, from ever reaching the hub.
pub fn inbox_prefix(cluster: &str) -> String {
    format!("jm.{cluster}.inbox")
}

fn bucket_error(bucket: &str, error: impl std::fmt::Display) -> ClusterError {
    ClusterError::JetStream(format!("cannot open the bucket {bucket}: {error}"))
}

/// The configured node id, else this host's name made into a subject token.
fn node_id(config: &ClusterConfig) -> String {
    if !config.node.is_empty() {
        return config.node.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let token: String = host
        .trim()
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                true => c,
                false => '-',
            },
        )
        .collect();
    match is_subject_token(&token) {
        true => token,
        false => "node".into(),
    }
}

async fn connect_options(
    config: &ClusterConfig,
    node: &str,
) -> Result<ConnectOptions, ClusterError> {
    let secret = |var: &Option<String>, what: &str| -> Result<Option<String>, ClusterError> {
        var.as_deref()
            .map(|var| {
                std::env::var(var).map_err(|_| {
                    ClusterError::Config(format!("{what}: environment variable {var} is not set"))
                })
            })
            .transpose()
    };
    let mut options = ConnectOptions::new()
        .name(format!("jetsonmind {node}"))
        .custom_inbox_prefix(inbox_prefix(&config.name))
        .max_reconnects(None)
        // A cut link is noticed by pings: a few heartbeats, not minutes.
        .ping_interval(Duration::from_millis(config.heartbeat_ms.max(500) * 2))
        .connection_timeout(Duration::from_millis(config.probe_timeout_ms.max(1_000)))
        .request_timeout(Some(Duration::from_millis(config.probe_timeout_ms)));
    if let Some(user) = &config.user {
        let password = secret(&config.password_env, "cluster.password_env")?.unwrap_or_default();
        options = options.user_and_password(user.clone(), password);
    }
    if let Some(token) = secret(&config.token_env, "cluster.token_env")? {
        options = options.token(token);
    }
    if let Some(path) = &config.nkey_file {
        let seed = std::fs::read_to_string(path).map_err(|e| {
            ClusterError::Config(format!("cluster.nkey_file {}: {e}", path.display()))
        })?;
        options = options.nkey(seed.trim().to_string());
    }
    if let Some(path) = &config.creds_file {
        options = options.credentials_file(path).await.map_err(|e| {
            ClusterError::Config(format!("cluster.creds_file {}: {e}", path.display()))
        })?;
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.tls_required {
        options = options.require_tls(true);
    }
    Ok(options)
}
