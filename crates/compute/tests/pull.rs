//! A model only the cluster has: a call that names it pulls it into the
//! store first (its progress told to the caller, before the generation's),
//! then loads and runs it. The cluster here is a stand-in [`ModelSource`];
//! the real one is tested in the cluster-state crate and end to end.

use crate::support;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jetsonmind_compute::ComputeServer;
use jetsonmind_compute::config::ComputeConfig;
use jetsonmind_compute::config::SimulatorConfig;
use jetsonmind_compute::engine::TextEngine;
use jetsonmind_compute::engine::simulated::SimulatedEngine;
use jetsonmind_compute::models::{Loader, ModelSource};
use jetsonmind_core::Config;
use jetsonmind_core::upstream::forward::TransferCallback;
use jetsonmind_store::gguf::build;
use jetsonmind_store::{ImportOptions, ModelStore};
use serde_json::json;
use support::{call, ok, serve, text};

/// The name the stand-in cluster has a model under.
const SHARED: &str = "shared.gguf";

/// A cluster that has one model (a file of its own), and counts its pulls.
struct StandIn {
    store: Arc<ModelStore>,
    model: PathBuf,
    pulls: AtomicUsize,
}

impl ModelSource for StandIn {
    fn fetch(
        &self,
        name: String,
        mut progress: TransferCallback,
    ) -> Pin<Box<dyn Future<Output = Result<bool, String>> + Send + '_>> {
        Box::pin(async move {
            if name != SHARED {
                return Ok(false);
            }
            self.pulls.fetch_add(1, Ordering::SeqCst);
            for done in [0, 512, 1024] {
                progress(done, 1024);
                tokio::task::yield_now().await;
            }
            let options = ImportOptions {
                name: Some(name),
                ..Default::default()
            };
            let imported = self.store.import(&self.model, &options, |_, _| {});
            imported.map(|_| true).map_err(|e| e.to_string())
        })
    }
}

/// Loads no file: what is tested is how the model got into the store.
fn instant_loader() -> Loader {
    Arc::new(|_, id: &str, settings| {
        let times = SimulatorConfig {
            prompt_token_us: 0,
            output_token_us: 0,
        };
        let engine = SimulatedEngine::new(id, times, settings.context_size);
        Ok(Arc::new(engine) as Arc<dyn TextEngine>)
    })
}

#[tokio::test]
async fn a_model_only_the_cluster_has_is_pulled_with_progress_then_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ModelStore::open(&dir.path().join("data")).unwrap());
    let model = dir.path().join("weights.gguf");
    let mut bytes = build::header(&[("general.architecture", "llama")], &[]);
    bytes.extend([0u8; 64]);
    std::fs::write(&model, bytes).unwrap();
    let cluster = Arc::new(StandIn {
        store: store.clone(),
        model,
        pulls: AtomicUsize::new(0),
    });
    let mut config = Config::default();
    config.data.dir = dir.path().join("data");
    config.section_mut::<ComputeConfig>().progress_every_tokens = 1;
    let server =
        ComputeServer::with_loader(&config, Default::default(), store.clone(), instant_loader());
    server.set_model_source(cluster.clone());
    let (client, progress) = serve(Arc::new(server)).await;

    // Named without `.gguf`, as calls may.
    let generate = json!({"prompt": "hi", "model": "shared", "max_tokens": 4});
    let answer = ok(client
        .call_tool(call("text_generate", generate.clone()))
        .await
        .unwrap());
    assert!(
        answer["text"].as_str().is_some_and(|t| !t.is_empty()),
        "{answer}"
    );
    assert!(
        store.get(SHARED).is_ok(),
        "the pulled model is in the store"
    );
    let heard = support::updates(&progress);
    let pulling: Vec<_> = heard.iter().take_while(|(at, _)| *at < 1.0).collect();
    assert!(!pulling.is_empty(), "no pull progress: {heard:?}");
    for (_, message) in &pulling {
        assert!(
            message
                .as_deref()
                .unwrap()
                .starts_with("pulling shared.gguf: "),
            "{heard:?}"
        );
    }
    assert!(
        heard.len() > pulling.len(),
        "no generation progress after the pull: {heard:?}"
    );
    assert!(
        heard.windows(2).all(|w| w[0].0 < w[1].0),
        "progress went back: {heard:?}"
    );

    ok(client
        .call_tool(call("text_generate", generate))
        .await
        .unwrap());
    assert_eq!(cluster.pulls.load(Ordering::SeqCst), 1, "pulled again");

    // What neither the store nor the cluster has: the single device's error.
    let missing = json!({"prompt": "hi", "model": "nowhere"});
    let refused = client
        .call_tool(call("text_generate", missing))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));
    assert!(
        text(&refused).contains("no model `nowhere` in the model store"),
        "{}",
        text(&refused)
    );
}
