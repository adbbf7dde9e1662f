//! Health checks of an upstream: a live one is pinged, and its lists are
//! fetched again only when it says they changed (or they grew old), so a
//! cluster of many nodes does not list every replica every few seconds.
//! And a forwarded call's progress reaches its caller before its answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jetsonmind_core::auth::Principal;
use jetsonmind_core::config::McpConfig;
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{
    CallToolResult, NumberOrString, ProgressNotificationParam, ProgressToken,
};
use jetsonmind_core::serve::in_process;
use jetsonmind_core::subscribe::ListChanges;
use jetsonmind_core::upstream::{
    Connector, ForwardingClient, LocalClient, ProgressSink, Upstream, UpstreamId,
};
use jetsonmind_core::{Catalog, McpUnit, ToolCall, UnitIdentity, UnitServer, tool_from};
use tokio::sync::mpsc;

/// A unit that counts how often its catalog is listed, and can say its
/// lists changed.
#[derive(Default)]
struct Counted {
    listed: AtomicUsize,
    changes: Arc<ListChanges>,
}

impl McpUnit for Counted {
    fn identity(&self) -> UnitIdentity {
        UnitIdentity {
            name: "counted",
            title: "Counted",
            instructions: "test unit",
        }
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.listed.fetch_add(1, Ordering::SeqCst);
        Arc::new(Catalog::new(vec![], vec![], vec![]).expect("an empty catalog"))
    }

    async fn call_tool(&self, _call: ToolCall) -> Result<CallToolResult, McpError> {
        Ok(CallToolResult::success(vec![]))
    }

    fn list_changes(&self) -> Option<Arc<ListChanges>> {
        Some(self.changes.clone())
    }
}

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
fn listed_since(unit: &Counted, before: usize) -> usize {
    unit.listed.load(Ordering::SeqCst) - before
}

#[tokio::test]
async fn a_live_upstream_is_listed_again_only_when_it_says_its_lists_changed() {
    let unit = Arc::new(Counted::default());
    let server = UnitServer::new(unit.clone(), McpConfig::default());
    let connector = Connector::InProcess(Arc::new(move || in_process(server.clone())));
    let upstream = Upstream::new("counted", connector);

    check(&upstream, NEVER).await;
    let before = unit.listed.load(Ordering::SeqCst);
    for _ in 0..3 {
        check(&upstream, NEVER).await;
    }
    assert_eq!(
        listed_since(&unit, before),
        0,
        "pings only while nothing changed"
    );

    unit.changes.announce(true, false);
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

    let before = unit.listed.load(Ordering::SeqCst);
    check(&upstream, Duration::ZERO).await;
    assert!(
        listed_since(&unit, before) > 0,
        "listed again once the lists are older than relist_after"
    );
}

#[derive(schemars::JsonSchema, serde::Deserialize)]
struct NoArgs {}

/// A unit whose tool `count` reports progress 1..=PROGRESS_STEPS and
/// answers at once after the last.
struct Counting(Arc<Catalog>);

const PROGRESS_STEPS: usize = 5;

impl McpUnit for Counting {
    fn identity(&self) -> UnitIdentity {
        UnitIdentity {
            name: "counting",
            title: "Counting",
            instructions: "test unit",
        }
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.0.clone()
    }

    async fn call_tool(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
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
    }
}

/// rmcp handles each notification in a task of its own; the answer must not
/// overtake the progress sent before it (the last step was once lost so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_calls_progress_is_all_relayed_before_its_answer() {
    let catalog = Catalog::new(vec![tool_from::<NoArgs>("count", "counts")], vec![], vec![])
        .expect("a catalog");
    let server = UnitServer::new(Arc::new(Counting(Arc::new(catalog))), McpConfig::default());
    let client = LocalClient::connect(server).await.expect("connected");
    for _ in 0..50 {
        let (sender, mut heard) = mpsc::unbounded_channel();
        let answer = client
            .call(
                "count",
                Default::default(),
                &Principal::local(),
                Some(ProgressSink::channel(sender)),
            )
            .await
            .expect("an answer");
        assert_ne!(answer.is_error, Some(true), "{answer:?}");
        let mut steps = vec![];
        while let Ok(progress) = heard.try_recv() {
            steps.push(progress.progress as usize);
        }
        assert_eq!(steps, (1..=PROGRESS_STEPS).collect::<Vec<_>>());
    }
}
