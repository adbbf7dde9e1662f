//! `[cache]`: the data server's caches, as the configuration sets them.

use jetsonmind_core::config::Section;
use serde::{Deserialize, Serialize};

/// The inference cache: answers of deterministic calls, reused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub enabled: bool,
    /// How long an answer is reused.
    pub ttl_secs: u64,
    /// Memory for cached answers; the least recently used go first.
    pub max_bytes: usize,
    /// Media as the engines take it (`jetson://data/cache`).
    pub inputs: InputCacheConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_secs: 3600,
            max_bytes: 16 * 1024 * 1024,
            inputs: InputCacheConfig::default(),
        }
    }
}

/// The input cache: pictures decoded and clips resampled, by the digest of
/// the bytes sent, so the same media sent again skips decoding.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InputCacheConfig {
    pub enabled: bool,
    /// How long a prepared input is kept.
    pub ttl_secs: u64,
    /// Memory for prepared inputs (a 12-megapixel picture takes 36 MB).
    pub max_bytes: usize,
}

impl Default for InputCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_secs: 600,
            max_bytes: 128 * 1024 * 1024,
        }
    }
}

impl Section for CacheConfig {
    const NAME: &'static str = "cache";
    const LIVE_KEYS: &'static [&'static str] = &["cache"];
}
