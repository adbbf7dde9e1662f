//! Wiring: config in, servers up, until a signal.

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use jetsonmind_compute::ComputeServer;
use jetsonmind_control::ControlServer;
use jetsonmind_core::serve::{self, MCP_PATH};
use jetsonmind_core::{Config, McpUnit, UnitServer};
use jetsonmind_data::DataServer;
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
    match cli.command {
        Command::Config => {
            print!("{}", config.to_toml());
            Ok(())
        }
        Command::Models(command) => crate::models::run(command, &config),
        Command::Compute(t) => {
            serve_unit(
                ComputeServer::new(&config, new_cache(&config)),
                t,
                config,
                shutdown,
            )
            .await
        }
        Command::Data(t) => {
            serve_unit(
                DataServer::new(config.clone(), new_cache(&config)),
                t,
                config,
                shutdown,
            )
            .await
        }
        Command::Control(t) => serve_unit(ControlServer::default(), t, config, shutdown).await,
        Command::Gateway(t) => {
            let backends = Gateway::configured_backends(&config.gateway);
            serve_gateway(backends, t, config, shutdown).await
        }
        Command::Serve(t) => {
            let mut backends = in_process_backends(&config);
            backends.extend(Gateway::configured_backends(&config.gateway));
            serve_gateway(backends, t, config, shutdown).await
        }
    }
}

fn new_cache(config: &Config) -> Arc<InferenceCache> {
    Arc::new(InferenceCache::new((&config.cache).into()))
}

/// compute, data and control, each reached through an in-memory MCP pipe.
fn in_process_backends(config: &Config) -> Vec<Backend> {
    // One cache: compute fills it, data reports on it.
    let cache = new_cache(config);
    let compute = Arc::new(ComputeServer::new(config, cache.clone()));
    let data = Arc::new(DataServer::new(config.clone(), cache));
    let control = Arc::new(ControlServer::default());
    vec![
        in_process("compute", compute, config),
        in_process("data", data, config),
        in_process("control", control, config),
    ]
}

fn in_process<U: McpUnit>(name: &str, unit: Arc<U>, config: &Config) -> Backend {
    let server = UnitServer::new(unit, config.mcp.clone());
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
) -> anyhow::Result<()> {
    let gateway = start_gateway(&config, backends, &shutdown).await?;
    let server = UnitServer::new(gateway, config.mcp.clone());
    let openai = match transport.stdio {
        true => Router::new(),
        false => serve::guard_headers(
            OpenAi::connect(server.clone()).await?.router(),
            &config.http,
        ),
    };
    serve_server(server, transport, config, shutdown, openai).await
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

async fn serve_unit<U: McpUnit>(
    unit: U,
    t: Transport,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let server = UnitServer::new(Arc::new(unit), config.mcp.clone());
    serve_server(server, t, config, shutdown, Router::new()).await
}

/// Serve over stdio, or over HTTP with `extra` routes beside `/mcp`.
async fn serve_server<U: McpUnit>(
    server: UnitServer<U>,
    transport: Transport,
    mut config: Config,
    shutdown: CancellationToken,
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
