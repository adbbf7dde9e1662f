//! A replica that is an OpenAI-compatible endpoint (`hybrid.providers`):
//! compute's `text_generate` and `code_complete`, served by POSTing a
//! streaming chat completion to `{base_url}/chat/completions`.
//!
//! It offers the same tool definitions compute offers (the contract's) and
//! answers as compute does: progress notifications with the text so far
//! every `compute.progress_every_tokens` tokens, and a result with the text,
//! model, usage, finish reason and timings; only the route hop tells. A
//! cancelled call drops the HTTP response, which ends the generation there.
//! It reports as a compute replica does (`jetson://compute/status`): its
//! capacity is `max_concurrent` and its loaded models are the ones it maps.
//!
//! Failures are typed for the fleet: no connection, or a provider that says
//! it is overloaded (429, 503), is `Unavailable` (nothing ran: another
//! replica may take the call); an error once the request is out (5xx, a key
//! refused, a timeout, a malformed or cut stream) is `Broken`; a call the
//! provider refuses (another 4xx) is a tool error naming its reason. Each
//! call has a connection of its own, so only a failure to connect gives the
//! link up (down until a check reaches the provider again); the others
//! count on the replica's breaker.

mod request;
mod stream;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use jetsonmind_contract::inference::code::strip_to_completion;
use jetsonmind_contract::inference::{GenerationProgress, code_complete_tool, text_generate_tool};
use jetsonmind_contract::replica::{LoadedModel, REPLICA_STATUS_URI, ReplicaReport};
use jetsonmind_core::content::{json_resource, text_and_structured};
use jetsonmind_core::error::resource_not_found;
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, CallToolResult, CompleteRequestParams, CompleteResult,
    GetPromptRequestParams, GetPromptResult, NumberOrString, ProgressToken, ReadResourceResult,
    Resource, Tool,
};
use jetsonmind_core::tool_error;
use jetsonmind_core::upstream::{Offer, ProgressSink, UpstreamId, UpstreamStatus};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use self::request::{Call, NotSent, map_call};
use self::stream::{Event, Generation, SseReader, error_message};
use super::{LinkError, Relay, ReplicaLink};
use crate::config::ProviderConfig;

/// Why a provider's link cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("environment variable {0} (its api_key_env) is not set")]
    KeyMissing(String),
    #[error("environment variable {0} (its api_key_env) is empty or not text")]
    KeyUnusable(String),
    #[error("the key in {0} cannot be sent in an HTTP header")]
    KeyNotAHeader(String),
    #[error("cannot make its HTTP client: {0}")]
    Client(String),
}

pub struct OpenAiLink {
    id: UpstreamId,
    provider: ProviderConfig,
    /// `Bearer <key>`, marked sensitive (never printed); none: no key.
    authorization: Option<HeaderValue>,
    client: reqwest::Client,
    /// Progress every this many tokens, as compute sends it.
    progress_every: u32,
    offer: Offer,
    state: Mutex<State>,
    /// Calls running there now.
    running: AtomicUsize,
}

#[derive(Default)]
struct State {
    up: bool,
    /// Cancelled when the link is given up: its calls end at once.
    lost: CancellationToken,
    last_error: Option<String>,
    last_check: Option<Duration>,
    checked_at: Option<Instant>,
    up_since: Option<SystemTime>,
}

