//! `POST /v1/embeddings` onto the `embed` tool.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jetsonmind_contract::inference::EMBED;
use jetsonmind_core::auth::Principal;
use jetsonmind_core::rmcp::model::JsonObject;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, OpenAi, tool_outcome};

#[derive(Debug, Deserialize)]
struct EmbeddingRequest {
    input: Input,
    model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32s), which the
    /// official clients ask for.
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

pub(super) async fn create(
    State(api): State<Arc<OpenAi>>,
    caller: Option<Extension<Principal>>,
    body: axum::body::Bytes,
) -> Response {
    let caller = caller.map_or_else(Principal::local, |Extension(p)| p);
    match embed(&api, &caller, &body).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn embed(api: &OpenAi, caller: &Principal, body: &[u8]) -> Result<Value, ApiError> {
    let request: EmbeddingRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(format!(
            "invalid request body: {e} (`input` is a string or an array of strings)"
        ))
    })?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "encoding_format `{other}`: use float or base64"
            )));
        }
    };
    let texts = match request.input {
        Input::One(text) => vec![text],
        Input::Many(texts) => texts,
    };
    let mut arguments = JsonObject::new();
    arguments.insert("texts".into(), json!(texts));
    if let Some(model) = request
        .model
        .as_deref()
        .filter(|m| !m.is_empty() && *m != "default")
    {
        arguments.insert("model".into(), json!(model));
    }
    let out = tool_outcome(api.call(EMBED, arguments, caller, None).await?)?;
    let dimensions = out["dimensions"].as_u64().unwrap_or(0) as usize;
    if let Some(asked) = request.dimensions.filter(|d| *d != dimensions) {
        return Err(ApiError::invalid(format!(
            "dimensions {asked}: this model's vectors have {dimensions}"
        )));
    }
    let data: Vec<Value> = out["embeddings"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = match base64 {
                true => json!(encode(vector)),
                false => vector.clone(),
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens = out["tokens"].as_u64().unwrap_or(0);
    Ok(json!({
        "object": "list",
        "data": data,
        "model": out["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

/// A vector as OpenAI's base64 encoding has it: its f32s, little-endian.
fn encode(vector: &Value) -> String {
    let bytes: Vec<u8> = vector
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|x| (x.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
        .collect();
    STANDARD.encode(bytes)
}
