//! The control plane over fake compute replicas (real MCP servers, in
//! process and over HTTP): routing decisions, failover of a call whose
//! replica dies mid-call, queueing and shedding at the utilization ceiling,
//! model placement, power modes and scaling, through a real rmcp client.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetsonmind_contract::replica::{LoadedModel, REPLICA_STATUS_URI, ReplicaReport};
use jetsonmind_contract::route;
use jetsonmind_control::ControlServer;
use jetsonmind_control::config::ControlConfig;
use jetsonmind_control::fleet::{Fleet, FleetSettings, Origin};
use jetsonmind_control::power::Power;
use jetsonmind_core::auth::{AccessLevel, FORBIDDEN, Principal, Scopes, delegate};
use jetsonmind_core::config::{Config, McpConfig};
use jetsonmind_core::content::{json_resource, json_tool_result};
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{CallToolRequestParams, CallToolResult, ToolAnnotations};
use jetsonmind_core::serve::in_process;
use jetsonmind_core::upstream::{Connector, Upstream};
use jetsonmind_core::{ToolCall, UnitServer, tool_error, tool_from};
use jetsonmind_testkit::fake_root::{jetson_board, thermal_zone};
use jetsonmind_testkit::{self as testing, FakeUnit, HttpUnit};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A caller with every right: this machine's user.
fn local() -> &'static Principal {
    static LOCAL: std::sync::LazyLock<Principal> = std::sync::LazyLock::new(Principal::local);
    &LOCAL
}

#[derive(schemars::JsonSchema, serde::Deserialize)]
#[allow(dead_code)]
struct WorkArgs {
    text: String,
    delay_ms: Option<u64>,
    model: Option<String>,
}

#[derive(schemars::JsonSchema, serde::Deserialize)]
#[allow(dead_code)]
struct ModelArgs {
    model: String,
    keep_alive_secs: Option<u64>,
}

/// A compute replica as the control plane sees one: an idempotent `echo`,
/// a non-idempotent `write`, model loading, and a status resource.
struct FakeReplica {
    name: &'static str,
    report: Mutex<ReplicaReport>,
    calls: AtomicUsize,
    /// Answers every call "busy", as compute does with its queue full.
    busy: std::sync::atomic::AtomicBool,
}

impl FakeReplica {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            report: Mutex::new(ReplicaReport {
                replica: name.into(),
                default_model: "small.gguf".into(),
                capacity: 10,
                loadable_bytes: 1 << 30,
                ..ReplicaReport::default()
            }),
            calls: AtomicUsize::new(0),
            busy: Default::default(),
        })
    }

    fn holding(self: Arc<Self>, model: &str) -> Arc<Self> {
        self.report.lock().unwrap().loaded.push(LoadedModel {
            name: model.into(),
            bytes: 100 << 20,
            ..LoadedModel::default()
        });
        self
    }

    /// This replica as an MCP server offers it.
    fn unit(self: &Arc<Self>) -> Arc<FakeUnit> {
        let idempotent = ToolAnnotations::new().read_only(true).idempotent(true);
        let (answering, reporting) = (self.clone(), self.clone());
        FakeUnit::named("fake-compute")
            .tool(tool_from::<WorkArgs>("echo", "answers with its text").annotate(idempotent))
            .tool_of::<WorkArgs>("write", "changes something")
            .tool(AccessLevel::Admin.mark(tool_from::<ModelArgs>("load_model", "load")))
            .tool(AccessLevel::Admin.mark(tool_from::<ModelArgs>("unload_model", "unload")))
            .resource(REPLICA_STATUS_URI, "status")
            .answers(move |call| {
                let replica = answering.clone();
                async move { replica.answer(call).await }
            })
            .reads(move |uri| json_resource(uri, &*reporting.report.lock().unwrap()))
            .build()
    }

    async fn answer(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.busy.load(Ordering::SeqCst) {
            let mut refused = tool_error("busy: 1 generations running and 1 waiting");
            jetsonmind_contract::replica::mark_busy(&mut refused);
            return Ok(refused);
        }
        let delay = call.arguments.get("delay_ms").and_then(Value::as_u64);
        tokio::time::sleep(Duration::from_millis(delay.unwrap_or(0))).await;
        let model = call.arguments.get("model").and_then(Value::as_str);
        if call.name == "load_model" {
            let model = model.unwrap().to_string();
            self.report.lock().unwrap().loaded.push(LoadedModel {
                name: model.clone(),
                ..LoadedModel::default()
            });
            return Ok(json_tool_result(
                &json!({ "model": model, "loaded_by": self.name }),
            ));
        }
        if call.name == "unload_model" {
            let model = model.unwrap();
            self.report
                .lock()
                .unwrap()
                .loaded
                .retain(|m| m.name != model);
            return Ok(json_tool_result(
                &json!({ "model": model, "unloaded_by": self.name }),
            ));
        }
        let text = call.arguments["text"].as_str().unwrap_or_default();
        Ok(json_tool_result(&json!({ "text": text, "by": self.name })))
    }
}

