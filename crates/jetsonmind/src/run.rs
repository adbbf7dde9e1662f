//! Wiring: config in, servers up, until a signal.

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use jetsonmind_compute::ComputeServer;
use jetsonmind_control::ControlServer;
use jetsonmind_core::serve::{self, MCP_PATH};
use jetsonmind_core::{Config, McpUnit, UnitServer};
use jetsonmind_data::DataServer;
use jetsonmind_data::analytics::Analytics;
use jetsonmind_data::cache::InferenceCache;
use jetsonmind_gateway::openai::OpenAi;
use jetsonmind_gateway::{Backend, Connector, Gateway};
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, Transport};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config =
        Config::load(cli.config.as_deref(), std::env::vars()).context("loading config")?;
    if let Some(dir) = cli.data_dir {
        config.data.dir = dir;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let shared = Shared::new(&config);
    match cli.command {
        Command::Config => {
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Models(command) => crate::models::run(command, &config),
        Command::Compute(t) => {
            let compute = ComputeServer::new(&config, shared.cache.clone());
            serve_server(
                shared.server(compute, &config),
                t,
                config,
                shutdown,
                &shared,
                Router::new(),
            )
            .await
        }
        Command::Data(t) => {
            let data = DataServer::new(
                config.clone(),
                shared.cache.clone(),
                shared.analytics.clone(),
            );
            serve_server(
                shared.server(data, &config),
                t,
                config,
                shutdown,
                &shared,
                Router::new(),
            )
            .await
        }
        Command::Control(t) => {
            let control = ControlServer::default();
            serve_server(
                shared.server(control, &config),
                t,
                config,
                shutdown,
                &shared,
                Router::new(),
            )
            .await
        }
        Command::Gateway(t) => {
            let backends = Gateway::configured_backends(&config.gateway);
            serve_gateway(backends, t, config, shutdown, &shared).await
        }
        Command::Serve(t) => {
            let mut backends = in_process_backends(&config, &shared);
            backends.extend(Gateway::configured_backends(&config.gateway));
            serve_gateway(backends, t, config, shutdown, &shared).await
        }
    }
}

/// What the servers of one process share: compute fills the inference cache
/// and data reports on it; every server records its calls in the analytics.
struct Shared {
    cache: Arc<InferenceCache>,
    analytics: Arc<Analytics>,
}

impl Shared {
    fn new(config: &Config) -> Self {
        Self {
            cache: Arc::new(InferenceCache::new((&config.cache).into())),
            analytics: Arc::new(Analytics::default()),
        }
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
fn in_process_backends(config: &Config, shared: &Shared) -> Vec<Backend> {
    let compute = ComputeServer::new(config, shared.cache.clone());
    let data = DataServer::new(
        config.clone(),
        shared.cache.clone(),
        shared.analytics.clone(),
    );
    vec![
        in_process("compute", shared.server(compute, config)),
        in_process("data", shared.server(data, config)),
        in_process("control", shared.server(ControlServer::default(), config)),
    ]
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
