//! Settings: `jetson://config/settings` as a form, a field per setting
//! (`section.key`), and `update_settings` with only the fields changed. A
//! value that is not one (text in a number) or that the server refuses is
//! shown next to its field, with what was typed kept.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Form};
use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::html::{self, esc, unavailable};
use crate::session::Session;
use crate::{Dashboard, SETTINGS};

/// Form fields that are not settings.
const NOT_SETTINGS: &[&str] = &["csrf"];

pub(crate) async fn page(
    State(ui): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
) -> Html<String> {
    render(&ui, &session, &Outcome::default()).await
}

/// What a save did: the values typed, and the errors by field.
#[derive(Default)]
struct Outcome {
    typed: BTreeMap<String, String>,
    errors: BTreeMap<String, String>,
    general: Option<String>,
    saved: Vec<String>,
}

pub(crate) async fn save(
    State(ui): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let current = match ui.read(SETTINGS, &session.principal).await {
        Ok(current) => flatten(&current),
        Err(why) => return (StatusCode::FORBIDDEN, why).into_response(),
    };
    let mut outcome = Outcome {
        typed: form.clone(),
        ..Outcome::default()
    };
    let mut patch = Map::new();
    for (key, text) in form
        .iter()
        .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()))
    {
        let Some(was) = current.get(key) else {
            outcome.errors.insert(key.clone(), "no such setting".into());
            continue;
        };
        if shown(was) == *text {
            continue;
        }
        match parse(was, text) {
            Ok(value) => insert(&mut patch, key, value),
            Err(why) => {
                outcome.errors.insert(key.clone(), why);
            }
        }
    }
    let changed: Vec<String> = flatten(&Value::Object(patch.clone())).into_keys().collect();
    if outcome.errors.is_empty() && !changed.is_empty() {
        let arguments = json!({"settings": patch});
        match ui
            .call("update_settings", arguments, &session.principal)
            .await
        {
            Ok(_) => {
                outcome.saved = changed;
                outcome.typed.clear();
            }
            Err(why) => place_error(&mut outcome, &changed, why),
        }
    }
    let status = match outcome.errors.is_empty() && outcome.general.is_none() {
        true => StatusCode::OK,
        false => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, render(&ui, &session, &outcome).await).into_response()
}

/// The server's refusal next to the field it names (the longest name it
/// contains), or above the form when it names none.
fn place_error(outcome: &mut Outcome, changed: &[String], why: String) {
    let named = changed
        .iter()
        .filter(|key| why.contains(key.as_str()) || why.contains(last_part(key)))
        .max_by_key(|key| key.len());
    match named {
        Some(key) => {
            outcome.errors.insert(key.clone(), why);
        }
        None => outcome.general = Some(why),
    }
}

