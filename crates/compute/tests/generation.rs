//! Text generation with the real default model (SmolLM2-135M-Instruct Q4_1,
//! fetched into `<repo>/models` by `./setup.sh`), through a real MCP client.

use crate::support;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jetsonmind_compute::ComputeServer;
use jetsonmind_compute::config::ComputeConfig;
use jetsonmind_core::config::McpConfig;
use jetsonmind_core::rmcp::ServiceExt;
use jetsonmind_core::serve::in_process;
use jetsonmind_core::{Config, UnitServer};
use jetsonmind_data::config::CacheConfig;
use jetsonmind_store::{ImportOptions, ModelStore};
use serde_json::{Value, json};
use support::{Client, Progress, call, ok, status, text};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// A model store holding the default model (fetched into `<repo>/models` by
/// `./setup.sh`), hard-linked into a data dir of its own; one for all tests.
fn store() -> &'static (tempfile::TempDir, Arc<ModelStore>) {
    static STORE: OnceLock<(tempfile::TempDir, Arc<ModelStore>)> = OnceLock::new();
    STORE.get_or_init(|| {
        let model = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models")
            .join(MODEL);
        assert!(
            model.is_file(),
            "{} is missing: run ./setup.sh (or scripts/fetch-default-model.sh)",
            model.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let store = ModelStore::open(dir.path()).unwrap();
        let link = ImportOptions {
            link: true,
            ..Default::default()
        };
        store.import(&model, &link, |_, _| {}).unwrap();
        (dir, Arc::new(store))
    })
}

/// Without the inference cache: a repeated call must reach the model, or
/// determinism and progress would be tested against a cached answer.
fn config(edit: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    config.data.dir = store().0.path().to_path_buf();
    config.section_mut::<CacheConfig>().enabled = false;
    edit(&mut config);
    config
}

/// One generation test at a time: each runs llama.cpp on every core, and
/// llama.cpp's spinning threads slow to a crawl when they outnumber the cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn client(config: Config) -> (Client, Progress) {
    support::connect(&config, store().1.clone()).await
}

