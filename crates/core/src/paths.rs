//! The HTTP paths every server answers on. A leaf module, so the guard, the
//! limits and the endpoint name them without importing one another.

/// The MCP endpoint.
pub const MCP_PATH: &str = "/mcp";
/// Prometheus text (the `metrics` scope).
pub const METRICS_PATH: &str = "/metrics";
/// Alive: 200 while the process serves.
pub const HEALTHZ: &str = "/healthz";
/// Ready: 200 while it should be sent calls.
pub const READYZ: &str = "/readyz";
