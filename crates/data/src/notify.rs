//! The data server's change notifier: resources that change all the time
//! (metrics, analytics, cache) are announced every `data.notify_interval_ms`
//! while someone watches them; the model list when the store changes (any
//! process may import); the settings when they are updated, which is also
//! when the inference cache takes its new settings.

use std::sync::Weak;
use std::time::Duration;

use jetsonmind_core::{Config, ResourceUpdates};

use crate::config::CacheConfig;
use crate::{
    CACHE_INFERENCE, CONFIG_SETTINGS, MODELS_AVAILABLE, NodeState, PERFORMANCE_ANALYTICS,
    SYSTEM_METRICS,
};

/// Announced each interval while watched: they change with every call or tick.
const PERIODIC: [&str; 3] = [SYSTEM_METRICS, PERFORMANCE_ANALYTICS, CACHE_INFERENCE];

/// Runs until the server that owns `updates` is dropped.
pub(crate) async fn run(updates: Weak<ResourceUpdates>, state: NodeState) {
    let mut settings = state.settings.follow();
    let mut interval = notify_interval(&settings.borrow());
    let mut generation = state.store.generation().ok();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {
                let Some(updates) = updates.upgrade() else { return };
                for uri in PERIODIC {
                    if updates.is_watched(uri) {
                        updates.publish(uri);
                    }
                }
                let now = state.store.generation().ok();
                if now != generation {
                    generation = now;
                    updates.publish(MODELS_AVAILABLE);
                }
            }
            changed = settings.changed() => {
                if changed.is_err() {
                    return;
                }
                let config = settings.borrow_and_update().clone();
                state.cache.reconfigure(config.section::<CacheConfig>().into());
                state.inputs.reconfigure((&config.section::<CacheConfig>().inputs).into());
                interval = notify_interval(&config);
                let Some(updates) = updates.upgrade() else { return };
                updates.publish(CONFIG_SETTINGS);
            }
        }
    }
}

fn notify_interval(config: &Config) -> Duration {
    Duration::from_millis(config.data.notify_interval_ms)
}
