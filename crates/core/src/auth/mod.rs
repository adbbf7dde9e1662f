//! Who may call, and what: API keys and OAuth 2.1 bearer tokens, with
//! scopes; a per-client rate limit; RFC 9728 protected-resource metadata.
//!
//! One HTTP middleware ([`guard`]) serves every server: it authenticates
//! the caller (401 with a `WWW-Authenticate` challenge when it cannot),
//! applies the caller's rate limit (429), and checks the scope the request
//! needs (403 `insufficient_scope`): the tool a `tools/call` names, the
//! resource a read or subscription names, `/v1/*` and `/metrics`. The caller
//! is then put in the request's extensions as a [`Principal`], where the
//! servers find it (lists show what it may use; `handle_auth` says who it is).

pub mod keys;
pub mod oauth;
pub mod scope;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::CoreError;
use crate::config::{AuthConfig, HttpConfig};
use crate::connections::{ConnectionId, Connections};
use crate::paths::{MCP_PATH, METRICS_PATH};
use crate::ratelimit::RateLimiter;
pub use keys::KeyStore;
use oauth::OAuthVerifier;
pub use scope::{AccessLevel, Scopes, ToolAccess};

/// The caller of a request.
///
/// A call forwarded by a gateway carries its caller along (`_meta`, see
/// [`delegate`]); the server that receives it authorizes the call as that
/// caller, bounded by the credential of every hop it came through (`via`), so
/// a forwarded identity can only narrow what the forwarding connection may do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Principal {
    /// `key:ID`, `oauth:SUBJECT`, or `local` when authentication is off.
    pub id: String,
    /// The key's name, or the token's subject.
    pub name: String,
    pub method: AuthMethod,
    pub scopes: Scopes,
    /// The hops this caller's request came through, each bounding its rights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<Hop>,
}

/// A connection a forwarded request came through, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    pub id: String,
    pub scopes: Scopes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// Authentication is off (loopback, not required): every scope.
    None,
    ApiKey,
    OAuth,
    /// The secret of a replica started by this node's `scale_cluster`.
    Launcher,
}

/// The request `_meta` key a forwarded call's caller travels in.
pub const CALLER_META_KEY: &str = "jetsonmind/caller";

impl Principal {
    /// A caller on a server that does not require authentication.
    pub fn local() -> Self {
        Self {
            id: "local".into(),
            name: "local".into(),
            method: AuthMethod::None,
            scopes: Scopes::all(),
            via: Vec::new(),
        }
    }

    /// The holder of the API key `id`.
    pub fn api_key(id: &str, name: impl Into<String>, scopes: Scopes) -> Self {
        Self {
            id: format!("key:{id}"),
            name: name.into(),
            method: AuthMethod::ApiKey,
            scopes,
            via: Vec::new(),
        }
    }

    fn scope_sets(&self) -> impl Iterator<Item = &Scopes> {
        std::iter::once(&self.scopes).chain(self.via.iter().map(|hop| &hop.scopes))
    }

    pub fn grants(&self, scope: &str) -> bool {
        self.scope_sets().all(|s| s.grants(scope))
    }

    pub fn is_admin(&self) -> bool {
        self.scope_sets().all(Scopes::is_admin)
    }

    pub fn may_call(&self, tool: &ToolAccess) -> bool {
        self.scope_sets().all(|s| s.may_call(tool))
    }

    pub fn may_read(&self, uri: &str) -> bool {
        self.scope_sets().all(|s| s.may_read(uri))
    }

    /// This caller, as received over a connection authenticated as `hop`.
    fn received_via(mut self, hop: &Principal) -> Self {
        // A connection with every right (in-process, stdio, auth off) bounds nothing.
        if hop.method != AuthMethod::None {
            self.via.push(Hop {
                id: hop.id.clone(),
                scopes: hop.scopes.clone(),
            });
            self.via.extend(hop.via.iter().cloned());
        }
        self
    }

    /// Why `tool` is refused to this caller, as an MCP error.
    pub fn refusal(&self, tool: &ToolAccess) -> rmcp::ErrorData {
        let hint = match tool.level {
            AccessLevel::Admin => " (an administrative tool: `admin` or exactly that scope)",
            _ => "",
        };
        rmcp::ErrorData::new(
            FORBIDDEN,
            format!(
                "forbidden: {} needs the scope {}{hint}",
                self.id,
                tool.scope()
            ),
            Some(json!({ "requiredScope": tool.scope(), "caller": self.id })),
        )
    }
}