fn settings(tune: impl FnOnce(&mut Config)) -> FleetSettings {
    let mut config = Config::default();
    config.section_mut::<ControlConfig>().strategy =
        jetsonmind_control::config::Strategy::LeastOutstanding;
    tune(&mut config);
    FleetSettings::new(
        config.section::<ControlConfig>(),
        Duration::from_secs(2),
        Duration::from_secs(30),
    )
}

fn in_process_replica(fleet: &Fleet, replica: &Arc<FakeReplica>) {
    let server = UnitServer::new(replica.unit(), McpConfig::default());
    let connector = Connector::InProcess(Arc::new(move || in_process(server.clone())));
    fleet.add(Upstream::new(replica.name, connector), Origin::Configured);
}

fn call(tool: &str, arguments: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(tool.to_string())
        .with_arguments(arguments.as_object().unwrap().clone())
}

fn structured(result: &CallToolResult) -> Value {
    assert_ne!(result.is_error, Some(true), "{result:?}");
    result.structured_content.clone().unwrap()
}

async fn control_client(
    fleet: Arc<Fleet>,
    config: &Config,
) -> jetsonmind_core::rmcp::service::RunningService<jetsonmind_core::rmcp::RoleClient, ()> {
    let control = ControlServer::new(fleet, config, None);
    testing::connect(UnitServer::new(Arc::new(control), McpConfig::default())).await
}

#[tokio::test]
async fn route_request_prefers_the_replica_holding_the_model_and_says_why() {
    let fleet = Arc::new(Fleet::new(
        "compute",
        settings(|c| {
            c.section_mut::<ControlConfig>().strategy =
                jetsonmind_control::config::Strategy::Affinity;
        }),
    ));
    let a = FakeReplica::new("a");
    let b = FakeReplica::new("b").holding("big.gguf");
    for replica in [&a, &b] {
        in_process_replica(&fleet, replica);
    }
    fleet.check().await;
    let mut config = Config::default();
    config.section_mut::<ControlConfig>().strategy = jetsonmind_control::config::Strategy::Affinity;
    let client = control_client(fleet.clone(), &config).await;

    let shown = client
        .call_tool(call(
            "route_request",
            json!({"tool": "echo", "arguments": {"text": "hi", "model": "big"}}),
        ))
        .await
        .unwrap();
    let decision = &structured(&shown)["decision"];
    assert_eq!(decision["order"], json!(["b", "a"]), "{decision}");
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .contains("model loaded"),
        "{decision}"
    );
    assert_eq!(b.calls.load(Ordering::SeqCst), 0, "a dry run calls nothing");

    let forwarded = client
        .call_tool(call(
            "route_request",
            json!({"tool": "echo", "arguments": {"text": "hi", "model": "big"}, "dry_run": false}),
        ))
        .await
        .unwrap();
    assert_eq!(
        structured(&forwarded)["result"]["structuredContent"]["by"],
        "b"
    );

    let health = client
        .call_tool(call("monitor_health", json!({})))
        .await
        .unwrap();
    let health = structured(&health);
    assert_eq!(health["healthy"], 2);
    assert_eq!(
        health["replicas"][1]["report"]["loaded"][0]["name"],
        "big.gguf"
    );
    assert_eq!(health["replicas"][1]["served"], 1);
}

