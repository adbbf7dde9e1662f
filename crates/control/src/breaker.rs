//! A circuit breaker per replica: after `failures` failures in a row the
//! replica leaves the rotation for `cooldown`; then one trial (a call or a
//! health check) decides whether it comes back or stays out another cooldown.

use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Failures in a row that open the breaker.
    pub failures: u32,
    /// How long an open breaker keeps the replica out before a trial.
    pub cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Out of rotation until the cooldown ends.
    Open,
    /// Cooldown over: one trial call may go; its outcome closes or reopens.
    HalfOpen,
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    failures_in_a_row: u32,
    opened_at: Option<Instant>,
    trial_running: bool,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            failures_in_a_row: 0,
            opened_at: None,
            trial_running: false,
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.opened_at {
            None => BreakerState::Closed,
            Some(at) if now.duration_since(at) < self.settings.cooldown => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go now. In half-open state only one trial runs at
    /// a time; taking it is what this call records.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if self.trial_running => false,
            BreakerState::HalfOpen => {
                self.trial_running = true;
                true
            }
        }
    }

    /// Whether a call could go now, without taking the half-open trial.
    pub fn would_allow(&self, now: Instant) -> bool {
        match self.state(now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => !self.trial_running,
        }
    }

    pub fn record_success(&mut self) {
        self.failures_in_a_row = 0;
        self.opened_at = None;
        self.trial_running = false;
    }

    pub fn record_failure(&mut self, now: Instant) {
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        let trial_failed = self.trial_running;
        self.trial_running = false;
        if trial_failed || self.failures_in_a_row >= self.settings.failures.max(1) {
            self.opened_at = Some(now);
        }
    }

    /// A health check that found the replica answering. Once the cooldown
    /// is over it is the trial, and closes the breaker: a replica that
    /// routing does not prefer (it holds no model yet) would otherwise wait
    /// for a call that never comes. During the cooldown it changes nothing.
    pub fn record_check_passed(&mut self, now: Instant) {
        if self.state(now) == BreakerState::HalfOpen && !self.trial_running {
            self.record_success();
        }
    }

    /// A trial that ended without a verdict (the caller cancelled): let the
    /// next one try.
    pub fn release_trial(&mut self) {
        self.trial_running = false;
    }

    pub fn failures_in_a_row(&self) -> u32 {
        self.failures_in_a_row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failures: 3,
            cooldown: Duration::from_secs(5),
        })
    }

    #[test]
    fn opens_after_failures_in_a_row_only() {
        let mut b = breaker();
        let t = Instant::now();
        b.record_failure(t);
        b.record_failure(t);
        b.record_success();
        b.record_failure(t);
        b.record_failure(t);
        assert_eq!(b.state(t), BreakerState::Closed);
        b.record_failure(t);
        assert_eq!(b.state(t), BreakerState::Open);
        assert!(!b.try_acquire(t + Duration::from_secs(4)));
    }

    #[test]
    fn half_open_lets_one_trial_through_then_decides() {
        let mut b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record_failure(t);
        }
        let later = t + Duration::from_secs(6);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert!(b.try_acquire(later));
        assert!(!b.try_acquire(later), "a second trial waits for the first");
        b.record_failure(later);
        assert_eq!(b.state(later + Duration::from_secs(1)), BreakerState::Open);

        let much_later = later + Duration::from_secs(6);
        assert!(b.try_acquire(much_later));
        b.record_success();
        assert_eq!(b.state(much_later), BreakerState::Closed);
        assert!(b.try_acquire(much_later) && b.try_acquire(much_later));
    }

    #[test]
    fn a_passed_health_check_is_the_trial_once_the_cooldown_is_over() {
        let mut b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record_failure(t);
        }
        b.record_check_passed(t + Duration::from_secs(1));
        assert_eq!(
            b.state(t + Duration::from_secs(2)),
            BreakerState::Open,
            "not within the cooldown"
        );
        let later = t + Duration::from_secs(6);
        assert!(b.try_acquire(later));
        b.record_check_passed(later);
        assert_eq!(
            b.state(later),
            BreakerState::HalfOpen,
            "a call's trial decides itself"
        );
        b.release_trial();
        b.record_check_passed(later);
        assert_eq!(b.state(later), BreakerState::Closed);
    }

    #[test]
    fn an_abandoned_trial_frees_the_slot() {
        let mut b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record_failure(t);
        }
        let later = t + Duration::from_secs(6);
        assert!(b.try_acquire(later));
        b.release_trial();
        assert!(b.would_allow(later));
        assert!(b.try_acquire(later));
    }
}
