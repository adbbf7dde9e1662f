//! The input cache (`jetson://data/cache`): media callers send, kept the way
//! the engines take it (a picture decoded and turned upright, a clip decoded
//! and resampled for speech), under the SHA-256 of the bytes sent, so the
//! same picture or clip sent again skips decoding. Within a TTL and a byte
//! budget, least recently used out first, with hit rates per kind.
//! Embeddings of repeated texts are answers, kept in the inference cache
//! (`jetson://cache/inference`).

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cache::{BudgetCache, CacheFigures, CacheSettings};

type Prepared = Arc<dyn Any + Send + Sync>;

pub struct InputCache {
    inputs: BudgetCache<Prepared>,
    /// Lookups per kind: hits, misses.
    kinds: Mutex<BTreeMap<String, (u64, u64)>>,
}

/// What `jetson://data/cache` shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InputCacheReport {
    #[serde(flatten)]
    pub figures: CacheFigures,
    pub by_kind: BTreeMap<String, KindReport>,
    pub recent: Vec<CachedInput>,
    /// Where the other cached work is.
    pub see_also: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KindReport {
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CachedInput {
    /// The first 16 hex digits of the input's SHA-256 (with its kind).
    pub key: String,
    pub kind: String,
    pub bytes: usize,
    pub age_seconds: u64,
}

impl From<&crate::config::InputCacheConfig> for CacheSettings {
    fn from(config: &crate::config::InputCacheConfig) -> Self {
        Self {
            enabled: config.enabled,
            ttl: std::time::Duration::from_secs(config.ttl_secs),
            max_bytes: config.max_bytes,
        }
    }
}

impl Default for InputCache {
    fn default() -> Self {
        Self::new((&crate::config::InputCacheConfig::default()).into())
    }
}

impl InputCache {
    pub fn new(settings: CacheSettings) -> Self {
        Self {
            inputs: BudgetCache::new(settings),
            kinds: Mutex::default(),
        }
    }

    pub fn reconfigure(&self, settings: CacheSettings) {
        self.inputs.reconfigure(settings);
    }

    /// `content` prepared as `kind` (`image/decoded`...): as kept from an
    /// earlier call when `usable` says it still is (a limit may have been
    /// lowered since), else `prepare`d now and kept, counted as its `size`.
    /// Nothing is hashed while the cache is off.
    pub async fn prepared<T, E, Fut>(
        &self,
        kind: &str,
        content: Vec<u8>,
        usable: impl Fn(&T) -> bool,
        size: impl Fn(&T) -> usize,
        prepare: impl FnOnce(Vec<u8>) -> Fut,
    ) -> Result<Arc<T>, E>
    where
        T: Any + Send + Sync,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = self.inputs.enabled().then(|| key(kind, &content));
        let kept = key.as_ref().and_then(|key| self.get::<T>(kind, key));
        if let Some(kept) = kept.filter(|kept| usable(kept)) {
            return Ok(kept);
        }
        let prepared = Arc::new(prepare(content).await?);
        if let Some(key) = key {
            self.put(kind, key, prepared.clone(), size(&prepared));
        }
        Ok(prepared)
    }

    /// The input under `key` prepared as `kind`, if kept (and of type `T`).
    fn get<T: Any + Send + Sync>(&self, kind: &str, key: &str) -> Option<Arc<T>> {
        if !self.inputs.enabled() {
            return None;
        }
        let found = self
            .inputs
            .get(key)
            .and_then(|prepared| prepared.downcast::<T>().ok());
        let mut kinds = self.kinds.lock().expect("input cache counts");
        let (hits, misses) = kinds.entry(kind.to_string()).or_default();
        match found {
            Some(_) => *hits += 1,
            None => *misses += 1,
        }
        found
    }

    /// Keep `value`, prepared as `kind`, counted as `bytes`.
    fn put<T: Any + Send + Sync>(&self, kind: &str, key: String, value: Arc<T>, bytes: usize) {
        self.inputs
            .put(key, bytes, [kind.to_string(), String::new()], value);
    }

    pub fn report(&self) -> InputCacheReport {
        let report = self.inputs.report(20);
        let rate = |hits: u64, misses: u64| {
            (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64)
        };
        let by_kind = self
            .kinds
            .lock()
            .expect("input cache counts")
            .iter()
            .map(|(kind, &(hits, misses))| {
                let report = KindReport {
                    hits,
                    misses,
                    hit_rate: rate(hits, misses),
                };
                (kind.clone(), report)
            })
            .collect();
        InputCacheReport {
            figures: report.figures,
            by_kind,
            recent: report
                .recent
                .into_iter()
                .map(|entry| {
                    let [kind, _] = entry.labels;
                    CachedInput {
                        key: entry.key,
                        kind,
                        bytes: entry.bytes,
                        age_seconds: entry.age_seconds,
                    }
                })
                .collect(),
            see_also: "embeddings of repeated texts and answers of deterministic calls: \
                       jetson://cache/inference",
        }
    }
}

