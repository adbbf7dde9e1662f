//! `[gateway.ui]`: the dashboard's settings (the gateway serves it).

use jetsonmind_core::CoreError;
use serde::{Deserialize, Serialize};

/// `[gateway.ui]`: the web dashboard the gateway serves at `/ui` (HTTP only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    pub enabled: bool,
    /// A browser's sign-in lasts this long without a visit.
    pub session_ttl_secs: u64,
    /// Signed-in browsers at once; the longest idle is signed out for a new one.
    pub max_sessions: usize,
    /// How often the charts take a point (node figures and call rates).
    pub sample_ms: u64,
    /// How far back the charts reach.
    pub history_secs: u64,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_ttl_secs: 12 * 3600,
            max_sessions: 256,
            sample_ms: 5_000,
            history_secs: 3_600,
        }
    }
}

impl UiConfig {
    pub fn validate(&self) -> Result<(), CoreError> {
        let fail = |msg: &str| Err(CoreError::Config(format!("gateway.ui.{msg}")));
        if self.session_ttl_secs < 60 || self.max_sessions == 0 {
            return fail("session_ttl_secs must be at least 60 and max_sessions at least 1");
        }
        if self.sample_ms < 100 || self.history_secs.saturating_mul(1000) < self.sample_ms {
            return fail("sample_ms must be at least 100, and history_secs hold at least one");
        }
        Ok(())
    }
}
