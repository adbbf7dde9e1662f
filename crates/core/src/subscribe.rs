//! Resource change notifications, for every server.
//!
//! A unit announces that one of its resources changed with
//! [`ResourceUpdates::publish`]; [`UnitServer`](crate::UnitServer) delivers
//! that to each client subscribed to the URI, in either protocol era:
//! `resources/subscribe` on a session (stdio, in-process, an HTTP session), or a
//! `subscriptions/listen` stream (2026-07-28). Units that do work to produce
//! changes (a metrics ticker, the gateway's upstream subscriptions) ask
//! [`ResourceUpdates::is_watched`] and wait on
//! [`ResourceUpdates::interest_changed`] instead of working for nobody.
//!
//! A unit can also tell a resource's subscribers something about it in
//! words ([`ResourceUpdates::log`]: an alert fired). That goes as a
//! `notifications/message` to handshake-era sessions subscribed to the URI,
//! at or above the level the session set, if it set one; a
//! `subscriptions/listen` stream cannot carry log messages, so its
//! subscribers read the resource instead.

#![allow(deprecated)] // rmcp marks MCP logging deprecated (SEP-2577); both eras are served.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use rmcp::model::{LoggingMessageNotificationParam, ResourceUpdatedNotificationParam};
use rmcp::service::{Peer, SubscriptionSink};
use rmcp::{ErrorData as McpError, RoleServer};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::client_log::{ConnectionLevel, severity};

/// Changes not yet delivered to a slow subscriber before it counts as lagging
/// (it is then told that everything it watches changed).
const BACKLOG: usize = 256;

/// What a resource's subscribers are told.
#[derive(Debug, Clone)]
enum Change {
    /// It changed: read it again.
    Updated(String),
    /// A message about it, for sessions that take log messages.
    Log(String, Arc<LoggingMessageNotificationParam>),
}

impl Change {
    fn uri(&self) -> &str {
        match self {
            Change::Updated(uri) | Change::Log(uri, _) => uri,
        }
    }
}

pub struct ResourceUpdates {
    sender: broadcast::Sender<Change>,
    watchers: Mutex<BTreeMap<String, usize>>,
    interest: Notify,
}

impl Default for ResourceUpdates {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
            watchers: Mutex::new(BTreeMap::new()),
            interest: Notify::new(),
        }
    }
}

impl ResourceUpdates {
    /// Tell `uri`'s subscribers that it changed (they read it again).
    pub fn publish(&self, uri: &str) {
        // No receiver is not an error: nobody is subscribed.
        let _ = self.sender.send(Change::Updated(uri.to_string()));
    }

    /// Tell `uri`'s subscribers `message` about it (see the module notes).
    pub fn log(&self, uri: &str, message: LoggingMessageNotificationParam) {
        let _ = self
            .sender
            .send(Change::Log(uri.to_string(), Arc::new(message)));
    }

    /// Whether any client is subscribed to `uri` now.
    pub fn is_watched(&self, uri: &str) -> bool {
        self.watchers().get(uri).is_some_and(|n| *n > 0)
    }

    /// Every URI some client is subscribed to.
    pub fn watched(&self) -> BTreeSet<String> {
        self.watchers().keys().cloned().collect()
    }

    /// Resolves the next time a URI gains its first or loses its last
    /// subscriber. `enable()` it before looking at [`Self::watched`] so a
    /// change in between is not missed.
    pub fn interest_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.interest.notified()
    }

    fn watchers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, usize>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count a subscriber of each of `uris` until the guard drops.
    fn watch(self: &Arc<Self>, uris: &BTreeSet<String>) -> Watch {
        let mut changed = false;
        let mut watchers = self.watchers();
        for uri in uris {
            let count = watchers.entry(uri.clone()).or_default();
            *count += 1;
            changed |= *count == 1;
        }
        drop(watchers);
        if changed {
            self.interest.notify_waiters();
        }
        Watch {
            updates: self.clone(),
            uris: uris.clone(),
        }
    }

    /// Deliver changes of `uris` through `deliver` until `stop` fires or
    /// `deliver` fails (the client went away).
    async fn relay<F, Fut>(
        self: Arc<Self>,
        uris: BTreeSet<String>,
        stop: CancellationToken,
        deliver: F,
    ) where
        F: Fn(Change) -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let mut receiver = self.sender.subscribe();
        let _watch = self.watch(&uris);
        loop {
            let changed: Vec<Change> = tokio::select! {
                _ = stop.cancelled() => return,
                received = receiver.recv() => match received {
                    Ok(change) if uris.contains(change.uri()) => vec![change],
                    Ok(_) => continue,
                    // Some changes were missed: any of the watched may have changed.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        uris.iter().cloned().map(Change::Updated).collect()
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            for change in changed {
                if !deliver(change).await {
                    return;
                }
            }
        }
    }
}

