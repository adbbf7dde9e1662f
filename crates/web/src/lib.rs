//! The gateway's web dashboard at `/ui`: a device, or a whole cluster
//! through a cluster's gateway, in a browser.
//!
//! It is one more client of its own gateway, called in process through the
//! entry an MCP request reaches, with no transport ([`LocalClient`]):
//! every figure it shows is a resource or tool result the gateway answers,
//! and every action is a tool call, made as the signed-in caller, so the
//! gateway authorizes each at the point of dispatch exactly as it would
//! the caller's own MCP call. What a caller's scopes do not allow is also
//! left out of the pages ([`Can`]), but leaving it out is a courtesy: the
//! refusal is the gateway's.
//!
//! Pages are rendered on the server ([`html`]); one small script
//! (`assets/ui.js`) streams the charts (server-sent events, drawn with
//! uPlot, embedded) and the playground's answers, and posts the buttons'
//! tool calls. Sign-in turns an API key into a session cookie ([`session`]);
//! every request that changes something carries the session's CSRF token.

mod actions;
mod assets;
mod config;
mod html;
mod keys;
mod live;
mod pages;
mod session;
mod settings;
mod signin;

use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::response::Redirect;
use axum::routing::{get, post};
use http::{HeaderName, HeaderValue, header};
use jetsonmind_contract::inference::{AUDIO_PROCESS, IMAGE_ANALYZE, TEXT_GENERATE};
use jetsonmind_core::auth::{AccessLevel, Auth, Principal, ToolAccess, ToolResolver};
use jetsonmind_core::connections::Connections;
use jetsonmind_core::rmcp::model::JsonObject;
use jetsonmind_core::upstream::LocalClient;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::set_header::SetResponseHeaderLayer;

pub use config::UiConfig;
use live::Live;
use session::Sessions;

/// Where the dashboard lives: the HTTP server leaves authentication of the
/// paths under it to the dashboard (sessions, not bearer tokens).
pub const PREFIX: &str = "/ui";

pub(crate) use jetsonmind_contract::resources::{
    CONFIG_SETTINGS as SETTINGS, MODELS_AVAILABLE as MODELS, PERFORMANCE_ANALYTICS as ANALYTICS,
    SYSTEM_METRICS as METRICS,
};

const CONTENT_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
    style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

pub struct Dashboard {
    gateway: Arc<LocalClient>,
    auth: Arc<Auth>,
    /// The HTTP server's client connections, each told who signed in on it.
    connections: Arc<Connections>,
    tools: ToolResolver,
    sessions: Sessions,
    live: Live,
}

impl Dashboard {
    /// The dashboard of the gateway `gateway` reaches, signing callers in
    /// with `access`'s keys (and naming them on its connections); `tools`
    /// says what each of the gateway's tools needs (for hiding what a
    /// caller may not do).
    pub fn new(
        gateway: Arc<LocalClient>,
        access: (Arc<Auth>, Arc<Connections>),
        tools: ToolResolver,
        config: &UiConfig,
    ) -> Arc<Self> {
        let (auth, connections) = access;
        Arc::new(Self {
            gateway,
            auth,
            connections,
            tools,
            sessions: Sessions::new(config),
            live: Live::new(config),
        })
    }