#[tokio::test]
async fn a_replica_that_dies_mid_call_is_failed_over_for_idempotent_tools_only() {
    let a = FakeReplica::new("a");
    let b = FakeReplica::new("b");
    let server_a = HttpUnit::start(a.unit()).await;
    let server_b = HttpUnit::start(b.unit()).await;
    let fleet = Fleet::new("compute", settings(|_| {}));
    for (name, server) in [("a", &server_a), ("b", &server_b)] {
        fleet.add(
            Upstream::new(name, Connector::http(&server.url)),
            Origin::Configured,
        );
    }
    fleet.check().await;
    let never = CancellationToken::new();
    let replicas = [("a", &a, &server_a), ("b", &b, &server_b)];
    let chosen_now = |tool: &str| {
        let decision = fleet.decide(
            tool,
            &Default::default(),
            None,
            &BTreeSet::new(),
            &Default::default(),
        );
        decision.chosen().unwrap().to_string()
    };

    // The replica routing picks dies while working on the call.
    let first = chosen_now("echo");
    let (_, victim, victim_server) = replicas.iter().find(|(n, ..)| *n == first).unwrap();
    let (survivor, ..) = replicas.iter().find(|(n, ..)| *n != first).unwrap();
    let killer = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        victim_server.kill();
    };
    let work = fleet.call_tool(
        call("echo", json!({"text": "survive", "delay_ms": 1000})),
        local(),
        None,
        None,
        &never,
    );
    let (result, ()) = tokio::join!(work, killer);
    let result = result.unwrap();
    assert_eq!(structured(&result)["by"], *survivor);
    let hops = route::hops(result.meta.as_ref().unwrap());
    assert_eq!(hops.len(), 1, "one hop: {hops:?}");
    assert_eq!(hops[0].attempts, 2, "{hops:?}");
    assert_eq!(
        victim.calls.load(Ordering::SeqCst),
        1,
        "it had started there"
    );

    // A call that is not idempotent is not run twice.
    let (_, survivor_replica, survivor_server) =
        replicas.iter().find(|(n, ..)| n == survivor).unwrap();
    let c = FakeReplica::new("c");
    let server_c = HttpUnit::start(c.unit()).await;
    let fleet = Fleet::new("compute", settings(|_| {}));
    fleet.add(
        Upstream::new("live", Connector::http(&survivor_server.url)),
        Origin::Configured,
    );
    fleet.add(
        Upstream::new("c", Connector::http(&server_c.url)),
        Origin::Configured,
    );
    fleet.check().await;
    let decision = fleet.decide(
        "write",
        &Default::default(),
        None,
        &BTreeSet::new(),
        &Default::default(),
    );
    let (doomed, spared) = match decision.chosen() {
        Some("c") => (&server_c, (*survivor_replica).clone()),
        _ => (*survivor_server, c.clone()),
    };
    let killer = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        doomed.kill();
    };
    let work = fleet.call_tool(
        call("write", json!({"text": "once", "delay_ms": 1000})),
        local(),
        None,
        None,
        &never,
    );
    let spared_before = spared.calls.load(Ordering::SeqCst);
    let (result, ()) = tokio::join!(work, killer);
    let result = result.unwrap();
    assert_eq!(result.is_error, Some(true));
    let text = &result.content[0].as_text().unwrap().text;
    assert!(text.contains("not marked idempotent"), "{text}");
    assert_eq!(spared.calls.load(Ordering::SeqCst), spared_before);

    // The dead replica is out of rotation; calls go to the live one.
    let result = fleet
        .call_tool(
            call("write", json!({"text": "next"})),
            local(),
            None,
            None,
            &never,
        )
        .await
        .unwrap();
    assert_eq!(structured(&result)["by"], spared.name);
    let dead = fleet
        .health()
        .into_iter()
        .find(|r| r.connection.endpoint == doomed.url)
        .unwrap();
    assert!(!dead.connection.up);
    assert_eq!(dead.failed, 1);
}

