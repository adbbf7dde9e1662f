//! How one MCP session's messages travel as NATS messages.
//!
//! Every message a client sends is a NATS request to the server's subject;
//! the receipt (an empty reply, or an error header) comes back at once, so a
//! node that died is seen on the next message (no responders) instead of
//! after a timeout. What the server sends goes to the client's inbox. A
//! message over NATS `max_payload` travels in parts, in order (NATS keeps
//! one publisher's order on one subject), each part saying `i/n`.

use async_nats::HeaderMap;
use bytes::Bytes;

/// The session a message belongs to (chosen by the client, unique).
pub const SESSION: &str = "Jm-Session";
/// Where the server's messages for this session go (the client's inbox).
pub const REPLY_TO: &str = "Jm-Reply";
/// `msg` (default), `probe` (is the session alive?) or `close`.
pub const KIND: &str = "Jm-Kind";
/// Part `i/n` of a message sent in parts.
pub const PART: &str = "Jm-Part";
/// On a receipt: why the message was refused.
pub const ERROR: &str = "Jm-Error";
/// On a receipt: the node that holds the session (a session opened through
/// a server's queue group goes on at that node's own subject).
pub const NODE: &str = "Jm-Node";

pub const PROBE: &str = "probe";
pub const CLOSE: &str = "close";

/// Room left in each NATS message for headers.
const HEADER_ROOM: usize = 1024;

/// Split `message` into parts that fit `max_payload`.
pub fn parts(message: &[u8], max_payload: usize) -> Vec<(Option<String>, Bytes)> {
    let size = max_payload.saturating_sub(HEADER_ROOM).max(HEADER_ROOM);
    if message.len() <= size {
        return vec![(None, Bytes::copy_from_slice(message))];
    }
    let chunks: Vec<&[u8]> = message.chunks(size).collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            (
                Some(format!("{}/{n}", i + 1)),
                Bytes::copy_from_slice(chunk),
            )
        })
        .collect()
}

/// Joins the parts of one message at a time, refusing beyond `limit` bytes.
pub struct Reassembly {
    buffer: Vec<u8>,
    limit: usize,
    refused: bool,
    /// The part `(i, n)` that must come next, while a message is under way.
    expected: Option<(usize, usize)>,
}

/// What one NATS message added up to.
#[derive(Debug, PartialEq)]
pub enum Assembled {
    /// A whole MCP message.
    Message(Vec<u8>),
    /// More parts to come.
    Partial,
    /// The message grew past the limit (its last part has now come).
    TooLarge,
    /// A part header that does not parse.
    Malformed,
}

impl Reassembly {
    pub fn new(limit: usize) -> Self {
        Self {
            buffer: Vec::new(),
            limit,
            refused: false,
            expected: None,
        }
    }

    pub fn push(&mut self, headers: Option<&HeaderMap>, payload: &[u8]) -> Assembled {
        let part = headers.and_then(|h| h.get(PART)).map(|v| v.as_str());
        let Some(part) = part else {
            self.buffer.clear();
            self.expected = None;
            return match payload.len() > self.limit {
                true => Assembled::TooLarge,
                false => Assembled::Message(payload.to_vec()),
            };
        };
        let Some((i, n)) = parse_part(part) else {
            return Assembled::Malformed;
        };
        if i == 1 {
            self.buffer.clear();
            self.refused = false;
        } else if self.expected != Some((i, n)) {
            // A part went missing (a slow consumer drops messages) or
            // belongs to another message: what was joined is no message.
            self.buffer = Vec::new();
            self.expected = None;
            return Assembled::Malformed;
        }
        self.expected = (i < n).then_some((i + 1, n));
        if !self.refused {
            self.refused = self.buffer.len() + payload.len() > self.limit;
            match self.refused {
                true => self.buffer = Vec::new(),
                false => self.buffer.extend_from_slice(payload),
            }
        }
        if i < n {
            return Assembled::Partial;
        }
        match std::mem::take(&mut self.refused) {
            true => Assembled::TooLarge,
            false => Assembled::Message(std::mem::take(&mut self.buffer)),
        }
    }
}

fn parse_part(value: &str) -> Option<(usize, usize)> {
    let (i, n) = value.split_once('/')?;
    let (i, n) = (i.parse().ok()?, n.parse().ok()?);
    (1..=n).contains(&i).then_some((i, n))
}

/// Why `message` (`what` it is, for the reason) cannot be carried, when it is
/// larger than `limit` (`cluster.max_message_bytes`).
pub fn oversize(message: &[u8], limit: usize, what: &str) -> Option<String> {
    (message.len() > limit).then(|| {
        format!(
            "the {what} ({} bytes) is larger than cluster.max_message_bytes ({limit})",
            message.len()
        )
    })
}

