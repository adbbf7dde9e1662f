//! The gateway: one MCP server in front of many.
//!
//! It connects as an MCP client to each backend (in-process servers for
//! `jetsonmind serve`, HTTP URLs otherwise, including other gateways), merges
//! what they offer into one [`view::View`], and forwards each call to the
//! backend that owns the name. A background task checks the backends, drops
//! those that went away from the view and brings them back when they return.

pub mod aggregate;
pub mod config;
pub mod openai;
mod prompts;
pub mod schema;
pub mod view;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use jetsonmind_contract::access::AccessLevel;
use jetsonmind_control::egress;
use jetsonmind_control::fleet::{Fleet, FleetSettings, ReplicaHealth};
use jetsonmind_core::auth::{Auth, Principal, ToolAccess, principal_of};
use jetsonmind_core::config::{is_backend_name, is_http_url};
use jetsonmind_core::connections::Connections;
use jetsonmind_core::content::json_tool_result;
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, CallToolResult, CompleteRequestParams, CompletionInfo, GetPromptResult,
    JsonObject, Prompt, ReadResourceResult, Tool,
};
use jetsonmind_core::subscribe::ListChanges;
use jetsonmind_core::unit::CallContext;
use jetsonmind_core::upstream::{Connector, ResourceChange, Secret};
use jetsonmind_core::{
    Catalog, CoreError, McpUnit, ResourceUpdates, ToolCall, UnitIdentity, not_available,
    tool_error, tool_from,
};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use schema::*;
use view::{Naming, View};

use crate::config::GatewayConfig;

/// A federated server: one endpoint, or replicas routed among.
pub type Backend = Arc<Fleet>;

pub struct Gateway {
    settings: GatewayConfig,
    /// For backends added at run time (`protocol_bridge`).
    fleet_settings: FleetSettings,
    /// Only ever appended to while running, so view routes (indices) stay valid.
    backends: RwLock<Vec<Backend>>,
    /// How many of `backends` came from the configuration (the rest were bridged).
    configured: usize,
    own_tools: Vec<Tool>,
    view: RwLock<Arc<View>>,
    /// Each backend's [`Fleet::generation`] the view was built from.
    built_from: Mutex<Vec<u64>>,
    /// Woken by any backend whose generation changed.
    backend_changed: Arc<Notify>,
    /// Changes of the federated resources, for the gateway's own subscribers.
    updates: Arc<ResourceUpdates>,
    /// Changes of the merged lists, for the gateway's own clients.
    list_changes: Arc<ListChanges>,
    changes: mpsc::UnboundedSender<ResourceChange>,
    /// Taken by [`Gateway::start`], which relays what arrives.
    incoming_changes: Mutex<Option<mpsc::UnboundedReceiver<ResourceChange>>>,
    /// Set when served over HTTP: who may come in, and their connections.
    access: OnceLock<(Arc<Auth>, Arc<Connections>)>,
}

/// What `manage_connections` shows of a backend.
#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    pub name: String,
    pub up: bool,
    pub bridged: bool,
    pub replicas: Vec<ReplicaHealth>,
}

fn own_tools() -> Vec<Tool> {
    vec![
        AccessLevel::Admin.mark(tool_from::<ManageConnectionsArgs>(
            "manage_connections",
            "List the federated backends (state, replicas, what each offers) and the client \
             connections, or close a client connection.",
        )),
        tool_from::<ValidateRequestArgs>(
            "validate_request",
            "Check a tool call's arguments against the tool's input schema without running it.",
        ),
        tool_from::<AggregateResponsesArgs>(
            "aggregate_responses",
            "Fan one tool call out to every replica and combine the answers (first, all, majority).",
        ),
        // Anyone may ask who they are; managing keys checks `admin` itself.
        AccessLevel::Anyone.mark(tool_from::<HandleAuthArgs>(
            "handle_auth",
            "Show the caller's identity and scopes, or manage API keys.",
        )),
        AccessLevel::Admin.mark(tool_from::<ProtocolBridgeArgs>(
            "protocol_bridge",
            "Federate another MCP server into this gateway at run time (Streamable HTTP URL, or a \
             program speaking MCP on stdio), list the bridges, or remove one.",
        )),
    ]
}

