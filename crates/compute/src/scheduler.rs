//! Admission for generations: a fixed number run at once, a bounded number
//! wait, and the rest are told the server is busy instead of hanging.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmitError {
    #[error("busy: {running} generations running and {waiting} waiting; try again shortly")]
    Busy { running: usize, waiting: usize },
    #[error("cancelled while waiting for a free slot")]
    Cancelled,
}

pub struct Scheduler {
    slots: Arc<Semaphore>,
    parallel: AtomicUsize,
    /// Slots taken away by [`Scheduler::resize`] that running calls still
    /// hold: given up as those calls end.
    owed: Arc<AtomicUsize>,
    waiting: AtomicUsize,
    queue_depth: usize,
}

/// Decrements the waiting count however the wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Scheduler {
    pub fn new(parallel: usize, queue_depth: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(parallel)),
            parallel: AtomicUsize::new(parallel),
            owed: Arc::default(),
            waiting: AtomicUsize::new(0),
            queue_depth,
        }
    }

    /// Generations that may run at once.
    pub fn parallel(&self) -> usize {
        self.parallel.load(Ordering::SeqCst)
    }

    /// Let `parallel` generations run at once from now on. Fewer: calls
    /// running beyond it finish, and no new one starts until they have.
    pub fn resize(&self, parallel: usize) {
        let old = self.parallel.swap(parallel, Ordering::SeqCst);
        if parallel >= old {
            return self.slots.add_permits(parallel - old);
        }
        let fewer = old - parallel;
        let held = fewer - self.slots.forget_permits(fewer);
        if held == 0 {
            return;
        }
        self.owed.fetch_add(held, Ordering::SeqCst);
        let (slots, owed) = (self.slots.clone(), self.owed.clone());
        tokio::spawn(async move {
            if let Ok(permits) = slots.acquire_many_owned(held as u32).await {
                permits.forget();
            }
            owed.fetch_sub(held, Ordering::SeqCst);
        });
    }

    /// Generations running now.
    pub fn running(&self) -> usize {
        (self.parallel() + self.owed.load(Ordering::SeqCst))
            .saturating_sub(self.slots.available_permits())
    }

    /// Calls waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Calls held at once before one more is told "busy".
    pub fn capacity(&self) -> usize {
        self.parallel() + self.queue_depth
    }

    /// A slot to run in; held until the permit drops.
    pub async fn admit(
        &self,
        cancel: &CancellationToken,
    ) -> Result<OwnedSemaphorePermit, AdmitError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let waiting = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        if waiting >= self.queue_depth {
            return Err(AdmitError::Busy {
                running: self.running(),
                waiting,
            });
        }
        tokio::select! {
            permit = self.slots.clone().acquire_owned() => Ok(permit.expect("the semaphore is never closed")),
            _ = cancel.cancelled() => Err(AdmitError::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_then_queues_then_refuses() {
        let scheduler = Arc::new(Scheduler::new(1, 1));
        let never = CancellationToken::new();
        let running = scheduler.admit(&never).await.unwrap();

        let queued = {
            let scheduler = scheduler.clone();
            let never = never.clone();
            tokio::spawn(async move { scheduler.admit(&never).await.map(|_| ()) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(
            scheduler.admit(&never).await.unwrap_err(),
            AdmitError::Busy {
                running: 1,
                waiting: 1
            }
        );

        drop(running);
        assert_eq!(queued.await.unwrap(), Ok(()));
        assert!(scheduler.admit(&never).await.is_ok());
    }

    #[tokio::test]
    async fn resizing_takes_slots_back_as_their_calls_end() {
        let scheduler = Scheduler::new(2, 0);
        let never = CancellationToken::new();
        let first = scheduler.admit(&never).await.unwrap();
        let second = scheduler.admit(&never).await.unwrap();
        scheduler.resize(1);
        assert_eq!((scheduler.parallel(), scheduler.running()), (1, 2));
        drop(first);
        tokio::task::yield_now().await;
        assert!(
            scheduler.admit(&never).await.is_err(),
            "one call still runs"
        );
        drop(second);
        let third = scheduler.admit(&never).await.unwrap();
        assert_eq!(scheduler.running(), 1);
        scheduler.resize(3);
        let _fourth = scheduler.admit(&never).await.unwrap();
        let _fifth = scheduler.admit(&never).await.unwrap();
        assert_eq!(scheduler.running(), 3);
        drop(third);
    }

    #[tokio::test]
    async fn a_cancelled_wait_gives_its_place_back() {
        let scheduler = Scheduler::new(1, 1);
        let never = CancellationToken::new();
        let _running = scheduler.admit(&never).await.unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert_eq!(
            scheduler.admit(&cancel).await.unwrap_err(),
            AdmitError::Cancelled
        );
        assert_eq!(scheduler.waiting.load(Ordering::SeqCst), 0);
    }
}
