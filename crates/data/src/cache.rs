//! The inference cache: exact-match answers for deterministic calls.
//!
//! A call is deterministic when the same model, arguments and seed give the
//! same output (greedy decoding, or an explicit seed). Its answer is kept for
//! `ttl`, within a byte budget, least recently used out first; hits, misses
//! and evictions are counted for `jetson://cache/inference`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub enabled: bool,
    pub ttl: Duration,
    pub max_bytes: usize,
}

struct Entry<V> {
    value: V,
    bytes: usize,
    stored: Instant,
    /// What the entry is, for reports: the tool and model of an answer.
    labels: [String; 2],
    last_used: u64,
}

struct State<V> {
    settings: CacheSettings,
    entries: HashMap<String, Entry<V>>,
    /// last-use tick -> key: the first is the least recently used.
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
    hits: u64,
    misses: u64,
    evictions: u64,
}

/// Values by key, each kept for `ttl` within a byte budget, the least
/// recently used out first; hits, misses and evictions counted. The answers
/// of [`InferenceCache`] and the preprocessed inputs of
/// [`crate::inputs::InputCache`] are both one of these.
pub struct BudgetCache<V> {
    state: Mutex<State<V>>,
}

pub struct InferenceCache {
    answers: BudgetCache<Value>,
}

/// The figures every [`BudgetCache`] reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CacheFigures {
    pub enabled: bool,
    pub entries: usize,
    pub bytes: usize,
    pub max_bytes: usize,
    pub ttl_seconds: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub hit_rate: Option<f64>,
}

/// What `jetson://cache/inference` shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CacheReport {
    #[serde(flatten)]
    pub figures: CacheFigures,
    pub recent: Vec<CachedCall>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CachedCall {
    pub key: String,
    pub tool: String,
    pub model: String,
    pub bytes: usize,
    pub age_seconds: u64,
}

/// The figures of a [`BudgetCache`], and its most recently used entries,
/// most recent first.
pub struct BudgetReport {
    pub figures: CacheFigures,
    pub recent: Vec<RecentEntry>,
}

pub struct RecentEntry {
    /// The first 16 characters of its key.
    pub key: String,
    pub labels: [String; 2],
    pub bytes: usize,
    pub age_seconds: u64,
}

/// The key of a call: tool, model identity and the canonical arguments.
/// `serde_json` maps are ordered, so equal arguments serialise equally.
pub fn cache_key(tool: &str, model: &str, arguments: &Value) -> String {
    let mut hasher = Sha256::new();
    for part in [tool, model, &arguments.to_string()] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    format!("{:x}", hasher.finalize())
}

impl From<&crate::config::CacheConfig> for CacheSettings {
    fn from(config: &crate::config::CacheConfig) -> Self {
        Self {
            enabled: config.enabled,
            ttl: Duration::from_secs(config.ttl_secs),
            max_bytes: config.max_bytes,
        }
    }
}

impl Default for InferenceCache {
    fn default() -> Self {
        Self::new((&crate::config::CacheConfig::default()).into())
    }
}

impl InferenceCache {
    pub fn new(settings: CacheSettings) -> Self {
        Self {
            answers: BudgetCache::new(settings),
        }
    }

    /// New settings, in effect at once: a smaller budget evicts the least
    /// recently used answers, disabling empties the cache.
    pub fn reconfigure(&self, settings: CacheSettings) {
        self.answers.reconfigure(settings);
    }

    pub fn get(&self, key: &str) -> Option<Value> {
        self.answers.get(key)
    }

    pub fn put(&self, key: String, tool: &str, model: &str, value: Value) {
        if !self.answers.enabled() {
            return; // before sizing the value: printing a large one costs
        }
        let bytes = key.len() + value.to_string().len();
        self.answers
            .put(key, bytes, [tool.into(), model.into()], value);
    }

    pub fn report(&self) -> CacheReport {
        let report = self.answers.report(20);
        CacheReport {
            figures: report.figures,
            recent: report
                .recent
                .into_iter()
                .map(|entry| {
                    let [tool, model] = entry.labels;
                    CachedCall {
                        key: entry.key,
                        tool,
                        model,
                        bytes: entry.bytes,
                        age_seconds: entry.age_seconds,
                    }
                })
                .collect(),
        }
    }
}

