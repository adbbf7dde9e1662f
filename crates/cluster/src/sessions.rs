//! MCP sessions over NATS: a node serves its local servers to the cluster,
//! and opens sessions to other nodes' servers.
//!
//! Both ends are byte pipes of newline-delimited JSON-RPC (what rmcp speaks
//! over stdio), so `rmcp` runs unchanged on both sides: the server side is
//! the same in-process server the gateway uses, the client side an ordinary
//! [`Connector`] of the control plane's fleets.
//!
//! Liveness: every client message waits for its receipt, so a message to a
//! node that is gone fails at once (no responders); an idle session is
//! probed every `probe_ms`. A session that fails either way closes its pipe,
//! which the MCP client sees as a broken connection: its calls end now and
//! idempotent ones go to another replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::service::{Service, ServiceExt};
use async_nats::{HeaderMap, Message, RequestErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use jetsonmind_core::upstream::{Connector, OpenPipe};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::wire::{self, Assembled, Reassembly};
use crate::{Bus, ClusterError};

/// Bytes buffered in each direction of a session's pipe.
const PIPE_BYTES: usize = 1 << 20;

/// The service name nodes announce under (`$SRV.INFO.jetsonmind`).
pub const SERVICE_NAME: &str = "jetsonmind";

// ---------------------------------------------------------------- client --

/// A connector to `server` on `node`: each connection opens a new session.
pub fn connector(bus: &Bus, node: &str, server: &str) -> Connector {
    connector_in(bus, &bus.config.name.clone(), node, server)
}

/// A connector to `server` on `node` of another cluster reached through
/// the same NATS (the cloud's, from a site leafed to its hub).
pub fn connector_in(bus: &Bus, cluster: &str, node: &str, server: &str) -> Connector {
    let subject = crate::bus::server_subject(cluster, node, server);
    let label = match cluster == bus.config.name {
        true => format!("nats: {node}/{server}"),
        false => format!("nats: {cluster}.{node}/{server}"),
    };
    pipe_connector(bus, label, cluster, server, subject)
}

/// A connector to `server` on whichever node its queue group picks for each
/// new session; the session then stays on that node.
pub fn any_connector(bus: &Bus, server: &str) -> Connector {
    let subject = bus.any_subject(server);
    let cluster = bus.config.name.clone();
    pipe_connector(
        bus,
        format!("nats: any/{server}"),
        &cluster,
        server,
        subject,
    )
}

fn pipe_connector(
    bus: &Bus,
    label: String,
    cluster: &str,
    server: &str,
    subject: String,
) -> Connector {
    let bus = bus.clone();
    let target = Target {
        cluster: cluster.to_string(),
        server: server.to_string(),
    };
    let open: OpenPipe =
        Arc::new(move || open_session(bus.clone(), target.clone(), subject.clone()));
    Connector::Pipe { label, open }
}

/// The server a session is with, and the cluster whose node holds it.
#[derive(Clone)]
struct Target {
    cluster: String,
    server: String,
}

/// A pipe whose other end is a session with `target`, opened at `subject`.
fn open_session(bus: Bus, target: Target, subject: String) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    tokio::spawn(async move {
        let inbox = bus.client.new_inbox();
        let session = ClientSession {
            id: inbox.rsplit('.').next().unwrap_or_default().to_string(),
            inbox: bus.client.new_inbox(),
            bus,
            target,
            subject: std::sync::Mutex::new(subject),
        };
        if let Err(why) = session.run(ours).await {
            tracing::debug!(subject = %session.subject(), %why, "cluster session ended");
        }
    });
    theirs
}

struct ClientSession {
    bus: Bus,
    id: String,
    target: Target,
    /// Where its messages go: the node that holds the session, once known.
    subject: std::sync::Mutex<String>,
    inbox: String,
}

/// Why a session cannot go on.
type Broken = String;

impl ClientSession {
    fn subject(&self) -> String {
        self.subject.lock().expect("subject lock").clone()
    }

    /// Go on at the node a receipt says holds the session.
    fn follow(&self, receipt: &Message) {
        if let Some(node) = wire::header(receipt.headers.as_ref(), wire::NODE) {
            *self.subject.lock().expect("subject lock") =
                crate::bus::server_subject(&self.target.cluster, &node, &self.target.server);
        }
    }