impl Gateway {
    /// A gateway over `backends` (config order decides who wins under `prefix = "never"`).
    pub fn new(
        settings: GatewayConfig,
        fleet_settings: FleetSettings,
        backends: Vec<Backend>,
    ) -> Result<Arc<Self>, CoreError> {
        Self::with_own_tools(settings, fleet_settings, backends, own_tools())
    }

    /// A gateway that adds nothing of its own: exactly what `backend`
    /// offers, over another transport (`jetsonmind bridge`: a remote HTTP
    /// gateway as a stdio server for desktop clients).
    pub fn bridge(
        settings: GatewayConfig,
        fleet_settings: FleetSettings,
        backend: Backend,
    ) -> Result<Arc<Self>, CoreError> {
        Self::with_own_tools(settings, fleet_settings, vec![backend], Vec::new())
    }

    fn with_own_tools(
        settings: GatewayConfig,
        fleet_settings: FleetSettings,
        backends: Vec<Backend>,
        own_tools: Vec<Tool>,
    ) -> Result<Arc<Self>, CoreError> {
        let naming = Naming {
            mode: settings.prefix,
            separator: &settings.separator,
        };
        let view = View::merge(&own_tools, &[], &naming)?;
        let (changes, incoming) = mpsc::unbounded_channel();
        let backend_changed = Arc::new(Notify::new());
        for backend in &backends {
            backend.relay_changes_to(changes.clone());
            backend.wake_on_change(backend_changed.clone());
        }
        Ok(Arc::new(Self {
            configured: backends.len(),
            backends: RwLock::new(backends),
            fleet_settings,
            own_tools,
            view: RwLock::new(Arc::new(view)),
            built_from: Mutex::default(),
            backend_changed,
            updates: Arc::default(),
            list_changes: Arc::default(),
            changes,
            incoming_changes: Mutex::new(Some(incoming)),
            access: OnceLock::new(),
            settings,
        }))
    }

    /// The authentication and connections of the HTTP server in front of
    /// this gateway, for `handle_auth` and `manage_connections`.
    pub fn use_access(&self, auth: Arc<Auth>, connections: Arc<Connections>) {
        let _ = self.access.set((auth, connections));
    }

    /// The backends named in the config: one endpoint each, or replicas.
    pub fn configured_backends(
        settings: &GatewayConfig,
        fleet_settings: &FleetSettings,
    ) -> Result<Vec<Backend>, CoreError> {
        settings
            .backends
            .iter()
            .map(|b| {
                let bearer = b
                    .token_env
                    .as_deref()
                    .map(Secret::from_env)
                    .transpose()
                    .map_err(|e| {
                        CoreError::Config(format!("gateway backend `{}`: token_env: {e}", b.name))
                    })?;
                let fleet = Fleet::new(&b.name, fleet_settings.clone());
                let endpoints = b.endpoints();
                for (i, url) in endpoints.iter().enumerate() {
                    let name = match endpoints.len() {
                        1 => b.name.clone(),
                        _ => format!("{}-{}", b.name, i + 1),
                    };
                    let connector = Connector::Http {
                        url: url.clone(),
                        bearer: bearer.clone(),
                    };
                    fleet.add(
                        jetsonmind_core::upstream::Upstream::new(name, connector),
                        jetsonmind_control::fleet::Origin::Configured,
                    );
                }
                Ok(Arc::new(fleet))
            })
            .collect()
    }

    fn current(&self) -> Arc<View> {
        self.view.read().expect("view lock").clone()
    }

    fn backends(&self) -> Vec<Backend> {
        self.backends.read().expect("backends lock").clone()
    }

    fn backend(&self, index: usize) -> Option<Backend> {
        self.backends
            .read()
            .expect("backends lock")
            .get(index)
            .cloned()
    }

    /// Check every backend once and rebuild the view if anything changed,
    /// here or seen by another checker (the control server checks the
    /// compute fleet it scales).
    pub async fn refresh(&self) {
        let backends = self.backends();
        let checks = backends.iter().map(|backend| backend.check());
        futures::future::join_all(checks).await;
        self.rebuild_if_changed();
    }

    /// Rebuild the view if any backend's generation moved since it was built.
    fn rebuild_if_changed(&self) {
        let now: Vec<u64> = self.backends().iter().map(|b| b.generation()).collect();
        if *self.built_from.lock().expect("built_from lock") != now {
            self.rebuild_view();
        }
    }

