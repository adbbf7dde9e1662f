//! `jetsonmind top`: a terminal dashboard for SSH sessions on a device, in
//! the manner of jtop. It is an ordinary MCP client of a gateway (a node's
//! own, or a cluster's): every refresh reads `jetson://system/metrics`,
//! `monitor_health` and `jetson://performance/analytics`, and unloading a
//! model calls `manage_resources`, so it sees and may do exactly what its
//! key allows.
//!
//! [`App`] is the state and what each key does (no terminal in it, so it
//! is tested as it is); `view` draws it; `source` is the MCP client.

mod source;
mod view;

use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use tokio::sync::mpsc;

use jetsonmind_figures::{Replica, Snapshot};
pub use source::Gateway;

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("{0}")]
    Gateway(String),
    #[error("the terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// How the replicas are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Name,
    InFlight,
    Latency,
}

impl Sort {
    pub fn name(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::InFlight => "in flight",
            Sort::Latency => "latency",
        }
    }

    fn next(self) -> Self {
        match self {
            Sort::Name => Sort::InFlight,
            Sort::InFlight => Sort::Latency,
            Sort::Latency => Sort::Name,
        }
    }
}

/// What a key asks of the loop.
#[derive(Debug, PartialEq)]
pub enum Command {
    Quit,
    Unload(String),
    Redraw,
}

pub struct App {
    pub url: String,
    pub snapshot: Option<Snapshot>,
    pub error: Option<String>,
    /// Said after an action, until the next one.
    pub message: Option<String>,
    pub node: usize,
    pub sort: Sort,
    pub selected_model: usize,
}

impl App {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            snapshot: None,
            error: None,
            message: None,
            node: 0,
            sort: Sort::Name,
            selected_model: 0,
        }
    }

    pub fn refreshed(&mut self, read: Result<Snapshot, TopError>) {
        match read {
            Ok(snapshot) => {
                self.node = self.node.min(snapshot.nodes.len().saturating_sub(1));
                self.snapshot = Some(snapshot);
                self.error = None;
                let models = self.loaded_models().len();
                self.selected_model = self.selected_model.min(models.saturating_sub(1));
            }
            // The last figures stay on screen, with why they are not fresh.
            Err(e) => self.error = Some(format!("not refreshed: {e}")),
        }
    }

    pub fn key(&mut self, code: KeyCode) -> Command {
        let nodes = self.snapshot.as_ref().map_or(1, |s| s.nodes.len().max(1));
        let models = self.loaded_models().len();
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return Command::Quit,
            KeyCode::Right | KeyCode::Tab => self.node = (self.node + 1) % nodes,
            KeyCode::Left | KeyCode::BackTab => self.node = (self.node + nodes - 1) % nodes,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Down => {
                self.selected_model = (self.selected_model + 1).min(models.saturating_sub(1))
            }
            KeyCode::Up => self.selected_model = self.selected_model.saturating_sub(1),
            KeyCode::Char('u') => {
                if let Some(model) = self.loaded_models().get(self.selected_model) {
                    return Command::Unload(model.clone());
                }
                self.message = Some("no model is loaded".into());
            }
            _ => {}
        }
        Command::Redraw
    }

    pub fn selected_node_name(&self) -> Option<&str> {
        let snapshot = self.snapshot.as_ref()?;
        Some(snapshot.nodes.get(self.node)?.name.as_str())
    }

    pub fn sorted_replicas(&self) -> Vec<&Replica> {
        let mut replicas: Vec<&Replica> = self.snapshot.iter().flat_map(|s| &s.replicas).collect();
        match self.sort {
            Sort::Name => replicas.sort_by(|a, b| a.name.cmp(&b.name)),
            Sort::InFlight => replicas.sort_by_key(|r| std::cmp::Reverse(r.in_flight)),
            Sort::Latency => replicas.sort_by(|a, b| {
                let latency = |r: &Replica| r.latency_ms.unwrap_or(f64::INFINITY);
                latency(a).total_cmp(&latency(b))
            }),
        }
        replicas
    }

    /// Every model some replica holds, once, in name order.
    pub fn loaded_models(&self) -> Vec<String> {
        let mut models: Vec<String> = self
            .snapshot
            .iter()
            .flat_map(|s| &s.replicas)
            .flat_map(|r| r.loaded.iter().cloned())
            .collect();
        models.sort();
        models.dedup();
        models
    }
}

