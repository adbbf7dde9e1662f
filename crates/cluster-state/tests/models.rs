//! Models shared by a cluster, over a real nats-server: published at one
//! node, pulled, checked and imported at another; a corrupted object is
//! refused; a file is stored once however often it is published; a pull cut
//! short leaves nothing behind.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::{self, object_store::ObjectMetadata};
use jetsonmind_cluster::Bus;
use jetsonmind_cluster_state::StateError;
use jetsonmind_cluster_state::models::{ClusterModels, object_name};
use jetsonmind_core::config::ClusterConfig;
use jetsonmind_store::gguf;
use jetsonmind_store::{ImportOptions, ModelInfo, ModelStore};
use support::{NatsServer, connect, node_config, within};

/// Small chunks, so that even a test model is many of them.
const CHUNK: usize = 4096;

/// One node: its own model store and its view of the cluster's models.
struct Node {
    bus: Bus,
    store: Arc<ModelStore>,
    models: ClusterModels,
    dir: tempfile::TempDir,
}

impl Node {
    async fn join(server: &NatsServer, name: &str) -> Self {
        let config = ClusterConfig {
            model_chunk_bytes: CHUNK,
            ..node_config(server, name)
        };
        let bus = connect(&config).await;
        let dir = tempfile::tempdir().expect("a data dir");
        let store = Arc::new(ModelStore::open(dir.path()).expect("the model store"));
        let models = within("opening the model buckets", ClusterModels::open(&bus))
            .await
            .expect("the model buckets");
        Self {
            bus,
            store,
            models,
            dir,
        }
    }

    /// Import `source` under `name` (linked, as the e2e tests do).
    fn import(&self, source: &Path, name: &str) -> ModelInfo {
        let options = ImportOptions {
            name: Some(name.into()),
            link: true,
            ..Default::default()
        };
        self.store
            .import(source, &options, |_, _| {})
            .expect("an import")
    }

    async fn publish(&self, name: &str) -> Result<(), StateError> {
        let published = self.models.publish(&self.store, name, |_, _| {});
        within("publishing", published).await.map(|_| ())
    }

    async fn pull(&self, name: &str) -> Result<ModelInfo, StateError> {
        within("pulling", self.models.pull(&self.store, name, |_, _| {})).await
    }

    fn names(&self) -> Vec<String> {
        let models = self.store.list().expect("the store's models");
        models.into_iter().map(|m| m.name).collect()
    }

    /// Nothing left in the store's `tmp/`: no download, no partial import.
    fn tmp_is_empty(&self) -> bool {
        let tmp = self.dir.path().join("models/tmp");
        std::fs::read_dir(tmp).expect("tmp/").next().is_none()
    }

    /// The Object Store itself, as any client sees it.
    async fn files(&self) -> jetstream::object_store::ObjectStore {
        let js = jetstream::new(self.bus.client.clone());
        js.get_object_store(self.bus.bucket_name("model_files"))
            .await
            .expect("the model files bucket")
    }
}

/// A GGUF file with `payload_bytes` of weights after its header.
fn gguf_file(dir: &Path, name: &str, payload_bytes: usize, seed: u8) -> PathBuf {
    let mut bytes = gguf::build::header(
        &[("general.architecture", "llama")],
        &[("llama.context_length", 2048)],
    );
    bytes.extend((0..payload_bytes).map(|i| (i as u8).wrapping_mul(31) ^ seed));
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("a test model file");
    path
}

/// A directory model: safetensors weights, a tokenizer, a config.
fn directory_model(dir: &Path) -> PathBuf {
    let model = dir.join("minilm");
    std::fs::create_dir(&model).unwrap();
    let mut weights = b"\x08\0\0\0\0\0\0\0{}      ".to_vec();
    weights.extend(vec![7u8; 3 * CHUNK + 5]);
    std::fs::write(model.join("model.safetensors"), weights).unwrap();
    std::fs::write(model.join("tokenizer.json"), b"{\"t\":1}").unwrap();
    std::fs::write(model.join("config.json"), b"{}").unwrap();
    model
}

