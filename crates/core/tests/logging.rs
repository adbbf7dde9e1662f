//! MCP logging through a real client: `logging/setLevel`, then the events a
//! tool call emits arrive as `notifications/message` naming its request id.

#![allow(deprecated)] // rmcp marks MCP logging deprecated (SEP-2577); it is still served.

use jetsonmind_core::UnitServer;
use jetsonmind_core::config::McpConfig;
use jetsonmind_core::rmcp::model::{CallToolRequestParams, LoggingLevel, SetLevelRequestParams};
use jetsonmind_core::rmcp::service::RunningService;
use jetsonmind_core::rmcp::{RoleClient, ServiceExt};
use jetsonmind_core::serve::in_process;
use jetsonmind_testkit::{self as testing, LogListener, chatty, request_id_of};

async fn connect() -> (RunningService<RoleClient, LogListener>, LogListener) {
    let server = UnitServer::new(chatty(), McpConfig::default());
    let listener = LogListener::default();
    let client = listener.clone().serve(in_process(server)).await.unwrap();
    (client, listener)
}

// One thread: the subscriber set here sees every task of the test.
#[tokio::test(flavor = "current_thread")]
async fn a_calls_events_at_the_clients_level_reach_it_with_the_request_id() {
    let _logging = testing::log_to_clients();
    let (client, listener) = connect().await;
    assert!(client.peer_info().unwrap().capabilities.logging.is_some());
    testing::chat_warnings_reach(&client).await;

    client
        .set_level(SetLevelRequestParams::new(LoggingLevel::Debug))
        .await
        .unwrap();
    let second = client
        .call_tool(CallToolRequestParams::new("chat"))
        .await
        .unwrap();
    let messages = listener.wait_for(5).await;
    let debug = &messages[2];
    assert_eq!(debug.level, LoggingLevel::Debug);
    assert_eq!(debug.data["message"], "looking around");
    assert_eq!(debug.data["requestId"], request_id_of(&second).as_str());
    assert!(
        messages
            .iter()
            .all(|m| m.data["target"] == "jetsonmind_test")
    );
}
