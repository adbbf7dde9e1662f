//! The compute server's `summarize` prompt and model-name completion,
//! through a real MCP client.

use std::sync::Arc;

use jetsonmind_compute::ComputeServer;
use jetsonmind_core::UnitServer;
use jetsonmind_core::config::McpConfig;
use jetsonmind_core::rmcp::RoleClient;
use jetsonmind_core::rmcp::model::{ContentBlock, GetPromptRequestParams};
use jetsonmind_core::rmcp::service::RunningService;
use jetsonmind_store::{ImportOptions, ModelStore};
use jetsonmind_testkit as testing;
use serde_json::json;

/// A compute server over a store holding tiny GGUF files named `models`.
async fn client_over(dir: &tempfile::TempDir, models: &[&str]) -> RunningService<RoleClient, ()> {
    let store = Arc::new(ModelStore::open(dir.path()).unwrap());
    for name in models {
        let path = dir.path().join(format!("{name}.source"));
        let mut header = b"GGUF".to_vec();
        header.extend(3u32.to_le_bytes());
        header.extend([0u8; 16]);
        std::fs::write(&path, header).unwrap();
        let options = ImportOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        store.import(&path, &options, |_, _| {}).unwrap();
    }
    let mut config = jetsonmind_core::Config::default();
    config.data.dir = dir.path().to_path_buf();
    let server = ComputeServer::new(&config, Default::default(), store);
    testing::connect(UnitServer::new(Arc::new(server), McpConfig::default())).await
}

fn summarize(arguments: serde_json::Value) -> GetPromptRequestParams {
    GetPromptRequestParams::new("summarize").with_arguments(arguments.as_object().unwrap().clone())
}

#[tokio::test]
async fn summarize_asks_for_text_generate_with_the_chosen_model() {
    let dir = tempfile::tempdir().unwrap();
    let client = client_over(&dir, &["tiny-chat.gguf"]).await;
    let prompts = client.list_all_prompts().await.unwrap();
    assert_eq!(prompts.len(), 1);
    assert_eq!(prompts[0].name, "summarize");
    let arguments = prompts[0].arguments.as_ref().unwrap();
    let required: Vec<_> = arguments
        .iter()
        .filter(|a| a.required == Some(true))
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(required, vec!["text"]);

    let text = "The Jetson Orin Nano has 8 GB of memory shared by CPU and GPU.";
    let prompt = client
        .get_prompt(summarize(
            json!({"text": text, "model": "tiny-chat.gguf", "max_words": "12"}),
        ))
        .await
        .unwrap();
    let ContentBlock::Text(message) = &prompt.messages[0].content else {
        panic!("expected a text message, got {:?}", prompt.messages[0]);
    };
    for part in [
        "`text_generate`",
        "\"model\": \"tiny-chat.gguf\"",
        "at most 12 words",
        text,
    ] {
        assert!(
            message.text.contains(part),
            "missing {part}: {}",
            message.text
        );
    }
}

#[tokio::test]
async fn summarize_refuses_what_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let client = client_over(&dir, &["tiny-chat.gguf"]).await;
    let cases = [
        (json!({}), "needs `text`"),
        (
            json!({"text": "x", "model": "missing.gguf"}),
            "it has: tiny-chat.gguf",
        ),
        (
            json!({"text": "x", "max_words": "many"}),
            "`max_words` must be",
        ),
    ];
    for (arguments, expected) in cases {
        let error = client.get_prompt(summarize(arguments)).await.unwrap_err();
        assert!(error.to_string().contains(expected), "{error}");
    }
}

#[tokio::test]
async fn the_model_argument_completes_to_store_models_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let client = client_over(&dir, &["tiny-chat.gguf", "tiny-code.gguf", "other.gguf"]).await;
    let tiny = client
        .complete_prompt_argument("summarize", "model", "tiny-c", None)
        .await
        .unwrap();
    assert_eq!(tiny.values, vec!["tiny-chat.gguf", "tiny-code.gguf"]);
    assert_eq!((tiny.total, tiny.has_more), (Some(2), Some(false)));
    let text = client
        .complete_prompt_simple("summarize", "text", "")
        .await
        .unwrap();
    assert!(text.is_empty(), "free text has no completions: {text:?}");
}