#[tokio::test]
async fn answers_a_question_with_the_real_model() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (client, progress) = client(config(|_| {})).await;
    let result = client
        .call_tool(call(
            "text_generate",
            json!({"prompt": "What is the capital of France?", "temperature": 0, "max_tokens": 32}),
        ))
        .await
        .unwrap();
    let answer = text(&result);
    let out = ok(result);
    assert!(answer.contains("Paris"), "{answer}");
    assert_eq!(out["text"], answer);
    assert_eq!(out["model"], MODEL);
    assert_eq!(out["finish_reason"], "stop");
    assert!(out["usage"]["prompt_tokens"].as_u64().unwrap() > 5);
    assert!(
        out["timings"]["generation_tokens_per_second"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    // Progress carried token counts and the text so far.
    let seen = support::updates(&progress);
    assert!(!seen.is_empty());
    assert!(
        answer.starts_with(seen[0].1.as_deref().unwrap()),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_fixed_seed_gives_the_same_text() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (client, _) = client(config(|_| {})).await;
    let args = json!({"prompt": "Write one sentence about the sea.", "temperature": 0.9, "seed": 42, "max_tokens": 40});
    let first = ok(client
        .call_tool(call("text_generate", args.clone()))
        .await
        .unwrap());
    let second = ok(client.call_tool(call("text_generate", args)).await.unwrap());
    assert_eq!(first["text"], second["text"]);
    assert!(!first["text"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn chat_messages_stop_strings_and_length() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (client, _) = client(config(|_| {})).await;
    let messages = json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "List three colours, one per line."}
    ]);
    let out = ok(client
        .call_tool(call(
            "text_generate",
            json!({"messages": messages, "max_tokens": 3, "temperature": 0}),
        ))
        .await
        .unwrap());
    assert_eq!(out["finish_reason"], "length");
    assert_eq!(out["usage"]["completion_tokens"], 3);

    // Stop at a word the model is known to say: run once, then stop there.
    let prompt =
        json!({"prompt": "Describe the sun in two sentences.", "temperature": 0, "max_tokens": 48});
    let full = ok(client
        .call_tool(call("text_generate", prompt.clone()))
        .await
        .unwrap());
    let full = full["text"].as_str().unwrap().to_string();
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(words.len() >= 4, "{full}");
    let stop_word = words[words.len() / 2];
    let expected = &full[..full.find(stop_word).unwrap()];
    let mut with_stop = prompt;
    with_stop["stop"] = json!([stop_word]);
    let out = ok(client
        .call_tool(call("text_generate", with_stop))
        .await
        .unwrap());
    assert_eq!(out["finish_reason"], "stop");
    assert_eq!(out["text"], expected, "stop {stop_word:?} in {full:?}");
}

#[tokio::test]
async fn two_concurrent_calls_share_the_model_and_both_finish() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (client, _) = client(config(|c| c.section_mut::<ComputeConfig>().parallel = 1)).await;
    let a = client.call_tool(call(
        "text_generate",
        json!({"prompt": "Name a fruit.", "max_tokens": 16, "temperature": 0}),
    ));
    let b = client.call_tool(call(
        "text_generate",
        json!({"prompt": "Name an animal.", "max_tokens": 16, "temperature": 0}),
    ));
    let (a, b) = tokio::join!(a, b);
    assert!(!ok(a.unwrap())["text"].as_str().unwrap().is_empty());
    assert!(!ok(b.unwrap())["text"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn cancelling_stops_generation_and_frees_the_slot() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (client, progress) = client(config(|c| {
        c.section_mut::<ComputeConfig>().parallel = 1;
        c.section_mut::<ComputeConfig>().queue_depth = 0;
        c.section_mut::<ComputeConfig>().progress_every_tokens = 1;
    }))
    .await;
    let long = client.peer().call_tool_once(call(
        "text_generate",
        json!({"prompt": "Write a very long story about a dragon, with many chapters.", "max_tokens": 2000, "temperature": 0}),
    ));
    let first_tokens = async {
        while progress.count() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    // Dropping the pending call sends notifications/cancelled.
    tokio::select! {
        _ = long => panic!("a 2000-token story finished before it was cancelled"),
        _ = first_tokens => {}
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_cancel = progress.count();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        progress.count(),
        after_cancel,
        "generation went on after the cancel"
    );

    // The one slot is free again: with no queue, a busy slot would refuse this call.
    let out = ok(client
        .call_tool(call(
            "text_generate",
            json!({"prompt": "Say hi.", "max_tokens": 8}),
        ))
        .await
        .unwrap());
    assert!(!out["text"].as_str().unwrap().is_empty());
}

/// Greedy answers to `prompts`, asked all at once of `client`.
async fn greedy_together(client: &Client, prompts: &[&str], max_tokens: u32) -> Vec<Value> {
    let calls = prompts.iter().map(|prompt| {
        client.call_tool(call(
            "text_generate",
            json!({"prompt": prompt, "temperature": 0, "max_tokens": max_tokens}),
        ))
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|result| ok(result.unwrap()))
        .collect()
}

/// Greedy answers to `prompts`, each asked alone.
async fn greedy_alone(client: &Client, prompts: &[&str], max_tokens: u32) -> Vec<Value> {
    let mut answers = Vec::new();
    for prompt in prompts {
        answers.extend(greedy_together(client, &[prompt], max_tokens).await);
    }
    answers
}

fn texts(answers: &[Value]) -> Vec<&str> {
    answers
        .iter()
        .map(|a| a["text"].as_str().unwrap())
        .collect()
}

const CAPITALS: [&str; 8] = [
    "What is the capital of France?",
    "Write a haiku about snow.",
    "Name three primary colours.",
    "What is two plus two?",
    "Explain what a tree is in one sentence.",
    "Give me a name for a pet dog.",
    "What do bees make?",
    "Describe the moon briefly.",
];

/// Batching changes which sequences share a decode step, never a sequence's
/// text: with the prefix cache off, each prompt alone and the four together
/// read and generate the very same tokens. A batch of 3 (raised to the 4
/// slots) also reads each prompt in chunks, between the others' tokens.
#[tokio::test]
async fn greedy_text_is_the_same_alone_and_in_a_batch_of_four() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (client, _) = client(config(|c| {
        c.section_mut::<ComputeConfig>().parallel = 4;
        c.section_mut::<ComputeConfig>().batch_size = 3;
        c.section_mut::<ComputeConfig>().prefix_cache = false;
    }))
    .await;
    let prompts = &CAPITALS[..4];
    let alone = greedy_alone(&client, prompts, 48).await;
    let together = greedy_together(&client, prompts, 48).await;
    assert_eq!(texts(&alone), texts(&together));
    for answer in &together {
        assert_eq!(answer["usage"]["cached_prompt_tokens"], 0);
    }
}

#[tokio::test]
async fn eight_concurrent_calls_all_finish_with_their_own_answers() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (client, _) = client(config(|c| {
        c.section_mut::<ComputeConfig>().parallel = 8;
        c.section_mut::<ComputeConfig>().prefix_cache = false;
    }))
    .await;
    let together = greedy_together(&client, &CAPITALS, 32).await;
    let answers = texts(&together);
    assert!(answers[0].contains("Paris"), "{answers:?}");
    let distinct: std::collections::BTreeSet<&str> = answers.iter().copied().collect();
    assert_eq!(distinct.len(), answers.len(), "{answers:?}");
    for answer in &together {
        assert!(
            answer["usage"]["completion_tokens"].as_u64().unwrap() > 3,
            "{answer}"
        );
    }
    let alone = greedy_alone(&client, &CAPITALS, 32).await;
    assert_eq!(texts(&alone), answers);
}

async fn ask(client: &Client, question: &str) -> Value {
    ask_with(client, question, json!({})).await
}

/// As [`ask`], with more arguments.
async fn ask_with(client: &Client, question: &str, more: Value) -> Value {
    let mut arguments = agent_call(question);
    for (key, value) in more.as_object().unwrap() {
        arguments[key] = value.clone();
    }
    ok(client
        .call_tool(call("text_generate", arguments))
        .await
        .unwrap())
}

/// A long shared system prompt, as agents send on every call.
fn agent_call(question: &str) -> Value {
    let rules: String = (1..=40)
        .map(|i| format!("Rule {i}: answer politely, briefly and truthfully. "))
        .collect();
    json!({
        "messages": [
            {"role": "system", "content": rules},
            {"role": "user", "content": question},
        ],
        "temperature": 0,
        "max_tokens": 24,
    })
}

#[tokio::test]
async fn a_repeated_prefix_is_read_once_and_changes_no_answer() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (cached, _) = client(config(|c| c.section_mut::<ComputeConfig>().parallel = 2)).await;
    let (uncached, _) = client(config(|c| {
        c.section_mut::<ComputeConfig>().prefix_cache = false
    }))
    .await;
    let first = ask(&cached, "What is the capital of France?").await;
    assert_eq!(first["usage"]["cached_prompt_tokens"], 0);
    let second = ask(&cached, "What is the capital of Italy?").await;
    let prompt = second["usage"]["prompt_tokens"].as_u64().unwrap();
    let reused = second["usage"]["cached_prompt_tokens"].as_u64().unwrap();
    // The system prompt and the template around it, not the question.
    assert!(reused > 300 && reused < prompt, "{reused} of {prompt}");
    let without = ask(&uncached, "What is the capital of Italy?").await;
    assert_eq!(without["usage"]["cached_prompt_tokens"], 0);
    assert_eq!(second["text"], without["text"]);

    // The same prompt again reuses all but its last token (a seed, which
    // greedy decoding ignores, keeps the inference cache from answering).
    let again = ask_with(&cached, "What is the capital of Italy?", json!({"seed": 1})).await;
    assert_eq!(again["cached"], false);
    assert_eq!(again["usage"]["cached_prompt_tokens"], prompt - 1);
    assert_eq!(again["text"], second["text"]);
}

#[tokio::test]
async fn code_complete_returns_only_the_completion() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (client, _) = client(config(|_| {})).await;
    let code = "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n";
    let result = client
        .call_tool(call(
            "code_complete",
            json!({"code": code, "language": "python", "max_tokens": 24}),
        ))
        .await
        .unwrap();
    let completion = text(&result);
    ok(result);
    assert!(!completion.trim().is_empty());
    // Whatever the model says, the given code is not handed back as completion.
    assert!(
        !completion.contains("\"\"\"Return the sum of a and b.\"\"\""),
        "{completion}"
    );
    assert!(
        !completion.trim_start().starts_with("def add(a, b):"),
        "{completion}"
    );
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (client, _) = client(config(|c| {
        c.section_mut::<ComputeConfig>().context_size = 256
    }))
    .await;
    let cases = [
        (json!({}), "give `prompt` or `messages`"),
        (
            json!({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}),
            "not both",
        ),
        (json!({"prompt": "   "}), "the prompt is empty"),
        (
            json!({"prompt": "hi", "top_p": 0}),
            "top_p must be greater than 0",
        ),
        (
            json!({"prompt": "hi", "model": "../etc/passwd"}),
            "not by a path",
        ),
        (
            json!({"prompt": "hi", "model": "missing-model"}),
            "no model `missing-model`",
        ),
        (json!({"prompt": "word ".repeat(400)}), "prompt too long"),
        (
            json!({"prompt": "hi", "stop": [""]}),
            "stop strings must not be empty",
        ),
    ];
    for (args, expected) in cases {
        let result = client
            .call_tool(call("text_generate", args.clone()))
            .await
            .unwrap();
        assert_eq!(result.is_error, Some(true), "{args}");
        assert!(
            text(&result).contains(expected),
            "{args}: {}",
            text(&result)
        );
    }
    let result = client
        .call_tool(call("text_generate", json!({"prompt": "x".repeat(70_000)})))
        .await
        .unwrap();
    assert!(
        text(&result).contains("compute.max_prompt_bytes"),
        "{}",
        text(&result)
    );
    // Still serving.
    ok(client
        .call_tool(call(
            "text_generate",
            json!({"prompt": "Hello", "max_tokens": 4}),
        ))
        .await
        .unwrap());
}

