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
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{AuthConfig, HttpConfig};
use crate::connections::{ConnectionId, Connections};
use crate::ratelimit::RateLimiter;
use crate::{CoreError, serve};
pub use keys::KeyStore;
use oauth::OAuthVerifier;
pub use scope::Scopes;

/// The caller of a request.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    /// `key:ID`, `oauth:SUBJECT`, or `local` when authentication is off.
    pub id: String,
    /// The key's name, or the token's subject.
    pub name: String,
    pub method: AuthMethod,
    pub scopes: Scopes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// Authentication is off (loopback, not required): every scope.
    None,
    ApiKey,
    OAuth,
}

impl Principal {
    /// A caller on a server that does not require authentication.
    pub fn local() -> Self {
        Self {
            id: "local".into(),
            name: "local".into(),
            method: AuthMethod::None,
            scopes: Scopes::all(),
        }
    }
}

/// How an HTTP server admits requests.
pub struct Auth {
    required: bool,
    keys: Arc<KeyStore>,
    oauth: Option<OAuthVerifier>,
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
        Ok(Self {
            required,
            keys,
            oauth: config.oauth.clone().map(OAuthVerifier::new),
        })
    }

    /// No authentication: every caller is [`Principal::local`].
    pub fn off(keys: Arc<KeyStore>) -> Self {
        Self {
            required: false,
            keys,
            oauth: None,
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
        if token.starts_with("jm_") {
            return match self.keys.verify(token) {
                Some((key, scopes)) => Ok(Principal {
                    id: format!("key:{}", key.id),
                    name: key.name,
                    method: AuthMethod::ApiKey,
                    scopes,
                }),
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

/// Everything the [`guard`] middleware needs.
pub struct Gatekeeper {
    pub auth: Arc<Auth>,
    pub limiter: RateLimiter,
    pub connections: Arc<Connections>,
    max_body_bytes: usize,
}

impl Gatekeeper {
    pub fn new(auth: Arc<Auth>, http: &HttpConfig, connections: Arc<Connections>) -> Arc<Self> {
        Arc::new(Self {
            auth,
            limiter: RateLimiter::new(http.rate_limit_per_second, http.rate_limit_burst),
            connections,
            max_body_bytes: http.max_body_bytes,
        })
    }
}

/// Authenticate, rate-limit and authorize every request but the metadata.
pub async fn guard(State(gate): State<Arc<Gatekeeper>>, request: Request, next: Next) -> Response {
    if request
        .uri()
        .path()
        .starts_with("/.well-known/oauth-protected-resource")
    {
        return next.run(request).await;
    }
    let metadata_url = gate.auth.metadata_url();
    let principal = match gate.auth.authenticate(request.headers()).await {
        Ok(principal) => principal,
        Err(refusal) => return refusal.into_response(metadata_url),
    };
    if let Some(id) = request.extensions().get::<ConnectionId>() {
        gate.connections.seen(*id, &principal.id);
    }
    let client = match principal.method {
        AuthMethod::None => client_address(&request).to_string(),
        _ => principal.id.clone(),
    };
    if let Err(retry_after) = gate.limiter.check(&client) {
        return too_many_requests(retry_after);
    }
    let (parts, body) = request.into_parts();
    let (needed, body) = match gate.auth.required() {
        false => (Vec::new(), body),
        true => {
            match needed_scopes(parts.uri.path(), &parts.method, body, gate.max_body_bytes).await {
                Ok(found) => found,
                Err(response) => return response,
            }
        }
    };
    let missing: Vec<&String> = needed
        .iter()
        .filter(|scope| !principal.scopes.grants(scope))
        .collect();
    if !missing.is_empty() {
        let scopes = missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        return Refusal::insufficient(scopes).into_response(metadata_url);
    }
    let mut request = Request::from_parts(parts, body);
    request.extensions_mut().insert(principal);
    next.run(request).await
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

/// The scopes a request needs; the body is read (and handed back) for MCP POSTs.
async fn needed_scopes(
    path: &str,
    method: &http::Method,
    body: Body,
    limit: usize,
) -> Result<(Vec<String>, Body), Response> {
    let fixed = match path {
        "/metrics" => Some(vec!["metrics".to_string()]),
        "/v1/models" => Some(vec![scope::resource_scope("jetson://models/available")]),
        "/v1/chat/completions" => Some(vec![scope::tool_scope("text_generate")]),
        _ => None,
    };
    if let Some(fixed) = fixed {
        return Ok((fixed, body));
    }
    if path != serve::MCP_PATH || method != http::Method::POST {
        return Ok((Vec::new(), body));
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        let message = format!("Payload Too Large: request body exceeds {limit} bytes");
        (StatusCode::PAYLOAD_TOO_LARGE, message).into_response()
    })?;
    let needed = serde_json::from_slice::<Value>(&bytes)
        .map(|message| mcp_scopes(&message))
        .unwrap_or_default();
    Ok((needed, Body::from(bytes)))
}

/// What one JSON-RPC message (or a batch) asks to use.
fn mcp_scopes(message: &Value) -> Vec<String> {
    if let Value::Array(batch) = message {
        return batch.iter().flat_map(mcp_scopes).collect();
    }
    let params = &message["params"];
    let method = message["method"].as_str().unwrap_or_default();
    match method {
        "tools/call" => match params["name"].as_str() {
            // Anyone may ask who they are; its other actions check `admin` themselves.
            Some("handle_auth") => Vec::new(),
            Some(tool) => vec![scope::tool_scope(tool)],
            None => Vec::new(),
        },
        "resources/read" | "resources/subscribe" => params["uri"]
            .as_str()
            .map(|uri| vec![scope::resource_scope(uri)])
            .unwrap_or_default(),
        "subscriptions/listen" => subscribed_uris(params)
            .into_iter()
            .map(|uri| scope::resource_scope(&uri))
            .collect(),
        _ => Vec::new(),
    }
}

/// `resourceSubscriptions` wherever the listen request carries it.
fn subscribed_uris(params: &Value) -> Vec<String> {
    let lists = [
        &params["resourceSubscriptions"],
        &params["filter"]["resourceSubscriptions"],
    ];
    lists
        .iter()
        .filter_map(|list| list.as_array())
        .flatten()
        .filter_map(|uri| uri.as_str().map(str::to_string))
        .collect()
}

/// The principal of an MCP request served over HTTP; `None` over stdio and
/// in-process pipes, where the caller is this machine's user.
pub fn principal_of(extensions: &rmcp::model::Extensions) -> Option<Principal> {
    extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Principal>())
        .cloned()
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
    fn mcp_messages_need_the_scope_of_what_they_name() {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "text_generate", "arguments": {}}});
        assert_eq!(mcp_scopes(&call), vec!["tools:text_generate"]);
        let read =
            json!({"method": "resources/read", "params": {"uri": "jetson://system/metrics"}});
        assert_eq!(mcp_scopes(&read), vec!["resources:jetson://system/metrics"]);
        let listen = json!({"method": "subscriptions/listen",
                            "params": {"filter": {"resourceSubscriptions": ["a://x"]}}});
        assert_eq!(mcp_scopes(&listen), vec!["resources:a://x"]);
        let whoami = json!({"method": "tools/call", "params": {"name": "handle_auth"}});
        assert!(mcp_scopes(&whoami).is_empty());
        assert!(mcp_scopes(&json!({"method": "tools/list"})).is_empty());
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
