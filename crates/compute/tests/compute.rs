//! The compute server driven through a real MCP client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetsonmind_compute::ComputeServer;
use jetsonmind_compute::config::ComputeConfig;
use jetsonmind_compute::engine::TextSettings;
use jetsonmind_compute::engine::{
    EngineError, FinishReason, Flow, GenerateRequest, Generation, ModelInfo, Partial, TextEngine,
    Timings,
};
use jetsonmind_compute::models::Loader;
use jetsonmind_contract::replica::{REPLICA_STATUS_URI, ReplicaReport};
use jetsonmind_core::UnitServer;
use jetsonmind_core::config::McpConfig;
use jetsonmind_core::rmcp::model::{CallToolRequestParams, ErrorCode};
use jetsonmind_core::rmcp::service::{Peer, RunningService};
use jetsonmind_core::rmcp::{RoleClient, ServiceError};
use jetsonmind_store::gguf::build;
use jetsonmind_store::{ImportOptions, ModelStore};
use jetsonmind_testkit as testing;
use serde_json::json;

fn args(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

type Client = RunningService<RoleClient, ()>;

/// A compute server over an empty model store of its own.
async fn client() -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ModelStore::open(dir.path()).unwrap());
    (client_with(&dir, store, None).await, dir)
}

/// A compute server over `store` (in `dir`), loading with `loader` when given.
async fn client_with(
    dir: &tempfile::TempDir,
    store: Arc<ModelStore>,
    loader: Option<Loader>,
) -> Client {
    let mut config = jetsonmind_core::Config::default();
    config.data.dir = dir.path().to_path_buf();
    let server = match loader {
        Some(loader) => ComputeServer::with_loader(&config, Default::default(), store, loader),
        None => ComputeServer::new(&config, Default::default(), store),
    };
    // No read TTL: the client would answer a repeated status read from its cache.
    let mcp = McpConfig {
        read_ttl_ms: 0,
        ..McpConfig::default()
    };
    testing::connect(UnitServer::new(Arc::new(server), mcp)).await
}

async fn status(client: &Peer<RoleClient>) -> ReplicaReport {
    testing::read_json(client, REPLICA_STATUS_URI).await
}

/// Import a GGUF of these header values (and a few bytes of "weights") as `name`.
fn import_gguf(store: &ModelStore, dir: &std::path::Path, name: &str, numbers: &[(&str, u32)]) {
    let mut bytes = build::header(&[("general.architecture", "llama")], numbers);
    bytes.extend([0u8; 64]);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    store
        .import(&path, &ImportOptions::default(), |_, _| {})
        .unwrap();
}

/// A model that answers every prompt with "ok", for tests of everything
/// around generation.
struct FakeEngine(ModelInfo);

impl FakeEngine {
    fn loaded(id: &str) -> Result<Arc<dyn TextEngine>, EngineError> {
        Ok(Arc::new(FakeEngine(ModelInfo {
            id: id.to_string(),
            architecture: Some("llama".into()),
            parameters: 1,
            size_bytes: 64,
            context_train: 4096,
            has_chat_template: false,
            supports_fill_in_middle: false,
        })))
    }
}

impl TextEngine for FakeEngine {
    fn info(&self) -> &ModelInfo {
        &self.0
    }

    fn generate(
        &self,
        _: &GenerateRequest,
        _: &mut dyn FnMut(&Partial) -> Flow,
    ) -> Result<Generation, EngineError> {
        Ok(Generation {
            text: "ok".into(),
            prompt_tokens: 1,
            cached_prompt_tokens: 0,
            completion_tokens: 1,
            finish_reason: FinishReason::Stop,
            timings: Timings {
                prompt_ms: 0.0,
                generation_ms: 0.0,
                prompt_tokens_per_second: 0.0,
                generation_tokens_per_second: 0.0,
            },
        })
    }
}

/// A loader that tells when a load starts, then holds it until told to
/// finish: a model as slow to load as the test wants.
struct HeldLoads {
    started: tokio::sync::mpsc::UnboundedReceiver<String>,
    release: std::sync::mpsc::Sender<()>,
    count: Arc<AtomicUsize>,
}

