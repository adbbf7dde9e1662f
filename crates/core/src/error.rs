use rmcp::model::{CallToolResult, ContentBlock};

/// Errors raised while building or serving a JetsonMind server.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("invalid input schema for tool `{tool}`: {reason}")]
    InvalidToolSchema { tool: String, reason: String },
    #[error("duplicate tool name `{0}` in one catalog")]
    DuplicateTool(String),
    #[error("config: {0}")]
    Config(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("mcp service: {0}")]
    Service(String),
}

/// A tool result saying the tool exists but its engine is not on this node.
///
/// Clients show the text to the model, so it says what is missing and why,
/// rather than returning anything that could pass for a real answer.
pub fn not_available(tool: &str, reason: &str) -> CallToolResult {
    tool_error(format!("not available on this node: {tool}: {reason}"))
}

/// A tool-level error (`isError: true`) with one text block.
pub fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

/// The JSON-RPC error for a resource that does not exist (-32002), with the
/// URI in `data.uri` as the spec (SEP-2164) asks, so clients need not parse
/// the message to learn which one.
pub fn resource_not_found(uri: &str, message: impl Into<String>) -> rmcp::ErrorData {
    rmcp::ErrorData::resource_not_found(message.into(), Some(serde_json::json!({ "uri": uri })))
}

/// [`resource_not_found`] for a URI a server does not offer at all.
pub fn no_resource_at(uri: &str) -> rmcp::ErrorData {
    resource_not_found(uri, format!("no resource at {uri}"))
}
