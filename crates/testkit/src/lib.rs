//! Helpers for driving a server through a real rmcp client, in tests: the
//! same MCP messages a remote client would send. A dev-dependency only, so
//! none of it ships in the servers' libraries.

use std::sync::{Arc, Mutex};

#[allow(deprecated)] // MCP logging, deprecated by SEP-2577, is still served.
use rmcp::model::{CallToolResult, LoggingMessageNotificationParam};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient, ServerHandler, ServiceExt};

use jetsonmind_core::serve::in_process;

pub mod fake_root;
mod http;
mod unit;

pub use http::HttpUnit;
pub use unit::{FakeUnit, FakeUnitBuilder, chatty};

/// A handshake-era client connected to `server` over an in-memory pipe.
pub async fn connect<S: ServerHandler>(server: S) -> RunningService<RoleClient, ()> {
    ().serve(in_process(server))
        .await
        .expect("client handshake with an in-process server")
}

/// The names of the tools `peer` lists, sorted.
pub async fn tool_names(peer: &rmcp::service::Peer<RoleClient>) -> Vec<String> {
    let tools = peer.list_all_tools().await.expect("tools/list");
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    names
}

/// The JSON a resource at `uri` holds (its first text contents).
pub async fn read_json<T: serde::de::DeserializeOwned>(
    peer: &rmcp::service::Peer<RoleClient>,
    uri: &str,
) -> T {
    let read = peer
        .read_resource(rmcp::model::ReadResourceRequestParams::new(uri))
        .await
        .expect("resources/read");
    match &read.contents[0] {
        rmcp::model::ResourceContents::TextResourceContents { text, .. } => {
            serde_json::from_str(text).expect("a JSON resource")
        }
        other => panic!("{other:?}"),
    }
}

/// The URIs of the resources `peer` lists, sorted.
pub async fn resource_uris(peer: &rmcp::service::Peer<RoleClient>) -> Vec<String> {
    let resources = peer.list_all_resources().await.expect("resources/list");
    let mut uris: Vec<String> = resources.into_iter().map(|r| r.uri).collect();
    uris.sort();
    uris
}

/// Send the log events of tool calls to their clients (the layer the binary
/// installs), on this thread until the guard drops: use a current-thread runtime.
pub fn log_to_clients() -> tracing::subscriber::DefaultGuard {
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(jetsonmind_core::client_log::layer())
        .set_default()
}

/// The request id a tool result names in its `_meta`.
pub fn request_id_of(result: &CallToolResult) -> String {
    let meta = result.meta.as_ref().expect("a result with _meta");
    meta.0[jetsonmind_core::trace::REQUEST_ID_META_KEY]
        .as_str()
        .expect("a request id")
        .to_string()
}

/// A client that keeps the log messages it is sent.
#[allow(deprecated)]
#[derive(Clone, Default)]
pub struct LogListener(
    Arc<Mutex<Vec<LoggingMessageNotificationParam>>>,
    Arc<tokio::sync::Notify>,
);

#[allow(deprecated)]
impl ClientHandler for LogListener {
    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(params);
        self.1.notify_one();
    }
}

/// Ask for warnings, call [`chatty`]'s `chat` and check that its warning and
/// error (not its debug event) reach the client, naming the call's request id.
#[allow(deprecated)]
pub async fn chat_warnings_reach(client: &RunningService<RoleClient, LogListener>) {
    use rmcp::model::{CallToolRequestParams, LoggingLevel, SetLevelRequestParams};
    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Warning))
        .await
        .expect("logging/setLevel");
    let result = client
        .call_tool(CallToolRequestParams::new("chat"))
        .await
        .expect("tools/call chat");
    let messages = client.service().wait_for(2).await;
    let levels: Vec<_> = messages.iter().map(|m| m.level).collect();
    assert_eq!(levels, vec![LoggingLevel::Warning, LoggingLevel::Error]);
    assert_eq!(messages[0].data["message"], "memory is low");
    assert_eq!(messages[0].data["fields"]["free_bytes"], 42);
    let id = request_id_of(&result);
    assert!(messages.iter().all(|m| m.data["requestId"] == id.as_str()));
}

