//! The inference simulator, for benchmarks only (`compute.engine =
//! "simulated"`): no model file and no CPU. A call sleeps a fixed time per
//! prompt token, then per generated token, and streams its tokens through
//! the same callback as llama.cpp, so progress, cancellation, `max_tokens`
//! and stop strings behave as with a real model. The text is made up, and
//! every result says so (its model id starts with [`MODEL_PREFIX`]).

use std::time::{Duration, Instant};

use crate::config::SimulatorConfig;

use super::{
    EngineError, FinishReason, Flow, GenerateRequest, Generation, ModelInfo, Partial, Prompt,
    TextEngine, Timings, cut_at_stop, per_second, stop_safe_len,
};

/// How a simulated model's id begins: `simulated:<name>`.
pub const MODEL_PREFIX: &str = "simulated:";

/// The `_meta` key of every tool result, naming the engine that gave it.
pub const ENGINE_META_KEY: &str = "jetsonmind/engine";

/// Its value when the simulator answered.
pub const ENGINE_NAME: &str = "simulated";

/// The generated tokens, cycled: text that says what it is.
const TOKENS: &[&str] = &[
    " This",
    " is",
    " simulated",
    " text",
    ",",
    " not",
    " a",
    " model",
    "'s",
    " answer",
    ":",
    " each",
    " token",
    " took",
    " a",
    " fixed",
    " time",
    ".",
];

/// Tokens a chat turn costs beyond its text (role markers of a template).
const TURN_OVERHEAD_TOKENS: u32 = 4;

/// Tokens a fill-in-the-middle prompt costs beyond its text (the three markers).
const FILL_IN_MIDDLE_TOKENS: u32 = 3;

pub struct SimulatedEngine {
    info: ModelInfo,
    times: SimulatorConfig,
}

impl SimulatedEngine {
    /// A simulated model named `name`, with a context of `context_size` tokens.
    pub fn new(name: &str, times: SimulatorConfig, context_size: u32) -> Self {
        Self {
            info: ModelInfo {
                id: format!("{MODEL_PREFIX}{name}"),
                architecture: Some(ENGINE_NAME.into()),
                parameters: 0,
                size_bytes: 0,
                context_train: context_size,
                has_chat_template: true,
                supports_fill_in_middle: true,
            },
            times,
        }
    }

    fn prompt_time(&self, tokens: u32) -> Duration {
        Duration::from_micros(self.times.prompt_token_us).saturating_mul(tokens)
    }

    fn output_time(&self, tokens: u32) -> Duration {
        Duration::from_micros(self.times.output_token_us).saturating_mul(tokens)
    }
}

/// A cheap, deterministic stand-in for a tokenizer: a run of letters or
/// digits is one token, and so is every other visible character.
pub fn count_tokens(text: &str) -> u32 {
    let mut tokens = 0u32;
    let mut in_word = false;
    for c in text.chars() {
        let word = c.is_alphanumeric();
        if (word && !in_word) || (!word && !c.is_whitespace()) {
            tokens = tokens.saturating_add(1);
        }
        in_word = word;
    }
    tokens
}

fn prompt_tokens(prompt: &Prompt) -> u32 {
    match prompt {
        Prompt::Chat(turns) => turns.iter().fold(0u32, |sum, (_, text)| {
            sum.saturating_add(count_tokens(text))
                .saturating_add(TURN_OVERHEAD_TOKENS)
        }),
        Prompt::FillInMiddle { prefix, suffix } => count_tokens(prefix)
            .saturating_add(count_tokens(suffix))
            .saturating_add(FILL_IN_MIDDLE_TOKENS),
    }
}

/// Where in [`TOKENS`] the answer starts: fixed by the prompt, and by the
/// seed when sampling (greedy answers do not depend on the seed).
fn first_token(request: &GenerateRequest, prompt_tokens: u32) -> usize {
    let sampling = &request.sampling;
    let seed = if sampling.temperature > 0.0 {
        sampling.seed
    } else {
        0
    };
    (prompt_tokens.wrapping_add(seed) as usize) % TOKENS.len()
}

/// Sleep until `deadline`: deadlines from one start keep oversleeping from
/// adding up over many tokens.
fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

