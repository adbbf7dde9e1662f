//! MCP logging through a real client: `logging/setLevel`, then the events a
//! tool call emits arrive as `notifications/message` naming its request id.

#![allow(deprecated)] // rmcp marks MCP logging deprecated (SEP-2577); it is still served.

use std::sync::{Arc, Mutex};

use jetsonmind_core::client_log;
use jetsonmind_core::config::McpConfig;
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, CallToolResult, LoggingLevel, LoggingMessageNotificationParam,
    SetLevelRequestParams,
};
use jetsonmind_core::rmcp::service::{NotificationContext, RunningService};
use jetsonmind_core::rmcp::{ClientHandler, ErrorData as McpError, RoleClient, ServiceExt};
use jetsonmind_core::serve::in_process;
use jetsonmind_core::trace::REQUEST_ID_META_KEY;
use jetsonmind_core::{Catalog, McpUnit, ToolCall, UnitIdentity, UnitServer, tool_from};
use tracing_subscriber::prelude::*;

#[derive(schemars::JsonSchema, serde::Deserialize)]
struct NoArgs {}

/// A tool that logs at every level while it runs.
struct Chatty(Arc<Catalog>);

impl McpUnit for Chatty {
    fn identity(&self) -> UnitIdentity {
        UnitIdentity {
            name: "chatty",
            title: "Chatty",
            instructions: "test unit",
        }
    }
    fn catalog(&self) -> Arc<Catalog> {
        self.0.clone()
    }
    async fn call_tool(&self, _call: ToolCall) -> Result<CallToolResult, McpError> {
        // Our crates' targets are what reaches clients.
        tracing::debug!(target: "jetsonmind_test", step = 1, "looking around");
        tracing::warn!(target: "jetsonmind_test", free_bytes = 42u64, "memory is low");
        tracing::error!(target: "jetsonmind_test", "the fan stopped");
        tracing::error!(target: "other_crate", "not ours: never sent");
        Ok(CallToolResult::success(vec![]))
    }
}

/// A client that keeps the log messages it is sent and wakes a waiter.
#[derive(Clone, Default)]
struct Listener(
    Arc<Mutex<Vec<LoggingMessageNotificationParam>>>,
    Arc<tokio::sync::Notify>,
);

impl ClientHandler for Listener {
    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.0.lock().unwrap().push(params);
        self.1.notify_one();
    }
}

impl Listener {
    /// The first `count` messages; a generous bound turns "never sent"
    /// into a failure instead of a hang (not a speed check).
    async fn wait_for(&self, count: usize) -> Vec<LoggingMessageNotificationParam> {
        let arrived = async {
            loop {
                let notified = self.1.notified();
                if self.0.lock().unwrap().len() >= count {
                    return self.0.lock().unwrap().clone();
                }
                notified.await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), arrived)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{count} log messages never arrived: {:?}",
                    self.0.lock().unwrap()
                )
            })
    }
}

async fn connect() -> (RunningService<RoleClient, Listener>, Listener) {
    let catalog = Catalog::new(vec![tool_from::<NoArgs>("chat", "logs")], vec![], vec![]).unwrap();
    let server = UnitServer::new(Arc::new(Chatty(Arc::new(catalog))), McpConfig::default());
    let listener = Listener::default();
    let client = listener.clone().serve(in_process(server)).await.unwrap();
    (client, listener)
}

fn request_id(result: &CallToolResult) -> String {
    result.meta.as_ref().unwrap().0[REQUEST_ID_META_KEY]
        .as_str()
        .unwrap()
        .to_string()
}

// One thread: the subscriber set here sees every task of the test.
#[tokio::test(flavor = "current_thread")]
async fn a_calls_events_at_the_clients_level_reach_it_with_the_request_id() {
    let _logging = tracing_subscriber::registry()
        .with(client_log::layer())
        .set_default();
    let (client, listener) = connect().await;
    assert!(client.peer_info().unwrap().capabilities.logging.is_some());
    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Warning))
        .await
        .unwrap();
    let result = client
        .call_tool(CallToolRequestParams::new("chat"))
        .await
        .unwrap();
    let id = request_id(&result);
    let messages = listener.wait_for(2).await;
    let levels: Vec<_> = messages.iter().map(|m| m.level).collect();
    assert_eq!(levels, vec![LoggingLevel::Warning, LoggingLevel::Error]);
    assert_eq!(messages[0].data["message"], "memory is low");
    assert_eq!(messages[0].data["fields"]["free_bytes"], 42);
    assert!(messages.iter().all(|m| m.data["requestId"] == id.as_str()));

    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Debug))
        .await
        .unwrap();
    let second = client
        .call_tool(CallToolRequestParams::new("chat"))
        .await
        .unwrap();
    let messages = listener.wait_for(5).await;
    let debug = &messages[2];
    assert_eq!(debug.level, LoggingLevel::Debug);
    assert_eq!(debug.data["message"], "looking around");
    assert_eq!(debug.data["requestId"], request_id(&second).as_str());
    assert!(
        messages
            .iter()
            .all(|m| m.data["target"] == "jetsonmind_test")
    );
}
