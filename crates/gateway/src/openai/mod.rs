//! OpenAI-compatible REST on the gateway: `GET /v1/models`,
//! `POST /v1/chat/completions` (with SSE streaming; a picture as an
//! `image_url` data URI), `POST /v1/embeddings`,
//! `POST /v1/audio/transcriptions` and `POST /v1/audio/speech`.
//!
//! All are mapped onto the gateway's tools and resources (`jetson://models/available`,
//! `text_generate`, `multi_modal_inference` for a chat with a picture,
//! `embed`, `audio_process`), called as the HTTP request's caller through
//! the same transport-free entry an MCP request reaches ([`LocalClient`]),
//! so authorization, validation, routing and progress are the same code:
//! this face and the MCP endpoint are siblings over one gateway.

mod audio;
mod embeddings;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use http::StatusCode;
use jetsonmind_contract::inference::{
    AUDIO_PROCESS, EMBED, GenerationProgress, MULTI_MODAL_INFERENCE, TEXT_GENERATE,
};
use jetsonmind_contract::resources::MODELS_AVAILABLE;
use jetsonmind_core::auth::scope::resource_scope;
use jetsonmind_core::auth::{FORBIDDEN, Need, Principal};
use jetsonmind_core::rmcp::ServiceError;
use jetsonmind_core::rmcp::model::{CallToolResult, JsonObject};
use jetsonmind_core::upstream::{ForwardError, LocalClient, ProgressSink};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const MODELS_ROUTE: &str = "/v1/models";
const CHAT_ROUTE: &str = "/v1/chat/completions";
const EMBEDDINGS_ROUTE: &str = "/v1/embeddings";
const TRANSCRIPTIONS_ROUTE: &str = "/v1/audio/transcriptions";
const SPEECH_ROUTE: &str = "/v1/audio/speech";

pub struct OpenAi {
    gateway: Arc<LocalClient>,
    next_id: AtomicU64,
}

impl OpenAi {
    /// The API over `gateway`, a client of this process's gateway.
    pub fn new(gateway: Arc<LocalClient>) -> Arc<Self> {
        Arc::new(Self {
            gateway,
            next_id: AtomicU64::new(0),
        })
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(MODELS_ROUTE, get(list_models))
            .route(CHAT_ROUTE, post(chat_completions))
            .route(EMBEDDINGS_ROUTE, post(embeddings::create))
            .route(TRANSCRIPTIONS_ROUTE, post(audio::transcribe))
            .route(SPEECH_ROUTE, post(audio::speech))
            .with_state(self)
    }

    /// What each route needs of its caller, for the HTTP guard's early
    /// refusal ([`Gatekeeper::route_needs`](jetsonmind_core::auth::Gatekeeper::route_needs)).
    pub fn route_needs() -> Vec<(&'static str, Vec<Need>)> {
        let tool = |name: &str| vec![Need::Tool(name.to_string())];
        vec![
            (
                MODELS_ROUTE,
                vec![Need::Scope(resource_scope(MODELS_AVAILABLE))],
            ),
            (CHAT_ROUTE, tool(TEXT_GENERATE)),
            (EMBEDDINGS_ROUTE, tool(EMBED)),
            (TRANSCRIPTIONS_ROUTE, tool(AUDIO_PROCESS)),
            (SPEECH_ROUTE, tool(AUDIO_PROCESS)),
        ]
    }

