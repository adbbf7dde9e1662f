//! The charts' data: one [`Sample`] every `sample_ms`, the last
//! `history_secs` of them kept, and each new one sent to every open charts
//! page as a server-sent event.
//!
//! The sampler reads the metrics and analytics resources through the
//! gateway as this process (the in-process pipe is trusted); a browser gets
//! the samples only when its caller may read both resources itself.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use http::StatusCode;
use jetsonmind_core::auth::Principal;
use jetsonmind_figures::Sample;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::UiConfig;
use crate::{ANALYTICS, Dashboard, METRICS};

pub(crate) struct Live {
    samples: Mutex<VecDeque<Sample>>,
    capacity: usize,
    every: Duration,
    new_sample: broadcast::Sender<Sample>,
}

impl Live {
    pub fn new(config: &UiConfig) -> Self {
        let capacity = (config.history_secs.saturating_mul(1000) / config.sample_ms).max(1);
        Self {
            samples: Mutex::new(VecDeque::new()),
            capacity: capacity as usize,
            every: Duration::from_millis(config.sample_ms),
            new_sample: broadcast::channel(16).0,
        }
    }

    fn history(&self) -> Vec<Sample> {
        let samples = self.samples.lock().expect("samples lock");
        samples.iter().cloned().collect()
    }

    fn last(&self) -> Option<Sample> {
        self.samples.lock().expect("samples lock").back().cloned()
    }

    fn push(&self, sample: Sample) {
        {
            let mut samples = self.samples.lock().expect("samples lock");
            if samples.len() == self.capacity {
                samples.pop_front();
            }
            samples.push_back(sample.clone());
        }
        // No charts page open: nobody to tell.
        let _ = self.new_sample.send(sample);
    }
}

/// Take a sample every `sample_ms` until `shutdown`.
pub(crate) async fn sample(ui: Arc<Dashboard>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(ui.live.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let this_process = Principal::local();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let read = tokio::join!(
            ui.read(METRICS, &this_process),
            ui.read(ANALYTICS, &this_process)
        );
        match read {
            (Ok(metrics), Ok(analytics)) => {
                let before = ui.live.last();
                let sample = Sample::read(now_ms(), &metrics, &analytics, before.as_ref());
                ui.live.push(sample);
            }
            (Err(e), _) | (_, Err(e)) => tracing::debug!(error = %e, "no chart sample this time"),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `GET /ui/events`: a `history` event with every sample kept, then a
/// `sample` event for each new one.
pub(crate) async fn events(
    State(ui): State<Arc<Dashboard>>,
    Extension(caller): Extension<Principal>,
) -> Response {
    if !ui.can(&caller).charts() {
        let why =
            format!("forbidden: the charts need the scopes to read {METRICS} and {ANALYTICS}");
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    Sse::new(stream(ui))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn stream(ui: Arc<Dashboard>) -> impl Stream<Item = Result<Event, Infallible>> {
    // Subscribed before the history is read: no sample falls between.
    let mut new_samples = ui.live.new_sample.subscribe();
    let history = ui.live.history();
    async_stream::stream! {
        yield Ok(event("history", &history));
        loop {
            match new_samples.recv().await {
                Ok(sample) => yield Ok(event("sample", &sample)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }
}

fn event(name: &str, data: &impl serde::Serialize) -> Event {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Event::default().event(name).data(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_the_last_hour_of_samples() {
        let config = UiConfig {
            sample_ms: 1000,
            history_secs: 3,
            ..UiConfig::default()
        };
        let live = Live::new(&config);
        let mut listener = live.new_sample.subscribe();
        for at_ms in 1..=5 {
            live.push(Sample {
                at_ms,
                ..Sample::default()
            });
        }
        let kept: Vec<u64> = live.history().iter().map(|s| s.at_ms).collect();
        assert_eq!(kept, [3, 4, 5]);
        assert_eq!(listener.try_recv().map(|s| s.at_ms), Ok(1));
    }
}
