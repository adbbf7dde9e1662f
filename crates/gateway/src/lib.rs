//! The gateway: one MCP server in front of many.
//!
//! It connects as an MCP client to each backend (in-process servers for
//! `jetsonmind serve`, HTTP URLs otherwise, including other gateways), merges
//! what they offer into one [`view::View`], and forwards each call to the
//! backend that owns the name. A background task checks the backends, drops
//! those that went away from the view and brings them back when they return.

mod backend;
mod forward;
pub mod openai;
pub mod schema;
pub mod view;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jetsonmind_core::config::GatewayConfig;
use jetsonmind_core::content::json_tool_result;
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, CallToolResult, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, ServerResult, Tool,
};
use jetsonmind_core::rmcp::service::RequestContext;
use jetsonmind_core::rmcp::{ErrorData as McpError, RoleServer, ServiceError};
use jetsonmind_core::{
    Catalog, CoreError, McpUnit, ResourceUpdates, ToolCall, UnitIdentity, not_available,
    tool_error, tool_from,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use backend::{Backend, BackendStatus, Connector};
use forward::{ForwardError, ForwardingClient, ProgressRoutes, ProgressSink, ResourceChange};
use schema::*;
use view::{Naming, View};

pub struct Gateway {
    settings: GatewayConfig,
    backends: Vec<Arc<Backend>>,
    own_tools: Vec<Tool>,
    view: RwLock<Arc<View>>,
    progress: Arc<ProgressRoutes>,
    /// Changes of the federated resources, for the gateway's own subscribers.
    updates: Arc<ResourceUpdates>,
    changes: mpsc::UnboundedSender<ResourceChange>,
    /// Taken by [`Gateway::start`], which relays what arrives.
    incoming_changes: Mutex<Option<mpsc::UnboundedReceiver<ResourceChange>>>,
}

fn own_tools() -> Vec<Tool> {
    vec![
        tool_from::<ManageConnectionsArgs>(
            "manage_connections",
            "List the federated backends (state, what each offers) or close a client connection.",
        ),
        tool_from::<ValidateRequestArgs>(
            "validate_request",
            "Check a tool call's arguments against the tool's input schema without running it.",
        ),
        tool_from::<AggregateResponsesArgs>(
            "aggregate_responses",
            "Fan one tool call out to every replica and combine the answers (first, all, majority).",
        ),
        tool_from::<HandleAuthArgs>(
            "handle_auth",
            "Show the caller's identity and scopes, or manage API keys.",
        ),
        tool_from::<ProtocolBridgeArgs>(
            "protocol_bridge",
            "Federate another MCP server (Streamable HTTP) into this gateway.",
        ),
    ]
}

impl Gateway {
    /// A gateway over `backends` (config order decides who wins under `prefix = "never"`).
    pub fn new(settings: GatewayConfig, backends: Vec<Backend>) -> Result<Arc<Self>, CoreError> {
        let own_tools = own_tools();
        let naming = Naming {
            mode: settings.prefix,
            separator: &settings.separator,
        };
        let view = View::merge(&own_tools, &[], &naming)?;
        let (changes, incoming) = mpsc::unbounded_channel();
        Ok(Arc::new(Self {
            backends: backends.into_iter().map(Arc::new).collect(),
            own_tools,
            view: RwLock::new(Arc::new(view)),
            progress: Arc::new(ProgressRoutes::default()),
            updates: Arc::default(),
            changes,
            incoming_changes: Mutex::new(Some(incoming)),
            settings,
        }))
    }

    /// The HTTP backends named in the config.
    pub fn configured_backends(settings: &GatewayConfig) -> Vec<Backend> {
        settings
            .backends
            .iter()
            .map(|b| Backend::new(&b.name, Connector::Http(b.url.clone())))
            .collect()
    }

    fn current(&self) -> Arc<View> {
        self.view.read().expect("view lock").clone()
    }

    /// Check every backend once and rebuild the view if anything changed.
    pub async fn refresh(&self) {
        let timeout = Duration::from_millis(self.settings.health_timeout_ms);
        let checks = self.backends.iter().enumerate().map(|(index, backend)| {
            let handler = ForwardingClient {
                backend: index,
                progress: self.progress.clone(),
                changes: Some(self.changes.clone()),
            };
            backend.check(handler, timeout)
        });
        let changed = futures::future::join_all(checks)
            .await
            .into_iter()
            .any(|c| c);
        if changed {
            self.rebuild_view();
        }
    }

    fn rebuild_view(&self) {
        let offers: Vec<_> = self.backends.iter().map(|b| b.offer()).collect();
        let live: Vec<_> = offers
            .iter()
            .enumerate()
            .filter_map(|(i, offer)| {
                offer
                    .as_ref()
                    .map(|o| (i, self.backends[i].name.as_str(), o))
            })
            .collect();
        let naming = Naming {
            mode: self.settings.prefix,
            separator: &self.settings.separator,
        };
        match View::merge(&self.own_tools, &live, &naming) {
            Ok(view) => *self.view.write().expect("view lock") = Arc::new(view),
            // A backend tool with an uncompilable schema: keep serving the old view.
            Err(e) => tracing::error!(error = %e, "cannot merge backend offers"),
        }
    }

    /// Refresh now, then every `health_interval_ms` until `shutdown`; relay
    /// resource changes from the backends to this gateway's subscribers.
    pub async fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        self.refresh().await;
        let gateway = self.clone();
        let interval = self.health_interval();
        let health = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = health.cancelled() => break,
                    _ = tokio::time::sleep(interval) => gateway.refresh().await,
                }
            }
        });
        let incoming = self.incoming_changes.lock().expect("changes lock").take();
        if let Some(incoming) = incoming {
            tokio::spawn(self.clone().relay_changes(incoming, shutdown.clone()));
        }
        tokio::spawn(self.clone().follow_interest(shutdown));
    }

    fn health_interval(&self) -> Duration {
        Duration::from_millis(self.settings.health_interval_ms)
    }

    /// A backend said its resource changed: tell whoever watches it here,
    /// under the URI this gateway exposes it as.
    async fn relay_changes(
        self: Arc<Self>,
        mut incoming: mpsc::UnboundedReceiver<ResourceChange>,
        shutdown: CancellationToken,
    ) {
        loop {
            let (backend, original) = tokio::select! {
                _ = shutdown.cancelled() => return,
                change = incoming.recv() => match change {
                    Some(change) => change,
                    None => return,
                },
            };
            let view = self.current();
            let exposed = view
                .resources
                .iter()
                .find(|(_, route)| route.backend == backend && route.original == original);
            if let Some((uri, _)) = exposed {
                self.updates.publish(uri);
            }
        }
    }

    /// Subscribe upstream to what clients of this gateway watch, and drop
    /// upstream subscriptions nobody watches any more. Rechecked when the
    /// interest changes and every health interval (backends reconnect).
    async fn follow_interest(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let interest = self.updates.interest_changed();
            tokio::pin!(interest);
            interest.as_mut().enable();
            self.sync_upstream().await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interest => {}
                _ = tokio::time::sleep(self.health_interval()) => {}
            }
        }
    }

    async fn sync_upstream(&self) {
        let view = self.current();
        let mut wanted = vec![BTreeSet::new(); self.backends.len()];
        for uri in self.updates.watched() {
            if let Some(route) = view.resources.get(&uri) {
                wanted[route.backend].insert(route.original.clone());
            }
        }
        let syncs = self
            .backends
            .iter()
            .zip(&wanted)
            .map(|(backend, uris)| backend.sync_subscriptions(uris));
        futures::future::join_all(syncs).await;
    }

    pub fn backend_status(&self) -> Vec<BackendStatus> {
        self.backends.iter().map(|b| b.status()).collect()
    }

    async fn forward_call(
        &self,
        index: usize,
        original: String,
        call: ToolCall,
    ) -> Result<CallToolResult, McpError> {
        let backend = &self.backends[index];
        let Some(client) = backend.client() else {
            return Ok(tool_error(format!(
                "backend `{}` is unavailable; try again shortly",
                backend.name
            )));
        };
        let params = CallToolRequestParams::new(original).with_arguments(call.arguments);
        match forward::call_tool(
            client.peer(),
            index,
            &self.progress,
            params,
            ProgressSink::of_request(&call.context),
            &call.context.ct,
        )
        .await
        {
            Ok(ServerResult::CallToolResult(result)) => Ok(result),
            Ok(_) => Ok(tool_error(format!(
                "backend `{}` answered with a result this gateway cannot relay",
                backend.name
            ))),
            Err(ForwardError::Cancelled) => {
                Err(McpError::internal_error("cancelled by the client", None))
            }
            Err(ForwardError::Service(ServiceError::McpError(error))) => Err(error),
            Err(ForwardError::Service(e)) => {
                if backend.mark_down(e.to_string()) {
                    self.rebuild_view();
                }
                Ok(tool_error(format!(
                    "backend `{}` failed during the call: {e}",
                    backend.name
                )))
            }
        }
    }

    async fn call_own_tool(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        let args = serde_json::Value::Object(call.arguments);
        let parse_error = |e: serde_json::Error| McpError::invalid_params(e.to_string(), None);
        match call.name.as_str() {
            "manage_connections" => {
                let args: ManageConnectionsArgs =
                    serde_json::from_value(args).map_err(parse_error)?;
                Ok(match args.action {
                    ConnectionAction::List => {
                        json_tool_result(&json!({ "backends": self.backend_status() }))
                    }
                    ConnectionAction::Close => not_available(
                        "manage_connections",
                        "closing client connections is not built yet",
                    ),
                })
            }
            "validate_request" => {
                let args: ValidateRequestArgs =
                    serde_json::from_value(args).map_err(parse_error)?;
                let view = self.current();
                Ok(
                    match view.catalog.check_arguments(&args.tool, &args.arguments) {
                        None => tool_error(format!("unknown tool: {}", args.tool)),
                        Some(errors) => json_tool_result(
                            &json!({ "valid": errors.is_empty(), "errors": errors }),
                        ),
                    },
                )
            }
            "aggregate_responses" => Ok(not_available(
                &call.name,
                "replica fan-out is not built yet",
            )),
            "handle_auth" => Ok(not_available(
                &call.name,
                "authentication is not configured on this gateway",
            )),
            "protocol_bridge" => Ok(not_available(
                &call.name,
                "adding backends at run time is not built yet",
            )),
            other => Err(McpError::invalid_params(
                format!("unknown tool: {other}"),
                None,
            )),
        }
    }
}

