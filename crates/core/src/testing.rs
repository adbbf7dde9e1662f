//! Helpers for driving a server through a real rmcp client, in tests and
//! examples: the same MCP messages a remote client would send.

use rmcp::service::RunningService;
use rmcp::{RoleClient, ServerHandler, ServiceExt};

use crate::serve::in_process;

/// A handshake-era client connected to `server` over an in-memory pipe.
pub async fn connect<S: ServerHandler>(server: S) -> RunningService<RoleClient, ()> {
    ().serve(in_process(server))
        .await
        .expect("client handshake with an in-process server")
}
