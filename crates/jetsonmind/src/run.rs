//! Wiring: config in, servers up, until a signal.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use jetsonmind_compute::ComputeServer;
use jetsonmind_control::ControlServer;
use jetsonmind_control::fleet::{Fleet, FleetSettings, Origin};
use jetsonmind_control::link::{DirectLink, McpLink, OpenAiLink, ReplicaLink};
use jetsonmind_control::monitor::Alerts;
use jetsonmind_control::scale::Launcher;
use jetsonmind_core::auth::{self, Auth, Gatekeeper, KeyStore, Need};
use jetsonmind_core::config::ConfigSources;
use jetsonmind_core::connections::Connections;
use jetsonmind_core::lifecycle::{self, Drain, InFlight};
use jetsonmind_core::serve::{self, MCP_PATH};
use jetsonmind_core::unit::LocalServer;
use jetsonmind_core::upstream::{Connector, LocalClient, OpenPipe, Secret, Upstream};
use jetsonmind_core::{Config, McpUnit, UnitServer};
use jetsonmind_data::analytics::Analytics;
use jetsonmind_data::cache::InferenceCache;
use jetsonmind_data::inputs::InputCache;
use jetsonmind_data::settings::Settings;
use jetsonmind_data::{DataServer, NodeState};
use jetsonmind_gateway::openai::OpenAi;
use jetsonmind_gateway::{Backend, Gateway};
use jetsonmind_store::ModelStore;
use jetsonmind_web::Dashboard;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, ClusterCommand, Command, Transport};
use jetsonmind_compute::config::ComputeConfig;
use jetsonmind_control::config::ControlConfig;
use jetsonmind_control::config::HybridConfig;
use jetsonmind_data::config::CacheConfig;
use jetsonmind_gateway::config::GatewayConfig;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut sources = ConfigSources {
        file: cli.config.clone(),
        env: std::env::vars().collect(),
        data_dir: cli.data_dir.clone(),
        schema: jetsonmind::sections::schema(),
    };
    // Before the config is loaded: the settings a restore replaces may be
    // what does not load.
    if let Command::Restore {
        archive: Some(archive),
        force,
        ..
    } = &cli.command
    {
        return crate::backup::restore_command(&sources, archive, *force);
    }
    // A client of a gateway, elsewhere maybe: this machine's config is not its.
    if let Command::Top {
        url,
        token_env,
        interval_ms,
    } = &cli.command
    {
        let bearer = token_env
            .as_ref()
            .map(|var| std::env::var(var).with_context(|| format!("--token-env: {var} is not set")))
            .transpose()?;
        let interval = Duration::from_millis(*interval_ms);
        return Ok(jetsonmind_top::run(url, bearer, interval).await?);
    }
    if let Command::Serve(serve) = &cli.command {
        sources.env.extend(serve.overrides());
    }
    if let Command::Cluster(cluster) = &cli.command {
        sources.env.extend(cluster.overrides());
    }
    let config = sources.load().context("loading config")?;
    match cli.command {
        Command::Config => {
            print!("{}", config.to_toml());
            return Ok(());
        }
        Command::Backup { output } => {
            return crate::backup::backup_command(&config, cli.config.as_deref(), output);
        }
        Command::Restore { .. } => return crate::backup::cloud::restore_command(&config).await,
        Command::Models(command) => return crate::models::run(command, &config).await,
        Command::Keys(command) => return crate::keys::run(command, &config).await,
        Command::Cluster(ClusterCommand::Status { json, .. }) => {
            return crate::cluster_cli::status(json, &config).await;
        }
        Command::Cluster(ClusterCommand::Join {
            publish_models,
            check,
            ..
        }) => return crate::migrate::join(&config, &sources, publish_models, check).await,
        Command::Cluster(ClusterCommand::Leave) => return crate::migrate::leave(&config, &sources),
        _ => {}
    }
    let shutdown = CancellationToken::new();
    let launcher = launcher(&cli, &config)?;
    let access = Access::for_command(&cli.command, &config)?;
    let shared = Shared::new(sources, config.clone(), launcher, access)?;
    let grace = Duration::from_millis(config.http.drain_grace_ms);
    tokio::spawn(stop_on_signal(
        shared.drain.clone(),
        shutdown.clone(),
        grace,
    ));
    let flushing = tokio::spawn(flush_analytics(shared.analytics.clone(), config.clone()));
    let served = serve_command(cli.command, config, shutdown, &shared).await;
    flushing.abort();
    if let Err(e) = shared.analytics.flush() {
        tracing::warn!(error = %e, "cannot save the analytics");
    }
    served
}

