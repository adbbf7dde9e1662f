//! The data server: what this node knows about itself, kept durable.
//!
//! Resources: `jetson://models/available`, `jetson://system/metrics`,
//! `jetson://cache/inference`, `jetson://config/settings`,
//! `jetson://performance/analytics`, and the template `jetson://models/{name}`;
//! all of the listed ones can be subscribed to. Tools: `update_settings` and
//! `manage_models`.

pub mod analytics;
pub mod cache;
pub mod cluster_view;
pub mod config;
pub mod distribution;
pub mod inputs;
mod notify;
pub mod prompts;
pub mod schema;
pub mod settings;

use std::sync::{Arc, OnceLock};

use jetsonmind_contract::access::AccessLevel;
use jetsonmind_contract::inference::TransferProgress;
use jetsonmind_core::auth::Principal;
use jetsonmind_core::content::{json_resource, json_tool_result};
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{
    CallToolResult, CompleteRequestParams, CompletionInfo, GetPromptResult, JsonObject, Prompt,
    ReadResourceResult, Resource, ResourceTemplate,
};
use jetsonmind_core::upstream::ProgressSink;
use jetsonmind_core::{
    Catalog, McpUnit, ResourceUpdates, ToolCall, UnitIdentity, tool_error, tool_from,
};

use crate::analytics::Analytics;
use crate::cache::InferenceCache;
use crate::distribution::{ModelDistribution, TransferCallback};
use crate::inputs::InputCache;
use crate::schema::{ManageModelsArgs, ModelAction, UpdateSettingsArgs};
use crate::settings::{Authority, Settings};
use jetsonmind_store::{ModelStore, StoreError};
use jetsonmind_telemetry::LinuxReader;

pub use jetsonmind_contract::resources::{
    CACHE_INFERENCE, CONFIG_SETTINGS, DATA_CACHE, MODELS_AVAILABLE, PERFORMANCE_ANALYTICS,
    SYSTEM_METRICS,
};
const MODEL_PREFIX: &str = "jetson://models/";

/// What the data server reads and reports on; in one process compute shares
/// the same cache, store and analytics.
#[derive(Clone)]
pub struct NodeState {
    pub settings: Arc<Settings>,
    pub store: Arc<ModelStore>,
    pub cache: Arc<InferenceCache>,
    /// Media as the engines take it, which compute fills.
    pub inputs: Arc<InputCache>,
    pub analytics: Arc<Analytics>,
}

pub struct DataServer {
    state: NodeState,
    telemetry: LinuxReader,
    /// The other nodes' telemetry and analytics, once this node joins a cluster.
    cluster: std::sync::OnceLock<Arc<dyn cluster_view::ClusterView>>,
    updates: Arc<ResourceUpdates>,
    catalog: Arc<Catalog>,
    /// The cluster's models, once this node joins a cluster.
    distribution: OnceLock<Arc<dyn ModelDistribution>>,
}

