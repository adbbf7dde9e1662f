//! A client of a server in this same process, over an in-memory MCP pipe,
//! that calls as somebody else: the HTTP faces a gateway puts beside its
//! MCP endpoint (the OpenAI-compatible API, the web dashboard) call the
//! gateway exactly as an MCP client would, so authorization, validation,
//! routing and progress are the same code.
//!
//! The pipe itself is trusted with everything; each request names its
//! caller (see [`crate::auth::delegate`]), whom the server authorizes.

use std::sync::Arc;

use rmcp::ClientCacheConfig;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, JsonObject, ReadResourceRequestParams, ResourceContents,
    ServerResult,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::forward::{ForwardError, ForwardingClient, ProgressRoutes, ProgressSink, call_tool};
use super::{Client, UpstreamId};
use crate::auth::{Principal, delegate};
use crate::{CoreError, McpUnit, UnitServer};

pub struct LocalClient {
    client: Client,
    id: UpstreamId,
    progress: Arc<ProgressRoutes>,
}

/// Why a resource could not be read as JSON.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{uri}: {source}")]
    Service {
        uri: String,
        source: rmcp::ServiceError,
    },
    #[error("{uri} is not JSON text: {reason}")]
    NotJson { uri: String, reason: String },
}

impl LocalClient {
    /// Connect to `server` over an in-memory MCP pipe.
    pub async fn connect<U: McpUnit>(server: UnitServer<U>) -> Result<Arc<Self>, CoreError> {
        let progress = Arc::new(ProgressRoutes::default());
        let id = UpstreamId::fresh();
        let handler = ForwardingClient {
            lists_changed: None,
            upstream: id,
            progress: progress.clone(),
            changes: None,
        };
        let client = handler
            .connect(crate::serve::in_process(server))
            .await
            .map_err(|e| CoreError::Service(e.to_string()))?;
        // Every request is made for its own caller: no answer may be kept
        // for the next (rmcp's client caches reads by default).
        client
            .peer()
            .set_response_cache_config(ClientCacheConfig::disabled())
            .await;
        Ok(Arc::new(Self {
            client,
            id,
            progress,
        }))
    }

    /// `tool` with `arguments`, as `caller`, its progress to `sink`.
    /// Dropping the future (a browser or client hanging up) cancels the call.
    pub async fn call(
        &self,
        tool: &str,
        arguments: JsonObject,
        caller: &Principal,
        sink: Option<ProgressSink>,
    ) -> Result<CallToolResult, ForwardError> {
        let mut params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
        delegate(&mut params.meta, caller);
        let never = CancellationToken::new();
        let call = call_tool(
            self.client.peer(),
            self.id,
            &self.progress,
            params,
            sink,
            &never,
        );
        match call.await? {
            ServerResult::CallToolResult(result) => Ok(result),
            _ => Err(ForwardError::Service(
                rmcp::ServiceError::UnexpectedResponse,
            )),
        }
    }

    /// The JSON text of the resource at `uri`, read as `caller`.
    pub async fn read_json(&self, uri: &str, caller: &Principal) -> Result<Value, ReadError> {
        let mut params = ReadResourceRequestParams::new(uri);
        delegate(&mut params.meta, caller);
        let read = self
            .client
            .peer()
            .read_resource(params)
            .await
            .map_err(|source| ReadError::Service {
                uri: uri.to_string(),
                source,
            })?;
        let not_json = |reason: String| ReadError::NotJson {
            uri: uri.to_string(),
            reason,
        };
        match read.contents.first() {
            Some(ResourceContents::TextResourceContents { text, .. }) => {
                serde_json::from_str(text).map_err(|e| not_json(e.to_string()))
            }
            _ => Err(not_json("no text".into())),
        }
    }
}