/// A registered interest; dropping it withdraws the interest.
struct Watch {
    updates: Arc<ResourceUpdates>,
    uris: BTreeSet<String>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut changed = false;
        let mut watchers = self.updates.watchers();
        for uri in &self.uris {
            if let Some(count) = watchers.get_mut(uri) {
                *count -= 1;
                if *count == 0 {
                    watchers.remove(uri);
                    changed = true;
                }
            }
        }
        drop(watchers);
        if changed {
            self.updates.interest.notify_waiters();
        }
    }
}

/// Announces that a unit's lists changed, so its clients list again instead
/// of calling what went away or missing what came (the gateway, whose merged
/// lists follow its backends).
pub struct ListChanges {
    versions: watch::Sender<ListVersions>,
}

/// How often each list changed so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ListVersions {
    tools: u64,
    resources: u64,
}

impl Default for ListChanges {
    fn default() -> Self {
        Self {
            versions: watch::channel(ListVersions::default()).0,
        }
    }
}

impl ListChanges {
    /// Tell clients that the tool list, the resource list (with its
    /// templates), or both changed.
    pub fn announce(&self, tools: bool, resources: bool) {
        self.versions.send_modify(|v| {
            v.tools += u64::from(tools);
            v.resources += u64::from(resources);
        });
    }

    /// Changes from now on (not from when a relay task first runs), for
    /// [`relay_list_changes`].
    fn follow(&self) -> ListFollower {
        let receiver = self.versions.subscribe();
        let seen = *receiver.borrow();
        ListFollower { receiver, seen }
    }
}

struct ListFollower {
    receiver: watch::Receiver<ListVersions>,
    /// The versions the client knows of.
    seen: ListVersions,
}

/// Deliver each change `follower` sees through `tools` / `resources` (which
/// say whether the client is still there) until `stop` fires or it is gone.
async fn relay_list_changes<T, R, TF, RF>(
    follower: ListFollower,
    stop: CancellationToken,
    tools: T,
    resources: R,
) where
    T: Fn() -> TF,
    R: Fn() -> RF,
    TF: Future<Output = bool>,
    RF: Future<Output = bool>,
{
    let ListFollower {
        mut receiver,
        mut seen,
    } = follower;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = receiver.changed() => if changed.is_err() { return },
        }
        let now = *receiver.borrow_and_update();
        let delivered = (now.tools == seen.tools || tools().await)
            && (now.resources == seen.resources || resources().await);
        if !delivered {
            return;
        }
        seen = now;
    }
}

/// The `resources/subscribe` subscriptions of one session (handshake era),
/// and the relay of its list changes. Dropped with the session, which ends
/// its relays.
#[derive(Default)]
pub(crate) struct SessionSubscriptions {
    relays: Mutex<HashMap<String, DropGuard>>,
    lists: Mutex<Option<DropGuard>>,
}

impl SessionSubscriptions {
    /// Relay `uri`'s changes to `peer`, and its log messages at or above
    /// `level` (all of them while the session has set none: it asked for
    /// this resource's news).
    pub fn subscribe(
        &self,
        updates: &Arc<ResourceUpdates>,
        uri: String,
        peer: Peer<RoleServer>,
        level: ConnectionLevel,
    ) {
        let stop = CancellationToken::new();
        let mut relays = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        if relays.contains_key(&uri) {
            return;
        }
        relays.insert(uri.clone(), stop.clone().drop_guard());
        let uris = BTreeSet::from([uri]);
        tokio::spawn(updates.clone().relay(uris, stop, move |change| {
            let peer = peer.clone();
            let level = level.get();
            async move {
                match change {
                    Change::Updated(uri) => {
                        let params = ResourceUpdatedNotificationParam::new(uri);
                        peer.notify_resource_updated(params).await.is_ok()
                    }
                    Change::Log(_, message) => {
                        if level.is_some_and(|l| severity(message.level) < severity(l)) {
                            return true;
                        }
                        let message = (*message).clone();
                        peer.notify_logging_message(message).await.is_ok()
                    }
                }
            }
        }));
    }

    /// Returns false when `uri` was not subscribed.
    pub fn unsubscribe(&self, uri: &str) -> bool {
        let mut relays = self.relays.lock().unwrap_or_else(|p| p.into_inner());
        relays.remove(uri).is_some()
    }

    /// Tell this session's client of every list change, once started.
    pub fn follow_list_changes(&self, changes: Arc<ListChanges>, peer: Peer<RoleServer>) {
        let mut lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
        if lists.is_some() {
            return;
        }
        let stop = CancellationToken::new();
        *lists = Some(stop.clone().drop_guard());
        let follower = changes.follow();
        let tools_peer = peer.clone();
        tokio::spawn(async move {
            let tools = || async { tools_peer.notify_tool_list_changed().await.is_ok() };
            let resources = || async { peer.notify_resource_list_changed().await.is_ok() };
            relay_list_changes(follower, stop, tools, resources).await
        });
    }
}