impl DataServer {
    /// Also starts, on the current tokio runtime, the task that tells
    /// subscribers about changes; it ends when the server is dropped.
    pub fn new(state: NodeState) -> Self {
        let updates = Arc::new(ResourceUpdates::default());
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(notify::run(Arc::downgrade(&updates), state.clone()));
        }
        let settings = state.settings.current().telemetry;
        let telemetry = LinuxReader::with_settings(settings.root.clone(), settings);
        Self {
            state,
            telemetry,
            cluster: std::sync::OnceLock::new(),
            updates,
            catalog: Arc::new(catalog()),
            distribution: OnceLock::new(),
        }
    }

    /// Publish models to, and list those of, the cluster this node has
    /// joined (only the first call counts).
    pub fn join_cluster(&self, distribution: Arc<dyn ModelDistribution>) {
        let _ = self.distribution.set(distribution);
    }

    async fn update_settings(&self, args: UpdateSettingsArgs, caller: Principal) -> CallToolResult {
        let settings = self.state.settings.clone();
        let dry_run = args.dry_run.unwrap_or(false);
        let authority = match caller.is_admin() {
            true => Authority::Admin,
            false => Authority::Operator,
        };
        let outcome = settings
            .update(&args.settings, dry_run, authority, args.if_revision)
            .await;
        match outcome {
            Ok(update) => json_tool_result(&update),
            Err(e) => tool_error(format!("settings not changed: {e}")),
        }
    }

    async fn manage_models(
        &self,
        args: ManageModelsArgs,
        progress: Option<ProgressSink>,
    ) -> CallToolResult {
        if matches!(args.action, ModelAction::Publish | ModelAction::Unpublish) {
            return self.distribute(args, progress).await;
        }
        let store = self.state.store.clone();
        let name = args.name.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let named = || name.clone().ok_or("`name` is required for this action");
            Ok(match args.action {
                // Structured content must be an object.
                ModelAction::List => Ok(serde_json::json!({ "models": store.list()? })),
                ModelAction::Verify => serde_json::to_value(store.verify(&named()?)?),
                ModelAction::Remove => serde_json::to_value(store.remove(&named()?)?),
                ModelAction::Publish | ModelAction::Unpublish => {
                    unreachable!("the cluster's actions are handled above")
                }
            })
        })
        .await;
        match outcome {
            Ok(Ok(Ok(value))) => CallToolResult::structured(value),
            Ok(Ok(Err(e))) => tool_error(format!("cannot encode the result: {e}")),
            Ok(Err(ModelsError(e))) => tool_error(e),
            Err(e) => tool_error(format!("model store task failed: {e}")),
        }
    }
}

impl DataServer {
    /// `publish` and `unpublish`: the cluster's registry.
    async fn distribute(
        &self,
        args: ManageModelsArgs,
        progress: Option<ProgressSink>,
    ) -> CallToolResult {
        let Some(distribution) = self.distribution.get() else {
            return tool_error(
                "publishing needs a cluster: this node has not joined one \
                 (`jetsonmind serve --cluster nats://HOST:4222`)",
            );
        };
        let Some(name) = args.name else {
            return tool_error("`name` is required for this action");
        };
        let outcome = match args.action {
            ModelAction::Unpublish => distribution.unpublish(name).await,
            _ => {
                let (reporter, relay) = publish_reporter(progress, &name);
                let published = distribution.publish(name, reporter).await;
                // Every progress notification goes out before the result.
                if let Some(relay) = relay {
                    let _ = relay.await;
                }
                published
            }
        };
        match outcome {
            Ok(entry) => CallToolResult::structured(entry),
            Err(e) => tool_error(e),
        }
    }

    /// `jetson://models/available`: this node's store; in a cluster also
    /// the cluster's models (`cluster`), or why they cannot be read.
    async fn models_available(&self) -> Result<serde_json::Value, McpError> {
        let models = self
            .state
            .store
            .list()
            .map_err(|e| store_error(e, MODELS_AVAILABLE))?;
        let mut available = serde_json::json!({ "models": models });
        if let Some(distribution) = self.distribution.get() {
            available["cluster"] = match distribution.available().await {
                Ok(cluster) => cluster,
                Err(e) => serde_json::json!({ "error": e }),
            };
        }
        Ok(available)
    }
}

/// A publish's progress, told to its caller when it asked; the relay ends
/// once the callback is dropped and all is told.
fn publish_reporter(
    progress: Option<ProgressSink>,
    model: &str,
) -> (TransferCallback, Option<tokio::task::JoinHandle<()>>) {
    let Some(sink) = progress else {
        return (Box::new(|_, _| {}), None);
    };
    let (reporter, relay) = sink.percent_reporter(TransferProgress::describer("publishing", model));
    (reporter, Some(relay))
}

/// A `manage_models` failure, as the message the caller sees.
struct ModelsError(String);

impl From<StoreError> for ModelsError {
    fn from(e: StoreError) -> Self {
        Self(e.to_string())
    }
}

impl From<&str> for ModelsError {
    fn from(e: &str) -> Self {
        Self(e.to_string())
    }
}