    /// Take a chart point every `sample_ms` until `shutdown`.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(live::sample(self.clone(), shutdown));
    }

    /// The dashboard's routes; `api` (the OpenAI-compatible routes) is
    /// served again under `/ui/api`, as the session's caller, for the
    /// playground's streamed chat.
    pub fn router(self: Arc<Self>, api: Router) -> Router {
        let signed_in = Router::new()
            .route(PREFIX, get(pages::overview))
            .route("/ui/overview", get(pages::overview_part))
            .route("/ui/charts", get(pages::charts))
            .route("/ui/events", get(live::events))
            .route("/ui/models", get(pages::models))
            .route("/ui/playground", get(pages::playground))
            .route("/ui/connections", get(pages::connections))
            .route("/ui/settings", get(settings::page).post(settings::save))
            .route("/ui/keys", get(keys::page).post(keys::act))
            .route("/ui/call", post(actions::call))
            .route("/ui/logout", post(signin::logout))
            .with_state(self.clone())
            .nest("/ui/api", api)
            .layer(from_fn_with_state(self.clone(), session::require));
        // What every answer tells the browser: run only this server's
        // scripts, never in a frame (clickjacking), keep no copy (pages hold
        // CSRF tokens, a new key is shown once).
        let browser_rules = ServiceBuilder::new()
            .layer(overriding(header::CONTENT_SECURITY_POLICY, CONTENT_POLICY))
            .layer(overriding(header::X_FRAME_OPTIONS, "DENY"))
            .layer(overriding(header::REFERRER_POLICY, "same-origin"))
            .layer(SetResponseHeaderLayer::if_not_present(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            ));
        Router::new()
            .route("/ui/", get(|| async { Redirect::permanent(PREFIX) }))
            .route("/ui/login", get(signin::login_page).post(signin::login))
            .route("/ui/assets/{name}", get(assets::serve))
            .with_state(self)
            .merge(signed_in)
            .layer(browser_rules)
    }

    /// The JSON resource at `uri`, read as `caller`; the gateway's refusal
    /// or error as text.
    async fn read(&self, uri: &str, caller: &Principal) -> Result<Value, String> {
        self.gateway
            .read_json(uri, caller)
            .await
            .map_err(|e| e.to_string())
    }

    /// `tool`'s structured result, called as `caller`; its error as text.
    async fn call(
        &self,
        tool: &str,
        arguments: Value,
        caller: &Principal,
    ) -> Result<Value, String> {
        let arguments: JsonObject = match arguments {
            Value::Object(map) => map,
            _ => JsonObject::new(),
        };
        let result = self
            .gateway
            .call(tool, arguments, caller, None)
            .await
            .map_err(|e| e.to_string())?;
        let text = || jetsonmind_core::content::text_of(&result.content);
        match result.is_error {
            Some(true) => Err(text()),
            _ => Ok(result
                .structured_content
                .clone()
                .unwrap_or_else(|| Value::String(text()))),
        }
    }

    /// What `caller` may see and do here.
    fn can(&self, caller: &Principal) -> Can {
        let tool = |name: &str| {
            let access = (self.tools)(name).unwrap_or_else(|| ToolAccess::scoped(name));
            caller.may_call(&access)
        };
        Can {
            metrics: caller.may_read(METRICS),
            analytics: caller.may_read(ANALYTICS),
            models: caller.may_read(MODELS),
            settings: caller.may_read(SETTINGS),
            route: tool("route_request"),
            generate: tool(TEXT_GENERATE),
            image: tool(IMAGE_ANALYZE),
            audio: tool(AUDIO_PROCESS),
            load: tool("manage_resources"),
            manage_models: tool("manage_models"),
            change_settings: tool("update_settings"),
            // Anyone may ask handle_auth who they are; keys are admin's.
            keys: caller.may_call(&ToolAccess {
                name: "handle_auth".into(),
                level: AccessLevel::Admin,
            }),
            connections: tool("manage_connections"),
        }
    }
}

fn overriding(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}

/// What a caller's scopes allow, for what the pages show.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Can {
    pub metrics: bool,
    pub analytics: bool,
    pub models: bool,
    pub settings: bool,
    pub route: bool,
    pub generate: bool,
    pub image: bool,
    pub audio: bool,
    pub load: bool,
    pub manage_models: bool,
    pub change_settings: bool,
    pub keys: bool,
    pub connections: bool,
}

impl Can {
    fn charts(&self) -> bool {
        self.metrics && self.analytics
    }

    fn playground(&self) -> bool {
        self.generate || self.image || self.audio
    }
}
