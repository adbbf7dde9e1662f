//! Wiring: config in, servers up, until a signal.

use std::sync::Arc;

use anyhow::Context;
use jetsonmind_compute::ComputeServer;
use jetsonmind_control::ControlServer;
use jetsonmind_core::serve::{self, MCP_PATH};
use jetsonmind_core::{Config, McpUnit, UnitServer};
use jetsonmind_data::DataServer;
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
        Command::Compute(t) => serve_unit(ComputeServer::new(&config), t, config, shutdown).await,
        Command::Data(t) => serve_unit(DataServer::new(config.clone()), t, config, shutdown).await,
        Command::Control(t) => serve_unit(ControlServer::default(), t, config, shutdown).await,
        Command::Gateway(t) => {
            let backends = Gateway::configured_backends(&config.gateway);
            let gateway = start_gateway(&config, backends, &shutdown).await?;
            serve_arc(gateway, t, config, shutdown).await
        }
        Command::Serve(t) => {
            let mut backends = in_process_backends(&config);
            backends.extend(Gateway::configured_backends(&config.gateway));
            let gateway = start_gateway(&config, backends, &shutdown).await?;
            serve_arc(gateway, t, config, shutdown).await
        }
    }
}

/// compute, data and control, each reached through an in-memory MCP pipe.
fn in_process_backends(config: &Config) -> Vec<Backend> {
    let compute = Arc::new(ComputeServer::new(config));
    let data = Arc::new(DataServer::new(config.clone()));
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
    serve_arc(Arc::new(unit), t, config, shutdown).await
}

async fn serve_arc<U: McpUnit>(
    unit: Arc<U>,
    transport: Transport,
    mut config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let name = unit.identity().name;
    let server = UnitServer::new(unit, config.mcp.clone());
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
    let router = serve::mcp_router(server, &config.http, shutdown.clone());
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
