//! MCP sessions between two nodes over a real nats-server: one Bus serves
//! a small MCP server, a second Bus (another NATS connection, as another
//! node would have) opens sessions to it through `sessions::connector`.

use crate::support;

use std::borrow::Cow;
use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use jetsonmind_cluster::Bus;
use jetsonmind_cluster::sessions::{self, NodeService};
use jetsonmind_core::config::ClusterConfig;
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ProtocolVersion,
    ServerCapabilities, ServerConfig, Tool,
};
use jetsonmind_core::rmcp::service::{RequestContext, RunningService};
use jetsonmind_core::rmcp::{
    ErrorData as McpError, RoleClient, RoleServer, ServerHandler, ServiceError, ServiceExt,
};
use jetsonmind_core::serve::in_process;
use jetsonmind_core::upstream::{Connector, OpenPipe};
use serde_json::{Value, json};
use support::{NatsServer, connect, node_config, within};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The name the serving node gives its server on the bus.
const SERVER: &str = "probe";
/// The serving node.
const NODE: &str = "a";

/// The far side, a plain rmcp server (the cluster carries any MCP server):
/// `echo` answers its text (`times` over), `tick` reports progress `count`
/// times before its result, `wait` runs until cancelled.
struct Probe {
    tools: Vec<Tool>,
    /// A `wait` call began.
    started: Notify,
    /// A `wait` call saw its cancellation token fire.
    cancelled: Notify,
}

fn tool(name: &'static str, schema: Value) -> Tool {
    let Value::Object(schema) = schema else {
        panic!("a schema is an object")
    };
    Tool::new(name, name, schema)
}

impl Probe {
    fn new() -> Arc<Self> {
        let tools = vec![
            tool(
                "echo",
                json!({"type": "object", "required": ["text"], "properties": {
                    "text": {"type": "string"}, "times": {"type": "integer", "minimum": 1}}}),
            ),
            tool(
                "tick",
                json!({"type": "object", "required": ["count"],
                       "properties": {"count": {"type": "integer"}}}),
            ),
            tool("wait", json!({"type": "object"})),
        ];
        Arc::new(Self {
            tools,
            started: Notify::new(),
            cancelled: Notify::new(),
        })
    }

    fn echo(&self, arguments: &JsonObject) -> CallToolResult {
        let text = arguments["text"].as_str().unwrap_or_default();
        let times = arguments["times"].as_u64().unwrap_or(1) as usize;
        CallToolResult::success(vec![ContentBlock::text(text.repeat(times))])
    }

    async fn tick(
        &self,
        arguments: &JsonObject,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let count = arguments["count"].as_u64().unwrap_or(0);
        if let Some(token) = context.meta.get_progress_token() {
            for i in 1..=count {
                let progress = ProgressNotificationParam::new(token.clone(), i as f64);
                let _ = context.peer.notify_progress(progress).await;
            }
        }
        CallToolResult::structured(json!({ "ticks": count }))
    }

    async fn wait(&self, context: &RequestContext<RoleServer>) -> CallToolResult {
        self.started.notify_one();
        context.ct.cancelled().await;
        self.cancelled.notify_one();
        CallToolResult::error(vec![ContentBlock::text("cancelled")])
    }
}

/// Serves each connection as its own session (what `in_process` needs).
#[derive(Clone)]
struct ProbeServer(Arc<Probe>);

impl ServerHandler for ProbeServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS)
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.0.tools.clone()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let arguments = request.arguments.unwrap_or_default();
        let result = match request.name.as_ref() {
            "echo" => self.0.echo(&arguments),
            "tick" => self.0.tick(&arguments, &context).await,
            "wait" => self.0.wait(&context).await,
            other => return Err(McpError::invalid_params(format!("no tool {other}"), None)),
        };
        Ok(CallToolResponse::Complete(result))
    }
}

/// A node that serves a [`Probe`] from a runtime of its own, so it can die
/// as a killed process does: its tasks stop at once, its connection drops.
struct ServingNode {
    runtime: Option<tokio::runtime::Runtime>,
    /// Kept so the node serves until it is killed.
    _service: NodeService,
}

