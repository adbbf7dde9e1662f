//! MCP logging: `logging/setLevel` and `notifications/message`.
//!
//! A client asks for log messages with `logging/setLevel` (on its session:
//! stdio, an in-process pipe, an HTTP session) or, in the stateless era, with
//! `io.modelcontextprotocol/logLevel` in a request's `_meta`. Until it asks it
//! gets none: the spec leaves the default to the server, and unrequested
//! notifications would turn plain JSON responses into event streams.
//!
//! While a tool call is served, [`UnitServer`](crate::UnitServer) puts the
//! caller's peer and level in a task-local ([`scope`]); [`layer`] is a
//! `tracing` layer that sends the events of JetsonMind's own crates emitted
//! in that task, at or above the level, to that client, with the call's
//! request id. It never blocks: each message is sent from a task of its own.
//! A backend served in the same process (`jetsonmind serve`) runs the call in
//! a task of its own but continues its trace, so its events find the client
//! by request id. Events of other tasks (a blocking generation thread) and of
//! other processes reach no client.

#![allow(deprecated)] // rmcp marks MCP logging deprecated (SEP-2577); both eras are served.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock, Mutex};

use rmcp::RoleServer;
use rmcp::model::{LoggingLevel, LoggingMessageNotificationParam};
use rmcp::service::Peer;
use serde_json::{Map, Value, json};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::Context;

/// Only events of our own crates go to clients: their messages are written
/// for people and never carry secrets; dependencies' may carry raw traffic.
const OWN_TARGETS: &str = "jetsonmind";

/// The `logger` named in every message.
const LOGGER: &str = "jetsonmind";

/// The level a connection asked for with `logging/setLevel`; `None` until it
/// asks. Shared by the clones of one connection's handler.
#[derive(Debug, Clone, Default)]
pub struct ConnectionLevel(Arc<Mutex<Option<LoggingLevel>>>);

impl ConnectionLevel {
    pub fn set(&self, level: LoggingLevel) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(level);
    }

    pub fn get(&self) -> Option<LoggingLevel> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where the events of the call this task serves go.
#[derive(Clone)]
pub struct ClientLog {
    pub peer: Peer<RoleServer>,
    pub level: LoggingLevel,
    pub request_id: String,
}

tokio::task_local! {
    static CLIENT: Option<ClientLog>;
}

/// The calls being served whose client asked for log messages, by request
/// id: the first hop of a trace that registered keeps it.
static BY_REQUEST: LazyLock<Mutex<HashMap<String, ClientLog>>> = LazyLock::new(Default::default);

/// Run `work` with its events sent to `client` (none when `None`).
pub async fn scope<F: Future>(client: Option<ClientLog>, work: F) -> F::Output {
    let _registered = client.as_ref().and_then(Registered::new);
    CLIENT.scope(client, work).await
}

/// A call's entry in [`BY_REQUEST`], removed when the call ends.
struct Registered(String);

impl Registered {
    fn new(client: &ClientLog) -> Option<Self> {
        let mut calls = BY_REQUEST.lock().unwrap_or_else(|e| e.into_inner());
        let id = client.request_id.clone();
        match calls.entry(id.clone()) {
            std::collections::hash_map::Entry::Occupied(_) => None,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(client.clone());
                Some(Self(id))
            }
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut calls = BY_REQUEST.lock().unwrap_or_else(|e| e.into_inner());
        calls.remove(&self.0);
    }
}

/// The client of the call this task serves: its own, else the one that
/// started the trace in this process.
fn current_client() -> Option<ClientLog> {
    if let Ok(Some(client)) = CLIENT.try_with(Clone::clone) {
        return Some(client);
    }
    let trace = crate::trace::TraceContext::current()?;
    let calls = BY_REQUEST.lock().unwrap_or_else(|e| e.into_inner());
    calls.get(&trace.trace_id).cloned()
}

/// The `tracing` layer that sends a call's events to its client. Install it
/// beside the fmt layer; it filters itself to JetsonMind's crates at debug.
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let own = Targets::new().with_target(OWN_TARGETS, Level::DEBUG);
    ClientLogLayer.with_filter(own)
}

struct ClientLogLayer;

impl<S: Subscriber> Layer<S> for ClientLogLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let Some(client) = current_client() else {
            return;
        };
        let level = mcp_level(*event.metadata().level());
        if severity(level) < severity(client.level) {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let data = json!({
            "message": fields.message,
            "requestId": client.request_id,
            "target": event.metadata().target(),
            "fields": fields.rest,
        });
        let message = LoggingMessageNotificationParam::new(level, data).with_logger(LOGGER);
        // Outside a runtime there is nobody to send to; never block here.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = client.peer.notify_logging_message(message).await;
            });
        }
    }
}

/// `tracing` has five levels, MCP eight (syslog's).
fn mcp_level(level: Level) -> LoggingLevel {
    match level {
        Level::ERROR => LoggingLevel::Error,
        Level::WARN => LoggingLevel::Warning,
        Level::INFO => LoggingLevel::Info,
        Level::DEBUG | Level::TRACE => LoggingLevel::Debug,
    }
}

/// Lower is less severe.
pub fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// An event's message and its other fields as JSON.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Map<String, Value>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.put(field, Value::String(text));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        match (field.name(), value) {
            ("message", Value::String(text)) => self.message = text,
            (name, value) => {
                self.rest.insert(name.to_string(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_pass_a_warning_level_and_info_does_not() {
        let warning = severity(mcp_level(Level::WARN));
        assert!(warning >= severity(LoggingLevel::Warning));
        assert!(severity(mcp_level(Level::INFO)) < severity(LoggingLevel::Warning));
        assert!(severity(mcp_level(Level::ERROR)) > warning);
    }
}