fn catalog() -> Catalog {
    let json = |uri: &str, name: &str, description: &str| {
        Resource::new(uri, name)
            .with_description(description)
            .with_mime_type("application/json")
    };
    let resources = vec![
        json(
            MODELS_AVAILABLE,
            "models-available",
            "Models in this node's model store: format, architecture, quantization, size, \
             licence, source, digest, and which processes have them loaded. In a cluster, \
             `cluster` lists the models published to it, each with the nodes that hold it and \
             those that have it loaded.",
        ),
        json(
            SYSTEM_METRICS,
            "system-metrics",
            "Live CPU, memory, load, disks, network, temperatures; on a Jetson also GPU, \
             power rails, fan and power mode. In a cluster, `cluster` has every live node's \
             (`nodes`) and the totals.",
        ),
        json(
            CACHE_INFERENCE,
            "cache-inference",
            "Inference cache entries and hit/miss counters.",
        ),
        json(
            DATA_CACHE,
            "data-cache",
            "The input cache: pictures decoded and audio resampled, by the digest of the bytes \
             sent, so the same media sent again skips decoding; entries, bytes, hit rates per kind.",
        ),
        json(
            CONFIG_SETTINGS,
            "config-settings",
            "The settings this node runs with; change them with update_settings.",
        ),
        json(
            PERFORMANCE_ANALYTICS,
            "performance-analytics",
            "Per-tool and per-model calls, errors, latency percentiles and tokens/s. In a \
             cluster, `cluster` has every live node's calls per tool (`nodes`) and the totals.",
        ),
    ];
    let templates = vec![
        ResourceTemplate::new(prompts::MODEL_TEMPLATE, "model")
            .with_description("One model of the model store, by name.")
            .with_mime_type("application/json"),
    ];
    let tools = vec![
        AccessLevel::Admin.mark(tool_from::<UpdateSettingsArgs>(
            "update_settings",
            "Change settings. They are checked against the whole configuration (errors name \
             the key), saved, and subscribers of jetson://config/settings are notified. In a \
             cluster, all but a node's own keys (scope.node_keys of jetson://config/settings) \
             are written for every node, compare-and-set: if another node changed one of them \
             since `if_revision`, nothing is written and the error names it. The result says \
             which keys are in effect now and which after a restart. Settings that decide who \
             is trusted (auth, gateway backends, allowed hosts and origins, replicas, power \
             commands) need `admin`.",
        )),
        AccessLevel::Admin.mark(tool_from::<ManageModelsArgs>(
            "manage_models",
            "The model store: list models, verify a model's files against their sha256, or \
             remove a model. In a cluster, `publish` uploads a model to the cluster (any node \
             can then run it: it is pulled and checked where a call needs it) and \
             `unpublish` withdraws it.",
        )),
    ];
    Catalog::new(tools, resources, templates).expect("the data catalog is valid")
}

impl McpUnit for DataServer {
    fn identity(&self) -> UnitIdentity {
        UnitIdentity {
            name: "jetsonmind-data",
            title: "JetsonMind data",
            instructions: "Facts about this node: models, live system metrics, inference cache, \
                           settings and performance analytics. Subscribe to a resource to be told \
                           when it changes.",
        }
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.catalog.clone()
    }

    fn updates(&self) -> Option<Arc<ResourceUpdates>> {
        Some(self.updates.clone())
    }

    async fn call_tool(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        match call.name.as_str() {
            "update_settings" => Ok(self
                .update_settings(call.parse()?, call.caller.clone())
                .await),
            "manage_models" => Ok(self
                .manage_models(call.parse()?, call.context.progress.clone())
                .await),
            other => Err(McpError::invalid_params(
                format!("unknown tool: {other}"),
                None,
            )),
        }
    }

    fn prompts(&self) -> Vec<Prompt> {
        prompts::prompts()
    }

    /// The prompt embeds the metrics, so it needs what reading them needs.
    async fn get_prompt(
        &self,
        name: &str,
        _arguments: JsonObject,
        caller: &Principal,
    ) -> Result<GetPromptResult, McpError> {
        if name != prompts::EXPLAIN_DEVICE_HEALTH {
            return Err(jetsonmind_core::unit::unknown_prompt(name));
        }
        jetsonmind_core::unit::check_read(caller, SYSTEM_METRICS)?;
        let metrics = self.read_resource(SYSTEM_METRICS, caller).await?;
        prompts::explain_device_health(metrics)
    }

