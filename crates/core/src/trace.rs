//! Request ids: a W3C trace context (`traceparent`) for every tool call.
//!
//! A call that arrives with a `traceparent` in its `_meta` continues that
//! trace; one without starts a new trace. The trace id is the call's request
//! id: it names the span every log line of the call is written in, goes on to
//! the backends the call is forwarded to (a child span, same trace), and comes
//! back in the result's `_meta`, so one id follows a call through a cluster.

use std::fmt;

use rmcp::model::{MetaObject, RequestMetaObject};

/// The result `_meta` key holding the call's request id (its trace id).
pub const REQUEST_ID_META_KEY: &str = "jetsonmind/requestId";

/// One span of a trace, as a W3C `traceparent` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits, never all zero: the request id.
    pub trace_id: String,
    /// 16 lowercase hex digits, never all zero: this hop.
    pub span_id: String,
    /// `01` when sampled.
    pub flags: String,
}

tokio::task_local! {
    /// The trace of the tool call this task is serving.
    static CURRENT: TraceContext;
}

impl TraceContext {
    /// A new trace (a call that came without one).
    pub fn fresh() -> Self {
        Self {
            trace_id: random_id(16),
            span_id: random_id(8),
            flags: "01".into(),
        }
    }

    /// `00-TRACE-SPAN-FLAGS`; anything else (another version, all-zero ids,
    /// wrong lengths or digits) is not a trace context.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
        let valid = version == "00"
            && parts.next().is_none()
            && hex(trace, 32)
            && nonzero(trace)
            && hex(span, 16)
            && nonzero(span)
            && hex(flags, 2);
        valid.then(|| Self {
            trace_id: trace.into(),
            span_id: span.into(),
            flags: flags.into(),
        })
    }

    /// The trace a call continues: its `traceparent`, else a new one; either
    /// way with a span of its own.
    pub fn of_request(meta: &RequestMetaObject) -> Self {
        meta.get_traceparent()
            .and_then(Self::parse)
            .map_or_else(Self::fresh, |parent| parent.child())
    }

    /// A span of the same trace, for the next hop.
    pub fn child(&self) -> Self {
        Self {
            span_id: random_id(8),
            ..self.clone()
        }
    }

    /// Run `work` as a call of this trace: [`TraceContext::current`] sees it.
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }

    /// The trace of the call this task serves, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Put a child of the current trace into a request about to be forwarded.
    pub fn propagate(meta: &mut Option<RequestMetaObject>) {
        if let Some(trace) = Self::current() {
            meta.get_or_insert_with(Default::default)
                .set_traceparent(trace.child().to_string());
        }
    }

    /// Say in a result's `_meta` which request it answers.
    pub fn stamp(&self, meta: &mut Option<MetaObject>) {
        let meta = meta.get_or_insert_with(MetaObject::new);
        meta.0.insert(
            REQUEST_ID_META_KEY.into(),
            serde_json::Value::String(self.trace_id.clone()),
        );
        meta.set_traceparent(self.to_string());
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// `bytes` random bytes as hex; never all zero (W3C), and ids need no
/// secrecy, so a failing system source falls back to the clock.
fn random_id(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    if getrandom::fill(&mut buffer).is_err() || buffer.iter().all(|b| *b == 0) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos().max(1));
        for (i, byte) in buffer.iter_mut().enumerate() {
            *byte = (nanos >> ((i % 16) * 8)) as u8 | 1;
        }
    }
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_w3c_example_and_refuses_the_rest() {
        let parsed = TraceContext::parse(PARENT).unwrap();
        assert_eq!(parsed.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.to_string(), PARENT);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_call_continues_its_trace_with_a_span_of_its_own() {
        let mut meta = RequestMetaObject::new();
        meta.set_traceparent(PARENT);
        let call = TraceContext::of_request(&meta);
        assert_eq!(call.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(call.span_id, "00f067aa0ba902b7");
        let fresh = TraceContext::of_request(&RequestMetaObject::new());
        assert!(TraceContext::parse(&fresh.to_string()).is_some());
        assert_ne!(fresh.trace_id, call.trace_id);
    }

    #[tokio::test]
    async fn forwarded_requests_carry_a_child_of_the_current_trace() {
        let mut outside = None;
        TraceContext::propagate(&mut outside);
        assert!(outside.is_none(), "no call, nothing to carry");
        let trace = TraceContext::parse(PARENT).unwrap();
        let forwarded = trace
            .clone()
            .scope(async {
                let mut meta = None;
                TraceContext::propagate(&mut meta);
                meta
            })
            .await
            .unwrap();
        let hop = TraceContext::parse(forwarded.get_traceparent().unwrap()).unwrap();
        assert_eq!(hop.trace_id, trace.trace_id);
        assert_ne!(hop.span_id, trace.span_id);
    }
}
