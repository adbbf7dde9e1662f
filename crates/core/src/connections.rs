//! Client connections of an HTTP server: each accepted TCP connection is
//! registered with who has used it and how much, and can be closed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Identifies a connection; put in each request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub u64);

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    pub id: u64,
    pub peer: String,
    pub opened_unix: u64,
    pub requests: u64,
    /// The last principal seen on it (`key:…`, `oauth:…`, `local`).
    pub principal: Option<String>,
}

struct Open {
    info: ConnectionInfo,
    close: CancellationToken,
}

#[derive(Default)]
pub struct Connections {
    next: AtomicU64,
    open: Mutex<BTreeMap<ConnectionId, Open>>,
}

/// Unregisters the connection when it ends, however it ends.
pub struct Registration<'a> {
    connections: &'a Connections,
    pub id: ConnectionId,
    pub close: CancellationToken,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.connections.open().remove(&self.id);
    }
}

impl Connections {
    fn open(&self) -> std::sync::MutexGuard<'_, BTreeMap<ConnectionId, Open>> {
        self.open.lock().expect("connections lock")
    }

    pub fn register(&self, peer: SocketAddr) -> Registration<'_> {
        let id = ConnectionId(self.next.fetch_add(1, Ordering::Relaxed) + 1);
        let close = CancellationToken::new();
        let info = ConnectionInfo {
            id: id.0,
            peer: peer.to_string(),
            opened_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            requests: 0,
            principal: None,
        };
        self.open().insert(
            id,
            Open {
                info,
                close: close.clone(),
            },
        );
        Registration {
            connections: self,
            id,
            close,
        }
    }

    /// A request arrived on `id` from `principal`.
    pub fn seen(&self, id: ConnectionId, principal: &str) {
        if let Some(open) = self.open().get_mut(&id) {
            open.info.requests += 1;
            if open.info.principal.as_deref() != Some(principal) {
                open.info.principal = Some(principal.to_string());
            }
        }
    }

    pub fn list(&self) -> Vec<ConnectionInfo> {
        self.open().values().map(|o| o.info.clone()).collect()
    }

    /// Close connection `id` now (requests on it are dropped). False when
    /// there is no such connection.
    pub fn close(&self, id: u64) -> bool {
        match self.open().get(&ConnectionId(id)) {
            Some(open) => {
                open.close.cancel();
                true
            }
            None => false,
        }
    }
}
