//! Drawing one frame: the selected node's figures, the replicas, the
//! models, and the keys.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};

use crate::App;
use jetsonmind_figures::{Node, Replica};

const GIB: f64 = (1u64 << 30) as f64;

pub fn draw(frame: &mut Frame, app: &App) {
    let [header, node, replicas, models, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(5),
        Constraint::Min(5),
        Constraint::Length(6),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(title(app)), header);
    let Some(snapshot) = &app.snapshot else {
        let waiting = app.error.as_deref().unwrap_or("reading the gateway…");
        frame.render_widget(Paragraph::new(waiting), node);
        return;
    };
    if let Some(selected) = snapshot.nodes.get(app.node) {
        let block = Block::bordered().title(format!(" node {} ", selected.name));
        frame.render_widget(Paragraph::new(node_lines(selected)).block(block), node);
    }
    frame.render_widget(replica_table(app), replicas);
    frame.render_widget(model_table(app), models);
    let status = app
        .message
        .as_deref()
        .or(app.error.as_deref())
        .unwrap_or("q quit · ←/→ node · s sort · ↑/↓ model · u unload the model");
    frame.render_widget(Paragraph::new(status), footer);
}

fn title(app: &App) -> Line<'static> {
    let nodes = app.snapshot.as_ref().map_or(0, |s| s.nodes.len());
    Line::from(format!(
        "jetsonmind top · {} · node {}/{} · sort: {}",
        app.url,
        app.node + 1,
        nodes.max(1),
        app.sort.name()
    ))
    .style(Style::new().add_modifier(Modifier::BOLD))
}

fn figure(value: Option<f64>, unit: &str) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.1}{unit}"))
}

fn node_lines(node: &Node) -> Vec<Line<'static>> {
    let memory = match (node.memory_used_bytes(), node.memory_total_bytes) {
        (Some(used), Some(total)) => format!(
            "mem {:.1}/{:.1} GiB ({:.0}%)",
            used as f64 / GIB,
            total as f64 / GIB,
            used as f64 / total.max(1) as f64 * 100.0
        ),
        _ => "mem -".to_string(),
    };
    let cores = node
        .cores
        .map_or_else(String::new, |c| format!(" of {c} cores"));
    vec![
        Line::from(format!(
            "cpu {}{cores}   {memory}",
            figure(node.cpu_percent, "%")
        )),
        Line::from(format!(
            "gpu {}   temp {}   power {}   fan {}",
            figure(node.gpu_percent, "%"),
            figure(node.temperature_c, "°C"),
            figure(node.power_watts, " W"),
            figure(node.fan_percent, "%"),
        )),
        Line::from(format!(
            "power mode {}",
            node.power_mode.as_deref().unwrap_or("-")
        )),
    ]
}

fn replica_table(app: &App) -> Table<'static> {
    let node = app.selected_node_name();
    let rows = app.sorted_replicas().into_iter().map(|r: &Replica| {
        let here = node.is_some() && r.node.as_deref() == node;
        let style = match here {
            true => Style::new().add_modifier(Modifier::BOLD),
            false => Style::new(),
        };
        Row::new(vec![
            r.name.clone(),
            r.node.clone().unwrap_or_default(),
            if r.up { "up" } else { "down" }.to_string(),
            r.breaker.clone(),
            r.in_flight.to_string(),
            figure(r.latency_ms, " ms"),
            r.loaded.join(", "),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Length(22),
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(11),
        Constraint::Min(10),
    ];
    let header = [
        "replica",
        "node",
        "state",
        "breaker",
        "in flight",
        "latency",
        "loaded",
    ];
    Table::new(rows, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::UNDERLINED)))
        .block(Block::bordered().title(" replicas "))
}

fn model_table(app: &App) -> Table<'static> {
    let models = app.loaded_models();
    let rows = models.iter().enumerate().map(|(i, model)| {
        let rate = app
            .snapshot
            .as_ref()
            .and_then(|s| s.models.iter().find(|m| &m.model == model));
        let row = Row::new(vec![
            model.clone(),
            figure(rate.and_then(|r| r.tokens_per_second), " tok/s"),
            rate.map_or(0, |r| r.calls_last_minute).to_string(),
        ]);
        match i == app.selected_model {
            true => row.style(Style::new().add_modifier(Modifier::REVERSED)),
            false => row,
        }
    });
    let widths = [
        Constraint::Min(20),
        Constraint::Length(14),
        Constraint::Length(12),
    ];
    Table::new(rows, widths)
        .header(Row::new(["loaded model", "last minute", "calls (1m)"]))
        .block(Block::bordered().title(" models "))
}