/// What to deliver instead of `message` when it cannot be carried: for a
/// request or a response, a JSON-RPC error with its id, so whoever waits on
/// that id hears why instead of waiting; `None` for a notification.
pub fn refusal(message: &[u8], why: &str) -> Option<Vec<u8>> {
    let value: serde_json::Value = serde_json::from_slice(message).ok()?;
    let id = value.get("id")?.clone();
    let error = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": -32600, "message": why },
    });
    serde_json::to_vec(&error).ok()
}

/// Whether `message` opens an MCP session (`initialize`).
pub fn is_initialize(message: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(message)
        .ok()
        .and_then(|v| {
            v.get("method")
                .and_then(|m| m.as_str())
                .map(|m| m == "initialize")
        })
        .unwrap_or(false)
}

pub fn header(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reassemble(message: &[u8], max_payload: usize, limit: usize) -> Vec<Assembled> {
        let mut joined = Reassembly::new(limit);
        parts(message, max_payload)
            .into_iter()
            .map(|(part, payload)| {
                let mut headers = HeaderMap::new();
                if let Some(part) = part {
                    headers.insert(PART, part.as_str());
                }
                joined.push(Some(&headers), &payload)
            })
            .collect()
    }

    #[test]
    fn a_large_message_travels_in_parts_and_arrives_whole() {
        let message: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let outcome = reassemble(&message, 2048, 1 << 20);
        assert_eq!(outcome.len(), 10);
        assert!(outcome[..9].iter().all(|a| *a == Assembled::Partial));
        assert_eq!(outcome[9], Assembled::Message(message));
    }

    #[test]
    fn a_small_message_is_one_nats_message() {
        assert_eq!(parts(b"{}", 1 << 20).len(), 1);
        assert_eq!(
            reassemble(b"{}", 1 << 20, 1024),
            vec![Assembled::Message(b"{}".to_vec())]
        );
    }

    #[test]
    fn a_message_past_the_limit_is_refused_once_whole() {
        let message = vec![b'x'; 10_000];
        let outcome = reassemble(&message, 2048, 5_000);
        assert_eq!(outcome.last(), Some(&Assembled::TooLarge));
        assert!(
            outcome[..outcome.len() - 1]
                .iter()
                .all(|a| *a == Assembled::Partial)
        );
    }

    #[test]
    fn a_missing_or_foreign_part_is_malformed_not_joined() {
        let message: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let parts = parts(&message, 2048);
        let push = |joined: &mut Reassembly, (part, payload): &(Option<String>, Bytes)| {
            let mut headers = HeaderMap::new();
            headers.insert(PART, part.as_deref().expect("a part"));
            joined.push(Some(&headers), payload)
        };
        let mut joined = Reassembly::new(1 << 20);
        let lost_second: Vec<Assembled> = parts
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, part)| push(&mut joined, part))
            .collect();
        assert_eq!(lost_second[0], Assembled::Partial);
        assert_eq!(lost_second[1], Assembled::Malformed);
        assert!(
            !lost_second
                .iter()
                .any(|a| matches!(a, Assembled::Message(_))),
            "a message with a part missing was delivered"
        );

        let mut joined = Reassembly::new(1 << 20);
        let other = super::parts(&[b'z'; 5_000], 2048);
        assert_eq!(push(&mut joined, &parts[0]), Assembled::Partial);
        assert_eq!(push(&mut joined, &other[1]), Assembled::Malformed);
        // The next message starts over and arrives whole.
        let outcome: Vec<Assembled> = parts.iter().map(|p| push(&mut joined, p)).collect();
        assert_eq!(outcome.last(), Some(&Assembled::Message(message)));
    }

    #[test]
    fn bad_part_headers_are_malformed() {
        let mut joined = Reassembly::new(1024);
        for bad in ["0/2", "3/2", "x/1", "1"] {
            let mut headers = HeaderMap::new();
            headers.insert(PART, bad);
            assert_eq!(
                joined.push(Some(&headers), b"a"),
                Assembled::Malformed,
                "{bad}"
            );
        }
    }

    #[test]
    fn refusals_answer_requests_and_responses_not_notifications() {
        let request = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{}}"#;
        let answer: serde_json::Value =
            serde_json::from_slice(&refusal(request, "too large").unwrap()).unwrap();
        assert_eq!(answer["id"], 7);
        assert_eq!(answer["error"]["message"], "too large");
        let response = br#"{"jsonrpc":"2.0","id":"r","result":{"content":[]}}"#;
        let answer: serde_json::Value =
            serde_json::from_slice(&refusal(response, "too large").unwrap()).unwrap();
        assert_eq!(answer["id"], "r");
        let notification = br#"{"jsonrpc":"2.0","method":"notifications/progress"}"#;
        assert!(refusal(notification, "too large").is_none());
    }
}
