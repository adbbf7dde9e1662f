//! An OpenAI-compatible provider as a replica, against a fake provider on
//! loopback that answers as the test scripts it: streamed answers with
//! progress, every kind of failure typed as the fleet needs it, a cancelled
//! call closing its connection, and a fleet routing to it and charging its
//! price. (The e2e tests run it against llama.cpp's own server.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetsonmind_contract::inference::GenerationProgress;
use jetsonmind_contract::replica::{REPLICA_STATUS_URI, ReplicaReport};
use jetsonmind_contract::route;
use jetsonmind_control::config::{ControlConfig, EgressRule, HybridConfig, ProviderConfig};
use jetsonmind_control::fleet::{Fleet, FleetSettings, Origin};
use jetsonmind_control::link::{LinkError, OpenAiLink, Relay, ReplicaLink};
use jetsonmind_core::auth::Principal;
use jetsonmind_core::rmcp::model::{CallToolRequestParams, CallToolResult, ResourceContents};
use jetsonmind_core::upstream::ProgressSink;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// What the fake provider answers to a chat completion.
#[derive(Clone)]
enum Script {
    /// These events, then `[DONE]`.
    Stream(Vec<Value>),
    /// A status and a body.
    Status(u16, &'static str),
    /// Raw bytes as the stream's body.
    Raw(&'static str),
    /// Headers, then nothing.
    Stall,
    /// One token every few milliseconds, until the client goes away.
    Endless,
}

/// What the fake provider saw.
#[derive(Default)]
struct Seen {
    bodies: Mutex<Vec<Value>>,
    authorization: Mutex<Option<String>>,
    /// An endless stream's client closed its connection.
    client_left: AtomicBool,
    left: Notify,
}

struct FakeProvider {
    url: String,
    seen: Arc<Seen>,
}

impl FakeProvider {
    async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let shared = seen.clone();
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                tokio::spawn(answer(socket, script.clone(), shared.clone()));
            }
        });
        Self { url, seen }
    }
}

