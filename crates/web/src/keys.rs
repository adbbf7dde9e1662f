//! API keys: the list, a form to create one (its secret shown once, on the
//! page the form returns) and a revoke button per key; all through the
//! gateway's `handle_auth`, which only an administrator may use for keys.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Form};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Dashboard;
use crate::html::{self, esc, table, unavailable};
use crate::session::Session;

const HANDLE_AUTH: &str = "handle_auth";

pub(crate) async fn page(
    State(ui): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
) -> Html<String> {
    render(&ui, &session, None).await
}

#[derive(Deserialize)]
pub(crate) struct KeyForm {
    action: String,
    name: Option<String>,
    /// Separated by spaces or commas.
    scopes: Option<String>,
    key_id: Option<String>,
}

pub(crate) async fn act(
    State(ui): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
    Form(form): Form<KeyForm>,
) -> Response {
    let arguments = match form.action.as_str() {
        "create" => {
            let scopes: Vec<&str> = form
                .scopes
                .as_deref()
                .unwrap_or_default()
                .split([' ', ','])
                .filter(|s| !s.is_empty())
                .collect();
            json!({"action": "create_key", "name": form.name, "scopes": scopes})
        }
        "revoke" => json!({"action": "revoke_key", "key_id": form.key_id}),
        other => {
            let why = format!("unknown action `{other}`: create or revoke");
            return (StatusCode::BAD_REQUEST, why).into_response();
        }
    };
    let outcome = ui.call(HANDLE_AUTH, arguments, &session.principal).await;
    let status = match &outcome {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, render(&ui, &session, Some(outcome)).await).into_response()
}

/// The page, with what the last action did.
async fn render(
    ui: &Dashboard,
    session: &Session,
    done: Option<Result<Value, String>>,
) -> Html<String> {
    let can = ui.can(&session.principal);
    let listed = ui
        .call(
            HANDLE_AUTH,
            json!({"action": "list_keys"}),
            &session.principal,
        )
        .await;
    let list = match &listed {
        Ok(listed) => keys_table(listed, &session.csrf),
        Err(why) => unavailable("The API keys", why),
    };
    let csrf = esc(&session.csrf);
    let body = format!(
        r#"<h1>API keys</h1>{}
<form method="post" action="/ui/keys" id="create-key"><input type="hidden" name="csrf" value="{csrf}">
<input type="hidden" name="action" value="create">
<label>Name <input name="name" required></label>
<label>Scopes <input name="scopes" placeholder="tools:text_generate resources:* metrics" size="40" required></label>
<button>Create key</button></form>{list}"#,
        done.map_or(String::new(), |d| outcome(&d)),
    );
    html::page("/ui/keys", session, &can, &body)
}

fn outcome(done: &Result<Value, String>) -> String {
    match done {
        Ok(done) if done["created"].is_object() => format!(
            r#"<div id="new-key" class="notice"><p>Key <strong>{}</strong> created. Copy it now: it is not shown again.</p><code>{}</code></div>"#,
            esc(done["created"]["name"].as_str().unwrap_or("")),
            esc(done["created"]["key"].as_str().unwrap_or("")),
        ),
        Ok(done) => format!(
            r#"<p class="notice" role="status">Revoked {}.</p>"#,
            esc(done["revoked"]["id"].as_str().unwrap_or("the key"))
        ),
        Err(why) => format!(r#"<p class="error" role="alert">{}</p>"#, esc(why)),
    }
}

fn keys_table(listed: &Value, csrf: &str) -> String {
    let rows: Vec<Vec<String>> = listed["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            let id = esc(k["id"].as_str().unwrap_or_default());
            let scopes: Vec<&str> = k["scopes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let revoke = format!(
                r#"<form method="post" action="/ui/keys"><input type="hidden" name="csrf" value="{}">
<input type="hidden" name="action" value="revoke"><input type="hidden" name="key_id" value="{id}">
<button>Revoke</button></form>"#,
                esc(csrf)
            );
            vec![
                id.clone(),
                esc(k["name"].as_str().unwrap_or_default()),
                esc(&scopes.join(" ")),
                revoke,
            ]
        })
        .collect();
    table("keys", &["Id", "Name", "Scopes", ""], &rows)
}