/// JSON-RPC error code of a call the caller may not make (an
/// implementation-defined server error).
pub const FORBIDDEN: rmcp::model::ErrorCode = rmcp::model::ErrorCode(-32003);

/// How an HTTP server admits requests.
pub struct Auth {
    required: bool,
    keys: Arc<KeyStore>,
    oauth: Option<OAuthVerifier>,
    /// Set on a replica started by `scale_cluster`: the secret its launcher holds.
    launcher_secret: Option<String>,
}

/// Why a request was not admitted, as an RFC 6750 challenge.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    error: Option<&'static str>,
    description: String,
    scope: Option<String>,
}

impl Auth {
    /// Authentication is required when the config says so or when `listen`
    /// is not a loopback address; then at least one way in must exist.
    pub fn new(
        config: &AuthConfig,
        keys: Arc<KeyStore>,
        listen: Option<SocketAddr>,
    ) -> Result<Self, CoreError> {
        let exposed = listen.is_some_and(|addr| !addr.ip().is_loopback());
        let required = config.required || exposed;
        if required && config.oauth.is_none() && keys.is_empty() {
            let why = match exposed {
                true => format!(
                    "listening on {} (not loopback) requires authentication",
                    listen.expect("exposed implies an address")
                ),
                false => "auth.required is set".to_string(),
            };
            return Err(CoreError::Config(format!(
                "{why}, but no API key exists and no OAuth issuer is configured: create a key \
                 with `jetsonmind keys create --name NAME --scope tools:*` or set [auth.oauth]"
            )));
        }
        Ok(Self::with_keys_to_come(config, keys, listen))
    }

    /// As [`Self::new`], for keys that arrive after the start (a cluster's,
    /// mirrored once the node joins): with none yet, every request that
    /// needs a key is refused, instead of the start failing.
    pub fn with_keys_to_come(
        config: &AuthConfig,
        keys: Arc<KeyStore>,
        listen: Option<SocketAddr>,
    ) -> Self {
        let exposed = listen.is_some_and(|addr| !addr.ip().is_loopback());
        Self {
            required: config.required || exposed,
            keys,
            oauth: config.oauth.clone().map(OAuthVerifier::new),
            launcher_secret: None,
        }
    }

    /// A replica started by another process's `scale_cluster`: it requires
    /// credentials whatever it listens on, and its launcher's `secret` is one.
    pub fn with_launcher_secret(mut self, secret: String) -> Self {
        self.required = true;
        self.launcher_secret = Some(secret);
        self
    }

    /// No authentication: every caller is [`Principal::local`].
    pub fn off(keys: Arc<KeyStore>) -> Self {
        Self {
            required: false,
            keys,
            oauth: None,
            launcher_secret: None,
        }
    }

    pub fn required(&self) -> bool {
        self.required
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, Refusal> {
        if !self.required {
            return Ok(Principal::local());
        }
        let Some(token) = bearer(headers) else {
            return Err(Refusal::unauthenticated(None, "credentials required"));
        };
        if let Some(secret) = &self.launcher_secret
            && keys::constant_time_eq(secret.as_bytes(), token.as_bytes())
        {
            return Ok(Principal {
                id: "launcher".into(),
                name: "the process that started this replica".into(),
                method: AuthMethod::Launcher,
                scopes: Scopes::all(),
                via: Vec::new(),
            });
        }
        if token.starts_with("jm_") {
            return match self.keys.verify(token) {
                Some((key, scopes)) => Ok(Principal::api_key(&key.id, key.name, scopes)),
                None => Err(Refusal::unauthenticated(
                    Some("invalid_token"),
                    "unknown or revoked API key",
                )),
            };
        }
        let Some(oauth) = &self.oauth else {
            return Err(Refusal::unauthenticated(
                Some("invalid_token"),
                "not an API key, and no OAuth issuer is configured",
            ));
        };
        match oauth.verify(token).await {
            Ok(identity) => Ok(Principal {
                id: format!("oauth:{}", identity.subject),
                name: identity.subject,
                method: AuthMethod::OAuth,
                scopes: identity.scopes,
                via: Vec::new(),
            }),
            Err(e) => Err(Refusal::unauthenticated(
                Some("invalid_token"),
                &e.to_string(),
            )),
        }
    }

    /// RFC 9728 protected-resource metadata; only with an OAuth issuer.
    pub fn metadata(&self) -> Option<Value> {
        let oauth = self.oauth.as_ref()?.config();
        let servers = match oauth.authorization_servers.is_empty() {
            true => vec![oauth.issuer.clone()],
            false => oauth.authorization_servers.clone(),
        };
        Some(json!({
            "resource": oauth.audience,
            "authorization_servers": servers,
            "scopes_supported": scope::KNOWN_SCOPES,
            "bearer_methods_supported": ["header"],
            "resource_name": "JetsonMind",
        }))
    }

    /// Where the metadata is published, when it is.
    fn metadata_url(&self) -> Option<String> {
        let audience = &self.oauth.as_ref()?.config().audience;
        Some(well_known_url(audience))
    }
}

/// RFC 9728 §3.1: the well-known segment goes between host and path.
pub fn well_known_url(resource: &str) -> String {
    let (origin, path) = split_origin(resource);
    format!(
        "{origin}/.well-known/oauth-protected-resource{}",
        path.trim_end_matches('/')
    )
}

/// `https://host:8443/mcp` -> (`https://host:8443`, `/mcp`).
fn split_origin(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => url.split_at(after_scheme + i),
        None => (url, ""),
    }
}

