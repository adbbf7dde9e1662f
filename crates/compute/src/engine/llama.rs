//! The llama.cpp engine (`llama-cpp-2`): GGUF models on CPU, or CUDA with the
//! `cuda` feature.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::{
    EngineError, FinishReason, Flow, GenerateRequest, Generation, ModelInfo, Partial, Prompt,
    TextEngine, Timings, cut_at_stop, per_second, stop_safe_len,
};
use crate::schema::ChatRole;

/// How to run a model: threads, context limit, GPU offload.
#[derive(Debug, Clone)]
pub struct LlamaSettings {
    /// CPU threads per generation (at least 1).
    pub threads: usize,
    pub context_size: u32,
    pub gpu_layers: u32,
}

pub struct LlamaEngine {
    model: LlamaModel,
    info: ModelInfo,
    settings: LlamaSettings,
    /// llama.cpp may touch the model while creating a context, so contexts
    /// are created one at a time (generation itself runs in parallel).
    new_context: Mutex<()>,
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
    pub fn load(path: &Path, id: String, settings: LlamaSettings) -> Result<Self, EngineError> {
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
        let info = model_info(&model, id);
        Ok(Self {
            model,
            info,
            settings,
            new_context: Mutex::new(()),
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

    /// `None` for greedy decoding, which is a plain argmax (see [`argmax`]).
    fn sampler(&self, request: &GenerateRequest) -> Option<LlamaSampler> {
        let s = &request.sampling;
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

    fn threads(&self) -> i32 {
        self.settings.threads.max(1) as i32
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
        let inference = |e: &dyn std::fmt::Display| EngineError::Inference(e.to_string());
        let prompt = self.prompt_tokens(&request.prompt)?;
        let prompt_len = prompt.len() as u32;
        let limit = self
            .settings
            .context_size
            .min(self.info.context_train.max(256));
        EngineError::unless_it_fits(prompt_len, request.max_tokens, limit)?;
        // Only as much KV cache as this call can use: cheap to create.
        let n_ctx = (prompt_len + request.max_tokens)
            .next_multiple_of(256)
            .min(limit);
        let n_batch = n_ctx.min(512);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_batch)
            .with_n_ubatch(n_batch)
            .with_n_threads(self.threads())
            .with_n_threads_batch(self.threads());
        let mut ctx = {
            let _one_at_a_time = self.new_context.lock().expect("context lock");
            self.model
                .new_context(backend()?, params)
                .map_err(|e| inference(&e))?
        };

        let started = Instant::now();
        let mut batch = LlamaBatch::new(n_batch as usize, 1);
        let chunks: Vec<&[LlamaToken]> = prompt.chunks(n_batch as usize).collect();
        for (c, chunk) in chunks.iter().enumerate() {
            batch.clear();
            let base = c * n_batch as usize;
            for (i, token) in chunk.iter().enumerate() {
                let last = c + 1 == chunks.len() && i + 1 == chunk.len();
                batch
                    .add(*token, (base + i) as i32, &[0], last)
                    .map_err(|e| inference(&e))?;
            }
            ctx.decode(&mut batch).map_err(|e| inference(&e))?;
        }
        let prompt_ms = started.elapsed().as_secs_f64() * 1000.0;

        let generation_started = Instant::now();
        let vocab = self.model.vocab();
        let mut sampler = self.sampler(request);
        let mut bytes: Vec<u8> = Vec::new();
        let mut completion_tokens = 0u32;
        let mut position = prompt_len as i32;
        let mut logits_at = batch.n_tokens() - 1;
        let finish_reason = loop {
            if completion_tokens == request.max_tokens {
                break FinishReason::Length;
            }
            let token = match sampler.as_mut() {
                Some(sampler) => {
                    let token = sampler.sample(&ctx, logits_at);
                    sampler.accept(token);
                    token
                }
                None => argmax(ctx.get_logits_ith(logits_at)),
            };
            if vocab.is_eog(token) {
                break FinishReason::Stop;
            }
            completion_tokens += 1;
            bytes.extend(vocab.token_to_piece(token, false, None));
            let mut text = valid_utf8_prefix(&bytes).to_string();
            if cut_at_stop(&mut text, &request.stop) {
                bytes.truncate(text.len());
                break FinishReason::Stop;
            }
            let shown = &text[..stop_safe_len(&text, &request.stop)];
            let partial = Partial {
                text: shown,
                completion_tokens,
                prompt_tokens: prompt_len,
            };
            if on_token(&partial) == Flow::Cancel {
                return Err(EngineError::Cancelled);
            }
            batch.clear();
            batch
                .add(token, position, &[0], true)
                .map_err(|e| inference(&e))?;
            position += 1;
            logits_at = 0;
            ctx.decode(&mut batch).map_err(|e| inference(&e))?;
        };
        let generation_ms = generation_started.elapsed().as_secs_f64() * 1000.0;
        Ok(Generation {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            prompt_tokens: prompt_len,
            completion_tokens,
            finish_reason,
            timings: Timings {
                prompt_ms,
                generation_ms,
                prompt_tokens_per_second: per_second(prompt_len, prompt_ms),
                generation_tokens_per_second: per_second(completion_tokens, generation_ms),
            },
        })
    }
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
