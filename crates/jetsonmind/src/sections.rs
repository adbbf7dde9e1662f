//! The configuration `jetsonmind` reads: core's shared sections and each
//! server's own, which its crate defines.

use jetsonmind_compute::config::ComputeConfig;
use jetsonmind_control::config::{ControlConfig, HybridConfig};
use jetsonmind_core::config::Schema;
use jetsonmind_data::config::CacheConfig;
use jetsonmind_gateway::config::GatewayConfig;

/// Every server section this program runs with.
pub fn schema() -> Schema {
    Schema::new()
        .with::<GatewayConfig>()
        .with::<ComputeConfig>()
        .with::<CacheConfig>()
        .with::<ControlConfig>()
        .with::<HybridConfig>()
}

#[cfg(test)]
mod tests {
    use jetsonmind_core::Config;
    use jetsonmind_core::config::ConfigSources;
    use jetsonmind_data::settings::{Authority, Settings};
    use serde_json::json;

    use super::*;

    fn settings_in(dir: &std::path::Path) -> Settings {
        let sources = ConfigSources {
            data_dir: Some(dir.to_path_buf()),
            schema: schema(),
            ..Default::default()
        };
        let config = sources.load().unwrap();
        Settings::new(sources, config)
    }

    #[tokio::test]
    async fn only_an_admin_changes_what_the_servers_trust_and_engine_keys_apply_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings_in(dir.path());
        let before = settings.current();
        for attack in [
            json!({"gateway": {"backends": []}}),
            json!({"control": {"nvpmodel_set_command": ["sh", "-c", "id"]}}),
            json!({"control": {"jetson_clocks_restore_command": ["sh", "-c", "id"]}}),
            json!({"control": {"replicas": ["http://evil.example/mcp"]}}),
            json!({"compute": {"audio": {"tts_command": "sh"}}}),
            json!({"hybrid": {"cloud_call_cost": 0.0}}),
        ] {
            let patch = attack.as_object().unwrap();
            let err = settings
                .update(patch, false, Authority::Operator, None)
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("only the admin scope"),
                "{attack}: {err}"
            );
        }
        assert_eq!(settings.current(), before, "nothing changed");
        let tuning =
            json!({"compute": {"threads": 3, "context_size": 2048}, "cache": {"ttl_secs": 5}});
        let update = settings
            .update(tuning.as_object().unwrap(), true, Authority::Operator, None)
            .await
            .unwrap();
        assert_eq!(update.effective_now, ["cache.ttl_secs", "compute.threads"]);
        assert_eq!(update.after_restart, ["compute.context_size"]);
        let scope = settings.scope();
        for own in [
            "http",
            "compute.threads",
            "gateway.backends",
            "control.local_replica",
        ] {
            assert!(
                scope.node_keys.contains(&own),
                "{own}: {:?}",
                scope.node_keys
            );
        }
    }

    #[test]
    fn the_example_file_documents_the_defaults() {
        let example = include_str!("../../../jetsonmind.example.toml");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("example.toml");
        std::fs::write(&file, example).unwrap();
        let loaded = Config::load(&schema(), Some(&file), []).unwrap();
        let defaults = Config::load(&schema(), None, []).unwrap();
        assert_eq!(loaded, defaults);
    }
}
