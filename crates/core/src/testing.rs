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

/// The names of the tools `peer` lists, sorted.
pub async fn tool_names(peer: &rmcp::service::Peer<RoleClient>) -> Vec<String> {
    let tools = peer.list_all_tools().await.expect("tools/list");
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    names
}

/// The URIs of the resources `peer` lists, sorted.
pub async fn resource_uris(peer: &rmcp::service::Peer<RoleClient>) -> Vec<String> {
    let resources = peer.list_all_resources().await.expect("resources/list");
    let mut uris: Vec<String> = resources.into_iter().map(|r| r.uri).collect();
    uris.sort();
    uris
}