impl McpUnit for Gateway {
    fn identity(&self) -> UnitIdentity {
        UnitIdentity {
            name: "jetsonmind-gateway",
            title: "JetsonMind gateway",
            instructions: "The front door to JetsonMind: every tool and resource of the federated \
                           servers (compute, data, control, other gateways) in one place.",
        }
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.current().catalog.clone()
    }

    fn updates(&self) -> Option<Arc<ResourceUpdates>> {
        Some(self.updates.clone())
    }

    async fn call_tool(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        let route = self.current().tools.get(&call.name).cloned();
        match route {
            Some(route) => self.forward_call(route.backend, route.original, call).await,
            None => self.call_own_tool(call).await,
        }
    }

    async fn read_resource(
        &self,
        uri: &str,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResult, McpError> {
        let Some(route) = self.current().resource_route(uri) else {
            return Err(McpError::resource_not_found(
                format!("no resource at {uri}"),
                None,
            ));
        };
        let backend = &self.backends[route.backend];
        let Some(client) = backend.client() else {
            return Err(McpError::internal_error(
                format!("backend `{}` is unavailable", backend.name),
                None,
            ));
        };
        match client
            .peer()
            .read_resource_once(ReadResourceRequestParams::new(route.original.clone()))
            .await
        {
            Ok(ReadResourceResponse::Complete(mut result)) => {
                // The backend's URIs are not ours: give back the ones we listed.
                for content in &mut result.contents {
                    rename_uri(content, &route.original, uri);
                }
                Ok(result)
            }
            Ok(_) => Err(McpError::internal_error(
                "backend asked for input; not relayed",
                None,
            )),
            Err(ServiceError::McpError(error)) => Err(error),
            Err(e) => {
                if backend.mark_down(e.to_string()) {
                    self.rebuild_view();
                }
                Err(McpError::internal_error(
                    format!("backend `{}` failed: {e}", backend.name),
                    None,
                ))
            }
        }
    }
}

/// Give the read content the URI the client asked for; contents about other
/// URIs (a resource may return several) keep theirs.
fn rename_uri(
    content: &mut jetsonmind_core::rmcp::model::ResourceContents,
    original: &str,
    exposed: &str,
) {
    use jetsonmind_core::rmcp::model::ResourceContents;
    match content {
        ResourceContents::TextResourceContents { uri, .. }
        | ResourceContents::BlobResourceContents { uri, .. }
            if uri == original =>
        {
            *uri = exposed.to_string();
        }
        #[allow(unreachable_patterns)]
        _ => {}
    }
}
