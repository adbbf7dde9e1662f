//! The inference simulator (`compute.engine = "simulated"`, benchmarks only)
//! through a real MCP client, over an empty model store: no model file.

use crate::support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use jetsonmind_compute::config::ComputeConfig;
use jetsonmind_compute::config::{ComputeEngine, SimulatorConfig};
use jetsonmind_compute::engine::simulated::{ENGINE_META_KEY, ENGINE_NAME, MODEL_PREFIX};
use jetsonmind_compute::models::SIMULATED_MODEL_BYTES;
use jetsonmind_core::Config;
use jetsonmind_core::rmcp::RoleClient;
use jetsonmind_core::rmcp::model::CallToolResult;
use jetsonmind_core::rmcp::service::Peer;
use jetsonmind_data::config::CacheConfig;
use jetsonmind_store::ModelStore;
use serde_json::{Value, json};
use support::{Client, Progress, call, ok, status, text};

/// Small token times keep the tests fast; every test asserts lower bounds only.
const PROMPT_TOKEN_US: u64 = 100;
const OUTPUT_TOKEN_US: u64 = 2_000;

/// A simulated compute server over an empty store of its own (the store
/// lives as long as the returned directory).
async fn simulator(edit: impl FnOnce(&mut Config)) -> (Client, Progress, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ModelStore::open(dir.path()).unwrap());
    let mut config = Config::default();
    config.data.dir = dir.path().to_path_buf();
    // Every call must reach the engine, not the inference cache.
    config.section_mut::<CacheConfig>().enabled = false;
    config.section_mut::<ComputeConfig>().engine = ComputeEngine::Simulated;
    config.section_mut::<ComputeConfig>().simulator = SimulatorConfig {
        prompt_token_us: PROMPT_TOKEN_US,
        output_token_us: OUTPUT_TOKEN_US,
    };
    config.section_mut::<ComputeConfig>().progress_every_tokens = 1;
    edit(&mut config);
    let (client, progress) = support::connect(&config, store.clone()).await;
    assert!(store.list().unwrap().is_empty(), "no model file is needed");
    (client, progress, dir)
}

/// The engine a result names in its `_meta`.
fn engine_of(result: &CallToolResult) -> Option<String> {
    let meta = result.meta.as_ref()?;
    meta.0.get(ENGINE_META_KEY)?.as_str().map(str::to_string)
}

/// Call `tool`; the result must name the simulator in `_meta`.
async fn simulated_call(
    client: &Peer<RoleClient>,
    tool: &'static str,
    args: Value,
) -> CallToolResult {
    let result = client.call_tool(call(tool, args)).await.unwrap();
    assert_eq!(engine_of(&result).as_deref(), Some(ENGINE_NAME));
    result
}

/// The updates, ordered by tokens, once `count` were heard.
async fn heard(progress: &Progress, count: usize) -> Vec<(f64, String)> {
    let mut updates: Vec<(f64, String)> = progress
        .wait_for(count)
        .await
        .into_iter()
        .map(|p| (p.progress, p.message.unwrap_or_default()))
        .collect();
    updates.sort_by(|a, b| a.0.total_cmp(&b.0));
    updates
}

