//! `POST /ui/call`: one tool call from the page's script (a button, an
//! upload in the playground), made as the signed-in caller; with
//! `"progress": true` the answer is a stream of server-sent events
//! (`progress`, then `result`), for the calls that take a while.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::StatusCode;
use jetsonmind_core::auth::Principal;
use jetsonmind_core::rmcp::model::JsonObject;
use jetsonmind_core::upstream::ProgressSink;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::Dashboard;

#[derive(Deserialize)]
pub(crate) struct ToolCall {
    tool: String,
    #[serde(default)]
    arguments: JsonObject,
    #[serde(default)]
    progress: bool,
}

pub(crate) async fn call(
    State(ui): State<Arc<Dashboard>>,
    Extension(caller): Extension<Principal>,
    Json(call): Json<ToolCall>,
) -> Response {
    if call.progress {
        return Sse::new(with_progress(ui, caller, call)).into_response();
    }
    let outcome = answer(&ui, &call, &caller, None).await;
    let status = match outcome["ok"].as_bool() {
        Some(true) => StatusCode::OK,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, Json(outcome)).into_response()
}

/// `{"ok": true, "result": …, "text": …}` or `{"ok": false, "error": …}`.
async fn answer(
    ui: &Dashboard,
    call: &ToolCall,
    caller: &Principal,
    sink: Option<ProgressSink>,
) -> Value {
    let outcome = ui
        .gateway
        .call(&call.tool, call.arguments.clone(), caller, sink)
        .await;
    match outcome {
        Ok(result) => {
            let text = jetsonmind_core::content::text_of(&result.content);
            match result.is_error {
                Some(true) => json!({"ok": false, "error": text}),
                _ => json!({"ok": true, "result": result.structured_content, "text": text}),
            }
        }
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}

fn with_progress(
    ui: Arc<Dashboard>,
    caller: Principal,
    call: ToolCall,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    let (progress_tx, mut progress) = mpsc::unbounded_channel();
    async_stream::stream! {
        let sink = ProgressSink::channel(progress_tx);
        let answering = answer(&ui, &call, &caller, Some(sink));
        tokio::pin!(answering);
        let outcome = loop {
            tokio::select! {
                outcome = &mut answering => break outcome,
                Some(step) = progress.recv() => {
                    let step = json!({"progress": step.progress, "total": step.total, "message": step.message});
                    yield Ok(Event::default().event("progress").data(step.to_string()));
                }
            }
        };
        yield Ok(Event::default().event("result").data(outcome.to_string()));
    }
}