    fn rebuild_view(&self) {
        let backends = self.backends();
        *self.built_from.lock().expect("built_from lock") =
            backends.iter().map(|b| b.generation()).collect();
        let offers: Vec<_> = backends.iter().map(|b| b.offer()).collect();
        let live: Vec<_> = offers
            .iter()
            .enumerate()
            .filter_map(|(i, offer)| offer.as_ref().map(|o| (i, backends[i].name.as_str(), o)))
            .collect();
        let naming = Naming {
            mode: self.settings.prefix,
            separator: &self.settings.separator,
        };
        match View::merge(&self.own_tools, &live, &naming) {
            Ok(view) => {
                let mut current = self.view.write().expect("view lock");
                let (tools, resources) = lists_changed(&current.catalog, &view.catalog);
                *current = Arc::new(view);
                drop(current);
                if tools || resources {
                    self.list_changes.announce(tools, resources);
                }
            }
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
            // Ticks that a rebuild woke in between still come on time.
            let mut ticks =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = health.cancelled() => break,
                    _ = ticks.tick() => gateway.refresh().await,
                    // A replica joined or left (a cluster node): at once.
                    _ = gateway.backend_changed.notified() => gateway.rebuild_if_changed(),
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
            let change = tokio::select! {
                _ = shutdown.cancelled() => return,
                change = incoming.recv() => match change {
                    Some(change) => change,
                    None => return,
                },
            };
            let backends = self.backends();
            let Some(backend) = backends.iter().position(|b| b.contains(change.upstream)) else {
                continue;
            };
            let view = self.current();
            let exposed = view
                .resources
                .iter()
                .find(|(_, route)| route.backend == backend && route.original == change.uri);
            let Some((uri, _)) = exposed else { continue };
            match change.log_as(uri) {
                None => self.updates.publish(uri),
                Some(message) => self.updates.log(uri, message),
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
        let backends = self.backends();
        let mut wanted = vec![BTreeSet::new(); backends.len()];
        for uri in self.updates.watched() {
            if let Some(route) = view.resources.get(&uri) {
                wanted[route.backend].insert(route.original.clone());
            }
        }
        let syncs = backends
            .iter()
            .zip(&wanted)
            .map(|(backend, uris)| backend.sync_subscriptions(uris));
        futures::future::join_all(syncs).await;
    }

    pub fn backend_status(&self) -> Vec<BackendStatus> {
        self.backends()
            .iter()
            .enumerate()
            .map(|(i, b)| BackendStatus {
                name: b.name.clone(),
                up: b.is_up(),
                bridged: i >= self.configured,
                replicas: b.health(),
            })
            .collect()
    }

    /// The backend that serves `tool` as this gateway lists it, and the
    /// tool's name there.
    pub fn route_of(&self, tool: &str) -> Option<(Backend, String)> {
        let route = self.current().tools.get(tool).cloned()?;
        Some((self.backend(route.backend)?, route.original))
    }

    async fn forward_call(
        &self,
        index: usize,
        original: String,
        call: ToolCall,
    ) -> Result<CallToolResult, McpError> {
        let Some(backend) = self.backend(index) else {
            return Ok(tool_error("backend gone; try again"));
        };
        let was_up = backend.is_up();
        let mut params = CallToolRequestParams::new(original).with_arguments(call.arguments);
        egress::carry(&call.context.meta, &mut params.meta);
        let outcome = backend
            .call_tool(
                params,
                &call.caller,
                None,
                call.context.progress.clone(),
                &call.context.cancel,
            )
            .await;
        if was_up && !backend.is_up() {
            self.rebuild_view();
        }
        outcome
    }

    async fn call_own_tool(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        match call.name.as_str() {
            "manage_connections" => Ok(self.manage_connections(call.parse()?)),
            "validate_request" => {
                let args: ValidateRequestArgs = call.parse()?;
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
            "aggregate_responses" => {
                let args: AggregateResponsesArgs = call.parse()?;
                Ok(self.aggregate(args, &call.caller, &call.context).await)
            }
            "handle_auth" => {
                let over_http = principal_of(&call.context.extensions).is_some();
                Ok(self.handle_auth(call.parse()?, call.caller.clone(), over_http))
            }
            "protocol_bridge" => {
                let args: ProtocolBridgeArgs = call.parse()?;
                Ok(self.protocol_bridge(args).await)
            }
            other => Err(McpError::invalid_params(
                format!("unknown tool: {other}"),
                None,
            )),
        }
    }

    fn manage_connections(&self, args: ManageConnectionsArgs) -> CallToolResult {
        let connections = self.access.get().map(|(_, c)| c);
        match args.action {
            ConnectionAction::List => json_tool_result(&json!({
                "backends": self.backend_status(),
                "clients": connections.map(|c| c.list()),
            })),
            ConnectionAction::Close => {
                let Some(connections) = connections else {
                    return tool_error(
                        "this gateway is not served over HTTP: no client connections",
                    );
                };
                let Some(id) = args.id else {
                    return tool_error("`id` (from `list`) is required to close a connection");
                };
                match connections.close(id) {
                    true => json_tool_result(&json!({ "closed": id })),
                    false => tool_error(format!("no open connection with id {id}")),
                }
            }
        }
    }

    /// Who `caller` is; key management for admins (or `tools:handle_auth`).
    fn handle_auth(
        &self,
        args: HandleAuthArgs,
        caller: Principal,
        over_http: bool,
    ) -> CallToolResult {
        let auth = self.access.get().map(|(auth, _)| auth);
        if args.action == AuthAction::Whoami {
            return json_tool_result(&json!({
                "principal": caller,
                "transport": if over_http { "http" } else { "stdio or in-process" },
                "authentication_required": auth.is_some_and(|a| a.required()),
            }));
        }
        let managing_keys = ToolAccess {
            name: "handle_auth".into(),
            level: AccessLevel::Admin,
        };
        if !caller.may_call(&managing_keys) {
            return tool_error(format!(
                "{:?} needs the admin scope (or tools:handle_auth); {} holds: {}",
                args.action,
                caller.id,
                caller.scopes.as_slice().join(" ")
            ));
        }
        let Some(auth) = auth else {
            return not_available(
                "handle_auth",
                "this gateway keeps no API keys (not served over HTTP)",
            );
        };
        let keys = auth.keys();
        let outcome = match args.action {
            AuthAction::CreateKey => {
                let name = args.name.unwrap_or_else(|| "unnamed".into());
                let scopes = args.scopes.unwrap_or_default();
                keys.create(&name, &scopes)
                    .map(|key| json!({ "created": key }))
            }
            AuthAction::ListKeys => keys.list().map(|keys| json!({ "keys": keys })),
            AuthAction::RevokeKey => match args.key_id {
                Some(id) => keys.revoke(&id).map(|key| json!({ "revoked": key })),
                None => return tool_error("`key_id` is required to revoke a key"),
            },
            AuthAction::Whoami => unreachable!("answered above"),
        };
        match outcome {
            Ok(value) => json_tool_result(&value),
            Err(e) => tool_error(e.to_string()),
        }
    }

    async fn aggregate(
        &self,
        args: AggregateResponsesArgs,
        caller: &Principal,
        context: &CallContext,
    ) -> CallToolResult {
        let Some((backend, original)) = self.route_of(&args.tool) else {
            return tool_error(format!(
                "`{}` is not a federated tool of this gateway (its own tools are not replicated)",
                args.tool
            ));
        };
        // Each fanned-out call is authorized where it is sent; saying so once
        // here gives the caller one clear answer instead of one per replica.
        if let Some(access) = self.tool_access(&args.tool)
            && !caller.may_call(&access)
        {
            return tool_error(caller.refusal(&access).message.to_string());
        }
        let view = self.current();
        if let Some(errors) = view.catalog.check_arguments(&args.tool, &args.arguments)
            && !errors.is_empty()
        {
            return tool_error(format!(
                "invalid arguments for {}: {}",
                args.tool,
                errors.join("; ")
            ));
        }
        aggregate::fan_out(
            &backend,
            &original,
            args.arguments,
            caller,
            args.strategy,
            context,
        )
        .await
    }

    async fn protocol_bridge(&self, args: ProtocolBridgeArgs) -> CallToolResult {
        match args.action {
            BridgeAction::List => {
                let bridged: Vec<_> = self
                    .backend_status()
                    .into_iter()
                    .filter(|b| b.bridged)
                    .collect();
                json_tool_result(&json!({ "bridges": bridged }))
            }
            BridgeAction::Add => match self.add_bridge(args).await {
                Ok(result) => result,
                Err(message) => tool_error(message),
            },
        }
    }

    async fn add_bridge(&self, args: ProtocolBridgeArgs) -> Result<CallToolResult, String> {
        let name = args.name.ok_or("`name` is required to add a bridge")?;
        if !is_backend_name(&name) {
            return Err(format!(
                "bridge name `{name}`: use letters, digits and `-` only"
            ));
        }
        if self.backends().iter().any(|b| b.name == name) {
            return Err(format!("a backend named `{name}` exists already"));
        }
        let connector = match (args.url, args.command) {
            (Some(url), None) if is_http_url(&url) => {
                let bearer = args
                    .token_env
                    .as_deref()
                    .map(Secret::from_env)
                    .transpose()?;
                Connector::Http { url, bearer }
            }
            (Some(_), None) => return Err("`url` must start with http:// or https://".into()),
            (None, Some(argv)) if !argv.is_empty() => Connector::Command(argv),
            _ => return Err("give either `url` or `command`".into()),
        };
        let fleet = Fleet::single(&name, connector, self.fleet_settings.clone());
        fleet.relay_changes_to(self.changes.clone());
        fleet.wake_on_change(self.backend_changed.clone());
        fleet.check().await;
        let status = fleet.health();
        self.backends
            .write()
            .expect("backends lock")
            .push(fleet.clone());
        self.rebuild_view();
        let offer = fleet.offer().unwrap_or_default();
        Ok(json_tool_result(&json!({
            "name": name,
            "up": fleet.is_up(),
            "tools": offer.tools.iter().map(|t| t.name.to_string()).collect::<Vec<_>>(),
            "resources": offer.resources.len(),
            "status": status,
        })))
    }
}

/// Which of a client's lists differ between two catalogs: (tools,
/// resources with their templates).
fn lists_changed(old: &Catalog, new: &Catalog) -> (bool, bool) {
    let tools = old.tools() != new.tools();
    let resources = old.resources() != new.resources() || old.templates() != new.templates();
    (tools, resources)
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

    fn list_changes(&self) -> Option<Arc<ListChanges>> {
        Some(self.list_changes.clone())
    }

    /// Ready while every backend has a replica up.
    fn readiness(&self) -> jetsonmind_core::lifecycle::Readiness {
        let backends = self.backends();
        let down = backends.iter().filter(|b| !b.is_up()).count();
        match down {
            0 => Ok(()),
            _ => Err(format!(
                "{down} of {} backends have no replica up",
                backends.len()
            )),
        }
    }

    /// A federated tool is authorized on its backend's own name and the
    /// access level it declares there, never on the name it is listed under.
    fn tool_access(&self, tool: &str) -> Option<ToolAccess> {
        let view = self.current();
        let listed = view.catalog.tool(tool)?;
        let level = AccessLevel::of(listed);
        Some(match view.tools.get(tool) {
            Some(route) => ToolAccess {
                name: route.original.clone(),
                level,
            },
            None => ToolAccess::of(listed),
        })
    }

    async fn call_tool(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        let route = self.current().tools.get(&call.name).cloned();
        match route {
            Some(route) => self.forward_call(route.backend, route.original, call).await,
            None => self.call_own_tool(call).await,
        }
    }

    fn prompts(&self) -> Vec<Prompt> {
        self.current().prompts.clone()
    }

    async fn get_prompt(
        &self,
        name: &str,
        arguments: JsonObject,
        caller: &Principal,
    ) -> Result<GetPromptResult, McpError> {
        self.forward_get_prompt(name, arguments, caller).await
    }

    async fn complete(
        &self,
        request: &CompleteRequestParams,
        caller: &Principal,
    ) -> Result<CompletionInfo, McpError> {
        self.forward_complete(request, caller).await
    }

    async fn read_resource(
        &self,
        uri: &str,
        _caller: &Principal,
    ) -> Result<ReadResourceResult, McpError> {
        let route = self.current().resource_route(uri);
        let Some((route, backend)) =
            route.and_then(|r| Some((r.clone(), self.backend(r.backend)?)))
        else {
            return Err(jetsonmind_core::error::no_resource_at(uri));
        };
        let was_up = backend.is_up();
        let outcome = backend.read_resource(&route.original).await;
        if was_up && !backend.is_up() {
            self.rebuild_view();
        }
        let mut result = outcome?;
        // The backend's URIs are not ours: give back the ones we listed.
        for content in &mut result.contents {
            rename_uri(content, &route.original, uri);
        }
        Ok(result)
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
