//! The compute server driven through a real MCP client.

use std::sync::Arc;

use jetsonmind_compute::ComputeServer;
use jetsonmind_core::config::McpConfig;
use jetsonmind_core::rmcp::ServiceError;
use jetsonmind_core::rmcp::model::{CallToolRequestParams, ErrorCode};
use jetsonmind_core::{UnitServer, testing};
use serde_json::json;

fn args(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

/// A compute server over an empty model store of its own.
async fn client() -> (
    jetsonmind_core::rmcp::service::RunningService<jetsonmind_core::rmcp::RoleClient, ()>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = jetsonmind_data::store::ModelStore::open(dir.path()).unwrap();
    let mut config = jetsonmind_core::Config::default();
    config.data.dir = dir.path().to_path_buf();
    let client = testing::connect(UnitServer::new(
        Arc::new(ComputeServer::new(
            &config,
            Default::default(),
            Arc::new(store),
        )),
        McpConfig::default(),
    ))
    .await;
    (client, dir)
}

#[tokio::test]
async fn lists_every_inference_tool_with_a_schema() {
    let (client, _dir) = client().await;
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "audio_process",
            "code_complete",
            "embed",
            "image_analyze",
            "load_model",
            "multi_modal_inference",
            "text_generate",
            "unload_model"
        ]
    );
    // Inference may run twice (failover retries it); loading is not read-only.
    for tool in &tools {
        let annotations = tool.annotations.clone().unwrap_or_default();
        let inference = !tool.name.ends_with("_model");
        assert_eq!(
            annotations.read_only_hint == Some(true),
            inference,
            "{}",
            tool.name
        );
        assert_eq!(annotations.idempotent_hint, Some(true), "{}", tool.name);
    }
    let uris = testing::resource_uris(client.peer()).await;
    assert_eq!(uris, ["jetson://compute/status"]);
    let text = tools.iter().find(|t| t.name == "text_generate").unwrap();
    let properties = text.input_schema["properties"].as_object().unwrap();
    for key in [
        "prompt",
        "messages",
        "model",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
    ] {
        assert!(properties.contains_key(key), "text_generate lacks {key}");
    }
}

#[tokio::test]
async fn the_status_reports_capacity_memory_and_an_empty_residency() {
    let (client, _dir) = client().await;
    let read = client
        .read_resource(
            jetsonmind_core::rmcp::model::ReadResourceRequestParams::new("jetson://compute/status"),
        )
        .await
        .unwrap();
    let text = match &read.contents[0] {
        jetsonmind_core::rmcp::model::ResourceContents::TextResourceContents { text, .. } => {
            text.clone()
        }
        other => panic!("{other:?}"),
    };
    let report: jetsonmind_core::replica::ReplicaReport = serde_json::from_str(&text).unwrap();
    let config = jetsonmind_core::Config::default();
    assert_eq!(
        report.capacity,
        config.compute.parallel + config.compute.queue_depth
    );
    assert_eq!((report.running, report.waiting), (0, 0));
    assert!(report.loaded.is_empty() && report.model_bytes.is_empty());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(
        report.memory_budget_bytes,
        total_kib * 1024 / 5 * 4,
        "80% of the machine"
    );
    assert!(report.free_memory_bytes.unwrap() > 0);
    assert!(
        report
            .replica
            .ends_with(&format!(":{}", std::process::id()))
    );

    let unknown = client
        .call_tool(
            CallToolRequestParams::new("load_model").with_arguments(args(json!({"model": "nope"}))),
        )
        .await
        .unwrap();
    assert_eq!(unknown.is_error, Some(true));
    let text = unknown.content[0].as_text().unwrap().text.clone();
    assert!(text.contains("no model `nope`"), "{text}");
}

#[tokio::test]
async fn a_tool_without_its_engine_says_so() {
    let (client, _dir) = client().await;
    let result = client
        .call_tool(
            CallToolRequestParams::new("embed").with_arguments(args(json!({"texts": ["hello"]}))),
        )
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    let text = result.content[0].as_text().unwrap().text.clone();
    assert!(
        text.starts_with("not available on this node: embed"),
        "{text}"
    );
}

#[tokio::test]
async fn schema_violations_are_tool_errors_naming_the_field() {
    let (client, _dir) = client().await;
    let result = client
        .call_tool(
            CallToolRequestParams::new("text_generate")
                .with_arguments(args(json!({"prompt": "hi", "max_tokens": 0, "bogus": 1}))),
        )
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    let text = result.content[0].as_text().unwrap().text.clone();
    assert!(text.contains("/max_tokens"), "{text}");
    assert!(text.contains("bogus"), "{text}");
}

#[tokio::test]
async fn unknown_tools_are_protocol_errors() {
    let (client, _dir) = client().await;
    let error = client
        .call_tool(CallToolRequestParams::new("no_such_tool"))
        .await
        .unwrap_err();
    match error {
        ServiceError::McpError(e) => {
            assert_eq!(e.code, ErrorCode::INVALID_PARAMS);
            assert!(e.message.contains("no_such_tool"));
        }
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}
