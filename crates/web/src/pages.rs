//! The pages that show: overview, charts, models, playground and
//! connections. Each reads what it shows through the gateway as the
//! signed-in caller; a part the caller may not read says so in place.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::Html;
use jetsonmind_figures::{Node, Snapshot};
use serde_json::{Value, json};

use crate::html::{self, bytes, esc, figure, table, unavailable};
use crate::session::Session;
use crate::{ANALYTICS, Can, Dashboard, METRICS, MODELS};

type Page = Html<String>;

pub(crate) async fn overview(
    State(ui): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
) -> Page {
    let can = ui.can(&session.principal);
    let body = format!(
        r#"<h1>Overview</h1><div id="overview-live" data-refresh="/ui/overview">{}</div>"#,
        overview_body(&ui, &session, &can).await
    );
    html::page("/ui", &session, &can, &body)
}

/// The overview's figures alone, which the page fetches again every few
/// seconds.
pub(crate) async fn overview_part(
    State(ui): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
) -> Page {
    let can = ui.can(&session.principal);
    Html(overview_body(&ui, &session, &can).await)
}

async fn overview_body(ui: &Dashboard, session: &Session, can: &Can) -> String {
    let caller = &session.principal;
    let route = json!({"tool": jetsonmind_contract::inference::TEXT_GENERATE, "dry_run": true});
    let (metrics, health, analytics, decision) = tokio::join!(
        ui.read(METRICS, caller),
        ui.call("monitor_health", json!({}), caller),
        ui.read(ANALYTICS, caller),
        ui.call("route_request", route, caller),
    );
    let empty = || json!({});
    let snapshot = Snapshot::read(
        metrics.as_ref().unwrap_or(&empty()),
        health.as_ref().unwrap_or(&empty()),
        analytics.as_ref().unwrap_or(&empty()),
    );
    let mut out = String::new();
    out.push_str("<h2>Nodes</h2>");
    out.push_str(&match &metrics {
        Ok(_) => nodes_table(&snapshot.nodes),
        Err(why) => unavailable("The node figures", why),
    });
    out.push_str("<h2>Replicas</h2>");
    out.push_str(&match &health {
        Ok(_) => replicas_table(&snapshot),
        Err(why) => unavailable("The replicas' health", why),
    });
    out.push_str("<h2>Models generating</h2>");
    out.push_str(&match &analytics {
        Ok(_) => rates_table(&snapshot),
        Err(why) => unavailable("The analytics", why),
    });
    if can.route {
        out.push_str("<h2>Routing now</h2>");
        out.push_str(&match &decision {
            Ok(decision) => routing(&decision["decision"]),
            Err(why) => unavailable("The router's decision", why),
        });
    }
    out
}

fn nodes_table(nodes: &[Node]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let memory = format!(
                r#"<span class="memory" data-used-bytes="{}" data-total-bytes="{}">{} of {}</span>"#,
                n.memory_used_bytes().unwrap_or(0),
                n.memory_total_bytes.unwrap_or(0),
                bytes(n.memory_used_bytes()),
                bytes(n.memory_total_bytes),
            );
            vec![
                esc(&n.name),
                figure(n.cpu_percent, " %"),
                figure(n.gpu_percent, " %"),
                memory,
                figure(n.temperature_c, " °C"),
                figure(n.power_watts, " W"),
                figure(n.fan_percent, " %"),
                esc(n.power_mode.as_deref().unwrap_or("–")),
            ]
        })
        .collect();
    let head = [
        "Node",
        "CPU",
        "GPU",
        "Memory used",
        "Temperature",
        "Power",
        "Fan",
        "Power mode",
    ];
    table("nodes", &head, &rows)
}

fn replicas_table(snapshot: &Snapshot) -> String {
    let rows: Vec<Vec<String>> = snapshot
        .replicas
        .iter()
        .map(|r| {
            vec![
                esc(&r.name),
                esc(r.node.as_deref().unwrap_or("–")),
                (if r.up { "up" } else { "down" }).to_string(),
                esc(&r.breaker),
                r.in_flight.to_string(),
                figure(r.latency_ms, " ms"),
                esc(&r.loaded.join(", ")),
            ]
        })
        .collect();
    let head = [
        "Replica",
        "Node",
        "State",
        "Breaker",
        "In flight",
        "Latency",
        "Loaded models",
    ];
    table("replicas", &head, &rows)
}

