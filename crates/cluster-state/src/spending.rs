//! What each caller spent in the cloud, counted by all of a site's nodes
//! together: one KV entry per caller and budget period in
//! `<cluster>_spending`, added to with compare-and-set on its revision, so a
//! budget holds across the site however many nodes its calls come in at.
//! Entries of past periods age out (twice the period).

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::future::BoxFuture;
use jetsonmind_cluster::Bus;
use jetsonmind_control::egress::{Charge, SharedSpending};

use crate::{StateError, open_bucket};

/// Tries of one charge when other nodes keep writing the same entry.
const MAX_TRIES: usize = 32;

pub struct ClusterSpending {
    bucket: kv::Store,
}

impl ClusterSpending {
    /// Open the bucket (made by the first node that needs it), its entries
    /// kept for two periods of `period_s`.
    pub async fn open(bus: &Bus, period_s: u64) -> Result<Self, StateError> {
        let config = kv::Config {
            bucket: bus.bucket_name("spending"),
            description: "JetsonMind cloud spending: per caller and budget period".into(),
            history: 1,
            max_age: Duration::from_secs(period_s.saturating_mul(2).max(1)),
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: bus.bucket_replicas(),
            ..Default::default()
        };
        Ok(Self {
            bucket: open_bucket(bus, config).await?,
        })
    }

    async fn add_now(
        &self,
        caller: &str,
        period: u64,
        cost: f64,
        limit: Option<f64>,
    ) -> Result<Charge, StateError> {
        let key = entry_key(caller, period);
        for _ in 0..MAX_TRIES {
            let entry = self
                .bucket
                .entry(&key)
                .await
                .map_err(StateError::jetstream)?;
            let (total, revision) = match &entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    (amount(&entry.value)?, Some(entry.revision))
                }
                Some(entry) => (0.0, Some(entry.revision)),
                None => (0.0, None),
            };
            let after = total + cost;
            if limit.is_some_and(|limit| after > limit) {
                return Ok(Charge::Refused(total));
            }
            let value = Bytes::from(after.to_string());
            let written = match revision {
                Some(revision) => self.bucket.update(&key, value, revision).await.is_ok(),
                None => self.bucket.create(&key, value).await.is_ok(),
            };
            if written {
                return Ok(Charge::Charged(after));
            }
            // Another node charged in between: read again.
        }
        Err(StateError::JetStream(format!(
            "{key}: still changing after {MAX_TRIES} tries"
        )))
    }
}

impl SharedSpending for ClusterSpending {
    fn add<'a>(
        &'a self,
        caller: &'a str,
        period: u64,
        cost: f64,
        limit: Option<f64>,
    ) -> BoxFuture<'a, Result<Charge, String>> {
        Box::pin(async move {
            self.add_now(caller, period, cost, limit)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// A KV key for `caller` in `period`: the principal id in hex (ids hold
/// characters keys may not), then the period.
fn entry_key(caller: &str, period: u64) -> String {
    let hex: String = caller.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.{period}")
}

fn amount(value: &[u8]) -> Result<f64, StateError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.parse::<f64>().ok())
        .filter(|amount| amount.is_finite())
        .ok_or_else(|| StateError::Invalid("unreadable spending entry".into()))
}
