//! The data server driven through a real MCP client.

use std::sync::Arc;
use std::time::Duration;

use jetsonmind_core::config::McpConfig;
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, CallToolResult, ProtocolVersion, ReadResourceRequestParams,
    ResourceContents, ServerNotification, SubscribeRequestParams, SubscriptionFilter,
    UnsubscribeRequestParams,
};
use jetsonmind_core::rmcp::service::{ClientLifecycleMode, ClientServiceExt, RunningService};
use jetsonmind_core::rmcp::{RoleClient, ServiceError, ServiceExt};
use jetsonmind_core::serve::in_process;
use jetsonmind_core::{Config, UnitServer};
use jetsonmind_data::config::CacheConfig;
use jetsonmind_data::settings::Settings;
use jetsonmind_data::{DataServer, NodeState};
use jetsonmind_store::ModelStore;
use jetsonmind_testkit as testing;
use jetsonmind_testkit::UpdateListener;
use serde_json::{Value, json};

fn node(data_dir: &std::path::Path) -> NodeState {
    // The data server's own section, so that its settings can change it.
    let mut config = Config::default().with(CacheConfig::default());
    config.data.dir = data_dir.to_path_buf();
    config.data.notify_interval_ms = 100;
    NodeState {
        store: Arc::new(ModelStore::open(data_dir).unwrap()),
        settings: Arc::new(Settings::fixed(config)),
        cache: Default::default(),
        inputs: Default::default(),
        analytics: Default::default(),
    }
}

async fn client(data_dir: &std::path::Path) -> RunningService<RoleClient, ()> {
    testing::connect(UnitServer::new(
        Arc::new(DataServer::new(node(data_dir))),
        McpConfig::default(),
    ))
    .await
}

/// The smallest GGUF file: header, no tensors, no metadata.
fn tiny_gguf(path: &std::path::Path) {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend([0u8; 16]);
    bytes.resize(1234, 0);
    std::fs::write(path, bytes).unwrap();
}

async fn read_json(
    client: &jetsonmind_core::rmcp::service::Peer<RoleClient>,
    uri: &str,
) -> Result<Value, ServiceError> {
    let result = client
        .read_resource(ReadResourceRequestParams::new(uri))
        .await?;
    assert_eq!(result.ttl_ms, Some(McpConfig::default().read_ttl_ms));
    match &result.contents[0] {
        ResourceContents::TextResourceContents {
            text,
            mime_type,
            uri: got,
            ..
        } => {
            assert_eq!(got, uri);
            assert_eq!(mime_type.as_deref(), Some("application/json"));
            Ok(serde_json::from_str(text).unwrap())
        }
        other => panic!("expected JSON text, got {other:?}"),
    }
}

#[tokio::test]
async fn lists_the_six_resources_and_the_model_template() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(dir.path()).await;
    let uris = testing::resource_uris(client.peer()).await;
    assert_eq!(
        uris,
        [
            "jetson://cache/inference",
            "jetson://config/settings",
            "jetson://data/cache",
            "jetson://models/available",
            "jetson://performance/analytics",
            "jetson://system/metrics"
        ]
    );
    let templates = client.list_all_resource_templates().await.unwrap();
    assert_eq!(templates[0].uri_template, "jetson://models/{name}");
}