/// Serve the list changes a `subscriptions/listen` stream (2026-07-28) asked
/// for until it is cancelled.
pub(crate) async fn listen_lists(
    changes: Arc<ListChanges>,
    filter: &rmcp::model::SubscriptionFilter,
    sink: SubscriptionSink,
    stop: CancellationToken,
) {
    let wants_tools = filter.tools_list_changed == Some(true);
    let wants_resources = filter.resources_list_changed == Some(true);
    let tools = || async { !wants_tools || sink.notify_tool_list_changed().await.is_ok() };
    let resources =
        || async { !wants_resources || sink.notify_resource_list_changed().await.is_ok() };
    relay_list_changes(changes.follow(), stop, tools, resources).await
}

/// Serve one `subscriptions/listen` stream (2026-07-28) until it is cancelled.
pub(crate) async fn listen(
    updates: Arc<ResourceUpdates>,
    uris: BTreeSet<String>,
    sink: SubscriptionSink,
    stop: CancellationToken,
) {
    updates
        .relay(uris, stop, move |change| {
            let sink = sink.clone();
            async move {
                match change {
                    Change::Updated(uri) => sink.notify_resource_updated(uri).await.is_ok(),
                    // A listen stream cannot carry log messages.
                    Change::Log(..) => true,
                }
            }
        })
        .await
}

/// The error for `resources/subscribe` on a request that cannot carry
/// notifications later (a stateless HTTP request has no session to send them on).
pub(crate) fn needs_session() -> McpError {
    McpError::invalid_request(
        "resources/subscribe needs a session to send updates on, and this HTTP request is \
         stateless (no Mcp-Session-Id): send it on the session `initialize` opened, use \
         subscriptions/listen (protocol 2026-07-28), or connect over stdio",
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watching_counts_subscribers_and_signals_interest() {
        let updates = Arc::new(ResourceUpdates::default());
        let uris = BTreeSet::from(["a://x".to_string()]);
        let interest = updates.interest_changed();
        tokio::pin!(interest);
        // Registered before the change, so the notification is not missed.
        interest.as_mut().enable();
        let first = updates.watch(&uris);
        interest.await;
        let second = updates.watch(&uris);
        assert!(updates.is_watched("a://x"));
        drop(first);
        assert!(updates.is_watched("a://x"));
        drop(second);
        assert!(!updates.is_watched("a://x"));
        assert!(updates.watched().is_empty());
    }

    #[tokio::test]
    async fn list_changes_reach_a_follower_as_what_changed() {
        let changes = Arc::new(ListChanges::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let follower = changes.follow();
        let relay = tokio::spawn({
            let stop = stop.clone();
            async move {
                let said = |what: &'static str| {
                    let tx = tx.clone();
                    move || {
                        let tx = tx.clone();
                        async move { tx.send(what).is_ok() }
                    }
                };
                relay_list_changes(follower, stop, said("tools"), said("resources")).await
            }
        });
        changes.announce(true, false);
        assert_eq!(rx.recv().await, Some("tools"));
        changes.announce(false, true);
        assert_eq!(rx.recv().await, Some("resources"));
        stop.cancel();
        relay.await.unwrap();
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn relays_only_watched_uris_and_stops_when_told() {
        let updates = Arc::new(ResourceUpdates::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let relay = tokio::spawn(updates.clone().relay(
            BTreeSet::from(["a://x".to_string()]),
            stop.clone(),
            move |change| {
                let tx = tx.clone();
                async move { tx.send(change).is_ok() }
            },
        ));
        while !updates.is_watched("a://x") {
            tokio::task::yield_now().await;
        }
        updates.publish("b://other");
        updates.log(
            "b://other",
            LoggingMessageNotificationParam::new(
                rmcp::model::LoggingLevel::Warning,
                serde_json::json!("not watched"),
            ),
        );
        updates.publish("a://x");
        let said = serde_json::json!("it fired");
        updates.log(
            "a://x",
            LoggingMessageNotificationParam::new(rmcp::model::LoggingLevel::Warning, said.clone()),
        );
        assert!(matches!(rx.recv().await, Some(Change::Updated(uri)) if uri == "a://x"));
        assert!(
            matches!(rx.recv().await, Some(Change::Log(uri, m)) if uri == "a://x" && m.data == said)
        );
        stop.cancel();
        relay.await.unwrap();
        assert!(!updates.is_watched("a://x"));
        assert!(rx.try_recv().is_err());
    }
}