    async fn run(&self, pipe: DuplexStream) -> Result<(), Broken> {
        let mut replies = self
            .bus
            .client
            .subscribe(self.inbox.clone())
            .await
            .map_err(|e| format!("cannot subscribe to the session's inbox: {e}"))?;
        let (read, mut write) = tokio::io::split(pipe);
        let mut lines = BufReader::new(read).lines();
        let mut joined = Reassembly::new(self.bus.config.max_message_bytes);
        let mut probe = tokio::time::interval(Duration::from_millis(self.bus.config.probe_ms));
        probe.tick().await;
        let outcome = loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => {
                        if let Some(answer) = self.send(line.as_bytes()).await? {
                            deliver(&mut write, &answer).await?;
                        }
                    }
                    // The MCP client closed the connection.
                    Ok(None) | Err(_) => break Ok(()),
                },
                message = replies.next() => {
                    let Some(message) = message else {
                        break Err("the session's inbox closed".to_string());
                    };
                    if wire::header(message.headers.as_ref(), wire::KIND).as_deref() == Some(wire::CLOSE) {
                        break Err("the server closed the session".to_string());
                    }
                    match joined.push(message.headers.as_ref(), &message.payload) {
                        Assembled::Message(line) => deliver(&mut write, &line).await?,
                        Assembled::Partial => {}
                        Assembled::TooLarge | Assembled::Malformed => {
                            break Err("the server sent a message that cannot be read".to_string());
                        }
                    }
                },
                _ = probe.tick() => self.probe().await?,
            }
        };
        self.close().await;
        outcome
    }

    fn headers(&self, kind: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(wire::SESSION, self.id.as_str());
        headers.insert(wire::REPLY_TO, self.inbox.as_str());
        if let Some(kind) = kind {
            headers.insert(wire::KIND, kind);
        }
        headers
    }

    /// Send one MCP message, in parts when it is large. Returns an answer to
    /// deliver to the client instead, when the message cannot be carried.
    async fn send(&self, message: &[u8]) -> Result<Option<Vec<u8>>, Broken> {
        let limit = self.bus.config.max_message_bytes;
        if let Some(why) = wire::oversize(message, limit, "message") {
            return Ok(wire::refusal(message, &why));
        }
        for (part, payload) in wire::parts(message, self.bus.max_payload()) {
            let mut headers = self.headers(None);
            if let Some(part) = part {
                headers.insert(wire::PART, part.as_str());
            }
            let receipt = self.request(headers, payload).await?;
            if let Some(error) = wire::header(receipt.headers.as_ref(), wire::ERROR) {
                return Err(format!("{} refused the message: {error}", self.subject()));
            }
            self.follow(&receipt);
        }
        Ok(None)
    }

    async fn probe(&self) -> Result<(), Broken> {
        let receipt = self
            .request(self.headers(Some(wire::PROBE)), Bytes::new())
            .await?;
        match wire::header(receipt.headers.as_ref(), wire::ERROR) {
            Some(error) => Err(format!("{}: {error}", self.subject())),
            None => Ok(()),
        }
    }

    async fn request(&self, headers: HeaderMap, payload: Bytes) -> Result<Message, Broken> {
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(payload)
            .timeout(Some(self.bus.probe_timeout()));
        let subject = self.subject();
        self.bus
            .client
            .send_request(subject.clone(), request)
            .await
            .map_err(|e| match e.kind() {
                RequestErrorKind::NoResponders => format!("{subject}: no node serves it"),
                RequestErrorKind::TimedOut => format!("{subject}: no receipt in time"),
                _ => format!("{subject}: {e}"),
            })
    }

    async fn close(&self) {
        let headers = self.headers(Some(wire::CLOSE));
        let _ = self
            .bus
            .client
            .publish_with_headers(self.subject(), headers, Bytes::new())
            .await;
    }
}

async fn deliver<W: AsyncWriteExt + Unpin>(write: &mut W, line: &[u8]) -> Result<(), Broken> {
    let written = async {
        write.write_all(line).await?;
        write.write_all(b"\n").await?;
        write.flush().await
    };
    written
        .await
        .map_err(|e| format!("the MCP client is gone: {e}"))
}

// ---------------------------------------------------------------- server --

/// This node's servers on the bus, announced through the NATS service API.
pub struct NodeService {
    service: Service,
}