/// The review's case: 40,000 one-word turns (1.4 MB) went through the
/// chat template and the tokenizer (97 s, holding the only slot) before
/// being refused as too long. They are refused on their count, first.
#[tokio::test]
async fn too_many_turns_are_refused_before_any_template_work() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (small, _) = client(config(|c| {
        c.section_mut::<ComputeConfig>().context_size = 256
    }))
    .await;
    let (client, _) = client(config(|_| {})).await;
    let turns: Vec<Value> = (0..40_000)
        .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": "a"}))
        .collect();
    let result = client
        .call_tool(call("text_generate", json!({"messages": turns})))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    assert!(
        text(&result).contains("40000 turns; the limit is 1024 (compute.max_messages)"),
        "{}",
        text(&result)
    );
    let few = json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4});
    ok(client.call_tool(call("text_generate", few)).await.unwrap());
    let status = status(&client).await;
    assert_eq!(
        (status["running"].clone(), status["waiting"].clone()),
        (json!(0), json!(0))
    );

    // Fewer than the limit, but more than the context has tokens.
    let result = small
        .call_tool(call("text_generate", json!({"messages": &turns[..300]})))
        .await
        .unwrap();
    assert!(
        text(&result).contains("300 turns, more than the context of 256 tokens"),
        "{}",
        text(&result)
    );
}