#[tokio::test]
async fn system_metrics_are_this_machines() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(dir.path()).await;
    let metrics = read_json(&client, "jetson://system/metrics").await.unwrap();
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert!(metrics["cpu"]["cores"].as_u64().unwrap() >= cores.min(1));
    assert!(metrics["memory"]["total_bytes"].as_u64().unwrap() > 1 << 20);
    assert!(metrics["memory"]["available_bytes"].as_u64().unwrap() > 0);
    assert!(metrics["uptime_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(metrics["load_average"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn models_and_settings_reflect_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("tiny.gguf");
    tiny_gguf(&source);
    ModelStore::open(dir.path())
        .unwrap()
        .import(&source, &Default::default(), |_, _| {})
        .unwrap();
    let client = client(dir.path()).await;
    let models = read_json(&client, "jetson://models/available")
        .await
        .unwrap();
    assert_eq!(models["models"][0]["name"], "tiny.gguf");
    assert_eq!(models["models"][0]["size_bytes"], 1234);
    let one = read_json(&client, "jetson://models/tiny.gguf")
        .await
        .unwrap();
    assert_eq!(one["format"], "gguf");
    let settings = read_json(&client, "jetson://config/settings")
        .await
        .unwrap();
    assert_eq!(settings["data"]["dir"], dir.path().to_str().unwrap());
    assert_eq!(settings["http"]["listen"], "127.0.0.1:8080");
}

#[tokio::test]
async fn unknown_resources_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(dir.path()).await;
    let error = read_json(&client, "jetson://nothing/here")
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("no resource at jetson://nothing/here"),
        "{error}"
    );
    let error = read_json(&client, "jetson://models/missing.gguf")
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("no model named `missing.gguf`"),
        "{error}"
    );
}

#[tokio::test]
async fn analytics_start_empty() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(dir.path()).await;
    let analytics = read_json(&client, "jetson://performance/analytics")
        .await
        .unwrap();
    assert_eq!(analytics["series"], serde_json::json!([]));
}

#[tokio::test]
async fn the_inference_cache_reports_its_counters() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(dir.path()).await;
    let cache = read_json(&client, "jetson://cache/inference")
        .await
        .unwrap();
    assert_eq!(cache["enabled"], true);
    assert_eq!(cache["entries"], 0);
    assert_eq!(cache["max_bytes"], 16 * 1024 * 1024);
    assert_eq!(cache["hit_rate"], Value::Null);
}

fn call(tool: &'static str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool).with_arguments(args.as_object().unwrap().clone())
}

fn tool_text(result: &CallToolResult) -> String {
    result.content[0].as_text().unwrap().text.clone()
}

#[tokio::test]
#[allow(deprecated)] // resources/subscribe: the handshake era this client speaks
async fn session_subscribers_hear_of_settings_and_metrics_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = UnitServer::new(
        Arc::new(DataServer::new(node(dir.path()))),
        McpConfig::default(),
    );
    let updates = UpdateListener::default();
    let client = updates.clone().serve(in_process(server)).await.unwrap();
    let capabilities = client.peer_info().unwrap().capabilities.clone();
    assert_eq!(capabilities.resources.unwrap().subscribe, Some(true));
    for uri in ["jetson://config/settings", "jetson://system/metrics"] {
        client
            .subscribe(SubscribeRequestParams::new(uri))
            .await
            .unwrap();
    }
    // Metrics change all the time: an update every notify interval (100 ms here).
    updates.wait_for("jetson://system/metrics", 3).await;
    assert_eq!(updates.count("jetson://config/settings"), 0);

    let result = client
        .call_tool(call(
            "update_settings",
            json!({"settings": {"cache": {"ttl_secs": 60}, "data": {"analytics_retention_secs": 7200}}}),
        ))
        .await
        .unwrap();
    assert_ne!(result.is_error, Some(true), "{}", tool_text(&result));
    let update = result.structured_content.unwrap();
    assert_eq!(update["effective_now"], json!(["cache.ttl_secs"]));
    assert_eq!(
        update["after_restart"],
        json!(["data.analytics_retention_secs"])
    );
    updates.wait_for("jetson://config/settings", 1).await;
    let settings = read_json(&client, "jetson://config/settings")
        .await
        .unwrap();
    assert_eq!(settings["cache"]["ttl_secs"], 60);
    // The inference cache follows at once.
    let cache = read_json(&client, "jetson://cache/inference")
        .await
        .unwrap();
    assert_eq!(cache["ttl_seconds"], 60);
    let saved = std::fs::read_to_string(dir.path().join("settings.toml")).unwrap();
    assert!(saved.contains("ttl_secs = 60"), "{saved}");

    // Unsubscribed: no more metrics updates.
    client
        .unsubscribe(UnsubscribeRequestParams::new("jetson://system/metrics"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after = updates.count("jetson://system/metrics");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(updates.count("jetson://system/metrics"), after);

    let refused = client
        .subscribe(SubscribeRequestParams::new("jetson://nothing"))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("cannot subscribe"),
        "{refused}"
    );
}

