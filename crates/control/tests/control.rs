//! The control server driven through a real MCP client.

use std::sync::Arc;

use jetsonmind_control::ControlServer;
use jetsonmind_core::config::McpConfig;
use jetsonmind_core::rmcp::model::CallToolRequestParams;
use jetsonmind_core::{UnitServer, testing};
use serde_json::json;

#[tokio::test]
async fn control_tools_are_listed_and_answer_honestly() {
    let client = testing::connect(UnitServer::new(
        Arc::new(ControlServer::default()),
        McpConfig::default(),
    ))
    .await;
    let names = testing::tool_names(client.peer()).await;
    assert_eq!(
        names,
        [
            "manage_resources",
            "monitor_health",
            "optimize_system",
            "route_request",
            "scale_cluster"
        ]
    );

    let call = CallToolRequestParams::new("scale_cluster")
        .with_arguments(json!({"action": "status"}).as_object().unwrap().clone());
    let result = client.call_tool(call).await.unwrap();
    assert_eq!(result.is_error, Some(true));
    assert!(
        result.content[0]
            .as_text()
            .unwrap()
            .text
            .starts_with("not available on this node: scale_cluster")
    );

    let call = CallToolRequestParams::new("scale_cluster").with_arguments(
        json!({"action": "grow", "count": 99})
            .as_object()
            .unwrap()
            .clone(),
    );
    let result = client.call_tool(call).await.unwrap();
    let text = &result.content[0].as_text().unwrap().text;
    assert_eq!(result.is_error, Some(true));
    assert!(
        text.contains("/action") && text.contains("/count"),
        "{text}"
    );
}
