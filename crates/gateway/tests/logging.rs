//! Log messages through the gateway: a backend served in this process logs
//! while it runs a call, and the gateway's client, which asked for warnings,
//! receives them with the call's request id.

#![allow(deprecated)] // rmcp marks MCP logging deprecated (SEP-2577); it is still served.

use std::sync::Arc;

use jetsonmind_control::config::ControlConfig;
use jetsonmind_control::fleet::Fleet;
use jetsonmind_core::UnitServer;
use jetsonmind_core::config::{Config, McpConfig};
use jetsonmind_core::rmcp::ServiceExt;
use jetsonmind_core::serve::in_process;
use jetsonmind_core::upstream::Connector;
use jetsonmind_gateway::Gateway;
use jetsonmind_gateway::config::GatewayConfig;
use jetsonmind_testkit::{self as testing, LogListener, chatty};

// One thread: the subscriber set here sees every task of the test.
#[tokio::test(flavor = "current_thread")]
async fn an_in_process_backends_events_reach_the_gateways_client() {
    let _logging = testing::log_to_clients();
    let backend = UnitServer::new(chatty(), McpConfig::default());
    let connector = Connector::InProcess(Arc::new(move || in_process(backend.clone())));
    let config = Config::default();
    let settings = config
        .section::<GatewayConfig>()
        .fleet_settings(config.section::<ControlConfig>());
    let fleet = Fleet::single("chatty", connector, settings.clone());
    let gateway = Gateway::new(GatewayConfig::default(), settings, vec![fleet]).unwrap();
    gateway.refresh().await;
    let listener = LogListener::default();
    let server = UnitServer::new(gateway, McpConfig::default());
    let client = listener.serve(in_process(server)).await.unwrap();
    testing::chat_warnings_reach(&client).await;
}