#[tokio::test]
async fn at_the_utilization_ceiling_calls_wait_then_are_shed() {
    let replica = FakeReplica::new("only");
    // Capacity 2 at a ceiling of 80%: one call at a time.
    replica.report.lock().unwrap().capacity = 2;
    let fleet = Arc::new(Fleet::new(
        "compute",
        settings(|c| {
            c.section_mut::<ControlConfig>().queue_timeout_ms = 300;
        }),
    ));
    in_process_replica(&fleet, &replica);
    fleet.check().await;
    let never = CancellationToken::new();

    let busy = fleet.call_tool(
        call("echo", json!({"text": "first", "delay_ms": 150})),
        local(),
        None,
        None,
        &never,
    );
    let queued = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        fleet
            .call_tool(
                call("echo", json!({"text": "second"})),
                local(),
                None,
                None,
                &never,
            )
            .await
    };
    let (first, second) = tokio::join!(busy, queued);
    assert_eq!(structured(&first.unwrap())["text"], "first");
    assert_eq!(
        structured(&second.unwrap())["text"],
        "second",
        "it waited its turn"
    );

    let long = fleet.call_tool(
        call("echo", json!({"text": "long", "delay_ms": 1000})),
        local(),
        None,
        None,
        &never,
    );
    let shed = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        fleet
            .call_tool(
                call("echo", json!({"text": "too many"})),
                local(),
                None,
                None,
                &never,
            )
            .await
    };
    let (long, shed) = tokio::join!(long, shed);
    assert_eq!(structured(&long.unwrap())["text"], "long");
    let shed = shed.unwrap();
    assert_eq!(shed.is_error, Some(true));
    let text = &shed.content[0].as_text().unwrap().text;
    assert!(
        text.starts_with("overloaded") && text.contains("80%"),
        "{text}"
    );
    let decision = fleet.decide(
        "echo",
        &Default::default(),
        None,
        &BTreeSet::new(),
        &Default::default(),
    );
    assert!(
        decision.blocked.is_none(),
        "room again once the long call ended"
    );
}

#[tokio::test]
async fn manage_resources_loads_where_routing_would_and_unloads_where_loaded() {
    let fleet = Arc::new(Fleet::new("compute", settings(|_| {})));
    let a = FakeReplica::new("a");
    let b = FakeReplica::new("b");
    a.report.lock().unwrap().running = 3;
    for replica in [&a, &b] {
        in_process_replica(&fleet, replica);
    }
    fleet.check().await;
    let client = control_client(fleet.clone(), &Config::default()).await;

    let loaded = client
        .call_tool(call(
            "manage_resources",
            json!({"action": "load", "model": "coder.gguf", "keep_alive_secs": 60}),
        ))
        .await
        .unwrap();
    let loaded = structured(&loaded);
    assert_eq!(loaded["results"][0]["replica"], "b", "the idle replica");
    assert_eq!(loaded["results"][0]["outcome"]["loaded_by"], "b");

    fleet.check().await;
    let listed = client
        .call_tool(call("manage_resources", json!({"action": "list"})))
        .await
        .unwrap();
    assert_eq!(
        structured(&listed)["replicas"][1]["loaded"][0]["name"],
        "coder.gguf"
    );

    let unloaded = client
        .call_tool(call(
            "manage_resources",
            json!({"action": "unload", "model": "coder.gguf"}),
        ))
        .await
        .unwrap();
    assert_eq!(structured(&unloaded)["results"][0]["replica"], "b");

    fleet.check().await;
    let again = client
        .call_tool(call(
            "manage_resources",
            json!({"action": "unload", "model": "coder.gguf"}),
        ))
        .await
        .unwrap();
    assert_eq!(again.is_error, Some(true));
    let missing = client
        .call_tool(call("manage_resources", json!({"action": "load"})))
        .await
        .unwrap();
    assert!(
        missing.content[0]
            .as_text()
            .unwrap()
            .text
            .contains("`model` is required")
    );
}

