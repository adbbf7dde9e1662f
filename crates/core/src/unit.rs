//! One MCP server implementation for all four JetsonMind servers.
//!
//! A server crate implements [`McpUnit`]: who it is, what it offers (a
//! [`Catalog`]) and what a tool call or a resource read does. [`UnitServer`]
//! turns any unit into an rmcp `ServerHandler`, so protocol concerns (both
//! protocol eras, argument validation, cache hints, error shapes) live here
//! once instead of four times.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams,
    CompleteResult, CompletionInfo, GetPromptRequestParams, GetPromptResponse, GetPromptResult,
    Implementation, JsonObject, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, Prompt, ProtocolVersion,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Reference, ResultType,
    ServerCapabilities, ServerConfig, SubscribeRequestParams, SubscriptionFilter, Tool,
    UnsubscribeRequestParams,
};
use rmcp::model::{Extensions, RequestMetaObject};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use tokio_util::sync::CancellationToken;

use crate::Catalog;
use crate::auth::{Principal, ToolAccess, caller_of};
use crate::client_log::{self, ClientLog, ConnectionLevel};
use crate::config::McpConfig;
use crate::error::tool_error;
use crate::subscribe::{self, ListChanges, ResourceUpdates, SessionSubscriptions};
use crate::trace::TraceContext;
use crate::upstream::{Offer, ProgressSink};
use futures::future::BoxFuture;
use tracing::Instrument;

/// The name, title and guidance a server introduces itself with.
#[derive(Debug, Clone)]
pub struct UnitIdentity {
    pub name: &'static str,
    pub title: &'static str,
    pub instructions: &'static str,
}

/// One tool invocation, its arguments already checked against the schema.
pub struct ToolCall {
    pub name: String,
    pub arguments: JsonObject,
    /// Progress reporting, cancellation and the request `_meta`.
    pub context: CallContext,
    /// Whom the call is authorized as ([`caller_of`] its request), already
    /// found allowed to call this tool; calls it makes for the caller go as them.
    pub caller: Principal,
}

/// What a tool call carries besides its arguments, however it arrived (an
/// MCP request, or a direct call from this process's control plane).
pub struct CallContext {
    /// The request's `_meta` (trace, the caller a forwarder named, log level).
    pub meta: RequestMetaObject,
    /// Fires when the caller cancels or goes away.
    pub cancel: CancellationToken,
    /// Where progress goes, when the caller asked for it.
    pub progress: Option<ProgressSink>,
    /// The HTTP request's parts, when it came over HTTP.
    pub extensions: Extensions,
}

impl CallContext {
    /// The context of an MCP request.
    pub fn of_request(context: &RequestContext<RoleServer>) -> Self {
        Self {
            meta: context.meta.clone(),
            cancel: context.ct.clone(),
            progress: ProgressSink::of_request(context),
            extensions: context.extensions.clone(),
        }
    }

    /// The context of `request` called in this process with no transport
    /// (no HTTP parts): its `_meta`, `cancel` and where its progress goes.
    pub fn direct(
        request: &CallToolRequestParams,
        cancel: CancellationToken,
        progress: Option<ProgressSink>,
    ) -> Self {
        Self {
            meta: request.meta.clone().unwrap_or_default(),
            cancel,
            progress,
            extensions: Extensions::default(),
        }
    }
}

impl ToolCall {
    /// The arguments as the tool's argument type. They already passed the
    /// tool's schema, so this fails only when schema and type disagree.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, McpError> {
        T::deserialize(serde_json::Value::Object(self.arguments.clone()))
            .map_err(|e| McpError::invalid_params(format!("invalid arguments: {e}"), None))
    }
}

