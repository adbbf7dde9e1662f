//! A replica in this process, called directly: the request goes to the
//! server as a Rust value, not as MCP messages over a pipe, so the hot path
//! of `jetsonmind serve` (gateway → compute) pays no JSON encode and decode.
//!
//! The server runs the same checks as over MCP ([`LocalServer`]); what a
//! direct call cannot carry is a session, so servers that announce changes
//! (resource subscriptions, list changes) stay on [`McpLink`](super::McpLink).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, CallToolResult, CompleteRequestParams, CompleteResult,
    GetPromptRequestParams, GetPromptResult, ReadResourceResult, Tool,
};
use jetsonmind_core::unit::{CallContext, LocalServer};
use jetsonmind_core::upstream::{Offer, ProgressSink, UpstreamId, UpstreamStatus};
use tokio_util::sync::CancellationToken;

use super::{LinkError, Relay, ReplicaLink};

pub struct DirectLink {
    id: UpstreamId,
    name: String,
    server: Arc<dyn LocalServer>,
    /// The offer, read at each check (a server's catalog can change).
    offer: std::sync::Mutex<Option<Offer>>,
    since: SystemTime,
}

impl DirectLink {
    /// A link to `server`; `None` when it announces changes, which only an
    /// MCP session carries.
    pub fn new(name: impl Into<String>, server: Arc<dyn LocalServer>) -> Option<Self> {
        if server.announces_changes() {
            return None;
        }
        Some(Self {
            id: UpstreamId::fresh(),
            name: name.into(),
            offer: std::sync::Mutex::new(Some(server.offer())),
            server,
            since: SystemTime::now(),
        })
    }

    fn offer_now(&self) -> Option<Offer> {
        self.offer.lock().expect("offer lock").clone()
    }
}

impl ReplicaLink for DirectLink {
    fn id(&self) -> UpstreamId {
        self.id
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        "in-process (direct)".into()
    }

    fn is_up(&self) -> bool {
        true
    }

    fn offer(&self) -> Option<Offer> {
        self.offer_now()
    }

    fn tool(&self, name: &str) -> Option<Tool> {
        self.offer
            .lock()
            .expect("offer lock")
            .as_ref()?
            .tool(name)
            .cloned()
    }

    fn last_check(&self) -> Option<Duration> {
        Some(Duration::ZERO)
    }

    fn status(&self) -> UpstreamStatus {
        let offer = self.offer_now().unwrap_or_default();
        UpstreamStatus {
            name: self.name.clone(),
            endpoint: self.describe(),
            up: true,
            tools: offer.tools.len(),
            resources: offer.resources.len(),
            templates: offer.templates.len(),
            connected_since_unix: self
                .since
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs()),
            last_check_ms: Some(0.0),
            last_error: None,
            subscriptions: Vec::new(),
            refused_subscriptions: Default::default(),
        }
    }

    /// A server in this process goes down only with the process.
    fn mark_down(&self, _why: &str) {}

    fn check<'a>(&'a self, _relay: &'a Relay, _timeout: Duration) -> BoxFuture<'a, ()> {
        let offer = self.server.offer();
        *self.offer.lock().expect("offer lock") = Some(offer);
        Box::pin(async {})
    }

    fn call_tool<'a>(
        &'a self,
        _relay: &'a Relay,
        params: CallToolRequestParams,
        sink: Option<ProgressSink>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<CallToolResult, LinkError>> {
        Box::pin(async move {
            // Its own token: the server may not cancel the caller's.
            let context = CallContext::direct(&params, cancel.child_token(), sink);
            tokio::select! {
                outcome = self.server.call(params, context) => outcome.map_err(LinkError::Refused),
                _ = cancel.cancelled() => Err(LinkError::Cancelled),
            }
        })
    }

    fn read_resource<'a>(
        &'a self,
        uri: &'a str,
    ) -> BoxFuture<'a, Result<ReadResourceResult, LinkError>> {
        Box::pin(async move {
            let meta = Default::default();
            self.server
                .read(uri, &meta)
                .await
                .map_err(LinkError::Refused)
        })
    }

    fn get_prompt(
        &self,
        params: GetPromptRequestParams,
    ) -> BoxFuture<'_, Result<GetPromptResult, LinkError>> {
        Box::pin(async move {
            self.server
                .get_prompt(params)
                .await
                .map_err(LinkError::Refused)
        })
    }

    fn complete(
        &self,
        params: CompleteRequestParams,
    ) -> BoxFuture<'_, Result<CompleteResult, LinkError>> {
        Box::pin(async move {
            self.server
                .complete(params)
                .await
                .map_err(LinkError::Refused)
        })
    }

    /// Its servers announce no changes ([`DirectLink::new`] refuses those).
    fn sync_subscriptions<'a>(&'a self, _wanted: &'a BTreeSet<String>) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}