#[tokio::test]
async fn power_modes_are_reported_and_changed_only_on_a_jetson_and_when_allowed() {
    let fleet = Arc::new(Fleet::new("compute", settings(|_| {})));
    let mut config = Config::default();
    config.section_mut::<ControlConfig>().nvpmodel_query_command =
        vec!["echo".into(), "NV Power Mode: MAXN".into()];
    config.section_mut::<ControlConfig>().nvpmodel_set_command =
        vec!["echo".into(), "set".into(), "{mode}".into()];
    let call_power = |client: &jetsonmind_core::rmcp::service::RunningService<_, ()>,
                      args: Value| {
        let request = call("optimize_system", args);
        let peer = client.peer().clone();
        async move { peer.call_tool(request).await.unwrap() }
    };

    let not_jetson = tempfile::tempdir().unwrap();
    let control = ControlServer::new(fleet.clone(), &config, None).with_power(Power::new(
        not_jetson.path(),
        config.section::<ControlConfig>(),
    ));
    let client = testing::connect(UnitServer::new(Arc::new(control), McpConfig::default())).await;
    let result = call_power(&client, json!({"action": "report"})).await;
    assert_eq!(result.is_error, Some(true));
    assert!(
        result.content[0]
            .as_text()
            .unwrap()
            .text
            .starts_with("not supported here"),
        "{result:?}"
    );

    let jetson = tempfile::tempdir().unwrap();
    jetson_board(jetson.path(), "NVIDIA Jetson Orin Nano Developer Kit");
    let control = ControlServer::new(fleet.clone(), &config, None)
        .with_power(Power::new(jetson.path(), config.section::<ControlConfig>()));
    let client = testing::connect(UnitServer::new(Arc::new(control), McpConfig::default())).await;
    let report = call_power(&client, json!({"action": "report"})).await;
    let report = structured(&report);
    assert!(report["board"].as_str().unwrap().contains("Orin Nano"));
    assert!(
        report["nvpmodel"]["Ok"]["output"]
            .as_str()
            .unwrap()
            .contains("MAXN"),
        "{report}"
    );
    let refused = call_power(&client, json!({"action": "set_power_mode", "mode": 2})).await;
    assert!(
        refused.content[0]
            .as_text()
            .unwrap()
            .text
            .contains("allow_power_changes"),
        "{refused:?}"
    );

    config.section_mut::<ControlConfig>().allow_power_changes = true;
    let control = ControlServer::new(fleet, &config, None)
        .with_power(Power::new(jetson.path(), config.section::<ControlConfig>()));
    let client = testing::connect(UnitServer::new(Arc::new(control), McpConfig::default())).await;
    let set = call_power(&client, json!({"action": "set_power_mode", "mode": 2})).await;
    assert_eq!(structured(&set)["ran"]["output"], "set 2\n");
}

#[tokio::test]
async fn scaling_needs_a_launcher_and_reports_what_it_has() {
    let fleet = Arc::new(Fleet::new("compute", settings(|_| {})));
    in_process_replica(&fleet, &FakeReplica::new("a"));
    fleet.check().await;
    let client = control_client(fleet, &Config::default()).await;
    let status = client
        .call_tool(call("scale_cluster", json!({"action": "status"})))
        .await
        .unwrap();
    let status = structured(&status);
    assert_eq!(status["replicas"][0]["name"], "a");
    assert_eq!(status["can_start_replicas"], false);
    let add = client
        .call_tool(call("scale_cluster", json!({"action": "add"})))
        .await
        .unwrap();
    assert_eq!(add.is_error, Some(true));
    let remove = client
        .call_tool(call(
            "scale_cluster",
            json!({"action": "remove", "replica": "a"}),
        ))
        .await
        .unwrap();
    assert!(
        remove.content[0]
            .as_text()
            .unwrap()
            .text
            .contains("not started by scale_cluster")
    );
    let bad = client
        .call_tool(call(
            "scale_cluster",
            json!({"action": "grow", "count": 99}),
        ))
        .await
        .unwrap();
    let text = &bad.content[0].as_text().unwrap().text;
    assert!(
        text.contains("/action") && text.contains("/count"),
        "{text}"
    );
}

fn key(scopes: &[&str]) -> Principal {
    Principal::api_key("test", "test", Scopes::new(scopes.iter().copied()))
}

