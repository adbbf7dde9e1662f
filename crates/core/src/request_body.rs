//! The body of an HTTP request as a connection hands it to the router:
//! bounded in time, and read to its end after the response when a layer
//! answered without reading it.
//!
//! Why both: a client that declares a large body and sends it a byte at a
//! time would otherwise hold whatever the request holds (a concurrency
//! permit) for as long as it likes. And an HTTP/1.1 connection can carry the
//! next request only once this one's body is off the wire: hyper closes the
//! connection when a refusal (401, 429, …) leaves the body unread, and a
//! client that already sent its next request on it sees the connection close
//! without an answer.

use std::error::Error;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// The body did not arrive within `http.body_read_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

/// Whether `error` (or what caused it) is a [`BodyTimedOut`].
pub fn is_timeout(error: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<BodyTimedOut>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// What the connection learns of a body once the router is done with it.
#[derive(Default)]
pub struct BodyOutcome {
    timed_out: AtomicBool,
    /// The unread rest of a body dropped before its end.
    unread: Mutex<Option<Incoming>>,
}

/// A request body that fails with [`BodyTimedOut`] at its deadline and,
/// when dropped unread, leaves its rest in its [`BodyOutcome`].
pub struct DeadlineBody {
    inner: Option<Incoming>,
    deadline: Pin<Box<Sleep>>,
    outcome: Arc<BodyOutcome>,
}

impl DeadlineBody {
    pub fn new(inner: Incoming, deadline: Instant) -> (Self, Arc<BodyOutcome>) {
        let outcome = Arc::new(BodyOutcome::default());
        let body = Self {
            inner: Some(inner),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            outcome: outcome.clone(),
        };
        (body, outcome)
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // Checked before every frame: a body trickling in never pends for long.
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.outcome.timed_out.store(true, Ordering::Relaxed);
            this.inner = None;
            return Poll::Ready(Some(Err(BodyTimedOut.into())));
        }
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                Poll::Ready(Some(Err(e.into())))
            }
            other => other.map(|frame| frame.map(|f| f.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for DeadlineBody {
    fn drop(&mut self) {
        if let Some(rest) = self.inner.take().filter(|b| !b.is_end_stream()) {
            *self.outcome.unread.lock().expect("body outcome lock") = Some(rest);
        }
    }
}

impl BodyOutcome {
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// Read and discard what the router left unread, up to `max_bytes` and
    /// until `deadline`. False when the rest could not be read: the
    /// connection cannot carry another request then.
    pub async fn drain(&self, max_bytes: usize, deadline: Instant) -> bool {
        let unread = self.unread.lock().expect("body outcome lock").take();
        let Some(mut rest) = unread else {
            return true;
        };
        if rest.size_hint().lower() > max_bytes as u64 {
            return false;
        }
        let read = tokio::time::timeout_at(deadline, discard(&mut rest, max_bytes)).await;
        read.unwrap_or(false)
    }
}

/// Read `body` to its end, keeping nothing; false past `max_bytes` or on error.
async fn discard(body: &mut Incoming, max_bytes: usize) -> bool {
    let mut seen = 0usize;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        match frame {
            None => return true,
            Some(Err(_)) => return false,
            Some(Ok(frame)) => {
                seen += frame.data_ref().map_or(0, Bytes::len);
                if seen > max_bytes {
                    return false;
                }
            }
        }
    }
}

/// Keeps `guard` alive until the body it wraps is done or dropped.
pub struct Guarded<B, G> {
    inner: B,
    _guard: G,
}

impl<B, G> Guarded<B, G> {
    pub fn new(inner: B, guard: G) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin, G: Unpin> Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