/// What a JetsonMind server is: an identity, a catalog, and behaviour.
pub trait McpUnit: Send + Sync + 'static {
    fn identity(&self) -> UnitIdentity;

    /// The current offer. Cheap: an `Arc` to a catalog built ahead of time.
    fn catalog(&self) -> Arc<Catalog>;

    /// Run a tool from the catalog. Failures the caller can act on are
    /// `Ok(CallToolResult)` with `isError`; `Err` is for protocol errors.
    fn call_tool(
        &self,
        call: ToolCall,
    ) -> impl Future<Output = Result<CallToolResult, McpError>> + Send;

    /// Read a resource; unknown URIs give `McpError::resource_not_found`.
    /// `caller` may read it (checked before).
    fn read_resource(
        &self,
        uri: &str,
        caller: &Principal,
    ) -> impl Future<Output = Result<ReadResourceResult, McpError>> + Send {
        let _ = caller;
        let error = crate::error::no_resource_at(uri);
        std::future::ready(Err(error))
    }

    /// Where this unit announces changes of its resources; `None` when
    /// clients cannot subscribe to them.
    fn updates(&self) -> Option<Arc<ResourceUpdates>> {
        None
    }

    /// Whether a client may subscribe to `uri`: by default, any listed resource.
    fn can_subscribe(&self, uri: &str) -> bool {
        self.catalog().resources().iter().any(|r| r.uri == uri)
    }

    /// Where this unit announces that its lists changed; `None` when they
    /// never do (a catalog fixed when the server starts).
    fn list_changes(&self) -> Option<Arc<ListChanges>> {
        None
    }

    /// Whether it can take calls now (`/readyz`); ready by default.
    fn readiness(&self) -> crate::lifecycle::Readiness {
        Ok(())
    }

    /// What authorizes a call of `tool` as listed here: by default the
    /// catalog's tool itself. A unit that runs tools elsewhere (the gateway)
    /// says what they are where they run.
    fn tool_access(&self, tool: &str) -> Option<ToolAccess> {
        self.catalog().tool(tool).map(ToolAccess::of)
    }

    /// The prompts this unit offers; none by default. Listing them needs no
    /// scope: a prompt only writes messages; what it embeds is checked when
    /// it is got (a prompt that reads a resource checks that resource).
    fn prompts(&self) -> Vec<Prompt> {
        Vec::new()
    }

    /// The messages of prompt `name`; unknown names are `invalid_params`.
    fn get_prompt(
        &self,
        name: &str,
        arguments: JsonObject,
        caller: &Principal,
    ) -> impl Future<Output = Result<GetPromptResult, McpError>> + Send {
        let _ = (arguments, caller);
        std::future::ready(Err(unknown_prompt(name)))
    }

    /// Values for the argument of a prompt or the variable of a resource
    /// template that `request` names (the reference is one this unit
    /// lists), as [`completion`] makes them; none by default.
    fn complete(
        &self,
        request: &CompleteRequestParams,
        caller: &Principal,
    ) -> impl Future<Output = Result<CompletionInfo, McpError>> + Send {
        let _ = (request, caller);
        std::future::ready(Ok(CompletionInfo::default()))
    }
}

/// The error for a prompt this server does not offer.
pub fn unknown_prompt(name: &str) -> McpError {
    McpError::invalid_params(format!("unknown prompt: {name}"), None)
}

/// A completion: the `candidates` that start with what the client `typed`,
/// at most the 100 MCP allows, saying when there were more.
pub fn completion(candidates: impl IntoIterator<Item = String>, typed: &str) -> CompletionInfo {
    let matching: Vec<String> = candidates
        .into_iter()
        .filter(|c| c.starts_with(typed))
        .collect();
    let total = matching.len();
    let values: Vec<String> = matching
        .into_iter()
        .take(CompletionInfo::MAX_VALUES)
        .collect();
    let has_more = total > values.len();
    CompletionInfo::with_pagination(values, Some(total as u32), has_more)
        .expect("values are cut to the maximum")
}

