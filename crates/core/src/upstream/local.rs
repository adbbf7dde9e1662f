//! A client of a server in this same process that calls it directly, as
//! somebody else: the HTTP faces a gateway puts beside its MCP endpoint (the
//! OpenAI-compatible API, the web dashboard) call the gateway through the
//! same entry an MCP request reaches ([`LocalServer`]: authorization as the
//! caller, validation, routing, progress), with no transport and no JSON
//! between them.
//!
//! Each request names its caller in `_meta` (see [`crate::auth::delegate`]),
//! believed within this process's own rights, as over an in-process pipe.

use std::sync::Arc;

use rmcp::ServiceError;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, JsonObject, RequestMetaObject, ResourceContents,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::forward::{ForwardError, ProgressSink};
use crate::auth::{Principal, delegate};
use crate::unit::{CallContext, LocalServer};
use crate::{McpUnit, UnitServer};

pub struct LocalClient {
    server: Arc<dyn LocalServer>,
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
    /// A client of `server`, which it calls directly.
    pub fn new<U: McpUnit>(server: UnitServer<U>) -> Arc<Self> {
        Arc::new(Self {
            server: Arc::new(server),
        })
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
        let cancel = CancellationToken::new();
        let _cancel_when_dropped = cancel.clone().drop_guard();
        let context = CallContext::direct(&params, cancel, sink);
        self.server
            .call(params, context)
            .await
            .map_err(|e| ForwardError::Service(ServiceError::McpError(e)))
    }

    /// The JSON text of the resource at `uri`, read as `caller`.
    pub async fn read_json(&self, uri: &str, caller: &Principal) -> Result<Value, ReadError> {
        let mut meta = None;
        delegate(&mut meta, caller);
        let meta: RequestMetaObject = meta.unwrap_or_default();
        let read = self
            .server
            .read(uri, &meta)
            .await
            .map_err(|e| ReadError::Service {
                uri: uri.to_string(),
                source: ServiceError::McpError(e),
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
