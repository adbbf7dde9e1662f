//! The gateway's client side: progress notifications from a backend are sent
//! on to the client whose call caused them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use jetsonmind_core::rmcp::model::{
    ClientConfig, Implementation, NumberOrString, ProgressNotificationParam, ProgressToken,
};
use jetsonmind_core::rmcp::service::{NotificationContext, Peer};
use jetsonmind_core::rmcp::{ClientHandler, RoleClient, RoleServer};

/// Progress tokens the gateway handed to backends, and whom they belong to.
///
/// Each forwarded call gets a fresh token: two clients may both use token
/// `1`, and their progress must not cross.
#[derive(Default)]
pub struct ProgressRoutes {
    next: AtomicU64,
    routes: Mutex<HashMap<String, (Peer<RoleServer>, ProgressToken)>>,
}

/// Removes the route when the forwarded call ends, however it ends.
pub struct RouteGuard {
    routes: Arc<ProgressRoutes>,
    key: String,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.routes.map().remove(&self.key);
    }
}

impl ProgressRoutes {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Peer<RoleServer>, ProgressToken)>> {
        self.routes.lock().expect("progress routes lock")
    }

    /// A new token for the backend call, routed to `client`'s `token`.
    pub fn register(
        self: &Arc<Self>,
        client: Peer<RoleServer>,
        token: ProgressToken,
    ) -> (ProgressToken, RouteGuard) {
        let key = format!("gw-{}", self.next.fetch_add(1, Ordering::Relaxed));
        self.map().insert(key.clone(), (client, token));
        let ours = ProgressToken(NumberOrString::String(key.clone().into()));
        (
            ours,
            RouteGuard {
                routes: self.clone(),
                key,
            },
        )
    }

    fn lookup(&self, token: &ProgressToken) -> Option<(Peer<RoleServer>, ProgressToken)> {
        match &token.0 {
            NumberOrString::String(key) => self.map().get(key.as_ref()).cloned(),
            NumberOrString::Number(_) => None,
        }
    }
}

#[derive(Clone)]
pub struct ForwardingClient {
    pub progress: Arc<ProgressRoutes>,
}

impl ClientHandler for ForwardingClient {
    fn get_info(&self) -> ClientConfig {
        let mut config = ClientConfig::default();
        config.client_info = Implementation::new("jetsonmind-gateway", env!("CARGO_PKG_VERSION"));
        config
    }

    async fn on_progress(
        &self,
        mut params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let Some((client, token)) = self.progress.lookup(&params.progress_token) else {
            return;
        };
        params.progress_token = token;
        if let Err(e) = client.notify_progress(params).await {
            tracing::debug!(error = %e, "client went away before its progress arrived");
        }
    }
}