impl NodeService {
    /// Serve each of `servers` (name, how to open a fresh session of it) at
    /// this node's subject for it, until `shutdown`.
    pub async fn start(
        bus: &Bus,
        servers: Vec<(String, OpenPipe)>,
        shutdown: CancellationToken,
    ) -> Result<Self, ClusterError> {
        let metadata = HashMap::from([
            ("node".to_string(), bus.node.clone()),
            ("cluster".to_string(), bus.config.name.clone()),
        ]);
        let service = bus
            .client
            .service_builder()
            .description("JetsonMind node: MCP servers over NATS")
            .metadata(metadata)
            .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(|e| ClusterError::Service(e.to_string()))?;
        let sessions = Arc::new(Sessions::new(bus));
        for (name, open) in servers {
            // Directed calls at this node's subject; sessions for any node
            // through the server's queue group (one member answers each).
            let directed = service
                .endpoint_builder()
                .name(&name)
                .add(bus.server_subject(&bus.node, &name))
                .await
                .map_err(|e| ClusterError::Service(e.to_string()))?;
            let any = service
                .endpoint_builder()
                .name(format!("{name}-any"))
                .queue_group(&name)
                .add(bus.any_subject(&name))
                .await
                .map_err(|e| ClusterError::Service(e.to_string()))?;
            let server = Arc::new(LocalServer { name, open });
            for endpoint in [directed, any] {
                let serving = sessions
                    .clone()
                    .serve(server.clone(), endpoint, shutdown.clone());
                tokio::spawn(serving);
            }
        }
        tokio::spawn(sessions.clone().expire_idle(shutdown));
        until_subscribed(bus, &service).await?;
        Ok(Self { service })
    }

    /// Leave the bus: no new sessions; open ones see their server go.
    pub async fn stop(self) {
        let _ = self.service.stop().await;
    }
}

/// Return once the NATS server has this connection's subscriptions, so a
/// session opened right after finds its responder. (`flush` only writes
/// them out.) The server reads a connection in order: a request that comes
/// back through it, sent after them, has found them in place.
async fn until_subscribed(bus: &Bus, service: &Service) -> Result<(), ClusterError> {
    let ping = format!("$SRV.PING.{SERVICE_NAME}.{}", service.info().await.id);
    bus.client
        .request(ping, Bytes::new())
        .await
        .map(|_| ())
        .map_err(|e| ClusterError::Service(format!("the service does not answer: {e}")))
}

struct LocalServer {
    name: String,
    open: OpenPipe,
}

/// One client's session with one local server.
struct Session {
    /// Lines for the server.
    to_server: mpsc::UnboundedSender<Vec<u8>>,
    last_seen: Instant,
    joined: Reassembly,
}