async fn serve_command(
    command: Command,
    config: Config,
    shutdown: CancellationToken,
    shared: &Shared,
) -> anyhow::Result<()> {
    match command {
        Command::Cluster(_) | Command::Top { .. } => unreachable!("handled before serving"),
        Command::Compute(t) => {
            let server = shared.compute(&config, &shared.node_state()?);
            serve_server(server, t, config, shutdown, shared, Faces::default()).await
        }
        Command::Data(t) => {
            let data = DataServer::new(shared.node_state()?);
            let server = shared.server(data, &config);
            serve_server(server, t, config, shutdown, shared, Faces::default()).await
        }
        Command::Control(t) => {
            let replicas = shared.compute_fleet(&config, None)?;
            tokio::spawn(check_every(
                replicas.clone(),
                Duration::from_millis(config.section::<GatewayConfig>().health_interval_ms),
                shutdown.clone(),
            ));
            let server = shared.control(replicas, &config);
            serve_server(server, t, config, shutdown, shared, Faces::default()).await
        }
        Command::Gateway(t) => {
            let backends = Gateway::configured_backends(
                config.section::<GatewayConfig>(),
                &shared.fleet_settings,
            )?;
            serve_gateway(backends, t, config, shutdown, shared).await
        }
        Command::Serve(serve) => {
            let local = in_process_servers(&config, shared)?;
            let mut backends = local.backends();
            backends.extend(Gateway::configured_backends(
                config.section::<GatewayConfig>(),
                &shared.fleet_settings,
            )?);
            let cluster = match config.cluster.enabled() {
                true => {
                    let served = local.served;
                    let state = crate::cluster::NodeState {
                        settings: shared.settings.clone(),
                        keys: shared.access.auth.keys().clone(),
                        data: local.models.data.clone(),
                        analytics: shared.analytics.clone(),
                    };
                    let node = crate::cluster::join(
                        &config,
                        served,
                        backends.clone(),
                        state,
                        local.models,
                        &shutdown,
                    );
                    Some(node.await?)
                }
                false => None,
            };
            let served = serve_gateway(backends, serve.transport, config, shutdown, shared).await;
            if let Some(node) = cluster {
                node.leave().await;
            }
            served
        }
        Command::Bridge { url, token_env } => {
            let bearer = token_env
                .as_deref()
                .map(Secret::from_env)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--token-env: {e}"))?;
            let remote = Fleet::single(
                "remote",
                Connector::Http { url, bearer },
                shared.fleet_settings.clone(),
            );
            let gateway = Gateway::bridge(
                config.section::<GatewayConfig>().clone(),
                shared.fleet_settings.clone(),
                remote,
            )?;
            gateway.start(shutdown.clone()).await;
            if !gateway.backend_status().iter().all(|b| b.up) {
                tracing::warn!("the remote server is not reachable yet; will retry");
            }
            let server = shared.server_arc(gateway, &config);
            Ok(serve::serve_stdio(server).await?)
        }
        Command::Config
        | Command::Models(_)
        | Command::Keys(_)
        | Command::Backup { .. }
        | Command::Restore { .. } => {
            unreachable!("handled before serving")
        }
    }
}

/// Analytics reach the database every `data.analytics_flush_ms`; the last
/// ones at shutdown.
async fn flush_analytics(analytics: Arc<Analytics>, config: Config) {
    let period = Duration::from_millis(config.data.analytics_flush_ms);
    loop {
        tokio::time::sleep(period).await;
        let analytics = analytics.clone();
        match tokio::task::spawn_blocking(move || analytics.flush()).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the analytics; will retry"),
            Err(e) => tracing::warn!(error = %e, "analytics flush stopped"),
            Ok(Ok(())) => {}
        }
    }
}