/// What makes two stores' copies of a model the same model.
fn content(model: &ModelInfo) -> (String, String, Vec<(String, String, u64)>) {
    let files = model.files.iter();
    let files = files.map(|f| (f.path.clone(), f.sha256.clone(), f.size_bytes));
    (model.format.clone(), model.sha256.clone(), files.collect())
}

#[tokio::test]
async fn a_model_published_at_one_node_is_pulled_checked_and_imported_at_another() {
    let server = NatsServer::start();
    let (n1, n2) = (
        Node::join(&server, "n1").await,
        Node::join(&server, "n2").await,
    );
    let sources = tempfile::tempdir().unwrap();
    let tiny = n1.import(
        &gguf_file(sources.path(), "tiny.gguf", 20 * CHUNK + 17, 1),
        "tiny.gguf",
    );
    let minilm = n1.import(&directory_model(sources.path()), "minilm");

    let seen = AtomicU64::new(0);
    let published = n1.models.publish(&n1.store, "tiny.gguf", |done, total| {
        assert_eq!(total, tiny.size_bytes);
        assert!(
            done >= seen.swap(done, Ordering::Relaxed),
            "progress went back"
        );
    });
    let entry = within("publishing", published).await.unwrap();
    assert_eq!(seen.load(Ordering::Relaxed), tiny.size_bytes);
    assert_eq!(
        (entry.sha256.as_str(), entry.published_by.as_str()),
        (tiny.sha256.as_str(), "n1")
    );
    n1.publish("minilm").await.unwrap();
    let listed = n2.models.list().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["minilm", "tiny.gguf"]);

    for original in [&tiny, &minilm] {
        let pulled = n2.pull(&original.name).await.unwrap();
        assert_eq!(pulled.name, original.name);
        assert_eq!(content(&pulled), content(original));
        assert_eq!(pulled.source, "cluster:test/n1");
        assert!(n2.store.verify(&original.name).unwrap().ok);
    }
    let pulled_weights = std::fs::read(n2.store.main_file("tiny.gguf").unwrap()).unwrap();
    assert_eq!(
        pulled_weights,
        std::fs::read(n1.store.main_file("tiny.gguf").unwrap()).unwrap()
    );
    assert!(n2.tmp_is_empty());
    // Pulled already: the same model, not a second copy or an error.
    assert_eq!(
        content(&n2.pull("tiny.gguf").await.unwrap()),
        content(&tiny)
    );

    let missing = n2.pull("nowhere.gguf").await.unwrap_err();
    assert!(matches!(missing, StateError::NotPublished(_)), "{missing}");
    n1.import(
        &gguf_file(sources.path(), "odd.gguf", 10, 2),
        "odd..name.gguf",
    );
    let refused = n1.publish("odd..name.gguf").await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("cannot be a cluster registry key"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_corrupted_object_is_refused_at_pull_and_nothing_is_listed() {
    let server = NatsServer::start();
    let (n1, n2) = (
        Node::join(&server, "n1").await,
        Node::join(&server, "n2").await,
    );
    let sources = tempfile::tempdir().unwrap();
    let model = n1.import(&gguf_file(sources.path(), "m.gguf", 8 * CHUNK, 3), "m.gguf");
    n1.publish("m.gguf").await.unwrap();

    // Other bytes, as long, under the same name.
    let object = object_name(&model.sha256);
    let other = vec![0x5a_u8; model.size_bytes as usize];
    let files = n1.files().await;
    files
        .put(ObjectMetadata::from(object.as_str()), &mut other.as_slice())
        .await
        .unwrap();

    let refused = n2.pull("m.gguf").await.unwrap_err();
    match &refused {
        StateError::DigestMismatch {
            file,
            expected,
            actual,
        } => {
            assert_eq!(file, "m.gguf/m.gguf");
            assert_eq!(expected, &model.sha256);
            assert_ne!(actual, &model.sha256);
        }
        other => panic!("not a digest mismatch: {other}"),
    }
    assert!(n2.names().is_empty());
    assert!(n2.tmp_is_empty());
    assert!(
        !n1.models.objects().await.unwrap().contains_key(&object),
        "a damaged object is deleted, so the next publish uploads it"
    );

    // Publishing again puts the real one back.
    n1.publish("m.gguf").await.unwrap();
    assert_eq!(content(&n2.pull("m.gguf").await.unwrap()), content(&model));
}

#[tokio::test]
async fn a_file_is_stored_once_however_often_it_is_published() {
    let server = NatsServer::start();
    let n1 = Node::join(&server, "n1").await;
    let sources = tempfile::tempdir().unwrap();
    let source = gguf_file(sources.path(), "m.gguf", 6 * CHUNK, 4);
    let model = n1.import(&source, "m.gguf");
    n1.publish("m.gguf").await.unwrap();
    let object = object_name(&model.sha256);
    let files = n1.files().await;
    let first = files.info(&object).await.unwrap();

    n1.publish("m.gguf").await.unwrap();
    n1.import(&source, "m-copy.gguf");
    n1.publish("m-copy.gguf").await.unwrap();
    let objects = n1.models.objects().await.unwrap();
    assert_eq!(
        objects.into_iter().collect::<Vec<_>>(),
        [(object.clone(), model.size_bytes)]
    );
    assert_eq!(
        files.info(&object).await.unwrap().nuid,
        first.nuid,
        "uploaded again"
    );

    // Withdrawn: the file stays while another model has it, then goes.
    n1.models.unpublish("m.gguf").await.unwrap();
    assert!(n1.models.entry("m.gguf").await.unwrap().is_none());
    assert_eq!(n1.models.objects().await.unwrap().len(), 1);
    n1.models.unpublish("m-copy.gguf").await.unwrap();
    assert!(n1.models.objects().await.unwrap().is_empty());
    assert!(n1.models.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_name_published_again_with_other_content_leaves_no_old_file_behind() {
    let server = NatsServer::start();
    let n1 = Node::join(&server, "n1").await;
    let sources = tempfile::tempdir().unwrap();
    let first = n1.import(&gguf_file(sources.path(), "a.gguf", 4 * CHUNK, 1), "m.gguf");
    n1.publish("m.gguf").await.unwrap();
    n1.store.remove("m.gguf").unwrap();
    let second = n1.import(&gguf_file(sources.path(), "b.gguf", 5 * CHUNK, 2), "m.gguf");
    assert_ne!(first.sha256, second.sha256);
    n1.publish("m.gguf").await.unwrap();
    assert_eq!(
        n1.models
            .objects()
            .await
            .unwrap()
            .into_keys()
            .collect::<Vec<_>>(),
        [object_name(&second.sha256)]
    );
}

#[tokio::test]
async fn a_pull_cut_short_leaves_nothing_listed_and_nothing_behind() {
    let server = NatsServer::start();
    let (n1, n2) = (
        Node::join(&server, "n1").await,
        Node::join(&server, "n2").await,
    );
    let sources = tempfile::tempdir().unwrap();
    let model = n1.import(
        &gguf_file(sources.path(), "big.gguf", 512 * CHUNK, 5),
        "big.gguf",
    );
    n1.publish("big.gguf").await.unwrap();

    let (started, mut underway) = tokio::sync::watch::channel(false);
    let pull = n2.models.pull(&n2.store, "big.gguf", |done, _| {
        if done > 0 {
            let _ = started.send(true);
        }
    });
    let cut = tokio::select! {
        pulled = pull => panic!("the pull was not cut short: {pulled:?}"),
        seen = underway.wait_for(|started| *started) => seen.is_ok(),
    };
    assert!(cut);
    assert!(n2.names().is_empty());
    assert!(n2.tmp_is_empty(), "the download was left in tmp/");

    // Nothing in the way of the next pull.
    assert_eq!(
        content(&n2.pull("big.gguf").await.unwrap()),
        content(&model)
    );
}