#[tokio::test]
async fn deterministic_calls_are_answered_from_the_cache() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let config = config(|c| c.section_mut::<CacheConfig>().enabled = true);
    let cache = Arc::new(jetsonmind_data::cache::InferenceCache::new(
        config.section::<CacheConfig>().into(),
    ));
    let server = UnitServer::new(
        Arc::new(ComputeServer::new(
            &config,
            cache.clone(),
            store().1.clone(),
        )),
        McpConfig::default(),
    );
    let client = Progress::default().serve(in_process(server)).await.unwrap();
    let greedy = json!({"prompt": "Name a colour.", "temperature": 0, "max_tokens": 12});
    let first = ok(client
        .call_tool(call("text_generate", greedy.clone()))
        .await
        .unwrap());
    let second = ok(client
        .call_tool(call("text_generate", greedy))
        .await
        .unwrap());
    assert_eq!(
        (first["cached"].clone(), second["cached"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(first["text"], second["text"]);
    // Sampling without a seed is not deterministic: never cached.
    let sampled = json!({"prompt": "Name a colour.", "temperature": 0.8, "max_tokens": 12});
    let out = ok(client
        .call_tool(call("text_generate", sampled.clone()))
        .await
        .unwrap());
    let again = ok(client
        .call_tool(call("text_generate", sampled))
        .await
        .unwrap());
    assert_eq!(
        (out["cached"].clone(), again["cached"].clone()),
        (json!(false), json!(false))
    );
    let report = cache.report();
    assert_eq!(
        (
            report.figures.hits,
            report.figures.misses,
            report.figures.entries
        ),
        (1, 1, 1)
    );
}

fn loaded_names(status: &Value) -> Vec<String> {
    status["loaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn models_stay_within_the_memory_budget_and_leave_when_idle() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // The real model under two names: two models as far as placement goes.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ModelStore::open(dir.path()).unwrap());
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(MODEL);
    for name in [None, Some("second.gguf".to_string())] {
        let options = ImportOptions {
            link: true,
            name,
            ..Default::default()
        };
        store.import(&model, &options, |_, _| {}).unwrap();
    }
    let server_with = |budget: u64| {
        // A fixed slot count: the automatic one follows the budget.
        let mut config = config(|c| {
            c.section_mut::<ComputeConfig>().memory_budget_bytes = budget;
            c.section_mut::<ComputeConfig>().parallel = 2;
        });
        config.data.dir = dir.path().to_path_buf();
        let server = UnitServer::new(
            Arc::new(ComputeServer::new(
                &config,
                Default::default(),
                store.clone(),
            )),
            McpConfig::default(),
        );
        let progress = Progress::default();
        let client = progress.clone().serve(in_process(server));
        async move { (client.await.unwrap(), progress) }
    };

    let (probe, _) = server_with(u64::MAX).await;
    let bytes = status(&probe).await["model_bytes"][MODEL].as_u64().unwrap();
    let file = std::fs::metadata(&model).unwrap().len();
    assert!(bytes > file, "weights and KV cache: {bytes} vs file {file}");

    // Room for one of the two at a time.
    let (client, progress) = server_with(bytes + bytes / 2).await;
    let first = ok(client
        .call_tool(call(
            "load_model",
            json!({"model": MODEL, "keep_alive_secs": 0}),
        ))
        .await
        .unwrap());
    assert_eq!(first["already_loaded"], false);
    let second = ok(client
        .call_tool(call("load_model", json!({"model": "second"})))
        .await
        .unwrap());
    assert_eq!(
        second["unloaded"],
        json!([MODEL]),
        "least recently used goes"
    );
    let now = status(&client).await;
    assert_eq!(loaded_names(&now), ["second.gguf"]);
    assert_eq!(now["memory_used_bytes"], bytes);
    assert!(now["loadable_bytes"].as_u64().unwrap() <= bytes + bytes / 2);

    // A model in use is never unloaded: asked while the call generates (a
    // greedy story that runs to max_tokens).
    let generating = client.call_tool(call(
        "text_generate",
        json!({"prompt": "Write a very long story about a dragon, with many chapters.",
               "model": "second", "max_tokens": 300, "temperature": 0}),
    ));
    let unload_meanwhile = async {
        while progress.count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client
            .call_tool(call("unload_model", json!({"model": "second.gguf"})))
            .await
            .unwrap()
    };
    let (generated, refused) = tokio::join!(generating, unload_meanwhile);
    ok(generated.unwrap());
    assert_eq!(refused.is_error, Some(true));
    assert!(
        text(&refused).contains("running on it"),
        "{}",
        text(&refused)
    );
    let freed = ok(client
        .call_tool(call("unload_model", json!({"model": "second.gguf"})))
        .await
        .unwrap());
    assert_eq!(freed["freed_bytes"], bytes);
    assert!(loaded_names(&status(&client).await).is_empty());

    // Keep-alive: unloaded once idle that long.
    ok(client
        .call_tool(call(
            "load_model",
            json!({"model": MODEL, "keep_alive_secs": 1}),
        ))
        .await
        .unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !loaded_names(&status(&client).await).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "keep-alive never expired"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Too big for the budget: a clear error, nothing loaded.
    let (tiny, _) = server_with(bytes / 2).await;
    let refused = tiny
        .call_tool(call(
            "text_generate",
            json!({"prompt": "hi", "max_tokens": 2}),
        ))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(
        text(&refused).contains("memory budget"),
        "{}",
        text(&refused)
    );
}