    fn completion_id(&self) -> String {
        format!(
            "chatcmpl-{:x}-{}",
            unix_now(),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The chat's answer through the gateway, as `caller`: `text_generate`'s
    /// structured result (its text so far to `sink`), or
    /// `multi_modal_inference`'s in its shape (`text`, `finish_reason`,
    /// `usage`).
    async fn generate(
        &self,
        answering: Answering,
        caller: &Principal,
        sink: Option<ProgressSink>,
    ) -> Result<Value, ApiError> {
        match answering {
            Answering::Text(arguments) => {
                tool_outcome(self.call(TEXT_GENERATE, arguments, caller, sink).await?)
            }
            // Its progress is by stage, not text: a stream gets the answer whole.
            Answering::Picture(arguments) => {
                let out = self.call(MULTI_MODAL_INFERENCE, arguments, caller, None);
                let out = tool_outcome(out.await?)?;
                Ok(json!({
                    "text": out["answer"],
                    "finish_reason": out["finish_reason"],
                    "usage": out["usage"],
                }))
            }
        }
    }

    /// `tool` through the gateway, as `caller` (the HTTP request's
    /// principal). A tool's own error comes back as its result, for
    /// [`tool_outcome`] to read.
    async fn call(
        &self,
        tool: &'static str,
        arguments: JsonObject,
        caller: &Principal,
        sink: Option<ProgressSink>,
    ) -> Result<CallToolResult, ApiError> {
        match self.gateway.call(tool, arguments, caller, sink).await {
            Ok(result) => Ok(result),
            Err(ForwardError::Service(ServiceError::McpError(e))) if e.code == FORBIDDEN => {
                Err(ApiError::forbidden(e.message.to_string()))
            }
            Err(ForwardError::Service(ServiceError::McpError(e))) => {
                Err(ApiError::invalid(e.message.to_string()))
            }
            Err(ForwardError::Service(e)) => Err(ApiError::server(e.to_string())),
            Err(ForwardError::Cancelled) => Err(ApiError::server("cancelled")),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An OpenAI-style error body with its HTTP status.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
}

impl ApiError {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            message: message.into(),
        }
    }

    fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            kind: "permission_error",
            code: Some("insufficient_scope"),
            message: message.into(),
        }
    }

    fn server(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            code: None,
            message: message.into(),
        }
    }

    /// A tool's own error text, with the status that fits it.
    fn from_tool(message: String) -> Self {
        if message.starts_with("busy") {
            Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "server_error",
                code: Some("overloaded"),
                message,
            }
        } else if message.contains("no model") {
            Self {
                status: StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                code: Some("model_not_found"),
                message,
            }
        } else {
            Self::invalid(message)
        }
    }

    fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// A tool's structured result, or its error as the API's.
fn tool_outcome(result: CallToolResult) -> Result<Value, ApiError> {
    if result.is_error == Some(true) {
        let text = jetsonmind_core::content::text_of(&result.content);
        return Err(ApiError::from_tool(text));
    }
    result
        .structured_content
        .ok_or_else(|| ApiError::server("the tool returned no structured result"))
}

async fn list_models(
    State(api): State<Arc<OpenAi>>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    let list = api
        .gateway
        .read_json(MODELS_AVAILABLE, &caller)
        .await
        .map_err(|e| ApiError::server(format!("cannot list models: {e}")))?;
    let data: Vec<Value> = list["models"]
        .as_array()
        .into_iter()
        .flatten()
        // What this server runs: language, speech and embedding models.
        .filter(|m| {
            ["gguf", "ctranslate2", "safetensors"]
                .contains(&m["format"].as_str().unwrap_or_default())
        })
        .map(
            |m| json!({"id": m["name"], "object": "model", "created": 0, "owned_by": "jetsonmind"}),
        )
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<ChatMessage>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    /// A last chunk, with no choices, carries the usage of the whole call.
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
    image_url: Option<ImageUrl>,
}

#[derive(Debug, Deserialize)]
struct ImageUrl {
    url: String,
}

/// What answers a chat: `text_generate` with its turns, or, when a message
/// holds a picture, `multi_modal_inference` (the picture classified, its
/// text read and its properties measured, then the language model answers
/// with those findings: the same path as that tool's callers take).
#[derive(Debug)]
enum Answering {
    Text(JsonObject),
    Picture(JsonObject),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

impl ChatRequest {
    /// The tool that answers, with its arguments; its schema checks the ranges.
    fn answering(&self) -> Result<Answering, ApiError> {
        match self.picture()? {
            Some((index, url)) => self.picture_arguments(index, url).map(Answering::Picture),
            None => self.tool_arguments().map(Answering::Text),
        }
    }

