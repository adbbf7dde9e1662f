//! JSON-RPC checks on MCP POST bodies before rmcp sees them.
//!
//! rmcp answers a body it cannot parse with a plain-text 415, and drops a
//! notification that lacks the `Mcp-Method` header with 400. JSON-RPC says
//! bad input gets an error object (-32700 for what is not JSON, -32600 for
//! what is not one JSON-RPC message), and
//! the MCP spec (SEP-2243 as amended) requires `Mcp-Method` on requests
//! only: notifications may omit it (the TypeScript SDK does when it closes a
//! `subscriptions/listen` stream), and when present it must still match.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use rmcp::model::{ClientJsonRpcMessage, ErrorCode};
use serde::Deserialize;
use serde_json::{Value, json};

/// The header SEP-2243 mirrors the JSON-RPC method into.
const MCP_METHOD: &str = "mcp-method";

/// What a POST body is, as far as these checks care.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Hand it to rmcp as it is.
    Pass,
    /// A notification: rmcp needs `Mcp-Method`, filled in from the body when absent.
    Notification(String),
    /// Refuse it with this JSON-RPC error.
    Refuse {
        id: Value,
        code: ErrorCode,
        message: String,
    },
}

fn judge(body: &[u8]) -> Verdict {
    let refuse = |id: Value, code, message: String| Verdict::Refuse { id, code, message };
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => {
            return refuse(
                Value::Null,
                ErrorCode::PARSE_ERROR,
                format!("Parse error: {e}"),
            );
        }
    };
    let Value::Object(message) = &value else {
        let what = match value {
            Value::Array(_) => "JSON-RPC batches are not supported; send one message per request",
            _ => "a JSON-RPC message must be an object",
        };
        return refuse(
            Value::Null,
            ErrorCode::INVALID_REQUEST,
            format!("Invalid Request: {what}"),
        );
    };
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let id = message.get("id").cloned();
    if let Err(e) = ClientJsonRpcMessage::deserialize(&value) {
        // Echo the id only when it is one JSON-RPC allows.
        let id = id.filter(|id| id.is_string() || id.is_i64() || id.is_u64());
        return refuse(
            id.unwrap_or_default(),
            ErrorCode::INVALID_REQUEST,
            format!("Invalid Request: {e}"),
        );
    }
    match (method, id) {
        (Some(method), None) => Verdict::Notification(method),
        _ => Verdict::Pass,
    }
}

/// The layer: on POSTs with a JSON content type, refuse what is not one
/// JSON-RPC message with a JSON-RPC error (HTTP 400), and give notifications
/// without `Mcp-Method` the header their body names.
pub async fn check_messages(
    State(max_body_bytes): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != http::Method::POST || !is_json(request.headers()) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, max_body_bytes).await else {
        let message = format!("Payload Too Large: request body exceeds {max_body_bytes} bytes");
        return (StatusCode::PAYLOAD_TOO_LARGE, message).into_response();
    };
    match judge(&bytes) {
        Verdict::Pass => {}
        Verdict::Notification(method) => {
            if !parts.headers.contains_key(MCP_METHOD)
                && let Ok(value) = HeaderValue::from_str(&method)
            {
                parts.headers.insert(MCP_METHOD, value);
            }
        }
        Verdict::Refuse { id, code, message } => return refusal(id, code, message),
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

fn refusal(id: Value, code: ErrorCode, message: String) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code.0, "message": message}});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

/// A JSON-RPC error line for input that is not a JSON-RPC message at all
/// (stdio: rmcp skips such lines without a word); `None` for a message.
pub fn unparsable_line_reply(line: &[u8]) -> Option<String> {
    // rmcp reads a line after a UTF-8 byte order mark.
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    match serde_json::from_slice::<serde::de::IgnoredAny>(line) {
        Ok(_) => None,
        Err(e) => Some(error_line(
            ErrorCode::PARSE_ERROR,
            format!("Parse error: {e}"),
        )),
    }
}

/// The JSON-RPC error for a line longer than rmcp reads (it drops them unanswered).
pub fn oversized_line_reply(max_bytes: usize) -> String {
    let message =
        format!("Invalid Request: a message must fit in one line of at most {max_bytes} bytes");
    error_line(ErrorCode::INVALID_REQUEST, message)
}

fn error_line(code: ErrorCode, message: String) -> String {
    json!({"jsonrpc": "2.0", "id": null, "error": {"code": code.0, "message": message}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(body: &str) -> Option<i32> {
        match judge(body.as_bytes()) {
            Verdict::Refuse { code, .. } => Some(code.0),
            _ => None,
        }
    }

    #[test]
    fn bad_bodies_get_the_json_rpc_error_for_what_is_wrong() {
        assert_eq!(code_of("{not json"), Some(-32700));
        assert_eq!(
            code_of(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#),
            Some(-32600)
        );
        assert_eq!(code_of("42"), Some(-32600));
        let Verdict::Refuse { id, .. } = judge(br#"{"id":7,"method":"ping"}"#) else {
            panic!("a message without `jsonrpc` passed");
        };
        assert_eq!(id, json!(7));
        assert_eq!(code_of(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), None);
    }

    #[test]
    fn notifications_are_told_apart_by_their_method() {
        let cancel =
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}"#;
        assert_eq!(
            judge(cancel.as_bytes()),
            Verdict::Notification("notifications/cancelled".into())
        );
        assert_eq!(
            judge(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
            Verdict::Pass
        );
    }

    #[test]
    fn only_lines_that_are_not_json_get_a_parse_error() {
        assert!(unparsable_line_reply(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).is_none());
        let reply: Value = serde_json::from_str(&unparsable_line_reply(b"hello").unwrap()).unwrap();
        assert_eq!(reply["error"]["code"], -32700);
        assert_eq!(reply["id"], Value::Null);
    }
}