impl ServingNode {
    async fn start(
        config: ClusterConfig,
        probe: &Arc<Probe>,
        shutdown: &CancellationToken,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the serving node's runtime");
        let (probe, shutdown) = (probe.clone(), shutdown.clone());
        let started = runtime.spawn(async move {
            let bus = connect(&config).await;
            serve(&bus, &probe, &shutdown).await
        });
        Self {
            _service: started.await.expect("the serving node starts"),
            runtime: Some(runtime),
        }
    }

    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for ServingNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two nodes on one nats-server: `serving` serves a [`Probe`] as
/// [`SERVER`], `calling` opens sessions to it.
struct Pair {
    server: NatsServer,
    serving: ServingNode,
    calling: Bus,
    probe: Arc<Probe>,
    /// The serving node's shutdown.
    shutdown: CancellationToken,
}

impl Pair {
    async fn start(server: NatsServer, tweak: impl Fn(&mut ClusterConfig)) -> Self {
        let config = |node: &str| {
            let mut config = node_config(&server, node);
            tweak(&mut config);
            config
        };
        let probe = Probe::new();
        let shutdown = CancellationToken::new();
        let serving = ServingNode::start(config(NODE), &probe, &shutdown).await;
        let calling = connect(&config("b")).await;
        Self {
            server,
            serving,
            calling,
            probe,
            shutdown,
        }
    }

    /// A new session to the probe, as the MCP client's byte pipe.
    fn open(&self) -> DuplexStream {
        open_session(&self.calling, NODE)
    }

    /// An MCP client in a new session; the handshake must succeed.
    async fn client(&self) -> RunningService<RoleClient, ()> {
        within("the MCP handshake over NATS", ().serve(self.open()))
            .await
            .expect("an MCP session to the serving node")
    }
}

async fn serve(bus: &Bus, probe: &Arc<Probe>, shutdown: &CancellationToken) -> NodeService {
    let server = ProbeServer(probe.clone());
    let open: OpenPipe = Arc::new(move || in_process(server.clone()));
    NodeService::start(bus, vec![(SERVER.into(), open)], shutdown.clone())
        .await
        .expect("serving the probe on the bus")
}

fn open_session(bus: &Bus, node: &str) -> DuplexStream {
    match sessions::connector(bus, node, SERVER) {
        Connector::Pipe { open, .. } => open(),
        _ => panic!("a cluster connector is a pipe"),
    }
}

fn call(name: &'static str, arguments: Value) -> CallToolRequestParams {
    let Value::Object(arguments) = arguments else {
        panic!("arguments are an object")
    };
    CallToolRequestParams::new(name).with_arguments(arguments)
}

fn text_of(result: &CallToolResult) -> &str {
    &result.content[0].as_text().expect("a text answer").text
}

async fn echo(
    client: &RunningService<RoleClient, ()>,
    text: &str,
    times: usize,
) -> Result<String, ServiceError> {
    let args = json!({ "text": text, "times": times });
    let result = within("an echo over NATS", client.call_tool(call("echo", args))).await?;
    Ok(text_of(&result).to_string())
}

/// The JSON-RPC error message of a failed call.
fn error_message(outcome: Result<String, ServiceError>) -> String {
    match outcome {
        Err(ServiceError::McpError(error)) => error.message.to_string(),
        other => panic!("expected a JSON-RPC error, got {other:?}"),
    }
}

/// An MCP client that reads the raw lines of its session, so the order
/// the serving node sent them in is what the test sees.
struct RawClient {
    lines: tokio::io::Lines<BufReader<ReadHalf<DuplexStream>>>,
    write: WriteHalf<DuplexStream>,
}

impl RawClient {
    async fn open(bus: &Bus) -> Self {
        let (read, write) = tokio::io::split(open_session(bus, NODE));
        let mut client = Self {
            lines: BufReader::new(read).lines(),
            write,
        };
        client
            .send(
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"}}}),
            )
            .await;
        let answer = client.next().await;
        assert!(answer["result"]["protocolVersion"].is_string(), "{answer}");
        client
            .send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        client
    }

    async fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.write
            .write_all(line.as_bytes())
            .await
            .expect("the session takes the message");
    }

    async fn next(&mut self) -> Value {
        let line = within("a message from the serving node", self.lines.next_line())
            .await
            .expect("reading the session")
            .expect("the session closed");
        serde_json::from_str(&line).expect("a JSON-RPC message")
    }
}

/// The session headers of the wire protocol (crates/cluster/src/wire.rs).
const SESSION: &str = "Jm-Session";
const REPLY_TO: &str = "Jm-Reply";
const ERROR: &str = "Jm-Error";