    /// The one picture of the chat, with the index of its message.
    fn picture(&self) -> Result<Option<(usize, &str)>, ApiError> {
        let pictures: Vec<(usize, &Part)> = self
            .messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| match &m.content {
                Content::Parts(parts) => Some(parts.iter().map(move |p| (i, p))),
                Content::Text(_) => None,
            })
            .flatten()
            .filter(|(_, p)| p.kind == "image_url")
            .collect();
        let [(index, part)] = pictures.as_slice() else {
            return match pictures.len() {
                0 => Ok(None),
                n => Err(ApiError::invalid(format!(
                    "messages: {n} images; one picture per request is read"
                ))),
            };
        };
        let url = part
            .image_url
            .as_ref()
            .map(|u| u.url.as_str())
            .ok_or_else(|| {
                ApiError::invalid("messages: an image_url part has no `image_url.url`")
            })?;
        if !url.starts_with("data:") {
            return Err(ApiError::invalid(
                "messages: image_url must be a data URI (data:image/png;base64,...); this server \
                 fetches nothing from the network",
            ));
        }
        Ok(Some((*index, url)))
    }

    /// `multi_modal_inference` arguments: the picture's message's text is the
    /// task, the turns before it the text.
    fn picture_arguments(&self, index: usize, url: &str) -> Result<JsonObject, ApiError> {
        let mut earlier = Vec::new();
        for message in &self.messages[..index] {
            let turn = message_json(message)?;
            earlier.push(format!(
                "{}: {}",
                turn["role"].as_str().unwrap_or_default(),
                turn["content"].as_str().unwrap_or_default()
            ));
        }
        let task = text_of(&self.messages[index].content);
        let mut arguments = JsonObject::new();
        arguments.insert("text".into(), json!(earlier.join("\n")));
        arguments.insert("image".into(), json!(url));
        arguments.insert(
            "task".into(),
            json!(match task.trim() {
                "" => "Describe the picture.",
                task => task,
            }),
        );
        if let Some(model) = self.our_model() {
            arguments.insert("model".into(), json!(model));
        }
        if let Some(max_tokens) = self.max_tokens() {
            arguments.insert("max_tokens".into(), json!(max_tokens));
        }
        Ok(arguments)
    }

    /// The model the request names, unless it names none of ours: OpenAI
    /// clients name models the server does not have; "default" or none
    /// means ours.
    fn our_model(&self) -> Option<&str> {
        self.model
            .as_deref()
            .filter(|m| !m.is_empty() && *m != "default")
    }

    /// The answer's length limit: `max_completion_tokens`, or the older
    /// `max_tokens`.
    fn max_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// `text_generate` arguments.
    fn tool_arguments(&self) -> Result<JsonObject, ApiError> {
        let messages = self
            .messages
            .iter()
            .map(message_json)
            .collect::<Result<Vec<_>, _>>()?;
        let mut arguments = JsonObject::new();
        arguments.insert("messages".into(), Value::Array(messages));
        if let Some(model) = self.our_model() {
            arguments.insert("model".into(), json!(model));
        }
        let max_tokens = self.max_tokens();
        let optional = [
            ("max_tokens", max_tokens.map(|v| json!(v))),
            ("temperature", self.temperature.map(|v| json!(v))),
            ("top_p", self.top_p.map(|v| json!(v))),
            ("seed", self.seed.map(|v| json!(v))),
            (
                "stop",
                self.stop.as_ref().map(|stop| match stop {
                    Stop::One(s) => json!([s]),
                    Stop::Many(list) => json!(list),
                }),
            ),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                arguments.insert(key.into(), value);
            }
        }
        Ok(arguments)
    }

    fn model_name(&self) -> String {
        self.model.clone().unwrap_or_else(|| "default".into())
    }
}

fn message_json(message: &ChatMessage) -> Result<Value, ApiError> {
    let role = match message.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        other => {
            return Err(ApiError::invalid(format!(
                "messages: role `{other}` is not supported"
            )));
        }
    };
    if let Content::Parts(parts) = &message.content
        && let Some(part) = parts
            .iter()
            .find(|p| !["text", "image_url"].contains(&p.kind.as_str()))
    {
        return Err(ApiError::invalid(format!(
            "messages: content type `{}` is not supported",
            part.kind
        )));
    }
    Ok(json!({"role": role, "content": text_of(&message.content)}))
}

