//! The llama.cpp engine (`llama-cpp-2`): GGUF models on CPU, or CUDA with the
//! `cuda` feature.

mod batch;
mod calibrate;

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use jetsonmind_contract::calibration::FlashAttention;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use self::batch::{BatchSettings, Event, Job, Worker};
use super::{
    EngineError, Flow, GenerateRequest, Generation, ModelInfo, Partial, Prompt, Sampling,
    TextEngine, TextSettings, Traffic, Trial, TrialFigures,
};
use crate::schema::ChatRole;

/// llama.h's `enum llama_flash_attn_type`.
fn flash_attention_type(policy: FlashAttention) -> i32 {
    match policy {
        FlashAttention::Auto => -1,
        FlashAttention::Off => 0,
        FlashAttention::On => 1,
    }
}

/// A loaded GGUF model and the worker thread that decodes for it.
pub struct LlamaEngine {
    model: Arc<LlamaModel>,
    info: ModelInfo,
    /// The largest context one call may use.
    limit: u32,
    /// `None` only while dropping: closing it ends the worker.
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<JoinHandle<()>>,
}

impl Drop for LlamaEngine {
    /// The context's memory is given back before the unload is done.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn model_info(model: &LlamaModel, id: String) -> ModelInfo {
    let vocab = model.vocab();
    let null = LlamaToken(-1);
    ModelInfo {
        id,
        architecture: model.meta_val_str("general.architecture").ok(),
        parameters: model.n_params(),
        size_bytes: model.size(),
        context_train: model.n_ctx_train(),
        has_chat_template: model.chat_template(None).is_ok(),
        supports_fill_in_middle: [vocab.fim_pre(), vocab.fim_suf(), vocab.fim_mid()]
            .iter()
            .all(|t| *t != null),
    }
}

/// llama.cpp's backend is process-wide and may be initialised once.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    let backend = BACKEND.get_or_init(|| {
        // llama.cpp logs a lot to stderr; route it to tracing (debug level).
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        LlamaBackend::init().map_err(|e| e.to_string())
    });
    backend
        .as_ref()
        .map_err(|e| EngineError::Inference(format!("llama.cpp backend: {e}")))
}

impl LlamaEngine {
    pub fn load(path: &Path, id: String, settings: TextSettings) -> Result<Self, EngineError> {
        let load_error = |reason: String| EngineError::Load {
            path: path.display().to_string(),
            reason,
        };
        if !path.is_file() {
            return Err(load_error("no such file".into()));
        }
        let params = LlamaModelParams::default().with_n_gpu_layers(settings.gpu_layers);
        let model = LlamaModel::load_from_file(backend()?, path, &params)
            .map_err(|e| load_error(e.to_string()))?;
        let info = model_info(&model, id.clone());
        let model = Arc::new(model);
        let limit = settings.context_size.min(info.context_train.max(256));
        let (jobs, worker) =
            start_worker(model.clone(), &id, &settings, limit).map_err(load_error)?;
        Ok(Self {
            model,
            info,
            limit,
            jobs: Some(jobs),
            worker: Some(worker),
        })
    }

    fn prompt_tokens(&self, prompt: &Prompt) -> Result<Vec<LlamaToken>, EngineError> {
        let vocab = self.model.vocab();
        let tokens = match prompt {
            Prompt::Chat(turns) => {
                let text = self.render_chat(turns)?;
                vocab.tokenize(text.as_bytes(), true, true)
            }
            Prompt::FillInMiddle { prefix, suffix } => {
                if !self.info.supports_fill_in_middle {
                    return Err(EngineError::NoFillInMiddle);
                }
                // Prefix-suffix-middle order, as llama.cpp's own infill does.
                let mut tokens = Vec::new();
                if vocab.should_add_bos() {
                    tokens.push(vocab.bos());
                }
                tokens.push(vocab.fim_pre());
                tokens.extend(vocab.tokenize(prefix.as_bytes(), false, false));
                tokens.push(vocab.fim_suf());
                tokens.extend(vocab.tokenize(suffix.as_bytes(), false, false));
                tokens.push(vocab.fim_mid());
                tokens
            }
        };
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        Ok(tokens)
    }

    fn render_chat(&self, turns: &[(ChatRole, String)]) -> Result<String, EngineError> {
        let template_error = |e: &dyn std::fmt::Display| EngineError::Template(e.to_string());
        let messages = turns
            .iter()
            .map(|(role, content)| {
                LlamaChatMessage::new(role.as_str().to_string(), content.clone())
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| template_error(&e))?;
        match self.model.chat_template(None) {
            Ok(template) => self
                .model
                .apply_chat_template(&template, &messages, true)
                .map_err(|e| template_error(&e)),
            // A base model without a template: plain "role: text" turns.
            Err(_) => {
                let mut text: String = turns
                    .iter()
                    .map(|(role, content)| format!("{}: {content}\n", role.as_str()))
                    .collect();
                text.push_str("assistant:");
                Ok(text)
            }
        }
    }
}

impl TextEngine for LlamaEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn generate(
        &self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(&Partial) -> Flow,
    ) -> Result<Generation, EngineError> {
        let tokens = self.prompt_tokens(&request.prompt)?;
        let prompt_tokens = tokens.len() as u32;
        EngineError::unless_it_fits(prompt_tokens, request.max_tokens, self.limit)?;
        let (events, heard) = mpsc::channel();
        let cancel = request.cancel.clone();
        let job = Job {
            tokens,
            max_tokens: request.max_tokens,
            sampling: request.sampling.clone(),
            stop: request.stop.clone(),
            cancel: cancel.clone(),
            events,
            until_max_tokens: false,
        };
        let stopped = || EngineError::Inference("the model's decode thread stopped".into());
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(job).map_err(|_| stopped())?;
        for event in heard {
            match event {
                Event::Token {
                    text,
                    completion_tokens,
                } => {
                    let partial = Partial {
                        text: &text,
                        completion_tokens,
                        prompt_tokens,
                    };
                    if on_token(&partial) == Flow::Cancel {
                        // The worker frees the slot before its next step.
                        cancel.store(true, Ordering::Relaxed);
                        return Err(EngineError::Cancelled);
                    }
                }
                Event::Done(outcome) => return outcome,
            }
        }
        Err(stopped())
    }

