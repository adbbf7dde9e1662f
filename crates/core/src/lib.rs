//! What every JetsonMind MCP server shares, and nothing more:
//!
//! - [`config`]: the one typed configuration (TOML file, env vars, flags).
//! - [`catalog`]: a server's tools, resources and templates, with compiled
//!   JSON Schema validators for tool arguments.
//! - [`unit`]: the [`McpUnit`] trait a server implements, and [`UnitServer`],
//!   the single rmcp `ServerHandler` that serves any unit.
//! - [`serve`]: stdio and Streamable HTTP transports with their limits and checks.
//! - [`upstream`]: other MCP servers as seen by this one (gateway backends,
//!   compute replicas): connections, health checks, forwarded calls.
//! - [`replica`]: what a compute replica reports to the control plane.
//! - [`error`]: the error type of this crate and the tool-error helpers.

pub mod accept;
pub mod admission;
pub mod auth;
pub mod cancel;
pub mod catalog;
pub mod client_log;
pub mod config;
pub mod connections;
pub mod content;
pub mod error;
pub mod jsonrpc;
pub mod lifecycle;
pub mod paths;
pub mod ratelimit;
pub mod request_body;
pub mod serve;
pub mod sessions;
pub mod subscribe;
pub mod trace;
pub mod unit;
pub mod upstream;

pub use catalog::{Catalog, tool_from};
pub use config::Config;
pub use error::{CoreError, not_available, tool_error};
pub use subscribe::ResourceUpdates;
pub use unit::{CallObserver, McpUnit, ToolCall, UnitIdentity, UnitServer, completion};

/// Re-exported so the server crates name one rmcp, the one pinned here.
pub use rmcp;