/// Show the gateway at `url` until the user quits, refreshing every
/// `interval`.
pub async fn run(url: &str, bearer: Option<String>, interval: Duration) -> Result<(), TopError> {
    let gateway = Gateway::connect(url, bearer).await?;
    let mut app = App::new(url);
    app.refreshed(gateway.snapshot().await);
    let mut terminal = ratatui::init();
    let keys = read_keys();
    let outcome = show(&mut terminal, &mut app, &gateway, keys, interval).await;
    ratatui::restore();
    outcome
}

async fn show(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    gateway: &Gateway,
    mut keys: mpsc::UnboundedReceiver<KeyCode>,
    interval: Duration,
) -> Result<(), TopError> {
    let mut tick = tokio::time::interval(interval);
    loop {
        terminal.draw(|frame| view::draw(frame, app))?;
        tokio::select! {
            _ = tick.tick() => app.refreshed(gateway.snapshot().await),
            key = keys.recv() => match key.map(|k| app.key(k)) {
                None | Some(Command::Quit) => return Ok(()),
                Some(Command::Unload(model)) => {
                    app.message = Some(match gateway.unload(&model).await {
                        Ok(said) => said,
                        Err(e) => format!("cannot unload {model}: {e}"),
                    });
                    app.refreshed(gateway.snapshot().await);
                }
                Some(Command::Redraw) => {}
            },
        }
    }
}

/// Key presses, read on a thread of their own (the terminal's reads block).
fn read_keys() -> mpsc::UnboundedReceiver<KeyCode> {
    let (sender, keys) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(event) = event::read() {
            if let Event::Key(key) = event
                && key.kind == KeyEventKind::Press
                && sender.send(key.code).is_err()
            {
                return;
            }
        }
    });
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsonmind_figures::Node;

    fn replica(name: &str, in_flight: u64, latency: Option<f64>, loaded: &[&str]) -> Replica {
        Replica {
            name: name.into(),
            in_flight,
            latency_ms: latency,
            loaded: loaded.iter().map(|m| m.to_string()).collect(),
            ..Replica::default()
        }
    }

    fn app() -> App {
        let mut app = App::new("http://x/mcp");
        app.refreshed(Ok(Snapshot {
            nodes: vec![
                Node {
                    name: "a".into(),
                    ..Node::default()
                },
                Node {
                    name: "b".into(),
                    ..Node::default()
                },
            ],
            replicas: vec![
                replica("r1", 0, Some(90.0), &["m2"]),
                replica("r2", 3, None, &["m1", "m2"]),
                replica("r3", 1, Some(20.0), &[]),
            ],
            models: vec![],
        }));
        app
    }

    #[test]
    fn keys_switch_node_sort_and_pick_a_model_to_unload() {
        let mut app = app();
        assert_eq!(app.key(KeyCode::Left), Command::Redraw);
        assert_eq!(app.selected_node_name(), Some("b"), "wraps around");
        app.key(KeyCode::Right);
        assert_eq!(app.selected_node_name(), Some("a"));

        let names = |app: &App| {
            app.sorted_replicas()
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&app), ["r1", "r2", "r3"]);
        app.key(KeyCode::Char('s'));
        assert_eq!(names(&app), ["r2", "r3", "r1"], "most in flight first");
        app.key(KeyCode::Char('s'));
        assert_eq!(
            names(&app),
            ["r3", "r1", "r2"],
            "fastest first, unknown last"
        );

        assert_eq!(app.loaded_models(), ["m1", "m2"]);
        app.key(KeyCode::Down);
        app.key(KeyCode::Down);
        assert_eq!(app.key(KeyCode::Char('u')), Command::Unload("m2".into()));
        assert_eq!(app.key(KeyCode::Char('q')), Command::Quit);
    }

    #[test]
    fn a_failed_refresh_keeps_the_last_figures_and_says_why() {
        let mut app = app();
        app.refreshed(Err(TopError::Gateway("gone".into())));
        assert!(app.snapshot.is_some());
        assert_eq!(app.error.as_deref(), Some("not refreshed: gone"));
        let mut empty = App::new("u");
        assert_eq!(empty.key(KeyCode::Char('u')), Command::Redraw);
        assert_eq!(empty.message.as_deref(), Some("no model is loaded"));
    }
}
