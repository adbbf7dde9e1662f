//! `text_generate` and `code_complete`: from tool arguments to a generation
//! request, run under the scheduler with progress and cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jetsonmind_contract::inference::code::{instruct_completion, strip_to_completion};
use jetsonmind_contract::inference::{
    CODE_COMPLETE, DEFAULT_CODE_MAX_TOKENS, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K,
    GenerationProgress, TEXT_GENERATE,
};
use jetsonmind_contract::replica::mark_busy;
use jetsonmind_core::content::text_and_structured;
use jetsonmind_core::rmcp::model::CallToolResult;
use jetsonmind_core::rmcp::model::{NumberOrString, ProgressToken};
use jetsonmind_core::tool_error;
use jetsonmind_core::unit::CallContext;
use jetsonmind_core::upstream::ProgressSink;
use jetsonmind_data::cache::{InferenceCache, cache_key};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::ComputeConfig;
use crate::engine::{EngineError, Flow, GenerateRequest, Generation, Prompt, Sampling, TextEngine};
use crate::models::ModelRegistry;
use crate::scheduler::{AdmitError, Scheduler};
use crate::schema::{ChatRole, CodeCompleteArgs, TextGenerateArgs};

/// Everything a generation needs from the compute server.
pub struct TextService {
    pub models: Arc<ModelRegistry>,
    pub cache: Arc<InferenceCache>,
    pub scheduler: Arc<Scheduler>,
    /// The slots `compute.parallel = 0` means here (what fits the budget).
    pub auto_parallel: usize,
    pub settings: ComputeConfig,
}

/// A call's result: its value, or its error as a tool error (marked busy
/// when it never started for want of a slot, so a router tries elsewhere).
fn answer(result: Result<Value, CallError>) -> CallToolResult {
    match result {
        Ok(value) => tool_result(value),
        Err(error) => {
            let busy = matches!(error, CallError::Admit(AdmitError::Busy { .. }));
            let mut refused = tool_error(error.to_string());
            if busy {
                mark_busy(&mut refused);
            }
            refused
        }
    }
}

