//! Helpers shared by the compute tests that generate text through a real
//! MCP client.

#![allow(dead_code)] // Each test file uses its own part of this module.

use std::sync::Arc;

use jetsonmind_compute::ComputeServer;
use jetsonmind_contract::replica::REPLICA_STATUS_URI;
use jetsonmind_core::config::McpConfig;
use jetsonmind_core::rmcp::model::{CallToolRequestParams, CallToolResult};
use jetsonmind_core::rmcp::service::RunningService;
use jetsonmind_core::rmcp::{RoleClient, ServiceExt};
use jetsonmind_core::serve::in_process;
use jetsonmind_core::{Config, UnitServer};
use jetsonmind_store::ModelStore;
use serde_json::Value;

/// The progress notifications a client heard.
pub use jetsonmind_testkit::ProgressRecorder as Progress;

/// (tokens so far, text so far) of each progress notification heard.
pub fn updates(progress: &Progress) -> Vec<(f64, Option<String>)> {
    let heard = progress.heard().into_iter();
    heard.map(|p| (p.progress, p.message)).collect()
}

pub type Client = RunningService<RoleClient, Progress>;

/// A client of a compute server of `config` over `store`, and what it hears.
pub async fn connect(config: &Config, store: Arc<ModelStore>) -> (Client, Progress) {
    serve(Arc::new(ComputeServer::new(
        config,
        Default::default(),
        store,
    )))
    .await
}

/// A client of `server`, and what it hears.
pub async fn serve(server: Arc<ComputeServer>) -> (Client, Progress) {
    let server = UnitServer::new(server, McpConfig::default());
    let progress = Progress::default();
    (
        progress.clone().serve(in_process(server)).await.unwrap(),
        progress,
    )
}

pub fn call(tool: &'static str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool).with_arguments(args.as_object().unwrap().clone())
}

pub fn text(result: &CallToolResult) -> String {
    result.content[0].as_text().unwrap().text.clone()
}

/// The structured content of a result that is not an error.
pub fn ok(result: CallToolResult) -> Value {
    assert_ne!(result.is_error, Some(true), "{}", text(&result));
    result.structured_content.unwrap()
}

/// The status resource, as the control plane reads it.
pub async fn status(client: &Client) -> Value {
    jetsonmind_testkit::read_json(client.peer(), REPLICA_STATUS_URI).await
}