fn held_loader() -> (Loader, HeldLoads) {
    let (started_tx, started) = tokio::sync::mpsc::unbounded_channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let loader: Loader = Arc::new(move |_: &std::path::Path, id: &str, _: &TextSettings| {
        counted.fetch_add(1, Ordering::SeqCst);
        let _ = started_tx.send(id.to_string());
        let _ = release_rx.lock().unwrap().recv();
        FakeEngine::loaded(id)
    });
    (
        loader,
        HeldLoads {
            started,
            release,
            count,
        },
    )
}

fn load_call(model: &str) -> CallToolRequestParams {
    CallToolRequestParams::new("load_model").with_arguments(args(json!({"model": model})))
}

/// The review's case: a model slower to load than the control plane's
/// health timeout made the status read wait behind the registry lock, and
/// the replica was taken for dead. The load is held here until the test
/// lets it go, so a status read that waited for it would never return.
// Two workers: a status read that blocked one would still let the timeout fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_answers_while_a_model_loads_and_shows_it_loading() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ModelStore::open(dir.path()).unwrap());
    import_gguf(&store, dir.path(), "slow.gguf", &[("llama.block_count", 2)]);
    let (loader, mut held) = held_loader();
    let client = client_with(&dir, store, Some(loader)).await;

    let first = tokio::spawn({
        let peer = client.peer().clone();
        async move { peer.call_tool(load_call("slow.gguf")).await.unwrap() }
    });
    assert_eq!(held.started.recv().await.unwrap(), "slow.gguf");
    // A second caller of the same model waits for that load, not for a lock.
    let second = tokio::spawn({
        let peer = client.peer().clone();
        async move { peer.call_tool(load_call("slow")).await.unwrap() }
    });

    let during = tokio::time::timeout(Duration::from_secs(60), status(client.peer()))
        .await
        .expect("the status read waited for the load");
    assert_eq!(during.loading, ["slow.gguf"]);
    assert!(during.loaded.is_empty(), "{during:?}");
    assert!(
        during.memory_used_bytes > 0,
        "a loading model's memory is counted"
    );

    held.release.send(()).unwrap();
    let outcomes = [first.await.unwrap(), second.await.unwrap()].map(|result| {
        assert_ne!(result.is_error, Some(true), "{result:?}");
        result.structured_content.unwrap()["already_loaded"].clone()
    });
    assert_eq!(
        held.count.load(Ordering::SeqCst),
        1,
        "one load for both callers"
    );
    assert!(outcomes.contains(&json!(false)) && outcomes.contains(&json!(true)));
    let after = status(client.peer()).await;
    assert!(after.loading.is_empty(), "{after:?}");
    assert_eq!(after.loaded.len(), 1);
    assert_eq!(after.loaded[0].name, "slow.gguf");
}

/// The review's 246-byte GGUF: a fractional head count, registered (here
/// by changing a stored file, as import now refuses it), made the status
/// read panic and took text generation away for every model.
#[tokio::test]
async fn a_model_with_a_bad_header_is_reported_and_the_others_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ModelStore::open(dir.path()).unwrap());
    let shape = [
        ("llama.block_count", 2),
        ("llama.embedding_length", 64),
        ("llama.attention.head_count", 4),
    ];
    import_gguf(&store, dir.path(), "good.gguf", &shape);
    import_gguf(&store, dir.path(), "bad.gguf", &shape[..2]);
    let half_a_head = build::header_with_floats(
        &[("general.architecture", "llama")],
        &shape[..2],
        &[("llama.attention.head_count", 0.5)],
    );
    std::fs::write(store.main_file("bad.gguf").unwrap(), half_a_head).unwrap();
    let (loader, held) = held_loader();
    held.release.send(()).unwrap();
    let client = client_with(&dir, store, Some(loader)).await;

    let report = status(client.peer()).await;
    assert!(report.model_bytes.contains_key("good.gguf"), "{report:?}");
    assert!(!report.model_bytes.contains_key("bad.gguf"), "{report:?}");
    assert!(
        report.unusable_models["bad.gguf"].contains("llama.attention.head_count"),
        "{report:?}"
    );
    let refused = client.call_tool(load_call("bad.gguf")).await.unwrap();
    assert_eq!(refused.is_error, Some(true));
    let text = refused.content[0].as_text().unwrap().text.clone();
    assert!(text.contains("whole number"), "{text}");
    let generated = client
        .call_tool(
            CallToolRequestParams::new("text_generate")
                .with_arguments(args(json!({"prompt": "hi", "model": "good"}))),
        )
        .await
        .unwrap();
    assert_ne!(generated.is_error, Some(true), "{generated:?}");
    assert_eq!(generated.content[0].as_text().unwrap().text, "ok");
}