/// Why a call produced no text; shown to the caller as a tool error.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("invalid arguments: {0}")]
    Invalid(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Admit(#[from] AdmitError),
}

impl TextService {
    /// `arguments` is the call as sent, the key for the inference cache.
    pub async fn text_generate(
        &self,
        args: TextGenerateArgs,
        arguments: &Value,
        context: CallContext,
    ) -> CallToolResult {
        let result = async {
            let turns = self.chat_turns(&args)?;
            let engine = self
                .models
                .get(args.model.as_deref(), context.progress.as_ref())
                .await?;
            // Greedy decoding, or a given seed, always gives the same text.
            let deterministic = args.temperature == Some(0.0) || args.seed.is_some();
            let key = deterministic.then(|| cache_key(TEXT_GENERATE, &engine.info().id, arguments));
            self.cached_or_run(TEXT_GENERATE, &engine, key, async {
                let request = GenerateRequest {
                    prompt: Prompt::Chat(turns),
                    max_tokens: args.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                    sampling: Sampling {
                        temperature: args.temperature.unwrap_or(DEFAULT_TEMPERATURE),
                        top_p: args.top_p_or_default().map_err(CallError::Invalid)?,
                        top_k: args.top_k.unwrap_or(DEFAULT_TOP_K),
                        seed: args.seed.map_or_else(random_seed, |s| s as u32),
                    },
                    stop: args.stop_strings().map_err(CallError::Invalid)?,
                    cancel: Default::default(),
                };
                let generation = self.run(engine.clone(), request, &context).await?;
                Ok(generation_json(
                    engine.as_ref(),
                    &generation.text,
                    &generation,
                ))
            })
            .await
        }
        .await;
        answer(result)
    }

    pub async fn code_complete(
        &self,
        args: CodeCompleteArgs,
        arguments: &Value,
        context: CallContext,
    ) -> CallToolResult {
        let result = async {
            args.check().map_err(CallError::Invalid)?;
            let bytes = args.code.len()
                + args.context.as_ref().map_or(0, String::len)
                + args.suffix.as_ref().map_or(0, String::len);
            self.check_prompt_size(bytes)?;
            let engine = self
                .models
                .get(args.model.as_deref(), context.progress.as_ref())
                .await?;
            // Completion is greedy, so always cacheable.
            let key = Some(cache_key(CODE_COMPLETE, &engine.info().id, arguments));
            self.cached_or_run(CODE_COMPLETE, &engine, key, async {
                let fim = engine.info().supports_fill_in_middle;
                let prompt = if fim {
                    fill_in_middle(&args)
                } else {
                    Prompt::Chat(instruct_completion(&args))
                };
                let request = GenerateRequest {
                    prompt,
                    max_tokens: args.max_tokens.unwrap_or(DEFAULT_CODE_MAX_TOKENS),
                    sampling: Sampling {
                        temperature: 0.0,
                        top_p: 1.0,
                        top_k: 0,
                        seed: 0,
                    },
                    stop: Vec::new(),
                    cancel: Default::default(),
                };
                let generation = self.run(engine.clone(), request, &context).await?;
                let completion = strip_to_completion(&generation.text, &args.code);
                Ok(generation_json(engine.as_ref(), &completion, &generation))
            })
            .await
        }
        .await;
        answer(result)
    }

    /// The cached answer for `key`, or run and remember it. `None`: not cacheable.
    async fn cached_or_run(
        &self,
        tool: &str,
        engine: &Arc<dyn TextEngine>,
        key: Option<String>,
        run: impl std::future::Future<Output = Result<Value, CallError>>,
    ) -> Result<Value, CallError> {
        if let Some(mut hit) = key.as_deref().and_then(|k| self.cache.get(k)) {
            hit["cached"] = Value::Bool(true);
            return Ok(hit);
        }
        let out = run.await?;
        if let Some(key) = key {
            self.cache.put(key, tool, &engine.info().id, out.clone());
        }
        Ok(out)
    }

    fn chat_turns(&self, args: &TextGenerateArgs) -> Result<Vec<(ChatRole, String)>, CallError> {
        if let Some(messages) = &args.messages {
            self.check_turn_count(messages.len())?;
        }
        let turns = args.turns().map_err(CallError::Invalid)?;
        self.check_prompt_size(turns.iter().map(|(_, text)| text.len()).sum())?;
        Ok(turns)
    }

    /// Before any template or tokenizer work, which grows with the turns:
    /// within `compute.max_messages`, and no more turns than the context has
    /// tokens (every turn takes at least one).
    fn check_turn_count(&self, turns: usize) -> Result<(), CallError> {
        let limit = self.settings.max_messages;
        if turns > limit {
            return Err(CallError::Invalid(format!(
                "`messages` has {turns} turns; the limit is {limit} (compute.max_messages)"
            )));
        }
        let context = self.settings.context_size as usize;
        if turns > context {
            return Err(CallError::Invalid(format!(
                "`messages` has {turns} turns, more than the context of {context} tokens can hold \
                 (compute.context_size); each turn takes at least one"
            )));
        }
        Ok(())
    }

    fn check_prompt_size(&self, bytes: usize) -> Result<(), CallError> {
        let limit = self.settings.max_prompt_bytes;
        if bytes > limit {
            return Err(CallError::Invalid(format!(
                "the prompt is {bytes} bytes; the limit is {limit} (compute.max_prompt_bytes)"
            )));
        }
        Ok(())
    }

    /// Admit, then generate on a blocking thread; progress goes to the
    /// caller if it asked, and cancelling the call stops generation at the next token.
    async fn run(
        &self,
        engine: Arc<dyn TextEngine>,
        request: GenerateRequest,
        context: &CallContext,
    ) -> Result<Generation, CallError> {
        let _slot = self.scheduler.admit(&context.cancel).await?;
        let cancelled = request.cancel.clone();
        let _stop_on_drop = SetOnDrop(cancelled.clone());
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let relay = tokio::spawn(relay_progress(
            context.progress.clone(),
            progress_rx,
            request.max_tokens,
        ));
        let every = self.settings.progress_every_tokens;
        let flag = cancelled.clone();
        let generation = tokio::task::spawn_blocking(move || {
            engine.generate(&request, &mut |partial| {
                if flag.load(Ordering::Relaxed) {
                    return Flow::Cancel;
                }
                // The first token at once: a streaming client shows it.
                if partial.completion_tokens == 1 || partial.completion_tokens % every == 0 {
                    let _ = progress_tx.send((partial.completion_tokens, partial.text.to_string()));
                }
                Flow::Continue
            })
        });
        let watch = context.cancel.clone();
        let outcome = tokio::select! {
            outcome = generation => outcome,
            _ = watch.cancelled() => {
                cancelled.store(true, Ordering::Relaxed);
                return Err(EngineError::Cancelled.into());
            }
        };
        let _ = relay.await;
        let generation = outcome
            .map_err(|e| EngineError::Inference(format!("generation thread failed: {e}")))??;
        Ok(generation)
    }
}

/// Stops a blocking generation when its call goes away (cancelled or dropped).
pub(crate) struct SetOnDrop(pub(crate) Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn relay_progress(
    sink: Option<ProgressSink>,
    mut updates: mpsc::UnboundedReceiver<(u32, String)>,
    max_tokens: u32,
) {
    let Some(sink) = sink else {
        while updates.recv().await.is_some() {}
        return;
    };
    // The sink puts the caller's own progress token in.
    let token = ProgressToken(NumberOrString::Number(0));
    while let Some((tokens, text)) = updates.recv().await {
        let progress = GenerationProgress {
            tokens,
            max_tokens,
            text,
        };
        sink.report(progress.notification(token.clone())).await;
    }
}

fn generation_json(engine: &dyn TextEngine, text: &str, generation: &Generation) -> Value {
    json!({
        "text": text,
        "model": engine.info().id,
        "finish_reason": generation.finish_reason,
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
            "cached_prompt_tokens": generation.cached_prompt_tokens,
        },
        "timings": generation.timings,
        "cached": false,
    })
}

fn tool_result(structured: Value) -> CallToolResult {
    let text = structured["text"].as_str().unwrap_or_default().to_string();
    text_and_structured(text, structured)
}

fn fill_in_middle(args: &CodeCompleteArgs) -> Prompt {
    let mut prefix = String::new();
    if let Some(context) = &args.context {
        prefix.push_str(context);
        prefix.push('\n');
    }
    prefix.push_str(&args.code);
    Prompt::FillInMiddle {
        prefix,
        suffix: args.suffix.clone().unwrap_or_default(),
    }
}

fn random_seed() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}