/// Serves any [`McpUnit`] over MCP. Cloning is cheap (a few `Arc`s); each
/// clone serves one connection, whose `resources/subscribe` subscriptions it
/// holds and ends when the connection goes.
pub struct UnitServer<U> {
    unit: Arc<U>,
    settings: Arc<McpConfig>,
    observer: Option<Arc<dyn CallObserver>>,
    session: Arc<SessionSubscriptions>,
    /// What this connection asked for with `logging/setLevel`.
    log_level: ConnectionLevel,
}

/// A server in this process, called directly: no MCP messages, no JSON,
/// the same checks as over MCP (authorization as the caller named in the
/// request's `_meta`, validation, tracing, analytics). What the control
/// plane's in-process replica link holds.
pub trait LocalServer: Send + Sync + 'static {
    /// What it offers, as a client would list it with every right.
    fn offer(&self) -> Offer;
    /// Whether clients can follow changes of it (resource subscriptions or
    /// list changes), which only an MCP session carries.
    fn announces_changes(&self) -> bool;
    fn call(
        &self,
        request: CallToolRequestParams,
        context: CallContext,
    ) -> BoxFuture<'_, Result<CallToolResult, McpError>>;
    fn read<'a>(
        &'a self,
        uri: &'a str,
        meta: &'a RequestMetaObject,
    ) -> BoxFuture<'a, Result<ReadResourceResult, McpError>>;
    fn get_prompt(
        &self,
        request: GetPromptRequestParams,
    ) -> BoxFuture<'_, Result<GetPromptResult, McpError>>;
    fn complete(
        &self,
        request: CompleteRequestParams,
    ) -> BoxFuture<'_, Result<CompleteResult, McpError>>;
}

/// Whom a direct call runs as: the caller its `_meta` names, bounded by this
/// process's own (unauthenticated) user, as over an in-process pipe.
fn direct_caller(meta: &RequestMetaObject) -> Principal {
    crate::auth::caller_named_in(meta, Principal::local())
}

impl<U: McpUnit> LocalServer for UnitServer<U> {
    fn offer(&self) -> Offer {
        let catalog = self.unit.catalog();
        Offer {
            tools: catalog.tools().to_vec(),
            resources: catalog.resources().to_vec(),
            templates: catalog.templates().to_vec(),
            prompts: self.unit.prompts(),
        }
    }

    fn announces_changes(&self) -> bool {
        self.unit.updates().is_some() || self.unit.list_changes().is_some()
    }

    fn call(
        &self,
        request: CallToolRequestParams,
        context: CallContext,
    ) -> BoxFuture<'_, Result<CallToolResult, McpError>> {
        let caller = direct_caller(&context.meta);
        Box::pin(UnitServer::call(self, request, caller, context))
    }

    fn read<'a>(
        &'a self,
        uri: &'a str,
        meta: &'a RequestMetaObject,
    ) -> BoxFuture<'a, Result<ReadResourceResult, McpError>> {
        Box::pin(async move { UnitServer::read(self, uri, &direct_caller(meta)).await })
    }

    fn get_prompt(
        &self,
        request: GetPromptRequestParams,
    ) -> BoxFuture<'_, Result<GetPromptResult, McpError>> {
        Box::pin(async move {
            let caller = direct_caller(&request.meta.clone().unwrap_or_default());
            self.prompt(request, &caller).await
        })
    }

    fn complete(
        &self,
        request: CompleteRequestParams,
    ) -> BoxFuture<'_, Result<CompleteResult, McpError>> {
        Box::pin(async move {
            let caller = direct_caller(&request.meta.clone().unwrap_or_default());
            self.completion_for(request, &caller).await
        })
    }
}

/// Told of every call of a known tool once it has an outcome (analytics).
pub trait CallObserver: Send + Sync + 'static {
    fn tool_called(
        &self,
        server: &str,
        tool: &str,
        elapsed: Duration,
        outcome: &Result<CallToolResult, McpError>,
    );
}

impl<U> Clone for UnitServer<U> {
    fn clone(&self) -> Self {
        Self {
            unit: self.unit.clone(),
            settings: self.settings.clone(),
            observer: self.observer.clone(),
            session: Arc::default(),
            log_level: ConnectionLevel::default(),
        }
    }
}