impl OpenAiLink {
    /// The link to `provider`, its key read from the environment variable
    /// its config names.
    pub fn from_env(provider: ProviderConfig, progress_every: u32) -> Result<Self, ProviderError> {
        let key = match &provider.api_key_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(key) if !key.trim().is_empty() => Some(key),
                Ok(_) | Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(ProviderError::KeyUnusable(var.clone()));
                }
                Err(std::env::VarError::NotPresent) => {
                    return Err(ProviderError::KeyMissing(var.clone()));
                }
            },
        };
        Self::new(provider, key, progress_every)
    }

    /// The link to `provider`, with `key` (none: no key is sent).
    pub fn new(
        provider: ProviderConfig,
        key: Option<String>,
        progress_every: u32,
    ) -> Result<Self, ProviderError> {
        let authorization = key
            .map(|key| {
                let var = provider.api_key_env.clone().unwrap_or_default();
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                    .map_err(|_| ProviderError::KeyNotAHeader(var))?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(provider.connect_timeout_ms))
            .build()
            .map_err(|e| ProviderError::Client(e.to_string()))?;
        Ok(Self {
            id: UpstreamId::fresh(),
            offer: offer(),
            authorization,
            client,
            progress_every: progress_every.max(1),
            provider,
            state: Mutex::default(),
            running: AtomicUsize::new(0),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("provider state lock")
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.provider.base_url.trim_end_matches('/'))
    }

    fn with_key(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.authorization {
            Some(value) => request.header(AUTHORIZATION, value.clone()),
            None => request,
        }
    }

    /// What it tells the control plane, as a compute replica does.
    fn report(&self) -> ReplicaReport {
        let loaded = self
            .provider
            .served_models()
            .into_iter()
            .map(|name| LoadedModel {
                name: name.to_string(),
                ..LoadedModel::default()
            })
            .collect();
        ReplicaReport {
            replica: self.provider.name.clone(),
            default_model: self.provider.default_model.clone().unwrap_or_default(),
            running: self.running.load(Ordering::SeqCst),
            capacity: self.provider.max_concurrent,
            loaded,
            ..ReplicaReport::default()
        }
    }

    /// Whether the last check is recent enough to stand (while up).
    fn checked_lately(&self) -> bool {
        let state = self.state();
        let interval = Duration::from_millis(self.provider.check_interval_ms);
        state.up && state.checked_at.is_some_and(|at| at.elapsed() < interval)
    }

    /// Its model list answers: it is up (a server without the list, 404,
    /// still serves chat completions).
    async fn probe(&self) -> Result<(), String> {
        let url = self.url("models");
        let response = self
            .with_key(self.client.get(&url))
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", describe(&e)))?;
        match response.status() {
            status if status.is_success() || status == StatusCode::NOT_FOUND => Ok(()),
            status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                Err(format!("it refused the API key (HTTP {status})"))
            }
            status => Err(format!("GET {url}: HTTP {status}")),
        }
    }

    fn came_up(&self, round_trip: Duration) {
        let mut state = self.state();
        if !state.up {
            tracing::info!(provider = %self.provider.name, "provider up");
            state.up = true;
            state.up_since = Some(SystemTime::now());
            state.lost = CancellationToken::new();
        }
        state.last_error = None;
        state.last_check = Some(round_trip);
        state.checked_at = Some(Instant::now());
    }

    /// One call, start to end; `Ok` is the provider's answer (a tool error
    /// when it refused the call).
    async fn generate(
        &self,
        call: &Call,
        sink: Option<&ProgressSink>,
    ) -> Result<CallToolResult, LinkError> {
        let body = serde_json::to_vec(&call.body)
            .map_err(|e| LinkError::Unavailable(format!("cannot encode the request: {e}")))?;
        let started = Instant::now();
        let request = self
            .with_key(self.client.post(self.url("chat/completions")))
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream")
            .body(body);
        let response = self.idle(request.send()).await?.map_err(|e| {
            let error = describe(&e);
            match e.is_connect() {
                // Nothing was sent: give it up until a check finds it again.
                true => {
                    self.mark_down(&error);
                    LinkError::Unavailable(error)
                }
                false => LinkError::Broken(error),
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            let message = self.error_body(response).await;
            return self.refusal(status, message);
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("text/event-stream");
        if !content_type.starts_with("text/event-stream") {
            return Err(LinkError::Broken(format!(
                "it answered `{content_type}`, not an event stream"
            )));
        }
        let outcome = self.read_stream(response, call, sink, started).await?;
        Ok(match outcome {
            Ok(generation) => self.result(call, &generation, started),
            Err(message) => tool_error(format!(
                "provider `{}` failed the call: {message}",
                self.provider.name
            )),
        })
    }

    /// `future` within `idle_timeout_ms`, else the stream is broken.
    async fn idle<T>(&self, future: impl Future<Output = T>) -> Result<T, LinkError> {
        let limit = Duration::from_millis(self.provider.idle_timeout_ms);
        tokio::time::timeout(limit, future).await.map_err(|_| {
            LinkError::Broken(format!(
                "nothing came for {} ms (idle_timeout_ms)",
                limit.as_millis()
            ))
        })
    }

    /// What an HTTP error status means here.
    fn refusal(&self, status: StatusCode, message: String) -> Result<CallToolResult, LinkError> {
        let said = format!("HTTP {status}: {message}");
        match status {
            // It did not take the call: another replica may.
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                Err(LinkError::Unavailable(said))
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(LinkError::Broken(format!("it refused the API key: {said}")))
            }
            status if status.is_client_error() => Ok(tool_error(format!(
                "provider `{}` refused the call: {said}",
                self.provider.name
            ))),
            _ => Err(LinkError::Broken(said)),
        }
    }

    /// What an error response says, read up to `max_event_bytes`.
    async fn error_body(&self, mut response: reqwest::Response) -> String {
        let mut body = Vec::new();
        while body.len() < self.provider.max_event_bytes {
            match self.idle(response.chunk()).await {
                Ok(Ok(Some(bytes))) => body.extend_from_slice(&bytes),
                _ => break,
            }
        }
        body.truncate(self.provider.max_event_bytes);
        let text = String::from_utf8_lossy(&body);
        match serde_json::from_str::<Value>(&text) {
            Ok(json) => error_message(&json),
            Err(_) => text.chars().take(500).collect(),
        }
    }

    /// The stream to its end; `Ok(Err(message))`: the provider reported a
    /// failure in it.
    async fn read_stream(
        &self,
        mut response: reqwest::Response,
        call: &Call,
        sink: Option<&ProgressSink>,
        started: Instant,
    ) -> Result<Result<Generation, String>, LinkError> {
        let mut reader = SseReader::new(self.provider.max_event_bytes);
        let mut generation = Generation::default();
        let mut first_token = None;
        while !generation.done {
            let bytes = match self.idle(response.chunk()).await? {
                Ok(Some(bytes)) => bytes,
                Ok(None) => break,
                Err(e) => return Err(LinkError::Broken(describe(&e))),
            };
            let events = reader.feed(&bytes).map_err(broken)?;
            for data in events {
                let event = Event::parse(&data).map_err(broken)?;
                match generation.take(event) {
                    Ok(true) => {
                        first_token.get_or_insert_with(|| started.elapsed());
                        self.report_progress(sink, call, &generation).await;
                    }
                    Ok(false) => {}
                    Err(message) => return Ok(Err(message)),
                }
            }
        }
        if !generation.finished() {
            return Err(LinkError::Broken(
                "the stream ended before the generation finished".into(),
            ));
        }
        generation.timings = generation
            .timings
            .or_else(|| first_token.map(|first| measured(&generation, first, started.elapsed())));
        Ok(Ok(generation))
    }

    /// Every `progress_every` tokens, the text so far, as compute sends it.
    async fn report_progress(&self, sink: Option<&ProgressSink>, call: &Call, so_far: &Generation) {
        let Some(sink) = sink else {
            return;
        };
        if !so_far.pieces.is_multiple_of(self.progress_every) {
            return;
        }
        let progress = GenerationProgress {
            tokens: so_far.pieces,
            max_tokens: call.body.max_tokens,
            text: so_far.text.clone(),
        };
        // The sink puts the caller's own progress token in.
        let token = ProgressToken(NumberOrString::Number(0));
        sink.report(progress.notification(token)).await;
    }

    /// The result as compute shapes it.
    fn result(&self, call: &Call, generation: &Generation, started: Instant) -> CallToolResult {
        let text = match &call.completes {
            Some(code) => strip_to_completion(&generation.text, code),
            None => generation.text.clone(),
        };
        let timings = generation.timings.unwrap_or_default();
        let structured = json!({
            "text": text,
            "model": call.model,
            "finish_reason": generation.finish_reason.as_deref().unwrap_or("stop"),
            "usage": {
                "prompt_tokens": generation.usage.map_or(0, |u| u.prompt_tokens),
                "completion_tokens": generation.completion_tokens(),
            },
            "timings": {
                "prompt_ms": timings.prompt_ms,
                "generation_ms": timings.predicted_ms,
                "prompt_tokens_per_second": timings.prompt_per_second,
                "generation_tokens_per_second": timings.predicted_per_second,
            },
            "cached": false,
        });
        tracing::debug!(
            provider = %self.provider.name,
            ms = started.elapsed().as_millis() as u64,
            tokens = generation.completion_tokens(),
            "provider call done"
        );
        text_and_structured(text, structured)
    }
}

/// Timings measured here, for a provider that does not say: the prompt
/// until the first token, the generation after it.
fn measured(generation: &Generation, first: Duration, total: Duration) -> stream::ServerTimings {
    let per_second = |tokens: u32, time: Duration| match time.as_secs_f64() {
        0.0 => 0.0,
        secs => tokens as f64 / secs,
    };
    let generating = total.saturating_sub(first);
    stream::ServerTimings {
        prompt_ms: first.as_secs_f64() * 1000.0,
        predicted_ms: generating.as_secs_f64() * 1000.0,
        prompt_per_second: per_second(generation.usage.map_or(0, |u| u.prompt_tokens), first),
        predicted_per_second: per_second(generation.completion_tokens(), generating),
    }
}

fn broken(error: stream::StreamError) -> LinkError {
    LinkError::Broken(error.to_string())
}

/// A request error with its causes (reqwest's own message is terse); the
/// URL is ours, and no header is in it.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    text
}

/// The tools compute offers for text, and its status resource.
fn offer() -> Offer {
    let status = Resource::new(REPLICA_STATUS_URI, "compute-status")
        .with_description(
            "This provider's load and capacity and the models it maps: what the control plane \
             routes by.",
        )
        .with_mime_type("application/json");
    Offer {
        tools: vec![text_generate_tool(), code_complete_tool()],
        resources: vec![status],
        ..Offer::default()
    }
}

/// Counts a call running there until dropped.
struct Running<'a>(&'a AtomicUsize);