/// The key of `content` prepared as `kind`.
fn key(kind: &str, content: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    hasher.update([0]);
    hasher.update(content);
    format!("{:x}", hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cache(max_bytes: usize) -> InputCache {
        InputCache::new(CacheSettings {
            enabled: true,
            ttl: Duration::from_secs(60),
            max_bytes,
        })
    }

    #[test]
    fn the_same_content_is_found_again_by_kind() {
        let cache = cache(1 << 20);
        let digest = key("image/decoded", b"png bytes");
        assert_ne!(digest, key("audio/speech", b"png bytes"));
        assert!(cache.get::<Vec<u8>>("image/decoded", &digest).is_none());
        cache.put(
            "image/decoded",
            digest.clone(),
            Arc::new(vec![1u8, 2, 3]),
            3,
        );
        assert_eq!(
            *cache.get::<Vec<u8>>("image/decoded", &digest).unwrap(),
            [1, 2, 3]
        );
        // Another type under the key is not this one.
        assert!(cache.get::<String>("image/decoded", &digest).is_none());
        let report = cache.report();
        assert_eq!((report.figures.entries, report.figures.bytes), (1, 3));
        let image = &report.by_kind["image/decoded"];
        assert_eq!(
            (image.hits, image.misses, image.hit_rate),
            (1, 2, Some(1.0 / 3.0))
        );
        assert_eq!(report.recent[0].kind, "image/decoded");
        assert_eq!(report.recent[0].key, digest[..16]);
    }

    #[test]
    fn the_budget_evicts_the_least_recently_used() {
        let cache = cache(10);
        for name in ["a", "b", "c"] {
            cache.put("audio/speech", name.into(), Arc::new(0u8), 4);
        }
        assert!(cache.get::<u8>("audio/speech", "a").is_none());
        assert!(cache.get::<u8>("audio/speech", "c").is_some());
        assert_eq!(cache.report().figures.evictions, 1);
        // Larger than the whole budget: not kept.
        cache.put("audio/speech", "big".into(), Arc::new(0u8), 11);
        assert!(cache.get::<u8>("audio/speech", "big").is_none());
    }

    #[tokio::test]
    async fn prepared_once_then_kept_while_usable() {
        let cache = cache(1 << 20);
        let prepared = std::sync::atomic::AtomicUsize::new(0);
        let prepare = |content: Vec<u8>| {
            prepared.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok::<_, String>(content.len()) }
        };
        let size = |_: &usize| 8;
        for _ in 0..2 {
            let n = cache
                .prepared("clip", b"abc".to_vec(), |_| true, size, prepare)
                .await;
            assert_eq!(*n.unwrap(), 3);
        }
        assert_eq!(prepared.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Kept, but no longer usable (a limit was lowered): prepared again.
        let n = cache
            .prepared("clip", b"abc".to_vec(), |_| false, size, prepare)
            .await;
        assert_eq!(*n.unwrap(), 3);
        assert_eq!(prepared.load(std::sync::atomic::Ordering::SeqCst), 2);
        let failed = cache
            .prepared(
                "clip",
                b"xyz".to_vec(),
                |_| true,
                size,
                |_| async { Err::<usize, _>("cannot".to_string()) },
            )
            .await;
        assert_eq!(failed.unwrap_err(), "cannot");
        assert_eq!(cache.report().figures.entries, 1);
    }
}