fn rates_table(snapshot: &Snapshot) -> String {
    let rows: Vec<Vec<String>> = snapshot
        .models
        .iter()
        .map(|m| {
            vec![
                esc(&m.model),
                figure(m.tokens_per_second, " tokens/s"),
                m.calls_last_minute.to_string(),
            ]
        })
        .collect();
    table(
        "rates",
        &["Model", "Generation (last minute)", "Calls (last minute)"],
        &rows,
    )
}

/// Where `text_generate` would go now, and why.
fn routing(decision: &Value) -> String {
    let order: Vec<&str> = decision["order"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let chosen = order.first().copied().unwrap_or("nowhere");
    let fallbacks = match order.len() {
        0 | 1 => "none".to_string(),
        _ => order[1..].join(", "),
    };
    format!(
        r#"<p id="routing"><code>text_generate</code> would go to <strong>{}</strong> ({} strategy): {}. Then: {}.</p>"#,
        esc(chosen),
        esc(decision["strategy"].as_str().unwrap_or("?")),
        esc(decision["reason"].as_str().unwrap_or("")),
        esc(&fallbacks),
    )
}

pub(crate) async fn charts(
    State(ui): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
) -> Page {
    let can = ui.can(&session.principal);
    let body = match can.charts() {
        true => r#"<h1>Charts</h1>
<p>The last hour, a point every few seconds: <span id="chart-status" data-points="0">waiting for the first point</span>.</p>
<div id="charts" data-events="/ui/events"></div>"#
            .to_string(),
        false => unavailable("The charts", "your key cannot read the metrics and analytics"),
    };
    html::page("/ui/charts", &session, &can, &body)
}

pub(crate) async fn models(
    State(ui): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
) -> Page {
    let can = ui.can(&session.principal);
    let caller = &session.principal;
    let (available, health) = tokio::join!(
        ui.read(MODELS, caller),
        ui.call("monitor_health", json!({}), caller),
    );
    let snapshot = Snapshot::read(
        &json!({}),
        health.as_ref().unwrap_or(&json!({})),
        &json!({}),
    );
    let list = match &available {
        Ok(available) => models_table(available, &snapshot, &can),
        Err(why) => unavailable("The model store", why),
    };
    let body = format!(r#"<h1>Models</h1><p id="action-status" role="status"></p>{list}"#);
    html::page("/ui/models", &session, &can, &body)
}

fn models_table(available: &Value, snapshot: &Snapshot, can: &Can) -> String {
    let rows: Vec<Vec<String>> = available["models"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let name = m["name"].as_str().unwrap_or_default();
            let holders: Vec<&str> = snapshot
                .replicas
                .iter()
                .filter(|r| r.loaded.iter().any(|l| l == name))
                .map(|r| r.name.as_str())
                .collect();
            vec![
                esc(name),
                esc(m["format"].as_str().unwrap_or("?")),
                bytes(m["size_bytes"].as_u64()),
                esc(m["license"].as_str().unwrap_or("–")),
                esc(&holders.join(", ")),
                model_actions(name, can),
            ]
        })
        .collect();
    let head = ["Model", "Format", "Size", "Licence", "Loaded on", "Actions"];
    table("models", &head, &rows)
}

/// Buttons for what the caller may do with `model`; the script makes each
/// a tool call.
fn model_actions(model: &str, can: &Can) -> String {
    let mut out = String::new();
    let mut button = |label: &str, tool: &str, arguments: Value, progress: bool| {
        out.push_str(&format!(
            r#"<button data-tool="{tool}" data-arguments="{}"{}>{label}</button> "#,
            esc(&arguments.to_string()),
            if progress { " data-progress" } else { "" },
        ));
    };
    if can.load {
        button(
            "Load",
            "manage_resources",
            json!({"action": "load", "model": model}),
            false,
        );
        button(
            "Unload",
            "manage_resources",
            json!({"action": "unload", "model": model}),
            false,
        );
    }
    if can.manage_models {
        button(
            "Verify",
            "manage_models",
            json!({"action": "verify", "name": model}),
            false,
        );
        button(
            "Publish to the cluster",
            "manage_models",
            json!({"action": "publish", "name": model}),
            true,
        );
    }
    out
}

pub(crate) async fn playground(
    State(ui): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
) -> Page {
    let can = ui.can(&session.principal);
    let mut body = String::from("<h1>Playground</h1>");
    if can.generate {
        body.push_str(
            r#"<section id="chat"><h2>Chat</h2>
<div id="chat-log" aria-live="polite"></div>
<form id="chat-form"><textarea name="message" rows="3" required placeholder="Ask something"></textarea>
<label>Model <input name="model" placeholder="default"></label>
<label>Max tokens <input name="max_tokens" type="number" value="128" min="1"></label>
<button>Send</button></form></section>"#,
        );
    }
    if can.image {
        body.push_str(
            r#"<section><h2>Image</h2>
<form id="image-form" data-tool="image_analyze"><input type="file" name="file" accept="image/*" required>
<select name="analysis_type"><option>classify</option><option>ocr</option><option>properties</option><option>detect</option><option>describe</option></select>
<button>Analyze</button></form><pre id="image-result" class="result"></pre></section>"#,
        );
    }
    if can.audio {
        body.push_str(
            r#"<section><h2>Audio</h2>
<form id="audio-form" data-tool="audio_process"><input type="file" name="file" accept="audio/*" required>
<select name="operation"><option>transcribe</option><option>analyze</option></select>
<button>Process</button></form><pre id="audio-result" class="result"></pre></section>"#,
        );
    }
    if !can.playground() {
        body.push_str(&unavailable(
            "The playground",
            "your key may call none of text_generate, image_analyze and audio_process",
        ));
    }
    html::page("/ui/playground", &session, &can, &body)
}

pub(crate) async fn connections(
    State(ui): State<Arc<Dashboard>>,
    Extension(session): Extension<Session>,
) -> Page {
    let can = ui.can(&session.principal);
    let listed = ui
        .call(
            "manage_connections",
            json!({"action": "list"}),
            &session.principal,
        )
        .await;
    let body = match listed {
        Ok(listed) => connections_body(&listed),
        Err(why) => unavailable("The connections", &why),
    };
    html::page(
        "/ui/connections",
        &session,
        &can,
        &format!("<h1>Connections</h1>{body}"),
    )
}

fn connections_body(listed: &Value) -> String {
    let backends: Vec<Vec<String>> = listed["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let replicas = b["replicas"].as_array().map_or(0, Vec::len);
            vec![
                esc(b["name"].as_str().unwrap_or("?")),
                (if b["up"].as_bool().unwrap_or(false) {
                    "up"
                } else {
                    "down"
                })
                .to_string(),
                replicas.to_string(),
            ]
        })
        .collect();
    let clients: Vec<Vec<String>> = listed["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let id = c["id"].as_u64().unwrap_or(0);
            let close = json!({"action": "close", "id": id});
            vec![
                id.to_string(),
                esc(c["peer"].as_str().unwrap_or("?")),
                esc(c["principal"].as_str().unwrap_or("–")),
                c["requests"].as_u64().unwrap_or(0).to_string(),
                format!(
                    r#"<button data-tool="manage_connections" data-arguments="{}">Close</button>"#,
                    esc(&close.to_string())
                ),
            ]
        })
        .collect();
    format!(
        r#"<p id="action-status" role="status"></p><h2>Backends</h2>{}<h2>Clients</h2>{}"#,
        table("backends", &["Backend", "State", "Replicas"], &backends),
        table(
            "clients",
            &["Id", "Address", "Caller", "Requests", ""],
            &clients
        ),
    )
}