    fn calibrate(
        &self,
        trial: &Trial,
        traffic: &(dyn Fn() -> Traffic + Sync),
    ) -> Result<TrialFigures, EngineError> {
        self.run_trial(trial, traffic)
    }
}

/// Create the model's one context (all slots, unified KV) on a thread of its
/// own and serve calls there. An error (say, no memory for the KV cache) is
/// the load's.
fn start_worker(
    model: Arc<LlamaModel>,
    id: &str,
    settings: &TextSettings,
    limit: u32,
) -> Result<(mpsc::Sender<Job>, JoinHandle<()>), String> {
    let slots = settings.slots.max(1);
    let batch = BatchSettings {
        slots: slots as usize,
        // Room for every generating sequence's next token, at least.
        batch_size: settings.batch_size.max(slots) as usize,
        prefix_cache: settings.prefix_cache && prefix_reuse_is_exact(&model),
    };
    let threads = settings.threads.max(1) as i32;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(limit * slots))
        .with_n_seq_max(slots)
        .with_kv_unified(true)
        .with_n_batch(batch.batch_size as u32)
        .with_n_ubatch(settings.ubatch_for(batch.batch_size as u32))
        .with_flash_attention_policy(flash_attention_type(settings.flash_attention))
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let (jobs, receive) = mpsc::channel();
    let (ready, started) = mpsc::sync_channel(1);
    let worker = std::thread::Builder::new()
        .name(format!("decode {id}"))
        .spawn(move || {
            let ctx = backend().and_then(|backend| {
                model
                    .new_context(backend, params)
                    .map_err(|e| EngineError::Inference(e.to_string()))
            });
            let ctx = match ctx {
                Ok(ctx) => ctx,
                Err(e) => {
                    let _ = ready.send(Err(format!("cannot create its context: {e}")));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            Worker::new(&model, ctx, batch).run(receive);
        })
        .map_err(|e| format!("cannot start its decode thread: {e}"))?;
    match started.recv() {
        Ok(Ok(())) => Ok((jobs, worker)),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err("its decode thread stopped while starting".into()),
    }
}

/// Reusing the start of a sequence's memory is exact only for a plain KV
/// cache: a recurrent state cannot be cut at a position, and a sliding-window
/// cache lets other sequences take cells a reused prefix would still need.
fn prefix_reuse_is_exact(model: &LlamaModel) -> bool {
    let arch = model
        .meta_val_str("general.architecture")
        .unwrap_or_default();
    let sliding_window = model
        .meta_val_str(&format!("{arch}.attention.sliding_window"))
        .is_ok();
    !(model.is_recurrent() || model.is_hybrid() || sliding_window)
}

/// `None` for greedy decoding, which is a plain argmax (see [`argmax`]).
fn sampler(s: &Sampling) -> Option<LlamaSampler> {
    if s.temperature <= 0.0 {
        return None;
    }
    let mut chain = Vec::new();
    if s.top_k > 0 {
        chain.push(LlamaSampler::top_k(s.top_k as i32));
    }
    chain.push(LlamaSampler::top_p(s.top_p, 1));
    chain.push(LlamaSampler::temp(s.temperature));
    chain.push(LlamaSampler::dist(s.seed));
    Some(LlamaSampler::chain_simple(chain))
}

/// The most likely token. llama.cpp's greedy sampler gives the same token but
/// first builds a candidate array over the whole vocabulary, which costs a few
/// percent of generation speed on a small model.
fn argmax(logits: &[f32]) -> LlamaToken {
    let best = logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &l)| {
            if l > best.1 { (i, l) } else { best }
        });
    LlamaToken(best.0 as i32)
}

/// The longest prefix of `bytes` that is whole UTF-8 (a token may end mid-character).
fn valid_utf8_prefix(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).expect("valid up to here"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_highest() {
        assert_eq!(argmax(&[0.1, 2.0, -1.0, 2.0]), LlamaToken(1));
        assert_eq!(argmax(&[-3.0]), LlamaToken(0));
    }

    #[test]
    fn partial_characters_wait_for_their_last_byte() {
        let euro = "€".as_bytes();
        assert_eq!(valid_utf8_prefix(&[b'a', euro[0], euro[1]]), "a");
        assert_eq!(valid_utf8_prefix(&[b'a', euro[0], euro[1], euro[2]]), "a€");
    }
}
