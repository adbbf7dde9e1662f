//! `jetsonmind`: every JetsonMind MCP server, alone or all together.

mod backup;
mod cli;
mod cluster;
mod cluster_cli;
mod keys;
mod migrate;
mod models;
mod run;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if prints_a_listing(&cli.command) {
        stop_quietly_on_a_closed_stdout();
    }
    // `top` owns the terminal: a log line would be drawn over it.
    if !matches!(cli.command, cli::Command::Top { .. }) {
        init_logging(&cli.log);
    }
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run::run(cli)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole chain of causes on one line.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Commands that print to stdout and are done: their output is often piped
/// into `head` or `grep -q`, which close the pipe early.
fn prints_a_listing(command: &cli::Command) -> bool {
    matches!(
        command,
        cli::Command::Config | cli::Command::Models(_) | cli::Command::Keys(_)
    )
}

/// Rust ignores SIGPIPE, so a closed stdout makes `println!` panic; the
/// default action ends the process quietly instead, as any Unix tool does.
/// Not for the servers: a client that goes away must not end them.
fn stop_quietly_on_a_closed_stdout() {
    // SAFETY: called first thing in `main`, before any other thread exists;
    // SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Logs go to stderr: in stdio mode stdout carries the MCP messages. A tool
/// call's own events also go to its client when it asked for log messages
/// (`logging/setLevel`), whatever the filter for stderr says.
fn init_logging(filter: &str) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // Colours only for a person at a terminal; files and journals get plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(stderr)
        .with(jetsonmind_core::client_log::layer())
        .init();
}