/// Review item 1: a call dispatched for a caller is authorized as that
/// caller on the tool as the replica declares it, and the replica checks
/// the forwarded caller again.
#[tokio::test]
async fn dispatch_authorizes_the_caller_and_the_replica_checks_again() {
    let fleet = Fleet::new("compute", settings(|_| {}));
    let replica = FakeReplica::new("a");
    in_process_replica(&fleet, &replica);
    fleet.check().await;
    let never = CancellationToken::new();
    let star = key(&["tools:*"]);

    let load = call("load_model", json!({"model": "big.gguf"}));
    let refused = fleet
        .call_tool(load.clone(), &star, None, None, &never)
        .await
        .unwrap_err();
    assert_eq!(refused.code, FORBIDDEN, "{refused:?}");
    assert!(refused.message.contains("tools:load_model"), "{refused:?}");
    assert_eq!(replica.calls.load(Ordering::SeqCst), 0, "never sent");
    let echoed = fleet
        .call_tool(
            call("echo", json!({"text": "hi"})),
            &star,
            None,
            None,
            &never,
        )
        .await
        .unwrap();
    assert_eq!(structured(&echoed)["text"], "hi");
    let admin = key(&["admin"]);
    fleet
        .call_tool(load.clone(), &admin, None, None, &never)
        .await
        .unwrap();
    assert_eq!(replica.calls.load(Ordering::SeqCst), 2);

    // Straight to the replica, naming a narrow caller: refused there too.
    let direct = testing::connect(UnitServer::new(replica.unit(), McpConfig::default())).await;
    let mut forwarded = load;
    delegate(&mut forwarded.meta, &star);
    let refused = direct.peer().call_tool(forwarded).await.unwrap_err();
    assert!(refused.to_string().contains("forbidden"), "{refused}");
    assert_eq!(replica.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_replica_too_busy_to_start_a_call_sends_it_to_another() {
    let (full, free) = (FakeReplica::new("full"), FakeReplica::new("free"));
    full.busy.store(true, Ordering::SeqCst);
    // Routing ranks the full one first: the other reports a call of someone else's.
    free.report.lock().unwrap().running = 1;
    let fleet = Arc::new(Fleet::new("compute", settings(|_| {})));
    in_process_replica(&fleet, &full);
    in_process_replica(&fleet, &free);
    fleet.check().await;
    let never = CancellationToken::new();
    for i in 0..4 {
        let text = format!("call {i}");
        let params = call("write", json!({ "text": text }));
        let result = fleet
            .call_tool(params, local(), None, None, &never)
            .await
            .unwrap();
        assert_ne!(result.is_error, Some(true), "{:?}", result.content);
        assert_eq!(structured(&result)["by"], "free");
    }
    assert_eq!(
        full.calls.load(Ordering::SeqCst),
        4,
        "asked first each time, it said busy"
    );

    free.busy.store(true, Ordering::SeqCst);
    let params = call("write", json!({ "text": "nowhere" }));
    let result = fleet
        .call_tool(params, local(), None, None, &never)
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    let text = &result.content[0].as_text().unwrap().text;
    assert!(
        text.contains("full: busy") && text.contains("free: busy"),
        "{text}"
    );
}

#[tokio::test]
#[allow(deprecated)] // resources/subscribe: the in-memory session is of the handshake era.
async fn a_temperature_alert_fires_as_the_device_heats_and_clears_as_it_cools() {
    use jetsonmind_control::monitor::ALERTS_URI;
    use jetsonmind_core::rmcp::ServiceExt;
    use jetsonmind_core::rmcp::model::{LoggingLevel, SubscribeRequestParams};
    use jetsonmind_testkit::UpdateListener;

    let tree = tempfile::tempdir().unwrap();
    thermal_zone(tree.path(), 0, "cpu-thermal", 50.0);
    let fleet = Arc::new(Fleet::new("compute", settings(|_| {})));
    let control = Arc::new(
        ControlServer::new(fleet, &Config::default(), None).with_telemetry_root(tree.path()),
    );
    control.evaluate_alerts_every(Duration::from_millis(50));
    let server = UnitServer::new(control.clone(), McpConfig::default());
    let updates = UpdateListener::default();
    let client = updates.clone().serve(in_process(server)).await.unwrap();
    client
        .subscribe(SubscribeRequestParams::new(ALERTS_URI))
        .await
        .unwrap();

    // Asked once: the device's figures and what is in breach now.
    let hot = json!({"metric": "temperature_c", "above": 75, "hysteresis": 5});
    let now = client
        .call_tool(call(
            "monitor_health",
            json!({"component": "device", "threshold": hot}),
        ))
        .await
        .unwrap();
    let now = structured(&now);
    assert_eq!(now["readings"][0]["figures"]["temperature_c"], 50.0);
    assert_eq!(now["in_breach"], json!([]));

    let registered = client
        .call_tool(call(
            "monitor_health",
            json!({"component": "device", "threshold": hot, "alert": "hot"}),
        ))
        .await
        .unwrap();
    assert_eq!(structured(&registered)["alerts"][0]["firing"], false);
    updates.wait_for(ALERTS_URI, 1).await;
    let alert = || async {
        let alerts: Value = testing::read_json(client.peer(), ALERTS_URI).await;
        alerts["alerts"][0].clone()
    };

    thermal_zone(tree.path(), 0, "cpu-thermal", 80.0);
    updates.wait_for(ALERTS_URI, 2).await;
    let firing = alert().await;
    assert_eq!(firing["firing"], true, "{firing}");
    assert_eq!(firing["breaches"][0]["value"], 80.0);
    // The subscriber's session is also sent a warning saying so.
    let told = updates.wait_for_logs(1).await;
    assert_eq!(told[0].level, LoggingLevel::Warning);
    assert_eq!(told[0].data["alert"], "hot");
    assert_eq!(told[0].data["uri"], ALERTS_URI);
    assert!(
        told[0].data["message"]
            .as_str()
            .unwrap()
            .contains("device = 80"),
        "{:?}",
        told[0].data
    );
    assert!(
        control
            .alerts()
            .prometheus()
            .contains("jetsonmind_alert_firing{alert=\"hot\"} 1")
    );
    let health = structured(
        &client
            .call_tool(call("monitor_health", json!({})))
            .await
            .unwrap(),
    );
    assert_eq!(health["alerts_firing"][0]["name"], "hot");

    // Under the line but within the hysteresis: still firing, nothing told.
    thermal_zone(tree.path(), 0, "cpu-thermal", 72.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(updates.count(ALERTS_URI), 2);
    assert_eq!(alert().await["firing"], true);

    thermal_zone(tree.path(), 0, "cpu-thermal", 65.0);
    updates.wait_for(ALERTS_URI, 3).await;
    let cleared = alert().await;
    let told = updates.wait_for_logs(2).await;
    assert_eq!(
        (told[1].level, told[1].data["firing"].clone()),
        (LoggingLevel::Notice, json!(false))
    );
    assert_eq!(
        (cleared["firing"].clone(), cleared["fired"].clone()),
        (json!(false), json!(1))
    );
    assert!(
        control
            .alerts()
            .prometheus()
            .contains("jetsonmind_alert_firing{alert=\"hot\"} 0")
    );

    let removed = client
        .call_tool(call("monitor_health", json!({"remove_alert": "hot"})))
        .await
        .unwrap();
    assert_eq!(structured(&removed)["alerts"], json!([]));
    let unknown = client
        .call_tool(call(
            "monitor_health",
            json!({"component": "device", "threshold": {"metric": "temprature_c", "above": 1}}),
        ))
        .await
        .unwrap();
    assert_eq!(unknown.is_error, Some(true));
    assert!(
        unknown.content[0]
            .as_text()
            .unwrap()
            .text
            .contains("temperature_c")
    );

    // Reading is for anyone; keeping an alert is for an administrator.
    let mut narrow = call("monitor_health", json!({"threshold": hot, "alert": "mine"}));
    delegate(&mut narrow.meta, &key(&["tools:*"]));
    let refused = client.call_tool(narrow).await.unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(refused.content[0].as_text().unwrap().text.contains("admin"));
    assert!(control.alerts().list().is_empty());
}
