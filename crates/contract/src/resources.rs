//! The data server's resources that other servers and the gateway's faces
//! read (the dashboard, `top`, the OpenAI model list): their URIs, written
//! once.

/// The model store (and, in a cluster, where each model is loaded).
pub const MODELS_AVAILABLE: &str = "jetson://models/available";
/// The node's telemetry: CPU, GPU, memory, temperatures, power.
pub const SYSTEM_METRICS: &str = "jetson://system/metrics";
/// The inference cache's entries and hit rates.
pub const CACHE_INFERENCE: &str = "jetson://cache/inference";
/// The cache of preprocessed inputs (decoded pictures, resampled audio).
pub const DATA_CACHE: &str = "jetson://data/cache";
/// Every setting, with where its value came from.
pub const CONFIG_SETTINGS: &str = "jetson://config/settings";
/// Per-tool and per-model calls, latencies and throughput.
pub const PERFORMANCE_ANALYTICS: &str = "jetson://performance/analytics";
