//! A unit served over Streamable HTTP on 127.0.0.1, as a remote server is.

use std::net::SocketAddr;
use std::sync::Arc;

use jetsonmind_core::config::{HttpConfig, McpConfig};
use jetsonmind_core::connections::Connections;
use jetsonmind_core::serve::{bind, mcp_router, serve_http};
use jetsonmind_core::{McpUnit, UnitServer};
use tokio_util::sync::CancellationToken;

/// An MCP server over HTTP, stopped when dropped.
pub struct HttpUnit {
    pub addr: SocketAddr,
    /// Its MCP endpoint, `http://{addr}/mcp`.
    pub url: String,
    shutdown: CancellationToken,
    connections: Arc<Connections>,
}

impl HttpUnit {
    /// `unit` served on a free port.
    pub async fn start<U: McpUnit>(unit: Arc<U>) -> Self {
        Self::start_at(unit, "127.0.0.1:0".parse().expect("an address")).await
    }

    /// `unit` served on `addr` (the address of one stopped before, say).
    pub async fn start_at<U: McpUnit>(unit: Arc<U>, addr: SocketAddr) -> Self {
        let (listener, addr) = bind(addr).await.expect("a free address");
        let shutdown = CancellationToken::new();
        let connections = Arc::new(Connections::default());
        let server = UnitServer::new(unit, McpConfig::default());
        let router = mcp_router(server, &HttpConfig::default(), shutdown.clone());
        tokio::spawn(serve_http(
            listener,
            router,
            shutdown.clone(),
            connections.clone(),
        ));
        Self {
            addr,
            url: format!("http://{addr}/mcp"),
            shutdown,
            connections,
        }
    }

    /// Stop listening and drop every connection at once, mid-request, as a
    /// killed process's connections drop.
    pub fn kill(&self) {
        self.shutdown.cancel();
        for connection in self.connections.list() {
            self.connections.close(connection.id);
        }
    }
}

impl Drop for HttpUnit {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
