//! Health checks of an upstream: a live one is pinged, and its lists are
//! fetched again only when it says they changed (or they grew old), so a
//! cluster of many nodes does not list every replica every few seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jetsonmind_core::config::McpConfig;
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::CallToolResult;
use jetsonmind_core::serve::in_process;
use jetsonmind_core::subscribe::ListChanges;
use jetsonmind_core::upstream::{Connector, ForwardingClient, Upstream, UpstreamId};
use jetsonmind_core::{Catalog, McpUnit, ToolCall, UnitIdentity, UnitServer};

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