#[tokio::test]
async fn streams_every_token_for_at_least_the_simulated_time_and_says_it_is_simulated() {
    let (client, progress, _dir) = simulator(|_| {}).await;
    let max_tokens = 20u32;
    let started = Instant::now();
    let result = simulated_call(
        &client,
        "text_generate",
        json!({"prompt": "Tell me about the sea.", "temperature": 0, "max_tokens": max_tokens}),
    )
    .await;
    let elapsed = started.elapsed();
    let answer = text(&result);
    let out = ok(result);
    let default_model = Config::default()
        .section::<ComputeConfig>()
        .default_model
        .clone();
    assert_eq!(out["model"], format!("{MODEL_PREFIX}{default_model}"));
    assert_eq!(out["finish_reason"], "length");
    assert_eq!(out["usage"]["completion_tokens"], max_tokens);
    assert_eq!(out["text"], answer);
    assert!(!answer.is_empty());

    let prompt_tokens = out["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 0);
    let simulated_us = prompt_tokens * PROMPT_TOKEN_US + max_tokens as u64 * OUTPUT_TOKEN_US;
    assert!(
        elapsed >= Duration::from_micros(simulated_us),
        "{elapsed:?} < {simulated_us} µs"
    );
    let timings = &out["timings"];
    assert_eq!(
        timings["generation_ms"].as_f64().unwrap(),
        (max_tokens as u64 * OUTPUT_TOKEN_US) as f64 / 1000.0
    );
    assert_eq!(
        timings["prompt_ms"].as_f64().unwrap(),
        (prompt_tokens * PROMPT_TOKEN_US) as f64 / 1000.0
    );

    // One notification per token, each with the text so far.
    let updates = heard(&progress, max_tokens as usize).await;
    let tokens: Vec<f64> = updates.iter().map(|u| u.0).collect();
    let expected: Vec<f64> = (1..=max_tokens).map(f64::from).collect();
    assert_eq!(tokens, expected);
    for pair in updates.windows(2) {
        assert!(pair[1].1.starts_with(&pair[0].1), "{updates:?}");
    }
    assert_eq!(updates.last().unwrap().1, answer);

    // The status reports the simulated model as loaded, counted small.
    let report = status(&client).await;
    assert_eq!(report["loaded"][0]["name"], default_model.as_str());
    assert_eq!(report["loaded"][0]["bytes"], SIMULATED_MODEL_BYTES);
    assert_eq!(report["model_bytes"][&default_model], SIMULATED_MODEL_BYTES);
}

#[tokio::test]
async fn any_model_name_loads_and_stop_strings_end_the_text() {
    let (client, _, _dir) = simulator(|_| {}).await;
    let model = "no-such-file-anywhere";
    let loaded = ok(simulated_call(&client, "load_model", json!({"model": model})).await);
    assert_eq!(loaded["model"], model);

    let args =
        json!({"prompt": "Describe the sun.", "model": model, "temperature": 0, "max_tokens": 30});
    let full = ok(simulated_call(&client, "text_generate", args.clone()).await);
    assert_eq!(full["model"], format!("{MODEL_PREFIX}{model}"));
    let full = full["text"].as_str().unwrap().to_string();
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(words.len() >= 4, "{full}");
    let stop_word = words[words.len() / 2];
    let mut with_stop = args;
    with_stop["stop"] = json!([stop_word]);
    let stopped = ok(simulated_call(&client, "text_generate", with_stop).await);
    assert_eq!(stopped["finish_reason"], "stop");
    assert_eq!(stopped["text"], &full[..full.find(stop_word).unwrap()]);

    let completed = ok(simulated_call(
        &client,
        "code_complete",
        json!({"code": "def add(a, b):\n", "language": "python", "max_tokens": 6}),
    )
    .await);
    assert_eq!(completed["usage"]["completion_tokens"], 6);
    assert!(
        completed["model"]
            .as_str()
            .unwrap()
            .starts_with(MODEL_PREFIX)
    );

    // Errors are named too, and say why.
    let refused = simulated_call(
        &client,
        "text_generate",
        json!({"prompt": "hi", "model": "../etc/passwd"}),
    )
    .await;
    assert_eq!(refused.is_error, Some(true));
    assert!(
        text(&refused).contains("not by a path"),
        "{}",
        text(&refused)
    );
}

#[tokio::test]
async fn cancelling_stops_generation_before_max_tokens_and_frees_the_slot() {
    let output_token_us = 10_000;
    let (client, progress, _dir) = simulator(|c| {
        c.section_mut::<ComputeConfig>().parallel = 1;
        c.section_mut::<ComputeConfig>().queue_depth = 0;
        c.section_mut::<ComputeConfig>().simulator.output_token_us = output_token_us;
    })
    .await;
    let max_tokens = 3_000u64;
    let started = Instant::now();
    let long = client.peer().call_tool_once(call(
        "text_generate",
        json!({"prompt": "Write a long story.", "max_tokens": max_tokens}),
    ));
    let first_tokens = async {
        while progress.count() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // Dropping the pending call sends notifications/cancelled.
    tokio::select! {
        _ = long => panic!("a {max_tokens}-token answer finished before it was cancelled"),
        _ = first_tokens => {}
    }
    // The generating thread holds the model until it stops, and unloading
    // is refused while it does. Uncancelled it would hold it for at least
    // the simulated time of the whole answer: the model must be free before.
    let whole_answer = Duration::from_micros(max_tokens * output_token_us);
    let default_model = Config::default()
        .section::<ComputeConfig>()
        .default_model
        .clone();
    loop {
        let unload = simulated_call(&client, "unload_model", json!({"model": default_model})).await;
        if unload.is_error != Some(true) {
            break;
        }
        assert!(text(&unload).contains("running on it"), "{}", text(&unload));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        started.elapsed() < whole_answer,
        "the generation went on to max_tokens: the cancel did not stop it"
    );

    // The one slot is free again: with no queue, a busy slot would refuse this call.
    let out = ok(simulated_call(
        &client,
        "text_generate",
        json!({"prompt": "Say hi.", "max_tokens": 4}),
    )
    .await);
    assert_eq!(out["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn parallel_slots_run_concurrent_calls_and_queue_the_rest() {
    let parallel = 4;
    let (client, _, _dir) = simulator(|c| {
        c.section_mut::<ComputeConfig>().parallel = parallel;
        c.section_mut::<ComputeConfig>().queue_depth = 8;
    })
    .await;
    let calls = parallel + 2;
    let max_tokens = 10u64;
    let started = Instant::now();
    let running: Vec<_> = (0..calls)
        .map(|i| {
            let peer = client.peer().clone();
            let args = json!({"prompt": format!("Call {i}."), "max_tokens": max_tokens});
            tokio::spawn(async move { ok(simulated_call(&peer, "text_generate", args).await) })
        })
        .collect();
    for call in running {
        let out = call.await.unwrap();
        assert_eq!(out["usage"]["completion_tokens"], max_tokens);
    }
    // More calls than slots: some waited for a slot, so at least two
    // generations ran one after the other.
    let two_in_a_row = Duration::from_micros(2 * max_tokens * OUTPUT_TOKEN_US);
    assert!(started.elapsed() >= two_in_a_row, "{:?}", started.elapsed());
}