impl<V: Clone> BudgetCache<V> {
    pub fn new(settings: CacheSettings) -> Self {
        let state = State {
            settings,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            hits: 0,
            misses: 0,
            evictions: 0,
        };
        Self {
            state: Mutex::new(state),
        }
    }

    /// New settings, in effect at once: a smaller budget evicts the least
    /// recently used entries, disabling empties the cache.
    pub fn reconfigure(&self, settings: CacheSettings) {
        let mut state = self.state();
        if !settings.enabled {
            state.entries.clear();
            state.order.clear();
            state.bytes = 0;
        }
        state.settings = settings;
        evict_over_budget(&mut state, 0);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<V>> {
        self.state.lock().expect("cache lock")
    }

    pub fn enabled(&self) -> bool {
        self.state().settings.enabled
    }

    pub fn get(&self, key: &str) -> Option<V> {
        let mut state = self.state();
        if !state.settings.enabled {
            return None;
        }
        let ttl = state.settings.ttl;
        let fresh = state.entries.get(key).map(|e| e.stored.elapsed() < ttl);
        match fresh {
            Some(true) => {
                state.hits += 1;
                state.tick += 1;
                let tick = state.tick;
                let entry = state.entries.get_mut(key).expect("present");
                let previous = std::mem::replace(&mut entry.last_used, tick);
                let value = entry.value.clone();
                state.order.remove(&previous);
                state.order.insert(tick, key.to_string());
                Some(value)
            }
            Some(false) => {
                remove(&mut state, key);
                state.misses += 1;
                None
            }
            None => {
                state.misses += 1;
                None
            }
        }
    }

    /// Keep `value`, counted as `bytes`; one larger than the whole budget
    /// is not kept.
    pub fn put(&self, key: String, bytes: usize, labels: [String; 2], value: V) {
        let mut state = self.state();
        if !state.settings.enabled || bytes > state.settings.max_bytes {
            return;
        }
        remove(&mut state, &key);
        evict_over_budget(&mut state, bytes);
        state.tick += 1;
        let tick = state.tick;
        state.order.insert(tick, key.clone());
        state.bytes += bytes;
        let entry = Entry {
            value,
            bytes,
            stored: Instant::now(),
            labels,
            last_used: tick,
        };
        state.entries.insert(key, entry);
    }

    /// The figures, with the `recent` most recently used entries.
    pub fn report(&self, recent: usize) -> BudgetReport {
        let state = self.state();
        let lookups = state.hits + state.misses;
        let recent = state
            .order
            .values()
            .rev()
            .take(recent)
            .filter_map(|key| {
                let e = state.entries.get(key)?;
                Some(RecentEntry {
                    key: key.chars().take(16).collect(),
                    labels: e.labels.clone(),
                    bytes: e.bytes,
                    age_seconds: e.stored.elapsed().as_secs(),
                })
            })
            .collect();
        let figures = CacheFigures {
            enabled: state.settings.enabled,
            entries: state.entries.len(),
            bytes: state.bytes,
            max_bytes: state.settings.max_bytes,
            ttl_seconds: state.settings.ttl.as_secs(),
            hits: state.hits,
            misses: state.misses,
            evictions: state.evictions,
            hit_rate: (lookups > 0).then(|| state.hits as f64 / lookups as f64),
        };
        BudgetReport { figures, recent }
    }
}

/// Evict the least recently used until `incoming` more bytes fit the budget.
fn evict_over_budget<V>(state: &mut State<V>, incoming: usize) {
    while state.bytes + incoming > state.settings.max_bytes {
        let Some((_, oldest)) = state.order.pop_first() else {
            break;
        };
        if let Some(entry) = state.entries.remove(&oldest) {
            state.bytes -= entry.bytes;
            state.evictions += 1;
        }
    }
}

fn remove<V>(state: &mut State<V>, key: &str) {
    if let Some(entry) = state.entries.remove(key) {
        state.bytes -= entry.bytes;
        state.order.remove(&entry.last_used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cache(max_bytes: usize, ttl: Duration) -> InferenceCache {
        InferenceCache::new(CacheSettings {
            enabled: true,
            ttl,
            max_bytes,
        })
    }

    #[test]
    fn hits_misses_and_key_stability() {
        let cache = cache(1 << 20, Duration::from_secs(60));
        let key = cache_key(
            "text_generate",
            "m.gguf",
            &json!({"prompt": "hi", "seed": 1}),
        );
        assert_eq!(
            key,
            cache_key(
                "text_generate",
                "m.gguf",
                &json!({"seed": 1, "prompt": "hi"})
            )
        );
        assert_ne!(
            key,
            cache_key(
                "text_generate",
                "other.gguf",
                &json!({"prompt": "hi", "seed": 1})
            )
        );
        assert_eq!(cache.get(&key), None);
        cache.put(
            key.clone(),
            "text_generate",
            "m.gguf",
            json!({"text": "hello"}),
        );
        assert_eq!(cache.get(&key), Some(json!({"text": "hello"})));
        let report = cache.report();
        assert_eq!(
            (
                report.figures.hits,
                report.figures.misses,
                report.figures.entries
            ),
            (1, 1, 1)
        );
        assert_eq!(report.figures.hit_rate, Some(0.5));
    }

    #[test]
    fn least_recently_used_goes_first_when_full() {
        let value = json!({"text": "x".repeat(100)});
        let one = key_size("a", &value);
        let cache = cache(one * 2 + 1, Duration::from_secs(60));
        cache.put("a".repeat(64), "t", "m", value.clone());
        cache.put("b".repeat(64), "t", "m", value.clone());
        assert!(cache.get(&"a".repeat(64)).is_some()); // a is now the most recent
        cache.put("c".repeat(64), "t", "m", value.clone());
        assert!(cache.get(&"b".repeat(64)).is_none());
        assert!(cache.get(&"a".repeat(64)).is_some() && cache.get(&"c".repeat(64)).is_some());
        assert_eq!(cache.report().figures.evictions, 1);
        assert!(cache.report().figures.bytes <= one * 2 + 1);
    }

    fn key_size(_: &str, value: &Value) -> usize {
        64 + value.to_string().len()
    }

    #[test]
    fn reconfiguring_shrinks_the_budget_and_disabling_empties() {
        let value = json!({"text": "x".repeat(100)});
        let one = key_size("a", &value);
        let cache = cache(one * 3, Duration::from_secs(60));
        for k in ["a", "b", "c"] {
            cache.put(k.repeat(64), "t", "m", value.clone());
        }
        let settings = |enabled, max_bytes| CacheSettings {
            enabled,
            ttl: Duration::from_secs(5),
            max_bytes,
        };
        cache.reconfigure(settings(true, one));
        let report = cache.report();
        assert_eq!(
            (
                report.figures.entries,
                report.figures.max_bytes,
                report.figures.ttl_seconds
            ),
            (1, one, 5)
        );
        assert!(
            cache.get(&"c".repeat(64)).is_some(),
            "the most recent stays"
        );
        cache.reconfigure(settings(false, one));
        assert_eq!(cache.report().figures.entries, 0);
        cache.put("d".repeat(64), "t", "m", value);
        assert_eq!(cache.report().figures.entries, 0);
    }

    #[test]
    fn expired_entries_are_misses() {
        let cache = cache(1 << 20, Duration::from_millis(20));
        cache.put("k".repeat(64), "t", "m", json!(1));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(&"k".repeat(64)), None);
        assert_eq!(cache.report().figures.entries, 0);
    }

    #[test]
    fn disabled_stores_nothing() {
        let cache = InferenceCache::new(CacheSettings {
            enabled: false,
            ttl: Duration::from_secs(1),
            max_bytes: 1024,
        });
        cache.put("k".repeat(64), "t", "m", json!(1));
        assert_eq!(cache.get(&"k".repeat(64)), None);
        assert_eq!(cache.report().figures.misses, 0);
    }
}