/// One request on `socket`, answered by `script` (`/models`: an empty list).
async fn answer(mut socket: TcpStream, script: Script, seen: Arc<Seen>) {
    let (head, body) = read_request(&mut socket).await;
    if let Some(line) = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
    {
        *seen.authorization.lock().unwrap() = Some(line.split_once(": ").unwrap().1.to_string());
    }
    if head.starts_with("GET /v1/models") {
        let body = r#"{"object":"list","data":[]}"#;
        let _ = socket
            .write_all(response(200, "application/json", body).as_bytes())
            .await;
        return;
    }
    seen.bodies
        .lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap());
    let stream_head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
    match script {
        Script::Stream(events) => {
            let mut out = stream_head.to_string();
            for event in events {
                out.push_str(&format!("data: {event}\n\n"));
            }
            out.push_str("data: [DONE]\n\n");
            let _ = socket.write_all(out.as_bytes()).await;
        }
        Script::Status(status, body) => {
            let _ = socket
                .write_all(response(status, "application/json", body).as_bytes())
                .await;
        }
        Script::Raw(body) => {
            let _ = socket
                .write_all(format!("{stream_head}{body}").as_bytes())
                .await;
        }
        Script::Stall => {
            let _ = socket.write_all(stream_head.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Script::Endless => {
            let _ = socket.write_all(stream_head.as_bytes()).await;
            loop {
                let event = format!("data: {}\n\n", token("x "));
                if socket.write_all(event.as_bytes()).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen.client_left.store(true, Ordering::SeqCst);
            seen.left.notify_waiters();
        }
    }
}

async fn read_request(socket: &mut TcpStream) -> (String, Vec<u8>) {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    let end = loop {
        let n = socket.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the request ended early");
        bytes.extend_from_slice(&buffer[..n]);
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .map_or(0, |n| n.trim().parse().unwrap());
    while bytes.len() < end + length {
        let n = socket.read(&mut buffer).await.unwrap();
        bytes.extend_from_slice(&buffer[..n]);
    }
    (head, bytes[end..].to_vec())
}

fn response(status: u16, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn token(text: &str) -> Value {
    json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
}

fn finish(reason: &str) -> Value {
    json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
}

fn provider(url: &str) -> ProviderConfig {
    ProviderConfig {
        name: "fake".into(),
        base_url: url.into(),
        models: [("cloud-small".to_string(), "small-v2".to_string())].into(),
        idle_timeout_ms: 500,
        ..ProviderConfig::default()
    }
}

/// A link to `fake`, checked (up).
async fn link_to(fake: &FakeProvider, key: Option<&str>) -> OpenAiLink {
    let link = OpenAiLink::new(provider(&fake.url), key.map(str::to_string), 2).unwrap();
    link.check(&Relay::default(), Duration::from_secs(5)).await;
    assert!(link.is_up(), "{:?}", link.status().last_error);
    link
}

fn generate(prompt: &str) -> CallToolRequestParams {
    let arguments = json!({"prompt": prompt, "model": "cloud-small", "max_tokens": 16});
    CallToolRequestParams::new("text_generate")
        .with_arguments(arguments.as_object().unwrap().clone())
}

async fn call(link: &OpenAiLink, sink: Option<ProgressSink>) -> Result<CallToolResult, LinkError> {
    link.call_tool(
        &Relay::default(),
        generate("Hi"),
        sink,
        &CancellationToken::new(),
    )
    .await
}

fn text_of(result: &CallToolResult) -> String {
    result.content[0].as_text().expect("text").text.clone()
}

#[tokio::test]
async fn a_streamed_answer_comes_with_progress_shaped_as_computes() {
    let usage = json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 4}});
    let events = vec![
        token("Paris"),
        token(" is"),
        token(" the"),
        token(" capital"),
        finish("stop"),
        usage,
    ];
    let fake = FakeProvider::start(Script::Stream(events)).await;
    let link = link_to(&fake, Some("sk-test-123")).await;
    let (tx, mut progress) = mpsc::unbounded_channel();
    let result = call(&link, Some(ProgressSink::channel(tx))).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert_eq!(text_of(&result), "Paris is the capital");
    let out = result.structured_content.unwrap();
    assert_eq!(out["text"], "Paris is the capital");
    assert_eq!(out["model"], "cloud-small", "the name the call used");
    assert_eq!(out["finish_reason"], "stop");
    assert_eq!(
        out["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 4})
    );
    assert!(out["timings"]["generation_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(out["cached"], false);
    // Every 2 tokens (this link's progress_every), the text so far.
    let mut texts = Vec::new();
    while let Ok(update) = progress.try_recv() {
        let update = GenerationProgress::read(&update).unwrap();
        assert_eq!(update.max_tokens, 16);
        texts.push((update.tokens, update.text));
    }
    assert_eq!(
        texts,
        vec![(2, "Paris is".into()), (4, "Paris is the capital".into())]
    );
    let sent = fake.seen.bodies.lock().unwrap()[0].clone();
    assert_eq!(sent["model"], "small-v2");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["messages"], json!([{"role": "user", "content": "Hi"}]));
    assert_eq!(
        fake.seen.authorization.lock().unwrap().as_deref(),
        Some("Bearer sk-test-123")
    );
}

#[tokio::test]
async fn it_reports_its_capacity_and_mapped_models_as_a_compute_replica() {
    let fake = FakeProvider::start(Script::Stream(vec![])).await;
    let link = link_to(&fake, None).await;
    let read = link.read_resource(REPLICA_STATUS_URI).await.unwrap();
    let ResourceContents::TextResourceContents { text, .. } = &read.contents[0] else {
        panic!("not text");
    };
    let report: ReplicaReport = serde_json::from_str(text).unwrap();
    assert_eq!(report.capacity, ProviderConfig::default().max_concurrent);
    let loaded: Vec<&str> = report.loaded.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(loaded, vec!["cloud-small"]);
    let tools: Vec<String> = link
        .offer()
        .unwrap()
        .tools
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(tools, vec!["text_generate", "code_complete"]);
    assert!(
        fake.seen.authorization.lock().unwrap().is_none(),
        "no key, no header"
    );
    assert!(!format!("{:?}", link.status()).contains("Bearer"));
}

#[tokio::test]
async fn failures_are_typed_for_the_fleet() {
    let overloaded =
        FakeProvider::start(Script::Status(429, r#"{"error":{"message":"slow down"}}"#)).await;
    let outcome = call(&link_to(&overloaded, None).await, None).await;
    assert!(
        matches!(&outcome, Err(LinkError::Unavailable(e)) if e.contains("slow down")),
        "{outcome:?}"
    );

    let refused = FakeProvider::start(Script::Status(
        400,
        r#"{"error":{"message":"context too long"}}"#,
    ))
    .await;
    let answer = call(&link_to(&refused, None).await, None).await.unwrap();
    assert_eq!(answer.is_error, Some(true));
    assert!(text_of(&answer).contains("context too long"), "{answer:?}");

    for (script, says) in [
        (Script::Status(500, "oops"), "500"),
        (
            Script::Status(401, r#"{"error":{"message":"Invalid API Key"}}"#),
            "API key",
        ),
        (
            Script::Raw("data: {not json\n\n"),
            "not a chat completion chunk",
        ),
        (
            Script::Raw("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"),
            "ended before",
        ),
        (Script::Stall, "idle_timeout_ms"),
    ] {
        let fake = FakeProvider::start(script).await;
        let outcome = call(&link_to(&fake, None).await, None).await;
        assert!(
            matches!(&outcome, Err(LinkError::Broken(e)) if e.contains(says)),
            "{says}: {outcome:?}"
        );
    }

    let failed_inside = vec![token("a"), json!({"error": {"message": "model crashed"}})];
    let fake = FakeProvider::start(Script::Stream(failed_inside)).await;
    let answer = call(&link_to(&fake, None).await, None).await.unwrap();
    assert!(text_of(&answer).contains("model crashed"), "{answer:?}");
}

#[tokio::test]
async fn nothing_listening_is_unavailable_and_down() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let link = OpenAiLink::new(provider(&url), None, 2).unwrap();
    link.check(&Relay::default(), Duration::from_secs(5)).await;
    assert!(!link.is_up());
    assert!(matches!(
        call(&link, None).await,
        Err(LinkError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_cancelled_call_closes_its_connection() {
    let fake = FakeProvider::start(Script::Endless).await;
    let link = link_to(&fake, None).await;
    let cancel = CancellationToken::new();
    let relay = Relay::default();
    let (tx, mut progress) = mpsc::unbounded_channel();
    let left = fake.seen.left.notified();
    tokio::pin!(left);
    left.as_mut().enable();
    let calling = link.call_tool(
        &relay,
        generate("Go on"),
        Some(ProgressSink::channel(tx)),
        &cancel,
    );
    let stop = async {
        progress.recv().await.expect("progress before the cancel");
        cancel.cancel();
    };
    let (outcome, ()) = tokio::join!(calling, stop);
    assert!(matches!(outcome, Err(LinkError::Cancelled)), "{outcome:?}");
    tokio::time::timeout(Duration::from_secs(30), left)
        .await
        .expect("the provider saw its client leave");
    assert!(fake.seen.client_left.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_fleet_routes_a_model_only_it_maps_to_it_and_charges_its_price() {
    let events = vec![token("ok"), finish("stop")];
    let fake = FakeProvider::start(Script::Stream(events)).await;
    let link = OpenAiLink::new(provider(&fake.url), None, 2).unwrap();
    let hybrid = HybridConfig {
        egress: EgressRule {
            budget: Some(5.0),
            ..EgressRule::default()
        },
        ..HybridConfig::default()
    };
    let settings = FleetSettings::new(
        &ControlConfig::default(),
        Duration::from_secs(2),
        Duration::from_secs(30),
    )
    .with_hybrid(&hybrid);
    let fleet = Fleet::new("compute", settings);
    fleet.add_link(Arc::new(link), Origin::Provider { cost: 2.5 });
    fleet.check().await;
    let caller = Principal::local();
    let none = CancellationToken::new();
    for _ in 0..2 {
        let result = fleet
            .call_tool(generate("Hi"), &caller, None, None, &none)
            .await
            .unwrap();
        let hops = route::hops(result.meta.as_ref().unwrap());
        assert_eq!(hops[0].replica, "fake");
        assert!(hops[0].tier.is_cloud());
        assert_eq!(hops[0].node, None, "a provider is no cluster node");
    }
    // 2 x 2.5 spent of 5: no room for a third.
    let third = fleet
        .call_tool(generate("Hi"), &caller, None, None, &none)
        .await
        .unwrap();
    assert_eq!(third.is_error, Some(true));
    assert_eq!(fake.seen.bodies.lock().unwrap().len(), 2);
    let other_model = {
        let arguments = json!({"prompt": "Hi", "model": "not-mapped"});
        CallToolRequestParams::new("text_generate")
            .with_arguments(arguments.as_object().unwrap().clone())
    };
    let refused = fleet
        .call_tool(other_model, &Principal::local(), None, None, &none)
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert_eq!(
        fake.seen.bodies.lock().unwrap().len(),
        2,
        "never sent there"
    );
}