/// RFC 9728 protected-resource metadata at its well-known paths; no routes
/// without an OAuth issuer.
pub fn metadata_routes(auth: &Auth) -> axum::Router {
    let Some(metadata) = auth.metadata() else {
        return axum::Router::new();
    };
    metadata_paths(auth)
        .into_iter()
        .fold(axum::Router::new(), |router, path| {
            let metadata = metadata.clone();
            let serve = move || async move { axum::Json(metadata) };
            router.route(&path, axum::routing::get(serve))
        })
}

/// The paths the metadata is served at: path-inserted and at the root.
fn metadata_paths(auth: &Auth) -> Vec<String> {
    let Some(oauth) = auth.oauth.as_ref() else {
        return Vec::new();
    };
    let (_, path) = split_origin(&oauth.config().audience);
    let root = "/.well-known/oauth-protected-resource".to_string();
    let inserted = format!("{root}{}", path.trim_end_matches('/'));
    match inserted == root {
        true => vec![root],
        false => vec![inserted, root],
    }
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl Refusal {
    fn unauthenticated(error: Option<&'static str>, description: &str) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error,
            description: description.to_string(),
            scope: None,
        }
    }

    fn insufficient(scope: String) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            error: Some("insufficient_scope"),
            description: format!("this request needs the scope {scope}"),
            scope: Some(scope),
        }
    }

    fn into_response(self, metadata_url: Option<String>) -> Response {
        let mut params = vec![r#"realm="jetsonmind""#.to_string()];
        if let Some(url) = metadata_url {
            params.push(format!(r#"resource_metadata="{url}""#));
        }
        if let Some(scope) = &self.scope {
            params.push(format!(r#"scope="{scope}""#));
        }
        if let Some(error) = self.error {
            params.push(format!(r#"error="{error}""#));
            let description = self.description.replace('"', "'");
            params.push(format!(r#"error_description="{description}""#));
        }
        let challenge = format!("Bearer {}", params.join(", "));
        let body = json!({
            "error": self.error.unwrap_or("unauthorized"),
            "error_description": self.description,
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// Finds what authorizes a call of a tool by the name this server lists it
/// under (a gateway resolves its renamed tools to their backend's).
pub type ToolResolver = Arc<dyn Fn(&str) -> Option<ToolAccess> + Send + Sync>;

/// Everything the [`guard`] middleware needs.
pub struct Gatekeeper {
    pub auth: Arc<Auth>,
    pub limiter: RateLimiter,
    pub connections: Arc<Connections>,
    max_body_bytes: usize,
    /// Whether unauthenticated loopback clients are rate-limited too.
    limit_local: bool,
    tools: ToolResolver,
    /// Paths under which the routes authenticate their callers themselves
    /// (the web dashboard's session cookies).
    self_authenticated: Vec<&'static str>,
    /// What the HTTP routes besides MCP's need, as their owners declared it
    /// ([`Gatekeeper::route_needs`]); `/metrics` needs `metrics`.
    routes: Vec<(&'static str, Vec<Need>)>,
}

impl Gatekeeper {
    /// A gatekeeper that checks tool calls on what `tools` resolves them to
    /// (`McpUnit::tool_access` of the server behind it: see [`resolver`]).
    pub fn new(
        auth: Arc<Auth>,
        http: &HttpConfig,
        connections: Arc<Connections>,
        tools: ToolResolver,
    ) -> Self {
        Self {
            auth,
            limiter: RateLimiter::new(http.rate_limit_per_second, http.rate_limit_burst),
            connections,
            max_body_bytes: http.max_body_bytes,
            limit_local: http.rate_limit_loopback,
            tools,
            self_authenticated: Vec::new(),
            routes: vec![(METRICS_PATH, vec![Need::Scope("metrics".into())])],
        }
    }

    /// Refuse a request to one of `routes` early, with the scope it lacks,
    /// unless its caller has what the route declares it needs. The tools a
    /// route calls authorize the caller again at dispatch; this only makes the
    /// refusal an HTTP 403 that names the scope.
    pub fn route_needs(mut self, routes: Vec<(&'static str, Vec<Need>)>) -> Self {
        self.routes.extend(routes);
        self
    }

    fn needs_of_route(&self, path: &str) -> Option<Vec<Need>> {
        self.routes
            .iter()
            .find(|(route, _)| *route == path)
            .map(|(_, needs)| needs.clone())
    }

    /// Leave the routes under `prefixes` to authenticate their own
    /// callers; they must put the caller's [`Principal`] in the request
    /// themselves.
    pub fn self_authenticated(mut self, prefixes: &[&'static str]) -> Self {
        self.self_authenticated.extend_from_slice(prefixes);
        self
    }

    fn authenticates_itself(&self, path: &str) -> bool {
        self.self_authenticated
            .iter()
            .any(|prefix| path == *prefix || path.starts_with(&format!("{prefix}/")))
    }

    /// The rate bucket of a caller: its principal when authenticated, its
    /// address otherwise; `None` for a local agent on loopback (by default).
    fn rate_bucket(&self, principal: &Principal, peer: IpAddr) -> Option<String> {
        match principal.method {
            AuthMethod::None if peer.is_loopback() && !self.limit_local => None,
            AuthMethod::None => Some(peer.to_string()),
            // A launcher's calls are the node's own traffic, limited where it came in.
            AuthMethod::Launcher => None,
            _ => Some(principal.id.clone()),
        }
    }

    fn tool_access(&self, name: &str) -> ToolAccess {
        (self.tools)(name).unwrap_or_else(|| ToolAccess::scoped(name))
    }
}

/// What the guard in front of `unit` checks a tool call on.
pub fn resolver<U: crate::McpUnit>(unit: Arc<U>) -> ToolResolver {
    Arc::new(move |name| unit.tool_access(name))
}

/// `router` behind the HTTP guard, one layer per concern, outermost first:
/// who the caller is ([`authenticate`]), their name on their connection
/// ([`name_connection`]), their rate ([`rate_limit`]), and whether they may
/// use what the request asks for ([`authorize`]). The OAuth metadata, the
/// probes and the self-authenticated prefixes pass through unauthenticated;
/// the later layers act only on a request [`authenticate`] gave a principal.
pub fn guarded(router: axum::Router, gate: Arc<Gatekeeper>) -> axum::Router {
    router.layer(
        tower::ServiceBuilder::new()
            .layer(from_fn_with_state(gate.clone(), authenticate))
            .layer(from_fn_with_state(gate.clone(), name_connection))
            .layer(from_fn_with_state(gate.clone(), rate_limit))
            .layer(from_fn_with_state(gate, authorize)),
    )
}

/// The caller's [`Principal`] into the request, or a 401 challenge.
async fn authenticate(
    State(gate): State<Arc<Gatekeeper>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path.starts_with("/.well-known/oauth-protected-resource")
        || crate::lifecycle::is_probe(path)
        || gate.authenticates_itself(path)
    {
        return next.run(request).await;
    }
    match gate.auth.authenticate(request.headers()).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(refusal) => refusal.into_response(gate.auth.metadata_url()),
    }
}

/// Name the caller on its connection (`manage_connections` lists it).
async fn name_connection(
    State(gate): State<Arc<Gatekeeper>>,
    request: Request,
    next: Next,
) -> Response {
    let extensions = request.extensions();
    if let (Some(id), Some(principal)) = (
        extensions.get::<ConnectionId>(),
        extensions.get::<Principal>(),
    ) {
        gate.connections.seen(*id, &principal.id);
    }
    next.run(request).await
}

/// The caller's token bucket: a 429 with `Retry-After` when it is empty.
async fn rate_limit(State(gate): State<Arc<Gatekeeper>>, request: Request, next: Next) -> Response {
    if let Some(principal) = request.extensions().get::<Principal>()
        && let Some(bucket) = gate.rate_bucket(principal, client_address(&request))
        && let Err(retry_after) = gate.limiter.check(&bucket)
    {
        return too_many_requests(retry_after);
    }
    next.run(request).await
}

/// A 403 naming the scopes the caller lacks for what the request asks to
/// use (a route's declared needs, or an MCP message's tools and resources),
/// when authentication is required.
async fn authorize(State(gate): State<Arc<Gatekeeper>>, request: Request, next: Next) -> Response {
    if !gate.auth.required() {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Some(principal) = parts.extensions.get::<Principal>() else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let (needed, body) = match needed_scopes(&gate, parts.uri.path(), &parts.method, body).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let missing: Vec<String> = needed
        .iter()
        .filter_map(|need| need.missing_for(principal, &gate))
        .collect();
    if !missing.is_empty() {
        let metadata_url = gate.auth.metadata_url();
        return Refusal::insufficient(missing.join(" ")).into_response(metadata_url);
    }
    next.run(Request::from_parts(parts, body)).await
}

fn client_address(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

fn too_many_requests(retry_after: std::time::Duration) -> Response {
    let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let body = json!({
        "error": "rate_limited",
        "error_description": format!("too many requests from this client; retry in {seconds} s"),
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// What a request asks to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// A scope as such (`metrics`, `resources:URI`).
    Scope(String),
    /// A tool, by the name this server lists it under.
    Tool(String),
}

impl Need {
    /// The scope `principal` lacks for this, if any.
    fn missing_for(&self, principal: &Principal, gate: &Gatekeeper) -> Option<String> {
        match self {
            Need::Scope(scope) => (!principal.grants(scope)).then(|| scope.clone()),
            Need::Tool(name) => {
                let access = gate.tool_access(name);
                (!principal.may_call(&access)).then(|| access.scope())
            }
        }
    }
}

/// What a request needs; the body is read (and handed back) for MCP POSTs.
async fn needed_scopes(
    gate: &Gatekeeper,
    path: &str,
    method: &http::Method,
    body: Body,
) -> Result<(Vec<Need>, Body), Response> {
    if let Some(declared) = gate.needs_of_route(path) {
        return Ok((declared, body));
    }
    let limit = gate.max_body_bytes;
    if path != MCP_PATH || method != http::Method::POST {
        return Ok((Vec::new(), body));
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        let message = format!("Payload Too Large: request body exceeds {limit} bytes");
        (StatusCode::PAYLOAD_TOO_LARGE, message).into_response()
    })?;
    let needed = serde_json::from_slice::<Value>(&bytes)
        .map(|message| mcp_needs(&message))
        .unwrap_or_default();
    Ok((needed, Body::from(bytes)))
}

/// What one JSON-RPC message (or a batch) asks to use.
fn mcp_needs(message: &Value) -> Vec<Need> {
    if let Value::Array(batch) = message {
        return batch.iter().flat_map(mcp_needs).collect();
    }
    let params = &message["params"];
    let method = message["method"].as_str().unwrap_or_default();
    let resources = |uris: Vec<String>| {
        uris.into_iter()
            .map(|uri| Need::Scope(scope::resource_scope(&uri)))
            .collect()
    };
    match method {
        "tools/call" => params["name"]
            .as_str()
            .map(|tool| vec![Need::Tool(tool.to_string())])
            .unwrap_or_default(),
        "resources/read" | "resources/subscribe" => params["uri"]
            .as_str()
            .map(|uri| resources(vec![uri.to_string()]))
            .unwrap_or_default(),
        "subscriptions/listen" => resources(subscribed_uris(params)),
        _ => Vec::new(),
    }
}

/// Every URI a listen request names, in whatever shape the request carries
/// them (`resourceSubscriptions` at the top, under `filter`, under
/// `notifications`, or anywhere a later revision puts it).
pub fn subscribed_uris(params: &Value) -> Vec<String> {
    let mut found = Vec::new();
    collect_subscriptions(params, &mut found);
    found
}

fn collect_subscriptions(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("resourceSubscriptions", Value::Array(uris)) => {
                        found.extend(uris.iter().filter_map(|u| u.as_str().map(str::to_string)))
                    }
                    _ => collect_subscriptions(inner, found),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| collect_subscriptions(item, found)),
        _ => {}
    }
}

/// The principal of an MCP request served over HTTP; `None` over stdio and
/// in-process pipes, where the caller is this machine's user.
pub fn principal_of(extensions: &rmcp::model::Extensions) -> Option<Principal> {
    extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Principal>())
        .cloned()
}

/// Whom a request is authorized as: the caller a forwarding gateway named in
/// `_meta`, bounded by the connection it came over; else the connection's
/// own principal (`local` over stdio and in-process pipes).
pub fn caller_of(context: &rmcp::service::RequestContext<rmcp::RoleServer>) -> Principal {
    let connection = principal_of(&context.extensions).unwrap_or_else(Principal::local);
    caller_named_in(&context.meta, connection)
}

/// The caller `meta` names, bounded by the `connection` it came over; the
/// connection's own principal when it names none.
pub fn caller_named_in(meta: &rmcp::model::RequestMetaObject, connection: Principal) -> Principal {
    let named = meta
        .0
        .0
        .get(CALLER_META_KEY)
        .and_then(|claim| serde_json::from_value::<Principal>(claim.clone()).ok());
    match named {
        Some(caller) => caller.received_via(&connection),
        None => connection,
    }
}

/// Name `caller` in a request forwarded on its behalf. This machine's own
/// unauthenticated user (stdio, auth off) has no identity to pass on and
/// bounds nothing: the next server sees the forwarding connection's own.
pub fn delegate(meta: &mut Option<rmcp::model::RequestMetaObject>, caller: &Principal) {
    if caller.method == AuthMethod::None && caller.via.is_empty() {
        return;
    }
    if let Ok(value) = serde_json::to_value(caller) {
        meta.get_or_insert_with(Default::default)
            .0
            .0
            .insert(CALLER_META_KEY.into(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls_insert_the_segment_before_the_path() {
        assert_eq!(
            well_known_url("https://edge.example:8443/mcp"),
            "https://edge.example:8443/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            well_known_url("https://edge.example/"),
            "https://edge.example/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn mcp_messages_need_what_they_name() {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "text_generate", "arguments": {}}});
        assert_eq!(mcp_needs(&call), vec![Need::Tool("text_generate".into())]);
        let read =
            json!({"method": "resources/read", "params": {"uri": "jetson://system/metrics"}});
        let metrics = Need::Scope("resources:jetson://system/metrics".into());
        assert_eq!(mcp_needs(&read), vec![metrics]);
        assert!(mcp_needs(&json!({"method": "tools/list"})).is_empty());
    }

    #[test]
    fn every_listen_shape_needs_its_resources() {
        let settings = Need::Scope("resources:jetson://config/settings".into());
        for params in [
            json!({"resourceSubscriptions": ["jetson://config/settings"]}),
            json!({"filter": {"resourceSubscriptions": ["jetson://config/settings"]}}),
            // The shape the official SDKs send.
            json!({"notifications": {"resourceSubscriptions": ["jetson://config/settings"]}}),
        ] {
            let listen = json!({"method": "subscriptions/listen", "params": params});
            assert_eq!(mcp_needs(&listen), vec![settings.clone()], "{params}");
        }
    }

    fn key(scopes: &[&str]) -> Principal {
        Principal::api_key("k", "k", Scopes::new(scopes.iter().copied()))
    }

    #[test]
    fn a_forwarded_caller_is_bounded_by_every_hop() {
        let update = ToolAccess {
            name: "update_settings".into(),
            level: AccessLevel::Admin,
        };
        // A `tools:*` key claiming to forward an admin: still not admin.
        let claimed = Principal::local().received_via(&key(&["tools:*"]));
        assert!(!claimed.may_call(&update));
        assert!(!claimed.is_admin());
        // Through an admin gateway connection, a narrow caller stays narrow.
        let narrow = key(&["tools:text_generate"]).received_via(&key(&["admin"]));
        assert!(!narrow.may_call(&update));
        // The chain survives another hop (serialized in _meta).
        let wire: Principal =
            serde_json::from_value(serde_json::to_value(&narrow).unwrap()).unwrap();
        let again = wire.received_via(&Principal::local());
        assert_eq!(again.via, narrow.via);
        assert!(!again.may_call(&update));
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut headers = http::HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn exposure_without_a_way_in_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Arc::new(KeyStore::open(dir.path()));
        let exposed: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let config = AuthConfig::default();
        let err = Auth::new(&config, keys.clone(), Some(exposed))
            .err()
            .unwrap();
        assert!(err.to_string().contains("keys create"), "{err}");
        assert!(
            !Auth::new(&config, keys.clone(), Some(loopback))
                .unwrap()
                .required()
        );
        keys.create("ops", &["admin".into()]).unwrap();
        assert!(Auth::new(&config, keys, Some(exposed)).unwrap().required());
    }
}