fn last_part(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// The typed text as the kind of value the setting holds.
fn parse(was: &Value, text: &str) -> Result<Value, String> {
    match was {
        Value::String(_) => Ok(Value::String(text.to_string())),
        // An unset optional setting: JSON when it reads as JSON, else text.
        Value::Null => Ok(serde_json::from_str(text).unwrap_or_else(|_| json!(text))),
        Value::Bool(_) => text
            .trim()
            .parse::<bool>()
            .map(Value::Bool)
            .map_err(|_| format!("`{text}` is not true or false")),
        Value::Number(_) => serde_json::from_str::<serde_json::Number>(text.trim())
            .map(Value::Number)
            .map_err(|_| format!("`{text}` is not a number")),
        _ => serde_json::from_str(text).map_err(|e| format!("not a JSON value: {e}")),
    }
}

/// How a value shows in its field.
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Every setting by its dotted name; lists and empty tables are values.
fn flatten(settings: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(fields) if !fields.is_empty() => {
                for (key, value) in fields {
                    let name = match prefix {
                        "" => key.clone(),
                        _ => format!("{prefix}.{key}"),
                    };
                    walk(&name, value, out);
                }
            }
            _ => {
                out.insert(prefix.to_string(), value.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Value::Object(fields) = settings {
        for (section, value) in fields.iter().filter(|(k, _)| *k != "scope") {
            walk(section, value, &mut out);
        }
    }
    out
}

/// `value` at the dotted `key` of `patch`.
fn insert(patch: &mut Map<String, Value>, key: &str, value: Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut table = patch;
    for part in parts {
        let next = table.entry(part).or_insert_with(|| json!({}));
        if !next.is_object() {
            *next = json!({});
        }
        let Value::Object(inner) = next else { return };
        table = inner;
    }
    table.insert(last.to_string(), value);
}

async fn render(ui: &Dashboard, session: &Session, outcome: &Outcome) -> Html<String> {
    let can = ui.can(&session.principal);
    let body = match ui.read(SETTINGS, &session.principal).await {
        Ok(current) => form(
            &flatten(&current),
            outcome,
            &session.csrf,
            can.change_settings,
        ),
        Err(why) => unavailable("The settings", &why),
    };
    html::page(
        "/ui/settings",
        session,
        &can,
        &format!("<h1>Settings</h1>{body}"),
    )
}

fn form(
    current: &BTreeMap<String, Value>,
    outcome: &Outcome,
    csrf: &str,
    may_change: bool,
) -> String {
    let mut out = String::new();
    if !outcome.saved.is_empty() {
        out.push_str(&format!(
            r#"<p class="notice" role="status" id="settings-saved">Saved: {}.</p>"#,
            esc(&outcome.saved.join(", "))
        ));
    }
    if let Some(why) = &outcome.general {
        out.push_str(&format!(
            r#"<p class="error" role="alert">{}</p>"#,
            esc(why)
        ));
    }
    let disabled = if may_change { "" } else { " disabled" };
    out.push_str(&format!(
        r#"<form method="post" action="/ui/settings" id="settings-form"><input type="hidden" name="csrf" value="{}">"#,
        esc(csrf)
    ));
    let mut section = "";
    for (key, value) in current {
        let this = key.split('.').next().unwrap_or(key);
        if this != section {
            if !section.is_empty() {
                out.push_str("</fieldset></details>");
            }
            let open = if outcome
                .errors
                .keys()
                .any(|k| k.starts_with(&format!("{this}.")))
            {
                " open"
            } else {
                ""
            };
            out.push_str(&format!(
                r#"<details{open}><summary>{}</summary><fieldset>"#,
                esc(this)
            ));
            section = this;
        }
        let text = outcome
            .typed
            .get(key)
            .cloned()
            .unwrap_or_else(|| shown(value));
        let error = outcome.errors.get(key).map_or(String::new(), |why| {
            format!(
                r#"<span class="field-error" role="alert">{}</span>"#,
                esc(why)
            )
        });
        let invalid = if error.is_empty() {
            ""
        } else {
            r#" aria-invalid="true""#
        };
        out.push_str(&format!(
            r#"<label class="setting"><span>{name}</span><input name="{name}" value="{}"{invalid}{disabled}>{error}</label>"#,
            esc(&text),
            name = esc(key),
        ));
    }
    if !section.is_empty() {
        out.push_str("</fieldset></details>");
    }
    if may_change {
        out.push_str("<button>Save changes</button>");
    }
    out.push_str("</form>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_flatten_to_dotted_fields_and_back_into_a_patch() {
        let settings = json!({"cache": {"ttl_secs": 60, "enabled": true},
            "compute": {"audio": {"voice": "en"}, "pinned_models": []}, "scope": {"revision": 3}});
        let flat = flatten(&settings);
        let keys: Vec<&str> = flat.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "cache.enabled",
                "cache.ttl_secs",
                "compute.audio.voice",
                "compute.pinned_models"
            ]
        );
        let mut patch = Map::new();
        insert(&mut patch, "compute.audio.voice", json!("de"));
        insert(&mut patch, "cache.ttl_secs", json!(5));
        assert_eq!(
            Value::Object(patch),
            json!({"compute": {"audio": {"voice": "de"}}, "cache": {"ttl_secs": 5}})
        );
    }

    #[test]
    fn typed_text_becomes_the_kind_of_value_the_setting_holds() {
        assert_eq!(parse(&json!(60), " 120 "), Ok(json!(120)));
        assert!(
            parse(&json!(60), "soon")
                .unwrap_err()
                .contains("not a number")
        );
        assert_eq!(parse(&json!(true), "false"), Ok(json!(false)));
        assert_eq!(parse(&json!("en"), "de"), Ok(json!("de")));
        assert_eq!(parse(&json!(["a"]), r#"["a","b"]"#), Ok(json!(["a", "b"])));
        assert_eq!(parse(&Value::Null, "7"), Ok(json!(7)));
    }

    #[test]
    fn the_server_s_refusal_goes_next_to_the_field_it_names() {
        let mut outcome = Outcome::default();
        let changed = vec!["cache.ttl_secs".to_string(), "compute.parallel".to_string()];
        place_error(
            &mut outcome,
            &changed,
            "settings not changed: compute.parallel must be 0 to 8".into(),
        );
        assert!(outcome.errors.contains_key("compute.parallel"));
        place_error(&mut outcome, &changed, "the disk is full".into());
        assert_eq!(outcome.general.as_deref(), Some("the disk is full"));
    }
}
