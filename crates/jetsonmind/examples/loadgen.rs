//! A load generator for MCP servers over Streamable HTTP: one tool called
//! with fixed arguments by N concurrent workers for a while; prints the
//! latency percentiles and throughput as JSON.
//!
//!     cargo run --release --example loadgen -- --url http://127.0.0.1:8080/mcp \
//!         --tool text_generate --args '{"prompt":"hi","max_tokens":8,"temperature":0}' \
//!         --concurrency 8 --seconds 10 [--token KEY]
//!
//! Used by `bench/gateway_latency.py`; it measures, it asserts nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use jetsonmind_core::rmcp::model::CallToolRequestParams;
use jetsonmind_core::rmcp::transport::StreamableHttpClientTransport;
use jetsonmind_core::rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use jetsonmind_core::rmcp::{ClientCacheConfig, ServiceExt};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long)]
    tool: String,
    /// The tool's arguments, a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Calls made first and not counted.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// A bearer token (API key).
    #[arg(long)]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let arguments: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&args.args).context("--args must be a JSON object")?;
    let mut config = StreamableHttpClientTransportConfig::with_uri(args.url.as_str());
    config.max_concurrent_requests = args.concurrency.max(1) * 2;
    if let Some(token) = &args.token {
        config = config.auth_header(token.clone());
    }
    let client =
        ().serve(StreamableHttpClientTransport::from_config(config))
            .await
            .context("connecting")?;
    client
        .peer()
        .set_response_cache_config(ClientCacheConfig::disabled())
        .await;
    let peer = client.peer().clone();
    let params = CallToolRequestParams::new(args.tool.clone()).with_arguments(arguments);

    for _ in 0..args.warmup {
        peer.call_tool(params.clone())
            .await
            .context("warm-up call")?;
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..args.concurrency).map(|_| {
        let peer = peer.clone();
        let params = params.clone();
        let errors = errors.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                match peer.call_tool(params.clone()).await {
                    Ok(result) if result.is_error != Some(true) => {
                        latencies.push(started.elapsed().as_secs_f64() * 1000.0)
                    }
                    _ => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            latencies
        })
    });
    let started = Instant::now();
    let mut latencies: Vec<f64> = Vec::new();
    for worker in workers.collect::<Vec<_>>() {
        latencies.extend(worker.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    println!(
        "{}",
        json!({
            "url": args.url,
            "tool": args.tool,
            "concurrency": args.concurrency,
            "calls": latencies.len(),
            "errors": errors.load(std::sync::atomic::Ordering::Relaxed),
            "calls_per_second": latencies.len() as f64 / elapsed,
            "p50_ms": at(0.50),
            "p90_ms": at(0.90),
            "p99_ms": at(0.99),
            "max_ms": latencies.last(),
        })
    );
    client.cancel().await.ok();
    Ok(())
}