impl<'a> Running<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ReplicaLink for OpenAiLink {
    fn id(&self) -> UpstreamId {
        self.id
    }

    fn name(&self) -> &str {
        &self.provider.name
    }

    fn describe(&self) -> String {
        format!("openai-compatible: {}", self.provider.base_url)
    }

    fn is_up(&self) -> bool {
        self.state().up
    }

    fn offer(&self) -> Option<Offer> {
        self.is_up().then(|| self.offer.clone())
    }

    fn tool(&self, name: &str) -> Option<Tool> {
        self.offer.tool(name).cloned()
    }

    fn last_check(&self) -> Option<Duration> {
        self.state().last_check
    }

    fn status(&self) -> UpstreamStatus {
        let state = self.state();
        UpstreamStatus {
            name: self.provider.name.clone(),
            endpoint: self.describe(),
            up: state.up,
            tools: self.offer.tools.len(),
            resources: self.offer.resources.len(),
            templates: 0,
            connected_since_unix: state
                .up_since
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            last_check_ms: state.last_check.map(|d| d.as_secs_f64() * 1000.0),
            last_error: state.last_error.clone(),
            subscriptions: Vec::new(),
            refused_subscriptions: Default::default(),
        }
    }

    fn mark_down(&self, why: &str) {
        let mut state = self.state();
        if state.up {
            tracing::warn!(provider = %self.provider.name, %why, "provider down");
        }
        state.up = false;
        state.last_error = Some(why.to_string());
        state.lost.cancel();
    }

    fn check<'a>(&'a self, _relay: &'a Relay, timeout: Duration) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if self.checked_lately() {
                return;
            }
            let started = Instant::now();
            match tokio::time::timeout(timeout, self.probe()).await {
                Ok(Ok(())) => self.came_up(started.elapsed()),
                Ok(Err(error)) => self.mark_down(&error),
                Err(_) => self.mark_down(&format!(
                    "its model list did not answer within {} ms",
                    timeout.as_millis()
                )),
            }
        })
    }

    fn call_tool<'a>(
        &'a self,
        _relay: &'a Relay,
        params: CallToolRequestParams,
        sink: Option<ProgressSink>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<CallToolResult, LinkError>> {
        Box::pin(async move {
            let lost = {
                let state = self.state();
                if !state.up {
                    return Err(LinkError::Unavailable("down".into()));
                }
                state.lost.clone()
            };
            let arguments = params.arguments.unwrap_or_default();
            let call = match map_call(&self.provider, &params.name, arguments) {
                Ok(call) => call,
                Err(NotSent::Refused(error)) => return Err(LinkError::Refused(error)),
                Err(NotSent::Tool(message)) => return Ok(tool_error(message)),
            };
            let _running = Running::start(&self.running);
            let limit = Duration::from_millis(self.provider.timeout_ms);
            // Leaving this select drops the request and its response: the
            // connection closes, and the provider stops generating.
            tokio::select! {
                outcome = tokio::time::timeout(limit, self.generate(&call, sink.as_ref())) => {
                    outcome.unwrap_or_else(|_| Err(LinkError::Broken(format!(
                        "not done within {} ms (timeout_ms)",
                        limit.as_millis()
                    ))))
                }
                _ = cancel.cancelled() => Err(LinkError::Cancelled),
                _ = lost.cancelled() => Err(LinkError::Broken("the provider was given up".into())),
            }
        })
    }

    fn read_resource<'a>(
        &'a self,
        uri: &'a str,
    ) -> BoxFuture<'a, Result<ReadResourceResult, LinkError>> {
        Box::pin(async move {
            match uri {
                REPLICA_STATUS_URI => {
                    json_resource(uri, &self.report()).map_err(LinkError::Refused)
                }
                _ => Err(LinkError::Refused(resource_not_found(
                    uri,
                    format!("provider `{}` has no resource {uri}", self.provider.name),
                ))),
            }
        })
    }

    fn get_prompt(
        &self,
        params: GetPromptRequestParams,
    ) -> BoxFuture<'_, Result<GetPromptResult, LinkError>> {
        let message = format!(
            "provider `{}` has no prompt `{}`",
            self.provider.name, params.name
        );
        Box::pin(async move { Err(LinkError::Refused(McpError::invalid_params(message, None))) })
    }

    fn complete(
        &self,
        _params: CompleteRequestParams,
    ) -> BoxFuture<'_, Result<CompleteResult, LinkError>> {
        let message = format!("provider `{}` completes no arguments", self.provider.name);
        Box::pin(async move { Err(LinkError::Refused(McpError::invalid_params(message, None))) })
    }

    /// It announces no changes.
    fn sync_subscriptions<'a>(&'a self, _wanted: &'a BTreeSet<String>) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}