impl<U: McpUnit> UnitServer<U> {
    pub fn new(unit: Arc<U>, settings: McpConfig) -> Self {
        Self {
            unit,
            settings: Arc::new(settings),
            observer: None,
            session: Arc::default(),
            log_level: ConnectionLevel::default(),
        }
    }

    pub fn with_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn unit(&self) -> &Arc<U> {
        &self.unit
    }

    fn list_hints<T>(&self, with: impl FnOnce(u64, CacheScope) -> T) -> T {
        // Private: with per-client scopes two clients may see different lists.
        with(self.settings.list_ttl_ms, CacheScope::Private)
    }

    fn updates_for(&self, uri: &str) -> Result<Arc<ResourceUpdates>, McpError> {
        match self.unit.updates() {
            Some(updates) if self.unit.can_subscribe(uri) => Ok(updates),
            Some(_) => Err(McpError::invalid_params(
                format!("cannot subscribe to {uri}: not a resource of this server that changes"),
                None,
            )),
            None => Err(McpError::invalid_request(
                "this server has no resource subscriptions",
                None,
            )),
        }
    }
}

/// A caller sees the tools it may call.
fn may_list_tool<U: McpUnit>(unit: &U, principal: &Principal, tool: &str) -> bool {
    unit.tool_access(tool)
        .is_some_and(|access| principal.may_call(&access))
}

/// Refuse reading or watching `uri` to a caller without its scope.
pub fn check_read(principal: &Principal, uri: &str) -> Result<(), McpError> {
    match principal.may_read(uri) {
        true => Ok(()),
        false => Err(McpError::new(
            crate::auth::FORBIDDEN,
            format!(
                "forbidden: {} needs the scope {}",
                principal.id,
                crate::auth::scope::resource_scope(uri)
            ),
            Some(serde_json::json!({ "uri": uri })),
        )),
    }
}

/// The protocol revisions served: every handshake era from 2024-11-05 up to
/// the stateless 2026-07-28.
pub fn supported_versions() -> &'static [ProtocolVersion] {
    ProtocolVersion::KNOWN_VERSIONS
}

impl<U: McpUnit> ServerHandler for UnitServer<U> {
    fn get_info(&self) -> ServerConfig {
        let identity = self.unit.identity();
        let builder = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources();
        let mut capabilities = match self.unit.updates() {
            Some(_) => builder.enable_resources_subscribe().build(),
            None => builder.build(),
        };
        let prompts = !self.unit.prompts().is_empty();
        if prompts {
            capabilities.prompts = Some(Default::default());
        }
        // Prompt arguments and template variables are what can be completed.
        if prompts || !self.unit.catalog().templates().is_empty() {
            capabilities.completions = Some(Default::default());
        }
        capabilities.logging = Some(Default::default());
        let mut implementation = Implementation::new(identity.name, env!("CARGO_PKG_VERSION"));
        implementation.title = Some(identity.title.to_string());
        let mut info = ServerConfig::new(capabilities);
        info.server_info = implementation;
        info.instructions = Some(identity.instructions.to_string());
        if self.unit.list_changes().is_some() {
            if let Some(tools) = info.capabilities.tools.as_mut() {
                tools.list_changed = Some(true);
            }
            if let Some(resources) = info.capabilities.resources.as_mut() {
                resources.list_changed = Some(true);
            }
        }
        info
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        std::borrow::Cow::Borrowed(supported_versions())
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.unit.catalog().tool(name).cloned()
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let caller = caller_of(&context);
        let tools: Vec<Tool> = self
            .unit
            .catalog()
            .tools()
            .iter()
            .filter(|t| may_list_tool(self.unit.as_ref(), &caller, &t.name))
            .cloned()
            .collect();
        Ok(self.list_hints(|ttl, scope| {
            ListToolsResult::with_all_items(tools)
                .with_ttl_ms(ttl)
                .with_cache_scope(scope)
        }))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let caller = caller_of(&context);
        let resources: Vec<_> = self
            .unit
            .catalog()
            .resources()
            .iter()
            .filter(|r| caller.may_read(&r.uri))
            .cloned()
            .collect();
        Ok(self.list_hints(|ttl, scope| {
            ListResourcesResult::with_all_items(resources)
                .with_ttl_ms(ttl)
                .with_cache_scope(scope)
        }))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let caller = caller_of(&context);
        let templates: Vec<_> = self
            .unit
            .catalog()
            .templates()
            .iter()
            .filter(|t| caller.may_read(&t.uri_template))
            .cloned()
            .collect();
        Ok(self.list_hints(|ttl, scope| {
            ListResourceTemplatesResult::with_all_items(templates)
                .with_ttl_ms(ttl)
                .with_cache_scope(scope)
        }))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let result = self.read(&request.uri, &caller_of(&context)).await?;
        Ok(ReadResourceResponse::Complete(result))
    }

