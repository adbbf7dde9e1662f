//! The edge-cluster bus: how JetsonMind nodes form one cluster over NATS
//! JetStream.
//!
//! - [`Bus`]: one NATS connection per node (credentials and TLS from
//!   `[cluster]`), the subjects and buckets of one cluster.
//! - [`sessions`]: MCP over NATS. A node serves its local servers on a
//!   subject of its own; another node opens a session there and speaks the
//!   same MCP messages it speaks over stdio or HTTP. The session is a byte
//!   pipe to `rmcp` on both sides, so a cluster is MCP all the way down.
//! - [`membership`]: each node announces itself through the NATS service API
//!   and heartbeats its status into a JetStream KV bucket; every node
//!   watches the bucket for who is in the cluster.
//!
//! Nothing here knows a server's tools: what to serve and what to join comes
//! from the binary.

pub mod bus;
pub mod membership;
pub mod sessions;
mod wire;

pub use bus::Bus;
pub use membership::{Membership, NodeStatus, View};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Connect { urls: String, reason: String },
    #[error("cluster: {0}")]
    Config(String),
    #[error("NATS JetStream: {0}")]
    JetStream(String),
    #[error("NATS service API: {0}")]
    Service(String),
}
