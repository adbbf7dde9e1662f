//! The data server driven through a real MCP client.

use std::sync::Arc;

use jetsonmind_core::config::McpConfig;
use jetsonmind_core::rmcp::model::{ReadResourceRequestParams, ResourceContents};
use jetsonmind_core::rmcp::service::RunningService;
use jetsonmind_core::rmcp::{RoleClient, ServiceError};
use jetsonmind_core::{Config, UnitServer, testing};
use jetsonmind_data::DataServer;
use serde_json::Value;

async fn client(data_dir: &std::path::Path) -> RunningService<RoleClient, ()> {
    let mut config = Config::default();
    config.data.dir = data_dir.to_path_buf();
    testing::connect(UnitServer::new(
        Arc::new(DataServer::new(
            config,
            Default::default(),
            Default::default(),
        )),
        McpConfig::default(),
    ))
    .await
}

async fn read_json(
    client: &RunningService<RoleClient, ()>,
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
async fn lists_the_five_resources_and_the_model_template() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(dir.path()).await;
    let uris = testing::resource_uris(client.peer()).await;
    assert_eq!(
        uris,
        [
            "jetson://cache/inference",
            "jetson://config/settings",
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
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    std::fs::write(dir.path().join("models/tiny.gguf"), vec![0u8; 1234]).unwrap();
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
        error.to_string().contains("no model named missing.gguf"),
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