#[tokio::test]
async fn bad_settings_are_tool_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(dir.path()).await;
    for (settings, named) in [
        (json!({"cache": {"ttl_secs": "soon"}}), "cache.ttl_secs"),
        (json!({"http": {"max_body_bytes": 10}}), "max_body_bytes"),
        (json!({"cahce": {"enabled": false}}), "cahce"),
    ] {
        let result = client
            .call_tool(call("update_settings", json!({ "settings": settings })))
            .await
            .unwrap();
        assert_eq!(result.is_error, Some(true));
        assert!(tool_text(&result).contains(named), "{}", tool_text(&result));
    }
    assert!(!dir.path().join("settings.toml").exists());
}

#[tokio::test]
async fn listen_streams_updates_in_the_2026_era() {
    let dir = tempfile::tempdir().unwrap();
    let server = UnitServer::new(
        Arc::new(DataServer::new(node(dir.path()))),
        McpConfig::default(),
    );
    let lifecycle = ClientLifecycleMode::Discover {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
    };
    let client = ().serve_with_lifecycle(in_process(server), lifecycle).await.unwrap();
    let filter = SubscriptionFilter::builder()
        .resource_subscriptions(["jetson://config/settings", "jetson://not/a/resource"])
        .build();
    let mut subscription = client.peer().listen(filter).await.unwrap();
    assert_eq!(
        subscription.acknowledged().resource_subscriptions,
        Some(vec!["jetson://config/settings".to_string()])
    );
    let result = client
        .call_tool(call(
            "update_settings",
            json!({"settings": {"data": {"notify_interval_ms": 500}}}),
        ))
        .await
        .unwrap();
    assert_ne!(result.is_error, Some(true), "{}", tool_text(&result));
    let notification = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("an update within 10 s")
        .unwrap()
        .expect("the stream is open");
    match notification {
        ServerNotification::ResourceUpdatedNotification(n) => {
            assert_eq!(n.params.uri, "jetson://config/settings")
        }
        other => panic!("expected resources/updated, got {other:?}"),
    }
}

#[tokio::test]
async fn models_are_verified_and_removed_through_the_tool() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("tiny.gguf");
    tiny_gguf(&source);
    let store = ModelStore::open(dir.path()).unwrap();
    store
        .import(&source, &Default::default(), |_, _| {})
        .unwrap();
    let blob = store.main_file("tiny.gguf").unwrap();
    drop(store);
    let client = client(dir.path()).await;
    let verify = client
        .call_tool(call(
            "manage_models",
            json!({"action": "verify", "name": "tiny.gguf"}),
        ))
        .await
        .unwrap();
    assert_eq!(verify.structured_content.unwrap()["ok"], true);
    std::fs::write(&blob, b"GGUF changed").unwrap();
    let verify = client
        .call_tool(call(
            "manage_models",
            json!({"action": "verify", "name": "tiny.gguf"}),
        ))
        .await
        .unwrap();
    assert_eq!(verify.structured_content.unwrap()["ok"], false);
    let missing_name = client
        .call_tool(call("manage_models", json!({"action": "remove"})))
        .await
        .unwrap();
    assert!(tool_text(&missing_name).contains("`name` is required"));
    let removed = client
        .call_tool(call(
            "manage_models",
            json!({"action": "remove", "name": "tiny.gguf"}),
        ))
        .await
        .unwrap();
    assert_ne!(removed.is_error, Some(true), "{}", tool_text(&removed));
    let models = read_json(&client, "jetson://models/available")
        .await
        .unwrap();
    assert_eq!(models["models"], json!([]));
    let again = client
        .call_tool(call(
            "manage_models",
            json!({"action": "remove", "name": "tiny.gguf"}),
        ))
        .await
        .unwrap();
    assert_eq!(again.is_error, Some(true));
    assert!(
        tool_text(&again).contains("no model named"),
        "{}",
        tool_text(&again)
    );
}