/// A message's text parts, joined.
fn text_of(content: &Content) -> String {
    match content {
        Content::Text(text) => text.clone(),
        Content::Parts(parts) => parts
            .iter()
            .filter_map(|p| p.text.as_deref())
            .collect::<Vec<_>>()
            .join(""),
    }
}

async fn chat_completions(
    State(api): State<Arc<OpenAi>>,
    caller: Option<Extension<Principal>>,
    body: axum::body::Bytes,
) -> Response {
    let caller = caller.map_or_else(Principal::local, |Extension(p)| p);
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return ApiError::invalid(format!("invalid request body: {e}")).into_response(),
    };
    let answering = match request.answering() {
        Ok(answering) => answering,
        Err(e) => return e.into_response(),
    };
    if request.stream {
        return Sse::new(stream_completion(api, request, answering, caller)).into_response();
    }
    match api.generate(answering, &caller, None).await {
        Ok(out) => Json(completion_body(
            &api.completion_id(),
            &request.model_name(),
            &out,
        ))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// OpenAI's usage object from text_generate's.
fn usage(out: &Value) -> Value {
    let prompt = out["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    let completion = out["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    let cached = out["usage"]["cached_prompt_tokens"].as_u64().unwrap_or(0);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

fn completion_body(id: &str, model: &str, out: &Value) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": out["text"]},
            "finish_reason": out["finish_reason"],
        }],
        "usage": usage(out),
    })
}

fn chunk(id: &str, model: &str, delta: Value, finish_reason: Value) -> Event {
    let choices = json!([{"index": 0, "delta": delta, "finish_reason": finish_reason}]);
    chunk_event(id, model, choices, None)
}

fn chunk_event(id: &str, model: &str, choices: Value, usage: Option<Value>) -> Event {
    let mut body = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": unix_now(),
        "model": model,
        "choices": choices,
    });
    if let Some(usage) = usage {
        body["usage"] = usage;
    }
    Event::default().data(body.to_string())
}

/// Progress notifications carry the text so far; each chunk is what is new.
fn stream_completion(
    api: Arc<OpenAi>,
    request: ChatRequest,
    answering: Answering,
    caller: Principal,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream::stream! {
        let id = api.completion_id();
        let model = request.model_name();
        let include_usage = request.stream_options.as_ref().is_some_and(|o| o.include_usage);
        yield Ok(chunk(&id, &model, json!({"role": "assistant", "content": ""}), Value::Null));
        let (progress_tx, mut progress) = mpsc::unbounded_channel();
        let generation = api.generate(answering, &caller, Some(ProgressSink::channel(progress_tx)));
        tokio::pin!(generation);
        let mut sent = String::new();
        let outcome = loop {
            tokio::select! {
                outcome = &mut generation => break outcome,
                Some(update) = progress.recv() => {
                    let so_far = GenerationProgress::read(&update).map(|p| p.text);
                    let delta = so_far.as_deref().and_then(|text| text.strip_prefix(sent.as_str()));
                    if let Some(delta) = delta.filter(|d| !d.is_empty()).map(str::to_string) {
                        sent.push_str(&delta);
                        yield Ok(chunk(&id, &model, json!({"content": delta}), Value::Null));
                    }
                }
            }
        };
        match outcome {
            Ok(out) => {
                let text = out["text"].as_str().unwrap_or_default();
                let rest = text.strip_prefix(sent.as_str()).unwrap_or(text);
                if !rest.is_empty() {
                    yield Ok(chunk(&id, &model, json!({"content": rest}), Value::Null));
                }
                yield Ok(chunk(&id, &model, json!({}), out["finish_reason"].clone()));
                if include_usage {
                    yield Ok(chunk_event(&id, &model, json!([]), Some(usage(&out))));
                }
            }
            Err(e) => yield Ok(Event::default().data(e.body().to_string())),
        }
        yield Ok(Event::default().data("[DONE]"));
    }
}