fn millis(time: Duration) -> f64 {
    time.as_secs_f64() * 1000.0
}

impl TextEngine for SimulatedEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn generate(
        &self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(&Partial) -> Flow,
    ) -> Result<Generation, EngineError> {
        let prompt_len = prompt_tokens(&request.prompt);
        if prompt_len == 0 {
            return Err(EngineError::EmptyPrompt);
        }
        EngineError::unless_it_fits(prompt_len, request.max_tokens, self.info.context_train)?;
        sleep_until(Instant::now() + self.prompt_time(prompt_len));

        let started = Instant::now();
        let first = first_token(request, prompt_len);
        let mut text = String::new();
        let mut completion_tokens = 0u32;
        let finish_reason = loop {
            if completion_tokens == request.max_tokens {
                break FinishReason::Length;
            }
            sleep_until(started + self.output_time(completion_tokens + 1));
            text.push_str(TOKENS[(first + completion_tokens as usize) % TOKENS.len()]);
            completion_tokens += 1;
            if cut_at_stop(&mut text, &request.stop) {
                break FinishReason::Stop;
            }
            let partial = Partial {
                text: &text[..stop_safe_len(&text, &request.stop)],
                completion_tokens,
                prompt_tokens: prompt_len,
            };
            if on_token(&partial) == Flow::Cancel {
                return Err(EngineError::Cancelled);
            }
        };
        // The simulated times, not the time slept: what a benchmark configured.
        let prompt_ms = millis(self.prompt_time(prompt_len));
        let generation_ms = millis(self.output_time(completion_tokens));
        Ok(Generation {
            text,
            prompt_tokens: prompt_len,
            cached_prompt_tokens: 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Sampling;
    use crate::schema::ChatRole;

    fn engine(context_size: u32) -> SimulatedEngine {
        let times = SimulatorConfig {
            prompt_token_us: 0,
            output_token_us: 0,
        };
        SimulatedEngine::new("tiny.gguf", times, context_size)
    }

    fn request(prompt: &str, max_tokens: u32, stop: &[&str]) -> GenerateRequest {
        GenerateRequest {
            cancel: Default::default(),
            prompt: Prompt::Chat(vec![(ChatRole::User, prompt.into())]),
            max_tokens,
            sampling: Sampling {
                temperature: 0.0,
                top_p: 1.0,
                top_k: 0,
                seed: 7,
            },
            stop: stop.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn run(engine: &SimulatedEngine, request: &GenerateRequest) -> Generation {
        engine.generate(request, &mut |_| Flow::Continue).unwrap()
    }

    #[test]
    fn tokens_are_words_and_visible_symbols() {
        assert_eq!(count_tokens("Hello, world!  42x"), 5);
        assert_eq!(count_tokens("   "), 0);
        assert_eq!(count_tokens("été"), 1);
    }

    #[test]
    fn greedy_answers_depend_on_the_prompt_only() {
        let engine = engine(4096);
        let mut other_seed = request("Say something.", 12, &[]);
        other_seed.sampling.seed = 99;
        let first = run(&engine, &request("Say something.", 12, &[]));
        assert_eq!(first.text, run(&engine, &other_seed).text);
        assert_eq!(first.completion_tokens, 12);
        assert_eq!(first.finish_reason, FinishReason::Length);
        assert_eq!(first.prompt_tokens, 3 + TURN_OVERHEAD_TOKENS);
        assert_eq!(engine.info().id, "simulated:tiny.gguf");
    }

    #[test]
    fn a_prompt_and_answer_beyond_the_context_are_refused() {
        let err = engine(256)
            .generate(&request("hi", 300, &[]), &mut |_| Flow::Continue)
            .unwrap_err();
        assert!(matches!(err, EngineError::ContextOverflow { .. }), "{err}");
    }

    #[test]
    fn a_stop_string_spanning_tokens_ends_the_text_before_it() {
        let engine = engine(4096);
        let full = run(&engine, &request("x", 40, &[])).text;
        let at = full.find("a model").unwrap();
        let stopped = run(&engine, &request("x", 40, &["a model"]));
        assert_eq!(stopped.finish_reason, FinishReason::Stop);
        assert_eq!(stopped.text, full[..at]);
    }
}