    // The handshake era's subscriptions; rmcp marks them deprecated in
    // favour of subscriptions/listen, and both eras are served.
    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        check_read(&caller_of(&context), &request.uri)?;
        let updates = self.updates_for(&request.uri)?;
        // A stateless HTTP request has no session to send a later
        // notification on; stdio, in-process pipes and HTTP sessions do.
        if !crate::sessions::can_notify_later(&context.extensions) {
            return Err(subscribe::needs_session());
        }
        self.session.subscribe(
            &updates,
            request.uri,
            context.peer.clone(),
            self.log_level.clone(),
        );
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        match self.session.unsubscribe(&request.uri) {
            true => Ok(()),
            false => Err(McpError::invalid_params(
                format!("not subscribed to {}", request.uri),
                None,
            )),
        }
    }

    /// A handshake-era session (stdio, in-process, HTTP) hears of list
    /// changes from now on; stateless HTTP requests never get here.
    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        if let Some(changes) = self.unit.list_changes() {
            self.session
                .follow_list_changes(changes, context.peer.clone());
        }
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let updates = self.unit.updates();
        let lists = self.unit.list_changes().is_some();
        if updates.is_none() && !lists {
            return None;
        }
        let uris: Vec<String> = requested
            .resource_subscriptions
            .iter()
            .flatten()
            .filter(|uri| updates.is_some() && self.unit.can_subscribe(uri))
            .cloned()
            .collect();
        let mut accepted = SubscriptionFilter::builder()
            .resource_subscriptions(uris)
            .build();
        if lists {
            accepted.tools_list_changed = requested.tools_list_changed;
            accepted.resources_list_changed = requested.resources_list_changed;
        }
        Some(accepted)
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let stop = context.request_context().ct.clone();
        let uris: std::collections::BTreeSet<String> = context
            .accepted()
            .resource_subscriptions
            .iter()
            .flatten()
            .cloned()
            .collect();
        let caller = caller_of(context.request_context());
        for uri in &uris {
            check_read(&caller, uri)?;
        }
        let resources = async {
            if let Some(updates) = self.unit.updates() {
                subscribe::listen(updates, uris, context.sink().clone(), stop.clone()).await;
            }
        };
        let lists = async {
            if let Some(changes) = self.unit.list_changes() {
                let (filter, sink) = (context.accepted(), context.sink().clone());
                subscribe::listen_lists(changes, filter, sink, stop.clone()).await;
            }
        };
        tokio::join!(resources, lists);
        stop.cancelled().await;
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let prompts = self.unit.prompts();
        Ok(self.list_hints(|ttl, scope| {
            ListPromptsResult::with_all_items(prompts)
                .with_ttl_ms(ttl)
                .with_cache_scope(scope)
        }))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let result = self.prompt(request, &caller_of(&context)).await?;
        Ok(GetPromptResponse::Complete(result))
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        self.completion_for(request, &caller_of(&context)).await
    }

    /// The level holds for this connection's later tool calls; a stateless
    /// request has no later, so it is told how to ask per request instead.
    #[allow(deprecated)]
    async fn set_level(
        &self,
        request: rmcp::model::SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        if !crate::sessions::can_notify_later(&context.extensions) {
            return Err(McpError::invalid_request(
                "logging/setLevel needs a session (initialize first, and send its \
                 Mcp-Session-Id), or put io.modelcontextprotocol/logLevel in each request's _meta",
                None,
            ));
        }
        self.log_level.set(request.level);
        Ok(())
    }

    /// Every call runs as a span named by its request id (the trace id of
    /// its `traceparent`, continued or new), which backends receive too and
    /// the result's `_meta` carries back.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let trace = TraceContext::of_request(&context.meta);
        let client_log = self.client_log(&context, &trace);
        let caller = caller_of(&context);
        let context = CallContext::of_request(&context);
        let result = self
            .call_in(trace, request, caller, context, client_log)
            .await?;
        Ok(CallToolResponse::Complete(result))
    }
}

