//! The data server: what this node knows about itself.
//!
//! Resources: `jetson://models/available`, `jetson://system/metrics`,
//! `jetson://cache/inference`, `jetson://config/settings`,
//! `jetson://performance/analytics`, and the template `jetson://models/{name}`.

pub mod analytics;
pub mod cache;
pub mod models;
pub mod telemetry;

use std::sync::Arc;

use jetsonmind_core::content::json_resource;
use jetsonmind_core::rmcp::model::{
    CallToolResult, ReadResourceResult, Resource, ResourceTemplate,
};
use jetsonmind_core::rmcp::service::RequestContext;
use jetsonmind_core::rmcp::{ErrorData as McpError, RoleServer};
use jetsonmind_core::{Catalog, Config, McpUnit, ToolCall, UnitIdentity};

use crate::analytics::Analytics;
use crate::cache::InferenceCache;
use crate::models::ModelDir;
use crate::telemetry::LinuxReader;

pub const MODELS_AVAILABLE: &str = "jetson://models/available";
pub const SYSTEM_METRICS: &str = "jetson://system/metrics";
pub const CACHE_INFERENCE: &str = "jetson://cache/inference";
pub const CONFIG_SETTINGS: &str = "jetson://config/settings";
pub const PERFORMANCE_ANALYTICS: &str = "jetson://performance/analytics";
const MODEL_PREFIX: &str = "jetson://models/";

pub struct DataServer {
    config: Config,
    cache: Arc<InferenceCache>,
    analytics: Arc<Analytics>,
    telemetry: LinuxReader,
    models: ModelDir,
    catalog: Arc<Catalog>,
}

impl DataServer {
    /// `cache` is the compute server's inference cache when both run in one process.
    pub fn new(config: Config, cache: Arc<InferenceCache>, analytics: Arc<Analytics>) -> Self {
        let models = ModelDir::new(config.models_dir());
        Self {
            config,
            cache,
            analytics,
            telemetry: LinuxReader::new("/"),
            models,
            catalog: Arc::new(catalog()),
        }
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
            "Models in this node's model store.",
        ),
        json(
            SYSTEM_METRICS,
            "system-metrics",
            "Live CPU, memory, load, uptime and temperatures of this node.",
        ),
        json(
            CACHE_INFERENCE,
            "cache-inference",
            "Inference cache entries and hit/miss counters.",
        ),
        json(
            CONFIG_SETTINGS,
            "config-settings",
            "The settings this node runs with.",
        ),
        json(
            PERFORMANCE_ANALYTICS,
            "performance-analytics",
            "Per-tool and per-model latency and throughput.",
        ),
    ];
    let templates = vec![
        ResourceTemplate::new("jetson://models/{name}", "model")
            .with_description("One model file in the model store, by file name.")
            .with_mime_type("application/json"),
    ];
    Catalog::new(Vec::new(), resources, templates).expect("the data catalog is valid")
}

impl McpUnit for DataServer {
    fn identity(&self) -> UnitIdentity {
        UnitIdentity {
            name: "jetsonmind-data",
            title: "JetsonMind data",
            instructions: "Read-only facts about this node: models, live system metrics, \
                           inference cache, settings and performance analytics.",
        }
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.catalog.clone()
    }

    async fn call_tool(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        // The catalog has no tools, so UnitServer never gets here.
        Err(McpError::invalid_params(
            format!("unknown tool: {}", call.name),
            None,
        ))
    }

    async fn read_resource(
        &self,
        uri: &str,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResult, McpError> {
        match uri {
            SYSTEM_METRICS => json_resource(uri, &self.telemetry.snapshot().await),
            MODELS_AVAILABLE => json_resource(uri, &self.models.list()?),
            CONFIG_SETTINGS => json_resource(uri, &self.config),
            CACHE_INFERENCE => json_resource(uri, &self.cache.report()),
            PERFORMANCE_ANALYTICS => json_resource(
                uri,
                &serde_json::json!({ "series": self.analytics.report() }),
            ),
            _ => match uri.strip_prefix(MODEL_PREFIX) {
                Some(name) => json_resource(uri, &self.models.get(name)?),
                None => Err(McpError::resource_not_found(
                    format!("no resource at {uri}"),
                    None,
                )),
            },
        }
    }
}