#[tokio::test]
async fn lists_the_tools_this_node_can_run_with_a_schema() {
    let (client, _dir) = client().await;
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "audio_process",
            "calibrate_engine",
            "code_complete",
            "embed",
            "image_analyze",
            "load_model",
            "multi_modal_inference",
            "rerank",
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
    let report: ReplicaReport = serde_json::from_str(&text).unwrap();
    let config = jetsonmind_core::Config::default();
    // compute.parallel = 0 and a store without the default model: its KV
    // size is unknown, so the fallback slot count.
    assert_eq!(config.section::<ComputeConfig>().parallel, 0);
    assert_eq!(
        report.capacity,
        jetsonmind_compute::placement::FALLBACK_SLOTS
            + config.section::<ComputeConfig>().queue_depth
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
async fn an_unknown_tool_is_refused() {
    let (client, _dir) = client().await;
    let refused = client
        .call_tool(
            CallToolRequestParams::new("image_generate")
                .with_arguments(args(json!({"prompt": "a cat"}))),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("unknown tool: image_generate"),
        "{refused}"
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

#[tokio::test]
async fn changed_engine_settings_load_the_models_again_with_them_and_resize_admission() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ModelStore::open(dir.path()).unwrap());
    import_gguf(&store, dir.path(), "tiny.gguf", &[("llama.block_count", 2)]);
    let loads = Arc::new(Mutex::new(Vec::<TextSettings>::new()));
    let recorded = loads.clone();
    let loader: Loader = Arc::new(move |_: &std::path::Path, id: &str, s: &TextSettings| {
        recorded.lock().unwrap().push(s.clone());
        FakeEngine::loaded(id)
    });
    let mut config = jetsonmind_core::Config::default();
    config.data.dir = dir.path().to_path_buf();
    config.section_mut::<ComputeConfig>().threads = 1;
    // 0: as many slots as fit the budget.
    config.section_mut::<ComputeConfig>().parallel = 0;
    let server = Arc::new(ComputeServer::with_loader(
        &config,
        Default::default(),
        store,
        loader,
    ));
    let (settings, followed) = tokio::sync::watch::channel(config.clone());
    server.follow_settings(followed);
    let mcp = McpConfig {
        read_ttl_ms: 0,
        ..McpConfig::default()
    };
    let client = testing::connect(UnitServer::new(server, mcp)).await;
    let load =
        CallToolRequestParams::new("load_model").with_arguments(args(json!({"model": "tiny"})));
    let loaded = client.call_tool(load).await.unwrap();
    assert_ne!(loaded.is_error, Some(true), "{loaded:?}");
    let first = status(&client).await;
    let queue = config.section::<ComputeConfig>().queue_depth;
    let engine = first.engine.unwrap();
    let auto = engine.parallel;
    assert!(auto >= 1);
    assert_eq!(first.capacity, auto as usize + queue);
    assert_eq!(engine.threads, 1);

    config.section_mut::<ComputeConfig>().threads = 2;
    config.section_mut::<ComputeConfig>().parallel = auto as usize + 3;
    config.section_mut::<ComputeConfig>().batch_size = 64;
    settings.send(config.clone()).unwrap();
    let mut waited = 0;
    while loads.lock().unwrap().len() < 2 && waited < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    let reloaded = loads.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (reloaded.threads, reloaded.slots, reloaded.batch_size),
        (2, auto + 3, 64),
        "the idle model was loaded again with the new settings"
    );
    let now = status(&client).await;
    assert_eq!(now.capacity, auto as usize + 3 + queue);
    let engine = now.engine.unwrap();
    assert_eq!(
        (engine.threads, engine.parallel, engine.batch_size),
        (2, auto + 3, 64)
    );
    assert!(
        now.loaded.iter().any(|m| m.name == "tiny.gguf"),
        "{:?}",
        now.loaded
    );

    // Back to 0 (what a revert to the defaults writes): the count that fits
    // again, not the one it replaced.
    config.section_mut::<ComputeConfig>().parallel = 0;
    settings.send(config).unwrap();
    let mut waited = 0;
    while status(&client).await.capacity != auto as usize + queue && waited < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    assert_eq!(status(&client).await.engine.unwrap().parallel, auto);
}

/// A compute server over three equal fake models, `a`, `b` and `c`, with
/// room for two at a time, keeping models as `allocation` says.
async fn three_models(
    allocation: jetsonmind_contract::allocation::AllocationStrategy,
    pinned: &[&str],
) -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ModelStore::open(dir.path()).unwrap());
    for name in ["a.gguf", "b.gguf", "c.gguf"] {
        import_gguf(&store, dir.path(), name, &[("llama.block_count", 2)]);
    }
    let loader: Loader =
        Arc::new(|_: &std::path::Path, id: &str, _: &TextSettings| FakeEngine::loaded(id));
    let probe = client_with(&dir, store.clone(), Some(loader.clone())).await;
    let bytes = status(&probe).await.model_bytes["a.gguf"];
    let mut config = jetsonmind_core::Config::default();
    config.data.dir = dir.path().to_path_buf();
    config.section_mut::<ComputeConfig>().memory_budget_bytes = 2 * bytes + bytes / 2;
    config.section_mut::<ComputeConfig>().allocation = allocation;
    config.section_mut::<ComputeConfig>().pinned_models =
        pinned.iter().map(|p| p.to_string()).collect();
    let server = ComputeServer::with_loader(&config, Default::default(), store, loader);
    let mcp = McpConfig {
        read_ttl_ms: 0,
        ..McpConfig::default()
    };
    (
        testing::connect(UnitServer::new(Arc::new(server), mcp)).await,
        dir,
    )
}