/// Check `fleet` every `period` until `shutdown` (a control server alone;
/// under a gateway its health loop does this).
async fn check_every(fleet: Arc<Fleet>, period: Duration, shutdown: CancellationToken) {
    loop {
        fleet.check().await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// How `scale_cluster` starts more compute replicas: this binary, with the
/// same config file and data dir (the environment is inherited).
fn launcher(cli: &Cli, config: &Config) -> anyhow::Result<Launcher> {
    let program = std::env::current_exe().context("finding the jetsonmind binary")?;
    let mut global_args = vec![
        "--data-dir".to_string(),
        config.data.dir.display().to_string(),
    ];
    if let Some(file) = &cli.config {
        global_args.extend(["--config".to_string(), file.display().to_string()]);
    }
    Ok(Launcher {
        program,
        global_args,
        // Each is given a secret of its own on stdin and requires it.
        env: Vec::new(),
        start_timeout: Duration::from_millis(
            config.section::<ControlConfig>().replica_start_timeout_ms,
        ),
    })
}

/// Who may come in over HTTP, and the connections they hold.
struct Access {
    auth: Arc<Auth>,
    connections: Arc<Connections>,
}

impl Access {
    /// Over HTTP, authentication as the config and the listen address say;
    /// over stdio the caller is this machine's user.
    fn for_command(command: &Command, config: &Config) -> anyhow::Result<Self> {
        let keys = Arc::new(KeyStore::open(&config.data.dir));
        let auth = match command.transport() {
            Some(t) if !t.stdio => {
                // A key file that cannot be read stops the start, saying why.
                keys.list()?;
                let listen = t.listen.unwrap_or(config.http.listen);
                let auth = match (command, config.cluster.enabled()) {
                    // The cluster's keys are mirrored here once the node joins.
                    (Command::Serve(_), true) => {
                        Auth::with_keys_to_come(&config.auth, keys, Some(listen))
                    }
                    _ => Auth::new(&config.auth, keys, Some(listen))?,
                };
                match t.secret_from_stdin {
                    true => auth.with_launcher_secret(read_secret_line()?),
                    false => auth,
                }
            }
            _ => Auth::off(keys),
        };
        Ok(Self {
            auth: Arc::new(auth),
            connections: Arc::default(),
        })
    }
}

/// What the servers of one process share: compute fills the inference cache
/// and data reports on it; every server records its calls in the analytics.
struct Shared {
    settings: Arc<Settings>,
    cache: Arc<InferenceCache>,
    /// Media as the engines take it: compute fills it, data reports on it.
    inputs: Arc<InputCache>,
    analytics: Arc<Analytics>,
    fleet_settings: FleetSettings,
    launcher: Launcher,
    access: Access,
    /// The control server's alerts, once it runs here (`/metrics` shows them).
    alerts: Arc<OnceLock<Arc<Alerts>>>,
    /// Cancelled on SIGTERM: HTTP refuses new calls while those in flight finish.
    drain: Drain,
    /// This process's compute server, once it runs here: `/readyz` asks it
    /// whatever unit the HTTP endpoint serves (`serve`'s gateway).
    local_compute: Arc<OnceLock<Arc<ComputeServer>>>,
}

impl Shared {
    fn new(
        sources: ConfigSources,
        config: Config,
        launcher: Launcher,
        access: Access,
    ) -> anyhow::Result<Self> {
        let analytics = Analytics::open(
            &config.data.dir,
            Duration::from_secs(config.data.analytics_retention_secs),
        )
        .context("opening the analytics database")?;
        Ok(Self {
            cache: Arc::new(InferenceCache::new(config.section::<CacheConfig>().into())),
            inputs: Arc::new(InputCache::new(
                (&config.section::<CacheConfig>().inputs).into(),
            )),
            analytics: Arc::new(analytics),
            fleet_settings: config
                .section::<GatewayConfig>()
                .fleet_settings(config.section::<ControlConfig>())
                .with_hybrid(config.section::<HybridConfig>()),
            settings: Arc::new(Settings::new(sources, config)),
            launcher,
            access,
            alerts: Arc::default(),
            drain: Drain::new(),
            local_compute: Arc::default(),
        })
    }

    /// The compute replicas: this process's own server (when given and
    /// `control.local_replica` is on), then those at `control.replicas`,
    /// then the providers of `hybrid.providers`.
    fn compute_fleet(
        &self,
        config: &Config,
        local: Option<Arc<dyn ReplicaLink>>,
    ) -> anyhow::Result<Arc<Fleet>> {
        let fleet = Fleet::new("compute", self.fleet_settings.clone());
        if let Some(link) = local.filter(|_| config.section::<ControlConfig>().local_replica) {
            fleet.add_link(link, Origin::Configured);
        }
        let bearer = config
            .section::<ControlConfig>()
            .replicas_token_env
            .as_deref()
            .map(Secret::from_env)
            .transpose()
            .map_err(|e| anyhow::anyhow!("control.replicas_token_env: {e}"))?;
        for (i, url) in config
            .section::<ControlConfig>()
            .replicas
            .iter()
            .enumerate()
        {
            let name = format!("compute-{}", i + 1);
            let connector = Connector::Http {
                url: url.clone(),
                bearer: bearer.clone(),
            };
            fleet.add(Upstream::new(name, connector), Origin::Configured);
        }
        add_providers(&fleet, config)?;
        Ok(Arc::new(fleet))
    }

    /// The compute server, following the settings (engine settings change
    /// at run time: `optimize_system` applies them so).
    fn compute(&self, config: &Config, node: &NodeState) -> UnitServer<ComputeServer> {
        let compute = ComputeServer::new(config, node.cache.clone(), node.store.clone())
            .with_input_cache(node.inputs.clone());
        let server = self.server(compute, config);
        server.unit().follow_settings(self.settings.follow());
        let _ = self.local_compute.set(server.unit().clone());
        server
    }

    /// The control server, evaluating its alerts (their gauge on `/metrics`).
    fn control(&self, replicas: Arc<Fleet>, config: &Config) -> UnitServer<ControlServer> {
        let control = ControlServer::new(replicas, config, Some(self.launcher.clone()))
            .with_settings(self.settings.clone())
            .with_analytics(self.analytics.clone());
        let server = self.server(control, config);
        let interval = Duration::from_millis(config.section::<ControlConfig>().alert_interval_ms);
        server.unit().evaluate_alerts_every(interval);
        let _ = self.alerts.set(server.unit().alerts().clone());
        server
    }

    /// Opens the model store: only the servers that use it pay for that.
    fn node_state(&self) -> anyhow::Result<NodeState> {
        let dir = self.settings.current().data.dir;
        let store = ModelStore::open(&dir)
            .with_context(|| format!("opening the model store in {}", dir.display()))?;
        Ok(NodeState {
            settings: self.settings.clone(),
            store: Arc::new(store),
            cache: self.cache.clone(),
            inputs: self.inputs.clone(),
            analytics: self.analytics.clone(),
        })
    }

    fn server<U: McpUnit>(&self, unit: U, config: &Config) -> UnitServer<U> {
        self.server_arc(Arc::new(unit), config)
    }

    fn server_arc<U: McpUnit>(&self, unit: Arc<U>, config: &Config) -> UnitServer<U> {
        UnitServer::new(unit, config.mcp.clone()).with_observer(self.analytics.clone())
    }

    /// Prometheus text at `/metrics`.
    fn metrics_route(&self) -> Router {
        let analytics = self.analytics.clone();
        let alerts = self.alerts.clone();
        Router::new().route(
            jetsonmind_core::paths::METRICS_PATH,
            get(move || {
                let mut text = analytics.prometheus();
                if let Some(alerts) = alerts.get() {
                    text.push_str(&alerts.prometheus());
                }
                async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
            }),
        )
    }
}

/// The servers of `serve`: compute (replicas: this process's own server and
/// any others), data and control, the local ones reached through in-memory
/// MCP pipes.
struct LocalServers {
    compute: Arc<Fleet>,
    data: Backend,
    control: Backend,
    /// What this node serves to the cluster: each local server by name.
    served: Vec<(String, OpenPipe)>,
    /// The servers that use the cluster's models, once it joins one.
    models: crate::cluster::ModelUsers,
}

impl LocalServers {
    fn backends(&self) -> Vec<Backend> {
        vec![
            self.compute.clone(),
            self.data.clone(),
            self.control.clone(),
        ]
    }
}

fn in_process_servers(config: &Config, shared: &Shared) -> anyhow::Result<LocalServers> {
    let node = shared.node_state()?;
    let store = node.store.clone();
    let mut served = Vec::new();
    let mut compute_server = None;
    let local_compute = match config.section::<ControlConfig>().local_replica {
        true => {
            let server = shared.compute(config, &node);
            compute_server = Some(server.unit().clone());
            served.push(("compute".to_string(), pipe_to(server.clone())));
            Some(local_link("compute-local", server))
        }
        false => None,
    };
    let compute = shared.compute_fleet(config, local_compute)?;
    let control = shared.control(compute.clone(), config);
    let data = shared.server(DataServer::new(node), config);
    let models = crate::cluster::ModelUsers {
        store,
        data: data.unit().clone(),
        compute: compute_server,
        control: control.unit().clone(),
    };
    served.push(("data".to_string(), pipe_to(data.clone())));
    served.push(("control".to_string(), pipe_to(control.clone())));
    let single = |name: &str, link| Fleet::single_link(name, link, shared.fleet_settings.clone());
    Ok(LocalServers {
        compute,
        data: single("data", local_link("data", data)),
        control: single("control", local_link("control", control)),
        served,
        models,
    })
}

/// Each of `hybrid.providers` as a cloud replica of compute's text tools;
/// a key its config names but the environment lacks stops the start.
fn add_providers(fleet: &Fleet, config: &Config) -> anyhow::Result<()> {
    for provider in &config.section::<HybridConfig>().providers {
        let name = &provider.name;
        if fleet.replica(name).is_some() {
            anyhow::bail!("hybrid.providers: `{name}` is already the name of a compute replica");
        }
        let cost = provider
            .cost_per_call
            .unwrap_or(config.section::<HybridConfig>().cloud_call_cost);
        let link = OpenAiLink::from_env(
            provider.clone(),
            config.section::<ComputeConfig>().progress_every_tokens,
        )
        .with_context(|| format!("hybrid.providers `{name}`"))?;
        fleet.add_link(Arc::new(link), Origin::Provider { cost });
        tracing::info!(provider = %name, base_url = %provider.base_url, cost, "provider added");
    }
    Ok(())
}

/// Opens a fresh in-memory MCP session with `server` per connection.
fn pipe_to<U: McpUnit>(server: UnitServer<U>) -> OpenPipe {
    Arc::new(move || serve::in_process(server.clone()))
}

/// How this process's gateway reaches its own `server`: directly (no MCP
/// messages), unless the server announces changes, which only an MCP
/// session carries: then over an in-memory pipe.
fn local_link<U: McpUnit>(name: &str, server: UnitServer<U>) -> Arc<dyn ReplicaLink> {
    let direct: Arc<dyn LocalServer> = Arc::new(server.clone());
    match DirectLink::new(name, direct) {
        Some(link) => Arc::new(link),
        None => {
            let upstream = Upstream::new(name, Connector::InProcess(pipe_to(server)));
            Arc::new(McpLink::new(upstream))
        }
    }
}

/// The gateway over `backends`; on HTTP also the OpenAI-compatible `/v1` routes.
async fn serve_gateway(
    backends: Vec<Backend>,
    transport: Transport,
    config: Config,
    shutdown: CancellationToken,
    shared: &Shared,
) -> anyhow::Result<()> {
    let gateway = start_gateway(&config, &shared.fleet_settings, backends, &shutdown).await?;
    gateway.use_access(
        shared.access.auth.clone(),
        shared.access.connections.clone(),
    );
    let server = shared.server_arc(gateway, &config);
    let faces = match transport.stdio {
        true => Faces::default(),
        false => http_faces(&server, &config, &shutdown, shared).await?,
    };
    serve_server(server, transport, config, shutdown, shared, faces).await
}

/// What a server serves over HTTP beside MCP and `/metrics`, and how the
/// HTTP guard treats those routes.
#[derive(Default)]
struct Faces {
    routes: Router,
    /// What each route needs of its caller ([`Gatekeeper::route_needs`]).
    needs: Vec<(&'static str, Vec<Need>)>,
    /// Prefixes whose routes authenticate their callers themselves.
    self_authenticated: Vec<&'static str>,
}

/// What a gateway serves over HTTP beside MCP, each a client of the gateway
/// in this process: the OpenAI-compatible `/v1` routes and the dashboard.
async fn http_faces(
    server: &UnitServer<Gateway>,
    config: &Config,
    shutdown: &CancellationToken,
    shared: &Shared,
) -> anyhow::Result<Faces> {
    let client = LocalClient::new(server.clone());
    let api = OpenAi::new(client.clone()).router();
    let mut faces = Faces {
        routes: api.clone(),
        needs: OpenAi::route_needs(),
        self_authenticated: Vec::new(),
    };
    if config.section::<GatewayConfig>().ui.enabled {
        let tools = auth::resolver(server.unit().clone());
        let access = (
            shared.access.auth.clone(),
            shared.access.connections.clone(),
        );
        let dashboard =
            Dashboard::new(client, access, tools, &config.section::<GatewayConfig>().ui);
        dashboard.start(shutdown.clone());
        faces.routes = faces.routes.merge(dashboard.router(api));
        faces.self_authenticated.push(jetsonmind_web::PREFIX);
    }
    faces.routes = serve::guard_headers(faces.routes, &config.http);
    Ok(faces)
}

async fn start_gateway(
    config: &Config,
    fleet_settings: &FleetSettings,
    backends: Vec<Backend>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Gateway>> {
    let gateway = Gateway::new(
        config.section::<GatewayConfig>().clone(),
        fleet_settings.clone(),
        backends,
    )?;
    gateway.start(shutdown.clone()).await;
    for backend in gateway.backend_status() {
        for replica in backend.replicas {
            let status = replica.connection;
            match status.last_error {
                None => {
                    tracing::info!(backend = %backend.name, replica = %status.name, tools = status.tools, "federated")
                }
                Some(e) => {
                    tracing::warn!(backend = %backend.name, replica = %status.name, error = %e, "not reachable yet; will retry")
                }
            }
        }
    }
    Ok(gateway)
}

/// Serve over stdio, or over HTTP with `/metrics` and `faces` beside `/mcp`.
async fn serve_server<U: McpUnit>(
    server: UnitServer<U>,
    transport: Transport,
    mut config: Config,
    shutdown: CancellationToken,
    shared: &Shared,
    faces: Faces,
) -> anyhow::Result<()> {
    let name = server.unit().identity().name;
    if transport.stdio {
        tracing::info!("{name} serving MCP on stdio");
        return Ok(serve::serve_stdio(server).await?);
    }
    if let Some(listen) = transport.listen {
        config.http.listen = listen;
    }
    let (listener, bound) = serve::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen))?;
    let unit = server.unit().clone();
    let compute = shared.local_compute.clone();
    let ready = move || {
        unit.readiness()?;
        compute.get().map_or(Ok(()), |compute| compute.readiness())
    };
    let probes = lifecycle::probe_routes(ready, shared.drain.clone());
    let plain = shared
        .metrics_route()
        .merge(auth::metadata_routes(&shared.access.auth))
        .merge(probes);
    let extra = faces
        .routes
        .merge(serve::guard_headers(plain, &config.http));
    let tools = auth::resolver(server.unit().clone());
    let routes = serve::mcp_routes(server, &config.http, shutdown.clone()).merge(extra);
    let access = &shared.access;
    let gate = Gatekeeper::new(
        access.auth.clone(),
        &config.http,
        access.connections.clone(),
        tools,
    )
    .self_authenticated(&faces.self_authenticated)
    .route_needs(faces.needs);
    let gate = Arc::new(gate);
    let router = auth::guarded(serve::with_limits(routes, &config.http), gate);
    let router = lifecycle::drain_layer(router, shared.drain.clone());
    if access.auth.required() {
        tracing::info!(
            "authentication required (API keys in {})",
            access.auth.keys().path().display()
        );
    }
    if !bound.ip().is_loopback()
        && config
            .http
            .allowed_hosts
            .iter()
            .all(|h| is_loopback_name(h))
    {
        tracing::warn!(
            "bound to {bound}, but only loopback Host headers are accepted \
             (http.allowed_hosts = {:?}): add the names and addresses clients use for this machine",
            config.http.allowed_hosts
        );
    }
    // Tests and scripts read this line to find the port when listening on :0.
    eprintln!("{name} listening on http://{bound}{MCP_PATH}");
    let limits = serve::ConnectionLimits::from(&config.http);
    serve::serve_http_with(
        listener,
        router,
        limits,
        shutdown,
        access.connections.clone(),
    )
    .await?;
    Ok(())
}

/// The launcher's secret: one line on stdin, which it then closes.
fn read_secret_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the secret from stdin")?;
    let secret = line.trim().to_string();
    anyhow::ensure!(
        secret.len() >= 32,
        "--secret-from-stdin: expected a secret of at least 32 characters on stdin"
    );
    Ok(secret)
}

fn is_loopback_name(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// On SIGTERM or Ctrl-C, drain: new calls are refused while those in
/// flight finish, for at most `grace`; then (or at a second signal) stop
/// everything.
async fn stop_on_signal(drain: Drain, shutdown: CancellationToken, grace: Duration) {
    let mut signals = Signals::new();
    signals.next().await;
    let (calls, responses) = (InFlight::calls(), InFlight::responses());
    tracing::info!(
        in_flight = calls.now(),
        grace_ms = grace.as_millis() as u64,
        "draining: new calls are refused; those in flight may finish"
    );
    drain.cancel();
    let finished = async {
        calls.none().await;
        responses.none().await;
    };
    tokio::select! {
        _ = finished => tracing::info!("no call in flight: shutting down"),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(in_flight = calls.now(), "drain grace over: cancelling what is left")
        }
        _ = signals.next() => tracing::warn!("signalled again: shutting down now"),
    }
    shutdown.cancel();
}

/// SIGTERM and Ctrl-C, one after another.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Self {
        Self {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler"),
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = self.term.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