impl<U: McpUnit> UnitServer<U> {
    /// A tool call as `caller`: authorized, validated, observed, in a span
    /// named by its request id, its result stamped with that id. Both the
    /// MCP handler and direct in-process callers come here.
    pub async fn call(
        &self,
        request: CallToolRequestParams,
        caller: Principal,
        context: CallContext,
    ) -> Result<CallToolResult, McpError> {
        let trace = TraceContext::of_request(&context.meta);
        // Its events reach the client the caller's own call logs to.
        self.call_in(trace, request, caller, context, None).await
    }

    /// [`UnitServer::call`] as part of `trace`, its events sent to
    /// `client_log` when given.
    async fn call_in(
        &self,
        trace: TraceContext,
        request: CallToolRequestParams,
        caller: Principal,
        context: CallContext,
        client_log: Option<ClientLog>,
    ) -> Result<CallToolResult, McpError> {
        let span = tracing::info_span!(
            "call",
            request_id = %trace.trace_id,
            server = self.unit.identity().name,
            tool = %request.name,
        );
        let started = Instant::now();
        let _counted = crate::lifecycle::InFlight::calls().begin();
        let checked = self.call_tool_checked(request, caller, context);
        let work = async move {
            match client_log {
                Some(log) => client_log::scope(Some(log), checked).await,
                None => checked.await,
            }
        };
        let outcome = trace.clone().scope(work).instrument(span.clone()).await;
        span.in_scope(|| {
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match &outcome {
                Ok(result) => {
                    tracing::debug!(elapsed_ms, is_error = result.is_error, "tool call done")
                }
                Err(e) => tracing::debug!(elapsed_ms, error = %e.message, "tool call refused"),
            }
        });
        let mut result = outcome?;
        trace.stamp(&mut result.meta);
        Ok(result)
    }

    /// The messages of prompt `name` for `caller`.
    async fn prompt(
        &self,
        request: GetPromptRequestParams,
        caller: &Principal,
    ) -> Result<GetPromptResult, McpError> {
        if !self.unit.prompts().iter().any(|p| p.name == request.name) {
            return Err(unknown_prompt(&request.name));
        }
        let arguments = request.arguments.unwrap_or_default();
        let mut result = self
            .unit
            .get_prompt(&request.name, arguments, caller)
            .await?;
        result.result_type.get_or_insert(ResultType::COMPLETE);
        Ok(result)
    }

