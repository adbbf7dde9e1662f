//! How the control plane reaches one replica, whatever carries the calls.
//!
//! [`Fleet`](crate::fleet::Fleet) routes among replicas through one
//! interface, [`ReplicaLink`], so routing, failover, breakers and
//! authorization are written once for every transport:
//!
//! - [`mcp::McpLink`]: an MCP client session over Streamable HTTP, a child's
//!   stdio, an in-memory pipe, or a NATS session to another node of the
//!   cluster (a pipe whose other end is `jetsonmind-cluster`'s bridge).
//! - [`direct::DirectLink`]: a server in this process, called directly (no
//!   MCP messages, no JSON); the hot path of `jetsonmind serve`.
//! - [`openai::OpenAiLink`]: an OpenAI-compatible endpoint serving compute's
//!   text tools (`hybrid.providers`): a replica of the cloud tier.
//!
//! Authorization stays with the fleet: every call is checked there, as its
//! caller, on the tool's own name and flags at the replica, before any link
//! sees it; the link carries the caller on (in `_meta`) and the server at
//! the other end checks again.

pub mod direct;
pub mod mcp;
pub mod openai;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, CallToolResult, CompleteRequestParams, CompleteResult,
    GetPromptRequestParams, GetPromptResult, ReadResourceResult, Tool,
};
use jetsonmind_core::upstream::{
    Offer, ProgressRoutes, ProgressSink, ResourceChange, UpstreamId, UpstreamStatus,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use direct::DirectLink;
pub use mcp::McpLink;
pub use openai::OpenAiLink;

/// Why a link produced no answer.
#[derive(Debug)]
pub enum LinkError {
    /// The server refused the request (a protocol error of its own).
    Refused(McpError),
    /// The caller cancelled; the server was told.
    Cancelled,
    /// Not connected: the request never left.
    Unavailable(String),
    /// The connection broke with the request out: it may have started. The
    /// link is down from now on, until a check connects it again.
    Broken(String),
}

/// What the links of one fleet share: where progress of forwarded calls is
/// routed back, and where the replicas' resource changes go.
#[derive(Clone, Default)]
pub struct Relay {
    pub progress: Arc<ProgressRoutes>,
    pub changes: Option<mpsc::UnboundedSender<ResourceChange>>,
    /// A live replica's lists are fetched again at least this often.
    pub relist_after: Duration,
}

/// One replica, as the control plane reaches it.
pub trait ReplicaLink: Send + Sync + 'static {
    /// Unique in this process; resource changes say which link they came from.
    fn id(&self) -> UpstreamId;
    fn name(&self) -> &str;
    /// Where it is, for status pages: a URL, `in-process`, `nats: node/server`.
    fn describe(&self) -> String;
    fn is_up(&self) -> bool;
    /// What it offers, as last seen; none while down.
    fn offer(&self) -> Option<Offer>;
    /// One tool of its offer.
    fn tool(&self, name: &str) -> Option<Tool>;
    /// The round trip of the last check.
    fn last_check(&self) -> Option<Duration>;
    fn status(&self) -> UpstreamStatus;
    /// Give the connection up (its calls end now); the next check reconnects.
    fn mark_down(&self, why: &str);
    /// Connect if down, and refresh the offer.
    fn check<'a>(&'a self, relay: &'a Relay, timeout: Duration) -> BoxFuture<'a, ()>;
    /// Run a call; its progress goes to `sink`, and `cancel` stops it there.
    fn call_tool<'a>(
        &'a self,
        relay: &'a Relay,
        params: CallToolRequestParams,
        sink: Option<ProgressSink>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<CallToolResult, LinkError>>;
    fn read_resource<'a>(
        &'a self,
        uri: &'a str,
    ) -> BoxFuture<'a, Result<ReadResourceResult, LinkError>>;
    fn get_prompt(
        &self,
        params: GetPromptRequestParams,
    ) -> BoxFuture<'_, Result<GetPromptResult, LinkError>>;
    fn complete(
        &self,
        params: CompleteRequestParams,
    ) -> BoxFuture<'_, Result<CompleteResult, LinkError>>;
    /// Hold exactly `wanted` resource subscriptions; their changes go to the
    /// fleet's relay.
    fn sync_subscriptions<'a>(&'a self, wanted: &'a BTreeSet<String>) -> BoxFuture<'a, ()>;
}