/// Every session this node serves, by id.
struct Sessions {
    bus: Bus,
    open: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn new(bus: &Bus) -> Self {
        Self {
            bus: bus.clone(),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open.lock().expect("sessions lock")
    }

    /// Answer one endpoint's requests until it or `shutdown` ends.
    async fn serve(
        self: Arc<Self>,
        server: Arc<LocalServer>,
        mut endpoint: async_nats::service::endpoint::Endpoint,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                request = endpoint.next() => match request {
                    Some(request) => self.handle(&server, request).await,
                    None => break,
                },
                _ = shutdown.cancelled() => break,
            }
        }
    }

    async fn handle(
        self: &Arc<Self>,
        server: &Arc<LocalServer>,
        request: async_nats::service::Request,
    ) {
        let headers = request.message.headers.as_ref();
        let Some(id) = wire::header(headers, wire::SESSION) else {
            return receipt(&request, &self.bus.node, Some("no session id")).await;
        };
        let kind = wire::header(headers, wire::KIND);
        let refused = match kind.as_deref() {
            Some(wire::PROBE) => self.touch(&id),
            Some(wire::CLOSE) => {
                self.lock().remove(&id);
                return;
            }
            _ => self.accept(server, &id, headers, &request.message.payload),
        };
        receipt(&request, &self.bus.node, refused.as_deref()).await;
    }

    /// Note the session is in use; why not, when it is unknown.
    fn touch(&self, id: &str) -> Option<String> {
        match self.lock().get_mut(id) {
            Some(session) => {
                session.last_seen = Instant::now();
                None
            }
            None => Some("unknown session".into()),
        }
    }

    /// Take one message (or part) for session `id`, opening the session on
    /// its `initialize`. Returns why it was refused.
    fn accept(
        self: &Arc<Self>,
        server: &Arc<LocalServer>,
        id: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Option<String> {
        let mut open = self.lock();
        let session = match open.get_mut(id) {
            Some(session) => session,
            None => {
                // A session opens with `initialize`; anything else names a
                // session this node no longer has (it restarted, or expired
                // it), and its client must reconnect.
                let whole = wire::header(headers, wire::PART).is_none();
                if !(whole && wire::is_initialize(payload)) {
                    return Some("unknown session".into());
                }
                if open.len() >= self.bus.config.max_sessions {
                    return Some(format!(
                        "this node serves cluster.max_sessions ({}) sessions already",
                        self.bus.config.max_sessions
                    ));
                }
                let Some(reply_to) = wire::header(headers, wire::REPLY_TO) else {
                    return Some("no reply subject".into());
                };
                let session = self.start_session(server, id, reply_to);
                open.entry(id.to_string()).or_insert(session)
            }
        };
        session.last_seen = Instant::now();
        match session.joined.push(headers, payload) {
            Assembled::Partial => None,
            Assembled::Message(line) => match session.to_server.send(line) {
                Ok(()) => None,
                Err(_) => Some("the session has ended".into()),
            },
            Assembled::TooLarge => Some(format!(
                "message larger than cluster.max_message_bytes ({})",
                self.bus.config.max_message_bytes
            )),
            Assembled::Malformed => Some("malformed message part".into()),
        }
    }

    /// A fresh session of `server` whose messages go to `reply_to`.
    fn start_session(
        self: &Arc<Self>,
        server: &Arc<LocalServer>,
        id: &str,
        reply_to: String,
    ) -> Session {
        let (to_server, from_clients) = mpsc::unbounded_channel();
        let pipe = (server.open)();
        tracing::debug!(server = %server.name, session = %id, "cluster session opened");
        tokio::spawn(
            self.clone()
                .pump(id.to_string(), pipe, from_clients, reply_to),
        );
        Session {
            to_server,
            last_seen: Instant::now(),
            joined: Reassembly::new(self.bus.config.max_message_bytes),
        }
    }

    /// Carry one session's messages between its pipe and its client until
    /// either side ends; then tell the client.
    async fn pump(
        self: Arc<Self>,
        id: String,
        pipe: DuplexStream,
        mut from_client: mpsc::UnboundedReceiver<Vec<u8>>,
        reply_to: String,
    ) {
        let (read, mut write) = tokio::io::split(pipe);
        let mut lines = BufReader::new(read).lines();
        loop {
            tokio::select! {
                line = from_client.recv() => match line {
                    Some(line) => {
                        if deliver(&mut write, &line).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                line = lines.next_line() => match line {
                    Ok(Some(line)) => self.publish(&reply_to, line.as_bytes()).await,
                    Ok(None) | Err(_) => break,
                },
            }
        }
        let _ = write.shutdown().await;
        self.lock().remove(&id);
        let mut headers = HeaderMap::new();
        headers.insert(wire::KIND, wire::CLOSE);
        let _ = self
            .bus
            .client
            .publish_with_headers(reply_to, headers, Bytes::new())
            .await;
    }

    /// Send one message to a client, in parts when large; one too large to
    /// send is answered with an error for its id.
    async fn publish(&self, reply_to: &str, message: &[u8]) {
        let limit = self.bus.config.max_message_bytes;
        let refused;
        let message = match wire::oversize(message, limit, "answer") {
            None => message,
            Some(why) => {
                let Some(answer) = wire::refusal(message, &why) else {
                    return;
                };
                refused = answer;
                &refused
            }
        };
        for (part, payload) in wire::parts(message, self.bus.max_payload()) {
            let mut headers = HeaderMap::new();
            if let Some(part) = part {
                headers.insert(wire::PART, part.as_str());
            }
            let sent = self
                .bus
                .client
                .publish_with_headers(reply_to.to_string(), headers, payload)
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "cannot send to a cluster session's client");
                return;
            }
        }
    }

    /// Close sessions nothing reached for `session_idle_ms` (their client
    /// went away without closing them); at shutdown, close them all, so
    /// their servers end and their clients hear it now.
    async fn expire_idle(self: Arc<Self>, shutdown: CancellationToken) {
        let idle = Duration::from_millis(self.bus.config.session_idle_ms);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(idle / 4) => {}
                _ = shutdown.cancelled() => {
                    // Each pump ends with its session and tells its client.
                    self.lock().clear();
                    return;
                }
            }
            let now = Instant::now();
            self.lock()
                .retain(|_, session| now.duration_since(session.last_seen) < idle);
        }
    }
}

/// The receipt of one client message: empty, or why it was refused.
async fn receipt(request: &async_nats::service::Request, node: &str, refused: Option<&str>) {
    let mut headers = HeaderMap::new();
    headers.insert(wire::NODE, node);
    if let Some(why) = refused {
        headers.insert(wire::ERROR, why);
    }
    if let Err(e) = request
        .respond_with_headers(Ok(Bytes::new()), headers)
        .await
    {
        tracing::debug!(error = %e, "cannot send a cluster receipt");
    }
}