/// On one device there is no cluster to publish to: a clear error, and
/// the models resource keeps its shape (no `cluster`).
#[tokio::test]
async fn publishing_without_a_cluster_says_so() {
    let dir = tempfile::tempdir().unwrap();
    import_tiny_models(dir.path(), &["tiny.gguf"]);
    let client = client(dir.path()).await;
    for action in ["publish", "unpublish"] {
        let refused = client
            .call_tool(call(
                "manage_models",
                json!({"action": action, "name": "tiny.gguf"}),
            ))
            .await
            .unwrap();
        assert_eq!(refused.is_error, Some(true));
        assert!(
            tool_text(&refused).contains("publishing needs a cluster"),
            "{}",
            tool_text(&refused)
        );
    }
    let models = read_json(&client, "jetson://models/available")
        .await
        .unwrap();
    let fields: Vec<&String> = models.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["models"]);
}

/// Import a tiny GGUF into the store at `dir` under each of `names`.
fn import_tiny_models(dir: &std::path::Path, names: &[&str]) {
    let store = ModelStore::open(dir).unwrap();
    for name in names {
        let source = dir.join(format!("{name}.source"));
        tiny_gguf(&source);
        let options = jetsonmind_store::ImportOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        store.import(&source, &options, |_, _| {}).unwrap();
    }
}

#[tokio::test]
async fn the_health_prompt_embeds_the_current_metrics() {
    use jetsonmind_core::rmcp::model::{ContentBlock, GetPromptRequestParams};
    let dir = tempfile::tempdir().unwrap();
    let client = client(dir.path()).await;
    let prompts = client.list_all_prompts().await.unwrap();
    let names: Vec<_> = prompts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["explain_device_health"]);

    let prompt = client
        .get_prompt(GetPromptRequestParams::new("explain_device_health"))
        .await
        .unwrap();
    let ContentBlock::Resource(embedded) = &prompt.messages[0].content else {
        panic!(
            "expected the metrics embedded first, got {:?}",
            prompt.messages[0]
        );
    };
    let ResourceContents::TextResourceContents { uri, text, .. } = &embedded.resource else {
        panic!("expected JSON text, got {:?}", embedded.resource);
    };
    assert_eq!(uri, "jetson://system/metrics");
    let metrics: Value = serde_json::from_str(text).unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let mem_total_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert_eq!(metrics["memory"]["total_bytes"], mem_total_kb * 1024);
    let ContentBlock::Text(question) = &prompt.messages[1].content else {
        panic!("expected the question second");
    };
    assert!(question.text.contains("temperatures"), "{}", question.text);

    let unknown = client
        .get_prompt(GetPromptRequestParams::new("no_such_prompt"))
        .await
        .unwrap_err();
    assert!(unknown.to_string().contains("unknown prompt"), "{unknown}");
}

#[tokio::test]
async fn model_names_complete_the_model_template_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    import_tiny_models(dir.path(), &["llama-a.gguf", "llama-b.gguf", "qwen.gguf"]);
    let client = client(dir.path()).await;
    let info = client.peer_info().unwrap();
    assert!(info.capabilities.completions.is_some());
    let llamas = client
        .complete_resource_argument("jetson://models/{name}", "name", "llama", None)
        .await
        .unwrap();
    assert_eq!(llamas.values, vec!["llama-a.gguf", "llama-b.gguf"]);
    assert_eq!(llamas.has_more, Some(false));
    let all = client
        .complete_resource_simple("jetson://models/{name}", "name", "")
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let unknown = client
        .complete_resource_simple("jetson://nothing/{x}", "x", "")
        .await
        .unwrap_err();
    assert!(
        unknown.to_string().contains("jetson://nothing/{x}"),
        "{unknown}"
    );
}
