//! `[gateway]`: the gateway's section of the configuration.

use jetsonmind_core::config::{Section, is_backend_name, is_http_url};
use std::time::Duration;

use jetsonmind_control::config::ControlConfig;
use jetsonmind_control::fleet::FleetSettings;
use jetsonmind_core::{Config, CoreError};
pub use jetsonmind_web::UiConfig;
use serde::{Deserialize, Serialize};

/// How the gateway names things that two backends both offer.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PrefixMode {
    /// Prefix only the names that collide (both sides), keep the rest as they are.
    #[default]
    Collisions,
    /// Prefix every backend name: stable names whatever else is federated.
    Always,
    /// Never prefix; on a collision the first backend in config order wins.
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub prefix: PrefixMode,
    /// Put between backend name and tool name when prefixing: `node1_text_generate`.
    pub separator: String,
    /// How often backends are checked (a ping, and the status of compute replicas).
    pub health_interval_ms: u64,
    /// How long one health check may take before the backend counts as gone.
    pub health_timeout_ms: u64,
    /// A live backend's lists are fetched again when it says they changed
    /// (`list_changed`), when it reconnects, and at least this often.
    pub relist_interval_ms: u64,
    /// Remote MCP servers to federate (another gateway works too).
    pub backends: Vec<BackendConfig>,
    /// The web dashboard at `/ui`.
    pub ui: UiConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            prefix: PrefixMode::default(),
            separator: "_".into(),
            health_interval_ms: 2_000,
            health_timeout_ms: 2_000,
            relist_interval_ms: 30_000,
            backends: Vec::new(),
            ui: UiConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Short name, used as the prefix on collisions. Letters, digits, `-`.
    pub name: String,
    /// Streamable HTTP endpoint, e.g. `http://10.0.0.7:8080/mcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Instead of `url`: endpoints that offer the same thing (replicas, or
    /// node gateways of a cluster); each call goes to one, chosen and failed
    /// over as `[control]` says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// The environment variable holding the bearer token to send (never the
    /// token itself in a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

impl BackendConfig {
    /// Its endpoints: the one `url`, or the replicas.
    pub fn endpoints(&self) -> Vec<String> {
        match &self.url {
            Some(url) => vec![url.clone()],
            None => self.replicas.clone(),
        }
    }
}

impl GatewayConfig {
    /// How the gateway's fleets route: `control`'s policy, with this
    /// section's health checks.
    pub fn fleet_settings(&self, control: &ControlConfig) -> FleetSettings {
        FleetSettings::new(
            control,
            Duration::from_millis(self.health_timeout_ms),
            Duration::from_millis(self.relist_interval_ms),
        )
    }
}

impl Section for GatewayConfig {
    const NAME: &'static str = "gateway";
    // Where calls go, and each node federates its own.
    const TRUST_KEYS: &'static [&'static str] = &["gateway.backends"];
    const NODE_KEYS: &'static [&'static str] = &["gateway.backends"];

    fn validate(&self, _config: &Config) -> Result<(), CoreError> {
        let fail = |msg: String| Err(CoreError::Config(msg));
        if self.separator.is_empty() {
            return fail("gateway.separator must not be empty".into());
        }
        self.ui.validate()?;
        for backend in &self.backends {
            if !is_backend_name(&backend.name) {
                return fail(format!(
                    "gateway backend name `{}`: use letters, digits and `-` only",
                    backend.name
                ));
            }
            if backend.url.is_some() != backend.replicas.is_empty() {
                return fail(format!(
                    "gateway backend `{}`: give either `url` or `replicas`",
                    backend.name
                ));
            }
            if !backend.endpoints().iter().all(|url| is_http_url(url)) {
                return fail(format!(
                    "gateway backend `{}`: urls must start with http:// or https://",
                    backend.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use jetsonmind_core::config::Schema;

    use super::*;

    #[test]
    fn the_environment_and_the_file_set_it_and_backend_urls_are_checked() {
        let schema = Schema::new().with::<GatewayConfig>();
        let env = [("JETSONMIND_GATEWAY__PREFIX", "always")];
        let config = jetsonmind_testkit::config_with::<GatewayConfig>(&env).unwrap();
        assert_eq!(config.section::<GatewayConfig>().prefix, PrefixMode::Always);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[[gateway.backends]]\nname = \"n1\"\nurl = \"ftp://x\"\n",
        )
        .unwrap();
        let err = Config::load(&schema, Some(&file), []).unwrap_err();
        assert!(err.to_string().contains("n1"), "{err}");
        let env = [("JETSONMIND_GATEWAY__UI__SAMPLE_MS", "10")];
        let err = jetsonmind_testkit::config_with::<GatewayConfig>(&env).unwrap_err();
        assert!(err.to_string().contains("gateway.ui.sample_ms"), "{err}");
    }
}
