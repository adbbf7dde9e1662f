//! Health checks of an upstream: a live one is pinged, and its lists are
//! fetched again only when it says they changed (or they grew old), so a
//! cluster of many nodes does not list every replica every few seconds.
//! And a forwarded call's progress reaches its caller before its answer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jetsonmind_core::UnitServer;
use jetsonmind_core::config::McpConfig;
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, CallToolResult, NumberOrString, ProgressNotificationParam,
    ProgressToken, ServerResult,
};
use jetsonmind_core::serve::in_process;
use jetsonmind_core::subscribe::ListChanges;
use jetsonmind_core::upstream::forward::{self, ProgressRoutes};
use jetsonmind_core::upstream::{Connector, ForwardingClient, ProgressSink, Upstream, UpstreamId};
use jetsonmind_testkit::FakeUnit;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(10);
const NEVER: Duration = Duration::from_secs(3600);

async fn check(upstream: &Upstream, relist_after: Duration) {
    let handler = ForwardingClient {
        upstream: UpstreamId::fresh(),
        progress: Arc::default(),
        changes: None,
        lists_changed: Some(upstream.lists_changed()),
    };
    upstream.check(handler, TIMEOUT, relist_after).await;
    assert!(upstream.is_up());
}

/// Listing calls since `before`, once the server has seen them.
fn listed_since(unit: &FakeUnit, before: usize) -> usize {
    unit.times_listed() - before
}

#[tokio::test]
async fn a_live_upstream_is_listed_again_only_when_it_says_its_lists_changed() {
    let changes = Arc::new(ListChanges::default());
    let unit = FakeUnit::named("counted")
        .with_list_changes(changes.clone())
        .build();
    let server = UnitServer::new(unit.clone(), McpConfig::default());
    let connector = Connector::InProcess(Arc::new(move || in_process(server.clone())));
    let upstream = Upstream::new("counted", connector);

    check(&upstream, NEVER).await;
    let before = unit.times_listed();
    for _ in 0..3 {
        check(&upstream, NEVER).await;
    }
    assert_eq!(
        listed_since(&unit, before),
        0,
        "pings only while nothing changed"
    );

    changes.announce(true, false);
    let told = async {
        while !upstream.lists_changed().load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(TIMEOUT, told)
        .await
        .expect("the list change reaches the client");
    check(&upstream, NEVER).await;
    assert!(
        listed_since(&unit, before) > 0,
        "listed again after the change"
    );

    let before = unit.times_listed();
    check(&upstream, Duration::ZERO).await;
    assert!(
        listed_since(&unit, before) > 0,
        "listed again once the lists are older than relist_after"
    );
}

#[derive(schemars::JsonSchema, serde::Deserialize)]
struct NoArgs {}

const PROGRESS_STEPS: usize = 5;

/// A unit whose tool `count` reports progress 1..=PROGRESS_STEPS and
/// answers at once after the last.
fn counting() -> Arc<FakeUnit> {
    FakeUnit::named("counting")
        .tool_of::<NoArgs>("count", "counts")
        .answers(|call| async move {
            let sink = call
                .context
                .progress
                .expect("the caller asked for progress");
            for step in 1..=PROGRESS_STEPS {
                let token = ProgressToken(NumberOrString::Number(0));
                sink.report(ProgressNotificationParam::new(token, step as f64))
                    .await;
            }
            Ok(CallToolResult::success(vec![]))
        })
        .build()
}

/// rmcp handles each notification in a task of its own; the answer must not
/// overtake the progress sent before it (the last step was once lost so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_calls_progress_is_all_relayed_before_its_answer() {
    let server = UnitServer::new(counting(), McpConfig::default());
    let upstream = UpstreamId::fresh();
    let routes = Arc::new(ProgressRoutes::default());
    let handler = ForwardingClient {
        upstream,
        progress: routes.clone(),
        changes: None,
        lists_changed: None,
    };
    let client = handler
        .connect(in_process(server))
        .await
        .expect("connected");
    let never = CancellationToken::new();
    for _ in 0..50 {
        let (sender, mut heard) = mpsc::unbounded_channel();
        let answer = forward::call_tool(
            client.peer(),
            upstream,
            &routes,
            CallToolRequestParams::new("count"),
            Some(ProgressSink::channel(sender)),
            &never,
        )
        .await
        .expect("an answer");
        let ServerResult::CallToolResult(answer) = answer else {
            panic!("not a tool result: {answer:?}");
        };
        assert_ne!(answer.is_error, Some(true), "{answer:?}");
        let mut steps = vec![];
        while let Ok(progress) = heard.try_recv() {
            steps.push(progress.progress as usize);
        }
        assert_eq!(steps, (1..=PROGRESS_STEPS).collect::<Vec<_>>());
    }
}