#[allow(deprecated)]
impl LogListener {
    /// The first `count` messages; a generous bound turns "never sent"
    /// into a failure instead of a hang (not a speed check).
    pub async fn wait_for(&self, count: usize) -> Vec<LoggingMessageNotificationParam> {
        let received = || self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let arrived = async {
            loop {
                let notified = self.1.notified();
                if received().len() >= count {
                    return received();
                }
                notified.await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), arrived)
            .await
            .unwrap_or_else(|_| panic!("{count} log messages never arrived: {:?}", received()))
    }
}

/// A client that records the `notifications/resources/updated` URIs and
/// the log messages it receives.
#[allow(deprecated)]
#[derive(Clone, Default)]
pub struct UpdateListener(
    Arc<Mutex<Vec<String>>>,
    Arc<Mutex<Vec<LoggingMessageNotificationParam>>>,
);

#[allow(deprecated)]
impl ClientHandler for UpdateListener {
    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(params.uri);
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(params);
    }
}

impl UpdateListener {
    /// Waits until `uri` has been notified `times` times; a generous bound
    /// (10 s) turns "never sent" into a failure instead of a hang.
    pub async fn wait_for(&self, uri: &str, times: usize) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let seen = self.count(uri);
            if seen >= times {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{uri}: {seen} of {times} updates; got {:?}",
                self.0.lock().unwrap_or_else(|e| e.into_inner())
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The first `count` log messages, waited for as [`Self::wait_for`].
    #[allow(deprecated)]
    pub async fn wait_for_logs(&self, count: usize) -> Vec<LoggingMessageNotificationParam> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let logs = self.1.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if logs.len() >= count {
                return logs;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {count} log messages: {logs:?}",
                logs.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// How many times `uri` has been notified.
    pub fn count(&self, uri: &str) -> usize {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().filter(|u| *u == uri).count()
    }
}

/// A client that records the progress notifications it hears, and is woken
/// when a tool list changes.
#[derive(Clone, Default)]
pub struct ProgressRecorder {
    heard: Arc<Mutex<Vec<rmcp::model::ProgressNotificationParam>>>,
    tools_changed: Arc<tokio::sync::Notify>,
}

impl ClientHandler for ProgressRecorder {
    async fn on_progress(
        &self,
        params: rmcp::model::ProgressNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(params);
    }

    async fn on_tool_list_changed(&self, _: NotificationContext<RoleClient>) {
        self.tools_changed.notify_one();
    }
}

impl ProgressRecorder {
    /// Everything heard so far, in the order it was handled.
    pub fn heard(&self) -> Vec<rmcp::model::ProgressNotificationParam> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn count(&self) -> usize {
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Everything heard once `count` notifications were. rmcp handles each
    /// notification in a task of its own, so the last may be handled just
    /// after the call's result; a generous bound (10 s) turns "never sent"
    /// into a failure instead of a hang.
    pub async fn wait_for(&self, count: usize) -> Vec<rmcp::model::ProgressNotificationParam> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.count() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "heard {} of {count} progress notifications: {:?}",
                self.count(),
                self.heard()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        self.heard()
    }

    /// Whether a tool list changed within `within` (or since last asked).
    pub async fn tool_list_changed(&self, within: std::time::Duration) -> bool {
        tokio::time::timeout(within, self.tools_changed.notified())
            .await
            .is_ok()
    }
}

/// The configuration with only `T` as a server section, from defaults and the
/// `JETSONMIND_*` variables `env` (no file): a section's tests load it as
/// `serve` would.
pub fn config_with<T: jetsonmind_core::config::Section>(
    env: &[(&str, &str)],
) -> Result<jetsonmind_core::Config, jetsonmind_core::CoreError> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    let schema = jetsonmind_core::config::Schema::new().with::<T>();
    jetsonmind_core::Config::load(&schema, None, env)
}