    async fn complete(
        &self,
        request: &CompleteRequestParams,
        _caller: &Principal,
    ) -> Result<CompletionInfo, McpError> {
        prompts::complete(&request.r#ref, &request.argument, || {
            let models = self.state.store.list();
            let models = models.map_err(|e| store_error(e, MODELS_AVAILABLE))?;
            Ok(models.into_iter().map(|m| m.name).collect())
        })
    }

    async fn read_resource(
        &self,
        uri: &str,
        _caller: &Principal,
    ) -> Result<ReadResourceResult, McpError> {
        let state = &self.state;
        if let Some(content) = self.with_cluster(uri).await? {
            return json_resource(uri, &content);
        }
        match uri {
            SYSTEM_METRICS => json_resource(uri, &self.telemetry.snapshot().await),
            MODELS_AVAILABLE => json_resource(uri, &self.models_available().await?),
            CONFIG_SETTINGS => json_resource(uri, &settings_report(&state.settings)?),
            CACHE_INFERENCE => json_resource(uri, &state.cache.report()),
            DATA_CACHE => json_resource(uri, &state.inputs.report()),
            PERFORMANCE_ANALYTICS => json_resource(uri, &self.analytics_content()),
            _ => match uri.strip_prefix(MODEL_PREFIX) {
                Some(name) => json_resource(
                    uri,
                    &state.store.get(name).map_err(|e| store_error(e, uri))?,
                ),
                None => Err(jetsonmind_core::error::no_resource_at(uri)),
            },
        }
    }
}

/// The settings in effect, and which of them are the cluster's (`scope`).
fn settings_report(settings: &Settings) -> Result<serde_json::Value, McpError> {
    let mut report = serde_json::to_value(settings.current())
        .map_err(|e| McpError::internal_error(e.to_string(), None))?;
    if let serde_json::Value::Object(fields) = &mut report {
        fields.insert("scope".into(), serde_json::json!(settings.scope()));
    }
    Ok(report)
}

fn store_error(e: StoreError, uri: &str) -> McpError {
    match e {
        StoreError::NotFound(_) => jetsonmind_core::error::resource_not_found(uri, e.to_string()),
        other => McpError::internal_error(other.to_string(), None),
    }
}

/// The whole cluster in `jetson://system/metrics` and
/// `jetson://performance/analytics` (see [`cluster_view`]).
impl DataServer {
    /// Show the cluster's nodes in the metrics and analytics (only the
    /// first call counts).
    pub fn show_cluster(&self, view: Arc<dyn cluster_view::ClusterView>) {
        let _ = self.cluster.set(view);
    }

    /// What this node tells the cluster of itself: its metrics as
    /// `jetson://system/metrics` has them, and its calls per tool.
    pub async fn node_snapshot(&self, node: &str) -> cluster_view::NodeSnapshot {
        let metrics = serde_json::to_value(self.telemetry.snapshot().await);
        cluster_view::NodeSnapshot {
            node: node.to_string(),
            published_unix_ms: u64::try_from(jetsonmind_store::db::now_ms()).unwrap_or(0),
            metrics: metrics.unwrap_or_default(),
            tools: self.state.analytics.tool_summary(),
        }
    }

    /// In a cluster, the metrics or analytics of this node with the
    /// cluster's in `cluster` (or why they cannot be read); `None` for other
    /// resources and on one device.
    async fn with_cluster(&self, uri: &str) -> Result<Option<serde_json::Value>, McpError> {
        let Some(view) = self.cluster.get() else {
            return Ok(None);
        };
        let (mut content, cluster_part): (_, fn(&cluster_view::Snapshots) -> _) = match uri {
            SYSTEM_METRICS => {
                let metrics = serde_json::to_value(self.telemetry.snapshot().await);
                let metrics = metrics.map_err(|e| McpError::internal_error(e.to_string(), None))?;
                (metrics, cluster_view::metrics_view)
            }
            PERFORMANCE_ANALYTICS => (self.analytics_content(), cluster_view::analytics_view),
            _ => return Ok(None),
        };
        content["cluster"] = match view.snapshots().await {
            Ok(snapshots) => cluster_part(&snapshots),
            Err(e) => serde_json::json!({ "error": e }),
        };
        Ok(Some(content))
    }

    /// This node's `jetson://performance/analytics`.
    fn analytics_content(&self) -> serde_json::Value {
        serde_json::json!({ "series": self.state.analytics.report() })
    }
}