/// Send one session message by hand; what its receipt refuses it for.
async fn refusal_of(bus: &Bus, session: &str, message: Value) -> Option<String> {
    let mut headers = HeaderMap::new();
    headers.insert(SESSION, session);
    headers.insert(REPLY_TO, bus.client.new_inbox());
    let subject = bus.server_subject(NODE, SERVER);
    let payload = Bytes::from(message.to_string());
    let receipt = within(
        "a receipt",
        bus.client.request_with_headers(subject, headers, payload),
    )
    .await
    .expect("a receipt from the serving node");
    let headers = receipt.headers?;
    headers.get(ERROR).map(|v| v.as_str().to_string())
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_round_trips_between_two_nodes() {
    let pair = Pair::start(NatsServer::start(), |_| {}).await;
    let client = pair.client().await;
    let names = jetsonmind_testkit::tool_names(client.peer()).await;
    assert_eq!(names, ["echo", "tick", "wait"]);
    assert_eq!(echo(&client, "hello", 2).await.unwrap(), "hellohello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reaches_the_caller_in_order_before_the_result() {
    let pair = Pair::start(NatsServer::start(), |_| {}).await;
    let mut raw = RawClient::open(&pair.calling).await;
    raw.send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "tick", "arguments": {"count": 5}, "_meta": {"progressToken": "p"}}}),
    )
    .await;
    let mut progress = Vec::new();
    let result = loop {
        let message = raw.next().await;
        if message["id"] == 1 {
            break message;
        }
        if message["method"] == "notifications/progress" {
            assert_eq!(message["params"]["progressToken"], "p");
            progress.push(message["params"]["progress"].as_f64().unwrap());
        }
    };
    assert_eq!(progress, [1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(result["result"]["structuredContent"], json!({"ticks": 5}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_is_cancelled_on_the_serving_node() {
    let pair = Pair::start(NatsServer::start(), |_| {}).await;
    let client = pair.client().await;
    let pending = client.peer().call_tool_once(call("wait", json!({})));
    tokio::select! {
        outcome = pending => panic!("`wait` ended before it was cancelled: {outcome:?}"),
        _ = within("the tool starting", pair.probe.started.notified()) => {}
    }
    // Dropping the pending call sent notifications/cancelled over NATS.
    within(
        "the cancellation reaching the tool",
        pair.probe.cancelled.notified(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_max_payload_travels_in_parts() {
    let pair = Pair::start(NatsServer::with_max_payload(8192), |_| {}).await;
    assert_eq!(
        pair.calling.max_payload(),
        8192,
        "the server's limit applies"
    );
    let client = pair.client().await;
    let text: String = (0..20_000).map(|i| format!("{i},")).collect();
    assert!(text.len() > 100_000);
    // Out in parts (the call), back in parts (the answer).
    assert_eq!(echo(&client, &text, 1).await.unwrap(), text);
    assert_eq!(echo(&client, "small", 1).await.unwrap(), "small");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_message_bytes_is_refused_and_the_session_goes_on() {
    let limit = 16_384;
    let pair = Pair::start(NatsServer::with_max_payload(8192), |config| {
        config.max_message_bytes = limit
    })
    .await;
    let client = pair.client().await;
    let named = format!("cluster.max_message_bytes ({limit})");

    let call_too_large = echo(&client, &"x".repeat(limit + 1), 1).await;
    let message = error_message(call_too_large);
    assert!(message.contains(&named), "{message}");

    let answer_too_large = echo(&client, &"y".repeat(1000), 20).await;
    let message = error_message(answer_too_large);
    assert!(
        message.contains(&named) && message.contains("answer"),
        "{message}"
    );

    assert_eq!(echo(&client, "still here", 1).await.unwrap(), "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_to_a_node_nobody_serves_fails_at_once() {
    let pair = Pair::start(NatsServer::start(), |_| {}).await;
    let handshake = within(
        "a handshake with a node nobody serves",
        ().serve(open_session(&pair.calling, "nobody")),
    )
    .await;
    assert!(handshake.is_err(), "a session opened to nobody");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_when_their_serving_node_is_gone() {
    let mut pair = Pair::start(NatsServer::start(), |_| {}).await;
    let busy = pair.client().await;
    let idle = pair.client().await;
    assert_eq!(echo(&busy, "up", 1).await.unwrap(), "up");

    pair.serving.kill();

    let outcome = echo(&busy, "anyone?", 1).await;
    assert!(
        matches!(outcome, Err(ServiceError::TransportClosed)),
        "{outcome:?}"
    );
    // An idle session learns it from its probes.
    within("the idle session closing", idle.waiting())
        .await
        .expect("the session ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_max_sessions_are_refused_until_one_closes() {
    let pair = Pair::start(NatsServer::start(), |config| config.max_sessions = 1).await;
    let first = pair.client().await;

    let refused = refusal_of(&pair.calling, "second", initialize()).await;
    assert_eq!(
        refused.as_deref(),
        Some("this node serves cluster.max_sessions (1) sessions already")
    );
    let second = within("a refused handshake", ().serve(pair.open())).await;
    assert!(second.is_err(), "a session beyond max_sessions opened");

    first.cancel().await.expect("closing the first session");
    // The close reaches the serving node on its own time: try until then.
    let third = within("a session once the first closed", async {
        loop {
            match ().serve(pair.open()).await {
                Ok(client) => return client,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert_eq!(echo(&third, "in", 1).await.unwrap(), "in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_for_an_unknown_session_is_refused_and_its_client_reconnects() {
    let mut pair = Pair::start(NatsServer::start(), |_| {}).await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let refused = refusal_of(&pair.calling, "never-opened", list).await;
    assert_eq!(refused.as_deref(), Some("unknown session"));

    // The serving node restarts: its sessions are gone with it.
    let client = pair.client().await;
    assert_eq!(echo(&client, "before", 1).await.unwrap(), "before");
    pair.serving.kill();
    let restarted = connect(&node_config(&pair.server, NODE)).await;
    let _service = serve(&restarted, &pair.probe, &CancellationToken::new()).await;

    let outcome = echo(&client, "after", 1).await;
    assert!(
        matches!(outcome, Err(ServiceError::TransportClosed)),
        "{outcome:?}"
    );
    let again = pair.client().await;
    assert_eq!(echo(&again, "again", 1).await.unwrap(), "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_shuts_down_closes_its_sessions() {
    // No probe in the test's time: only the serving node can end the session.
    let pair = Pair::start(NatsServer::start(), |config| config.probe_ms = 600_000).await;
    let client = pair.client().await;
    assert_eq!(echo(&client, "up", 1).await.unwrap(), "up");

    pair.shutdown.cancel();
    within("the session closing with its node", client.waiting())
        .await
        .expect("the session ends");
}

/// How many requests each node's endpoint `endpoint` answered, by service
/// instance (one per node), as the NATS service API reports them (`$SRV.STATS`).
async fn requests_by_instance(
    bus: &Bus,
    endpoint: &str,
) -> std::collections::BTreeMap<String, u64> {
    use futures::StreamExt;
    let inbox = bus.client.new_inbox();
    let mut answers = bus.client.subscribe(inbox.clone()).await.unwrap();
    let subject = format!("$SRV.STATS.{}", sessions::SERVICE_NAME);
    bus.client
        .publish_with_reply(subject, inbox, Bytes::new())
        .await
        .unwrap();
    let mut counts = std::collections::BTreeMap::new();
    let gather = tokio::time::sleep(std::time::Duration::from_millis(500));
    tokio::pin!(gather);
    loop {
        tokio::select! {
            Some(answer) = answers.next() => {
                let stats: Value = serde_json::from_slice(&answer.payload).unwrap();
                let instance = stats["id"].as_str().unwrap().to_string();
                let served = stats["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["name"] == endpoint)
                    .map_or(0, |e| e["num_requests"].as_u64().unwrap());
                counts.insert(instance, served);
            }
            _ = &mut gather => return counts,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_for_any_node_spread_over_the_queue_group_and_stay_on_their_node() {
    let server = NatsServer::start();
    let probe = Probe::new();
    let shutdown = CancellationToken::new();
    let _a = ServingNode::start(node_config(&server, "a"), &probe, &shutdown).await;
    let _c = ServingNode::start(node_config(&server, "c"), &probe, &shutdown).await;
    let calling = connect(&node_config(&server, "b")).await;
    let open = match sessions::any_connector(&calling, SERVER) {
        Connector::Pipe { label, open } => {
            assert_eq!(label, "nats: any/probe");
            open
        }
        _ => panic!("a cluster connector is a pipe"),
    };
    // Each session's later messages must reach the node that opened it:
    // anywhere else they are refused as an unknown session.
    for i in 0..12 {
        let client = within("an MCP session to any node", ().serve(open()))
            .await
            .expect("a session through the queue group");
        for times in 1..=3 {
            let text = format!("s{i}");
            assert_eq!(
                echo(&client, &text, times).await.unwrap(),
                text.repeat(times)
            );
        }
    }
    let opened = requests_by_instance(&calling, "probe-any").await;
    assert_eq!(opened.len(), 2, "two nodes serve: {opened:?}");
    assert!(
        opened.values().all(|&n| n > 0),
        "the queue group used one node only: {opened:?}"
    );
}
