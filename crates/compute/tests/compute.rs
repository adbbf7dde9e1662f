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
            "multi_modal_inference",
            "text_generate"
        ]
    );
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
