//! A replica reached as an MCP client: Streamable HTTP, a child's stdio, an
//! in-memory pipe, or a NATS session to another node (see [`Connector`]).

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::BoxFuture;
use jetsonmind_core::rmcp::ServiceError;
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, CallToolResult, CompleteRequestParams, CompleteResult,
    GetPromptRequestParams, GetPromptResult, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, ServerResult, Tool,
};
use jetsonmind_core::tool_error;
use jetsonmind_core::upstream::{
    self, ForwardError, ForwardingClient, Offer, ProgressSink, Upstream, UpstreamId, UpstreamStatus,
};
use tokio_util::sync::CancellationToken;

use super::{LinkError, Relay, ReplicaLink};

/// What rmcp's Streamable HTTP client answers, in the replica's name, for a
/// request whose response was lost with its session (the replica restarted
/// and no longer knows it): the call may or may not have run, as when a
/// connection breaks, so it is treated as one. rmcp is pinned exactly, so the
/// words stay these.
const LOST_IN_TRANSPORT: &str =
    "streamable HTTP session was re-initialized before the response arrived";

pub struct McpLink {
    upstream: Upstream,
}

impl McpLink {
    pub fn new(upstream: Upstream) -> Self {
        Self { upstream }
    }

    fn handler(&self, relay: &Relay) -> ForwardingClient {
        ForwardingClient {
            upstream: self.upstream.id,
            progress: relay.progress.clone(),
            changes: relay.changes.clone(),
            lists_changed: Some(self.upstream.lists_changed()),
        }
    }

    /// A request that failed below MCP broke the connection: give it up.
    fn broken(&self, error: ServiceError) -> LinkError {
        match error {
            ServiceError::McpError(error) if error.message == LOST_IN_TRANSPORT => {
                self.upstream.mark_down(LOST_IN_TRANSPORT.to_string());
                LinkError::Broken(error.message.to_string())
            }
            ServiceError::McpError(error) => LinkError::Refused(error),
            other => {
                self.upstream.mark_down(other.to_string());
                LinkError::Broken(other.to_string())
            }
        }
    }

    fn peer(
        &self,
    ) -> Result<jetsonmind_core::rmcp::Peer<jetsonmind_core::rmcp::RoleClient>, LinkError> {
        self.upstream
            .client()
            .map(|client| client.peer().clone())
            .ok_or_else(|| LinkError::Unavailable("down".into()))
    }
}

impl ReplicaLink for McpLink {
    fn id(&self) -> UpstreamId {
        self.upstream.id
    }

    fn name(&self) -> &str {
        &self.upstream.name
    }

    fn describe(&self) -> String {
        self.upstream.connector().describe()
    }

    fn is_up(&self) -> bool {
        self.upstream.is_up()
    }

    fn offer(&self) -> Option<Offer> {
        self.upstream.offer()
    }

    fn tool(&self, name: &str) -> Option<Tool> {
        self.upstream.tool(name)
    }

    fn last_check(&self) -> Option<Duration> {
        self.upstream.last_check()
    }

    fn status(&self) -> UpstreamStatus {
        self.upstream.status()
    }

    fn mark_down(&self, why: &str) {
        self.upstream.mark_down(why);
    }

    fn check<'a>(&'a self, relay: &'a Relay, timeout: Duration) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let handler = self.handler(relay);
            self.upstream
                .check(handler, timeout, relay.relist_after)
                .await;
        })
    }

    fn call_tool<'a>(
        &'a self,
        relay: &'a Relay,
        params: CallToolRequestParams,
        sink: Option<ProgressSink>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<CallToolResult, LinkError>> {
        Box::pin(async move {
            let Some(connection) = self.upstream.connection() else {
                return Err(LinkError::Unavailable("down".into()));
            };
            let forwarded = upstream::call_tool(
                connection.client.peer(),
                self.upstream.id,
                &relay.progress,
                params,
                sink,
                cancel,
            );
            let outcome = tokio::select! {
                outcome = forwarded => outcome,
                _ = connection.lost.cancelled() => Err(ForwardError::Service(ServiceError::TransportClosed)),
            };
            match outcome {
                Ok(ServerResult::CallToolResult(result)) => Ok(result),
                Ok(_) => Ok(tool_error(format!(
                    "replica `{}` answered with a result that cannot be relayed",
                    self.upstream.name
                ))),
                Err(ForwardError::Cancelled) => Err(LinkError::Cancelled),
                Err(ForwardError::Service(error)) => Err(self.broken(error)),
            }
        })
    }

    fn read_resource<'a>(
        &'a self,
        uri: &'a str,
    ) -> BoxFuture<'a, Result<ReadResourceResult, LinkError>> {
        Box::pin(async move {
            let read = self
                .peer()?
                .read_resource_once(ReadResourceRequestParams::new(uri.to_string()))
                .await;
            match read {
                Ok(ReadResourceResponse::Complete(result)) => Ok(result),
                Ok(_) => Err(LinkError::Refused(
                    jetsonmind_core::rmcp::ErrorData::internal_error(
                        "the server asked for input; not relayed",
                        None,
                    ),
                )),
                Err(error) => Err(self.broken(error)),
            }
        })
    }

    fn get_prompt(
        &self,
        params: GetPromptRequestParams,
    ) -> BoxFuture<'_, Result<GetPromptResult, LinkError>> {
        Box::pin(async move {
            let peer = self.peer()?;
            peer.get_prompt(params).await.map_err(|e| self.broken(e))
        })
    }

    fn complete(
        &self,
        params: CompleteRequestParams,
    ) -> BoxFuture<'_, Result<CompleteResult, LinkError>> {
        Box::pin(async move {
            let peer = self.peer()?;
            peer.complete(params).await.map_err(|e| self.broken(e))
        })
    }

    fn sync_subscriptions<'a>(&'a self, wanted: &'a BTreeSet<String>) -> BoxFuture<'a, ()> {
        Box::pin(self.upstream.sync_subscriptions(wanted))
    }
}