async fn loaded(client: &Client) -> Vec<(String, bool)> {
    let report = status(client).await;
    report
        .loaded
        .into_iter()
        .map(|m| (m.name, m.pinned))
        .collect()
}

async fn load(client: &Client, model: &str) -> serde_json::Value {
    let params =
        CallToolRequestParams::new("load_model").with_arguments(args(json!({"model": model})));
    let result = client.call_tool(params).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    result.structured_content.unwrap()
}

#[tokio::test]
async fn a_pinned_model_survives_the_memory_pressure_that_evicts_others() {
    use jetsonmind_compute::config::AllocationStrategy;
    let (client, _dir) = three_models(AllocationStrategy::Pinned, &["a"]).await;
    // Pinned models are loaded when the server starts.
    let mut waited = 0;
    while loaded(&client).await.is_empty() && waited < 100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
    }
    assert_eq!(loaded(&client).await, [("a.gguf".to_string(), true)]);
    load(&client, "b").await;
    // `a` is the least recently used, but pinned: `b` makes room for `c`.
    let c = load(&client, "c").await;
    assert_eq!(c["unloaded"], json!(["b.gguf"]));
    let b = load(&client, "b").await;
    assert_eq!(b["unloaded"], json!(["c.gguf"]));
    assert_eq!(
        loaded(&client).await,
        [("a.gguf".to_string(), true), ("b.gguf".to_string(), false)]
    );
}

#[tokio::test]
async fn on_demand_unloads_a_model_as_soon_as_its_call_ends() {
    use jetsonmind_compute::config::AllocationStrategy;
    let (client, _dir) = three_models(AllocationStrategy::OnDemand, &[]).await;
    let generate = CallToolRequestParams::new("text_generate")
        .with_arguments(args(json!({"prompt": "hi", "model": "a", "max_tokens": 2})));
    let answer = client.call_tool(generate).await.unwrap();
    assert_ne!(answer.is_error, Some(true), "{answer:?}");
    assert_eq!(loaded(&client).await, []);
}
