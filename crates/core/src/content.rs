//! Shapes of results shared by every server.

use rmcp::ErrorData as McpError;
use rmcp::model::{CallToolResult, ContentBlock, ReadResourceResult, ResourceContents};
use serde::Serialize;
use serde_json::Value;

/// A resource read whose one content is `value` as JSON.
pub fn json_resource(uri: &str, value: &impl Serialize) -> Result<ReadResourceResult, McpError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| McpError::internal_error(format!("cannot encode {uri}: {e}"), None))?;
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(text, uri).with_mime_type("application/json"),
    ]))
}

/// A successful tool result whose text is `text`, for clients that read
/// only text (the answer, not the JSON around it), with the details as
/// structured content.
pub fn text_and_structured(text: impl Into<String>, structured: Value) -> CallToolResult {
    let mut result = CallToolResult::structured(structured);
    result.content = vec![ContentBlock::text(text.into())];
    result
}

/// A successful tool result carrying `value` both as structured content and
/// as its JSON text, for clients that only read text.
pub fn json_tool_result(value: &impl Serialize) -> CallToolResult {
    match serde_json::to_value(value) {
        Ok(value) => CallToolResult::structured(value),
        Err(e) => crate::tool_error(format!("cannot encode result: {e}")),
    }
}

/// A result's text blocks, joined (a tool's error is its text).
pub fn text_of(content: &[ContentBlock]) -> String {
    content
        .iter()
        .filter_map(|c| c.as_text())
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join("")
}
