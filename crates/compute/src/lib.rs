//! The compute server: inference tools.
//!
//! The tools and their input schemas are the contract; each engine is added
//! behind it. A tool whose engine is not on this node says so (`isError`),
//! it never returns a made-up answer.

pub mod engine;
pub mod models;
pub mod scheduler;
pub mod schema;
pub mod text;

use std::sync::Arc;

use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::CallToolResult;
use jetsonmind_core::{Catalog, Config, McpUnit, ToolCall, UnitIdentity, not_available, tool_from};
use jetsonmind_data::cache::InferenceCache;
use jetsonmind_data::store::ModelStore;
use serde_json::Value;

use crate::engine::llama::LlamaSettings;
use crate::models::ModelRegistry;
use crate::scheduler::Scheduler;
use crate::schema::*;
use crate::text::TextService;

pub struct ComputeServer {
    catalog: Arc<Catalog>,
    text: TextService,
}

impl ComputeServer {
    /// `cache` and `store` are shared with the data server, which reports on them.
    pub fn new(config: &Config, cache: Arc<InferenceCache>, store: Arc<ModelStore>) -> Self {
        let settings = config.compute.clone();
        let llama = LlamaSettings {
            threads: match settings.threads {
                0 => (available_cores() / settings.parallel).max(1),
                n => n,
            },
            context_size: settings.context_size,
            gpu_layers: settings.gpu_layers,
        };
        let text = TextService {
            models: ModelRegistry::new(store, settings.default_model.clone(), llama),
            scheduler: Scheduler::new(settings.parallel, settings.queue_depth),
            cache,
            settings,
        };
        Self {
            catalog: Arc::new(catalog()),
            text,
        }
    }
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn catalog() -> Catalog {
    let tools = vec![
        tool_from::<TextGenerateArgs>(
            "text_generate",
            "Generate text with a local language model from a prompt or chat messages.",
        ),
        tool_from::<CodeCompleteArgs>(
            "code_complete",
            "Complete code at a point (fill-in-the-middle when the model supports it).",
        ),
        tool_from::<ImageAnalyzeArgs>(
            "image_analyze",
            "Classify an image or read its text (OCR) with a local vision model.",
        ),
        tool_from::<AudioProcessArgs>(
            "audio_process",
            "Transcribe speech to text, or speak text to audio, locally.",
        ),
        tool_from::<MultiModalArgs>(
            "multi_modal_inference",
            "Answer a prompt about an image and/or audio clip by combining local models.",
        ),
        tool_from::<EmbedArgs>(
            "embed",
            "Sentence embeddings for texts (semantic search, clustering).",
        ),
    ];
    Catalog::new(tools, Vec::new(), Vec::new()).expect("the compute catalog is valid")
}

impl McpUnit for ComputeServer {
    fn identity(&self) -> UnitIdentity {
        UnitIdentity {
            name: "jetsonmind-compute",
            title: "JetsonMind compute",
            instructions: "Local AI inference on this device: text generation, code completion, \
                           vision, audio and embeddings.",
        }
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.catalog.clone()
    }

    async fn call_tool(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        let reason = match call.name.as_str() {
            "text_generate" => {
                let args = call.parse()?;
                let raw = Value::Object(call.arguments);
                return Ok(self.text.text_generate(args, &raw, call.context).await);
            }
            "code_complete" => {
                let args = call.parse()?;
                let raw = Value::Object(call.arguments);
                return Ok(self.text.code_complete(args, &raw, call.context).await);
            }
            "image_analyze" | "multi_modal_inference" => {
                "the vision engine is not built into this binary yet"
            }
            "audio_process" => "the audio engine is not built into this binary yet",
            "embed" => "the embedding engine is not built into this binary yet",
            other => {
                return Err(McpError::invalid_params(
                    format!("unknown tool: {other}"),
                    None,
                ));
            }
        };
        Ok(not_available(&call.name, reason))
    }
}
