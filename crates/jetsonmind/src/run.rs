//! Wiring: config in, servers up, until a signal.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use jetsonmind_compute::ComputeServer;
use jetsonmind_control::ControlServer;
use jetsonmind_core::config::ConfigSources;
use jetsonmind_core::serve::{self, MCP_PATH};
use jetsonmind_core::{Config, McpUnit, UnitServer};
use jetsonmind_data::analytics::Analytics;
use jetsonmind_data::cache::InferenceCache;
use jetsonmind_data::settings::Settings;
use jetsonmind_data::store::ModelStore;
use jetsonmind_data::{DataServer, NodeState};
use jetsonmind_gateway::openai::OpenAi;
use jetsonmind_gateway::{Backend, Connector, Gateway};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, Transport};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let sources = ConfigSources {
        file: cli.config.clone(),
        env: std::env::vars().collect(),
        data_dir: cli.data_dir.clone(),
    };
    let config = sources.load().context("loading config")?;
    match cli.command {
        Command::Config => {
            print!("{}", config.to_toml());
            return Ok(());
        }
        Command::Models(command) => return crate::models::run(command, &config),
        _ => {}
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let shared = Shared::new(sources, config.clone())?;
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
        Command::Compute(t) => {
            let node = shared.node_state()?;
            let compute = ComputeServer::new(&config, node.cache, node.store);
            let server = shared.server(compute, &config);
            serve_server(server, t, config, shutdown, shared, Router::new()).await
        }
        Command::Data(t) => {
            let data = DataServer::new(shared.node_state()?);
            let server = shared.server(data, &config);
            serve_server(server, t, config, shutdown, shared, Router::new()).await
        }
        Command::Control(t) => {
            let server = shared.server(ControlServer::default(), &config);
            serve_server(server, t, config, shutdown, shared, Router::new()).await
        }
        Command::Gateway(t) => {
            let backends = Gateway::configured_backends(&config.gateway);
            serve_gateway(backends, t, config, shutdown, shared).await
        }
        Command::Serve(t) => {
            let mut backends = in_process_backends(&config, shared)?;
            backends.extend(Gateway::configured_backends(&config.gateway));
            serve_gateway(backends, t, config, shutdown, shared).await
        }
        Command::Config | Command::Models(_) => unreachable!("handled before serving"),
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

/// What the servers of one process share: compute fills the inference cache
/// and data reports on it; every server records its calls in the analytics.
struct Shared {
    settings: Arc<Settings>,
    cache: Arc<InferenceCache>,
    analytics: Arc<Analytics>,
}

impl Shared {
    fn new(sources: ConfigSources, config: Config) -> anyhow::Result<Self> {
        let analytics = Analytics::open(
            &config.data.dir,
            Duration::from_secs(config.data.analytics_retention_secs),
        )
        .context("opening the analytics database")?;
        Ok(Self {
            cache: Arc::new(InferenceCache::new((&config.cache).into())),
            analytics: Arc::new(analytics),
            settings: Arc::new(Settings::new(sources, config)),
        })
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
        Router::new().route(
            "/metrics",
            get(move || {
                let analytics = analytics.clone();
                async move {
                    (
                        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
                        analytics.prometheus(),
                    )
                }
            }),
        )
    }
}

/// compute, data and control, each reached through an in-memory MCP pipe.
fn in_process_backends(config: &Config, shared: &Shared) -> anyhow::Result<Vec<Backend>> {
    let node = shared.node_state()?;
    let compute = ComputeServer::new(config, node.cache.clone(), node.store.clone());
    let data = DataServer::new(node);
    Ok(vec![
        in_process("compute", shared.server(compute, config)),
        in_process("data", shared.server(data, config)),
        in_process("control", shared.server(ControlServer::default(), config)),
    ])
}

fn in_process<U: McpUnit>(name: &str, server: UnitServer<U>) -> Backend {
    Backend::new(
        name,
        Connector::InProcess(Arc::new(move || serve::in_process(server.clone()))),
    )
}

/// The gateway over `backends`; on HTTP also the OpenAI-compatible `/v1` routes.
async fn serve_gateway(
    backends: Vec<Backend>,
    transport: Transport,
    config: Config,
    shutdown: CancellationToken,
    shared: &Shared,
) -> anyhow::Result<()> {
    let gateway = start_gateway(&config, backends, &shutdown).await?;
    let server = shared.server_arc(gateway, &config);
    let openai = match transport.stdio {
        true => Router::new(),
        false => serve::guard_headers(
            OpenAi::connect(server.clone()).await?.router(),
            &config.http,
        ),
    };
    serve_server(server, transport, config, shutdown, shared, openai).await
}

async fn start_gateway(
    config: &Config,
    backends: Vec<Backend>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Gateway>> {
    let gateway = Gateway::new(config.gateway.clone(), backends)?;
    gateway.start(shutdown.clone()).await;
    for status in gateway.backend_status() {
        match status.last_error {
            None => tracing::info!(backend = %status.name, tools = status.tools, "federated"),
            Some(e) => {
                tracing::warn!(backend = %status.name, error = %e, "not reachable yet; will retry")
            }
        }
    }
    Ok(gateway)
}

/// Serve over stdio, or over HTTP with `/metrics` and `extra` routes beside `/mcp`.
async fn serve_server<U: McpUnit>(
    server: UnitServer<U>,
    transport: Transport,
    mut config: Config,
    shutdown: CancellationToken,
    shared: &Shared,
    extra: Router,
) -> anyhow::Result<()> {
    let name = server.unit().identity().name;
    if transport.stdio {
        tracing::info!("{name} serving MCP on stdio");
        return Ok(serve::serve_stdio(server).await?);
    }
    if let Some(listen) = transport.listen {
        config.http.listen = listen;
    }
    serve::check_exposure(config.http.listen, false)?;
    let (listener, bound) = serve::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen))?;
    let extra = extra.merge(serve::guard_headers(shared.metrics_route(), &config.http));
    let routes = serve::mcp_routes(server, &config.http, shutdown.clone()).merge(extra);
    let router = serve::with_limits(routes, &config.http);
    // Tests and scripts read this line to find the port when listening on :0.
    eprintln!("{name} listening on http://{bound}{MCP_PATH}");
    serve::serve_http(listener, router, shutdown).await?;
    Ok(())
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