    /// A template's variables are completed for those who may read it;
    /// prompt arguments for anyone (a prompt runs nothing).
    async fn completion_for(
        &self,
        request: CompleteRequestParams,
        caller: &Principal,
    ) -> Result<CompleteResult, McpError> {
        match &request.r#ref {
            Reference::Resource(template) => {
                check_read(caller, &template.uri)?;
                let known = self
                    .unit
                    .catalog()
                    .templates()
                    .iter()
                    .any(|t| t.uri_template == template.uri);
                if !known {
                    return Err(crate::error::resource_not_found(
                        &template.uri,
                        format!("no resource template {}", template.uri),
                    ));
                }
            }
            Reference::Prompt(prompt) => {
                if !self.unit.prompts().iter().any(|p| p.name == prompt.name) {
                    return Err(unknown_prompt(&prompt.name));
                }
            }
            _ => {
                return Err(McpError::invalid_params(
                    "unknown completion reference",
                    None,
                ));
            }
        }
        let completion = self.unit.complete(&request, caller).await?;
        Ok(CompleteResult::new(completion))
    }

    /// A resource read as `caller`, with this server's cache hints.
    pub async fn read(
        &self,
        uri: &str,
        caller: &Principal,
    ) -> Result<ReadResourceResult, McpError> {
        check_read(caller, uri)?;
        let mut result = self.unit.read_resource(uri, caller).await?;
        result.ttl_ms.get_or_insert(self.settings.read_ttl_ms);
        result.cache_scope.get_or_insert(CacheScope::Private);
        // Relayed results (the gateway's) may come from a handshake-era peer
        // that left the discriminator out; rmcp strips it again for such peers.
        result.result_type.get_or_insert(ResultType::COMPLETE);
        Ok(result)
    }

    /// Where a call's log events go: the level in the request's `_meta` (the
    /// stateless era), else the connection's; nowhere when neither is set.
    #[allow(deprecated)]
    fn client_log(
        &self,
        context: &RequestContext<RoleServer>,
        trace: &TraceContext,
    ) -> Option<ClientLog> {
        let level = context.meta.log_level().or_else(|| self.log_level.get())?;
        Some(ClientLog {
            peer: context.peer.clone(),
            level,
            request_id: trace.trace_id.clone(),
        })
    }

    /// A call of a known tool, with valid arguments, that its caller may make.
    async fn call_tool_checked(
        &self,
        request: CallToolRequestParams,
        caller: Principal,
        context: CallContext,
    ) -> Result<CallToolResult, McpError> {
        let catalog = self.unit.catalog();
        let name = request.name.to_string();
        let arguments = request.arguments.unwrap_or_default();
        let Some(violations) = catalog.check_arguments(&name, &arguments) else {
            return Err(McpError::invalid_params(
                format!("unknown tool: {name}"),
                None,
            ));
        };
        drop(catalog);
        if let Some(access) = self.unit.tool_access(&name)
            && !caller.may_call(&access)
        {
            return Err(caller.refusal(&access));
        }
        let started = Instant::now();
        let outcome = if violations.is_empty() {
            let call = ToolCall {
                name: name.clone(),
                arguments,
                context,
                caller,
            };
            self.unit.call_tool(call).await
        } else {
            // A tool-level error, not a protocol one, so the model sees what
            // to fix (MCP 2025-11-25: input validation errors are tool errors).
            let message = format!("invalid arguments for {name}: {}", violations.join("; "));
            Ok(tool_error(message))
        };
        if let Some(observer) = &self.observer {
            observer.tool_called(
                self.unit.identity().name,
                &name,
                started.elapsed(),
                &outcome,
            );
        }
        let mut result = outcome?;
        result.result_type.get_or_insert(ResultType::COMPLETE);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::completion;

    #[test]
    fn completions_filter_by_prefix_and_stop_at_the_mcp_maximum() {
        let names = (0..150).map(|i| format!("model-{i:03}"));
        let all = completion(names.clone(), "model-");
        assert_eq!(all.values.len(), 100);
        assert_eq!((all.total, all.has_more), (Some(150), Some(true)));
        let some = completion(names, "model-14");
        assert_eq!(
            some.values,
            (140..150)
                .map(|i| format!("model-{i:03}"))
                .collect::<Vec<_>>()
        );
        assert_eq!(some.has_more, Some(false));
    }
}
