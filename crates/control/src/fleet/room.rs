//! Waiting for room: a call waits while every replica that could serve it
//! is at its utilization ceiling, up to `queue_timeout`, and is then shed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{CallToolResult, JsonObject};
use jetsonmind_core::tool_error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Fleet, Replica};
use crate::egress::Egress;
use crate::routing::{Blocked, Decision, Strategy};

/// Counts a call in flight on a replica until dropped; then wakes the calls
/// waiting for room.
pub(super) struct InFlight<'a> {
    replica: &'a Replica,
    released: &'a Notify,
}

impl<'a> InFlight<'a> {
    /// Count a call on `replica` from now until the guard is dropped.
    pub(super) fn begin(replica: &'a Replica, released: &'a Notify) -> Self {
        replica.outstanding.fetch_add(1, Ordering::SeqCst);
        Self { replica, released }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.replica.outstanding.fetch_sub(1, Ordering::SeqCst);
        self.released.notify_waiters();
    }
}

/// Counts a call waiting for room until dropped.
pub(super) struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Fleet {
    /// A decision with a replica to go to, waiting for room while every
    /// replica that could serve is at its ceiling.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn decision_with_room(
        &self,
        tool: &str,
        arguments: &JsonObject,
        strategy: Option<Strategy>,
        tried: &BTreeSet<String>,
        egress: &Egress,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<Decision, Refusal> {
        let mut queued = None;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let decision = self.decide(tool, arguments, strategy, tried, egress);
            match decision.blocked {
                None => return Ok(decision),
                Some(Blocked::NoneAvailable) => return Err(Refusal::Unavailable(decision.reason)),
                Some(Blocked::Saturated) => {}
            }
            if queued.is_none() {
                if self.queued.fetch_add(1, Ordering::SeqCst) >= self.settings.max_queued {
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                    return Err(Refusal::Shed(decision.reason));
                }
                queued = Some(Queued(&self.queued));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Refusal::Shed(decision.reason));
            }
            // Reported load changes with health checks, not only with our
            // own calls ending: look again now and then.
            let pause = (deadline - now).min(Duration::from_millis(250));
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep(pause) => {}
                _ = cancel.cancelled() => return Err(Refusal::Cancelled),
            }
        }
    }
}

/// Why a call got no replica.
pub(super) enum Refusal {
    Unavailable(String),
    Shed(String),
    Cancelled,
}

impl Refusal {
    pub(super) fn into_result(
        self,
        fleet: &str,
        tool: &str,
        failures: &[String],
    ) -> Result<CallToolResult, McpError> {
        let earlier = match failures.is_empty() {
            true => String::new(),
            false => format!(" (after failures: {})", failures.join("; ")),
        };
        match self {
            Refusal::Cancelled => Err(McpError::internal_error("cancelled by the client", None)),
            Refusal::Unavailable(reason) => Ok(tool_error(format!(
                "`{fleet}` is unavailable for {tool}: {reason}{earlier}; try again shortly"
            ))),
            Refusal::Shed(reason) => Ok(tool_error(format!(
                "overloaded: {tool} was shed: {reason}; try again shortly{earlier}"
            ))),
        }
    }
}
