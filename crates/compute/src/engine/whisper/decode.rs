//! Decoding one 30 s window: tokens after the start-of-transcript prompt,
//! with Whisper's timestamp rules, then the tokens cut into timed segments.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;
use tokenizers::Tokenizer;

use super::decoder::Decoder;
use super::{Extra, inference, spec};
use crate::engine::EngineError;

/// Seconds per timestamp token step.
const SECS_PER_TIMESTAMP: f64 = 0.02;
/// Mel frames per timestamp step.
const FRAMES_PER_TIMESTAMP: usize = 2;
/// The first timestamp may be at most this far in (OpenAI's 1 s).
const MAX_INITIAL_TIMESTAMP_STEPS: u32 = 50;

/// The special tokens decoding needs, by id.
pub(super) struct Special {
    pub eot: u32,
    sot: u32,
    sot_prev: u32,
    no_speech: Option<u32>,
    no_timestamps: u32,
    pub timestamp_begin: u32,
    /// Tokens that start a multilingual model's prompt after SOT (language, task).
    task: Vec<u32>,
    suppress: Vec<u32>,
    suppress_begin: Vec<u32>,
    vocab: usize,
    max_tokens: usize,
}

impl Special {
    pub fn find(
        tokenizer: &Tokenizer,
        config: &spec::Config,
        extra: &Extra,
    ) -> Result<Self, String> {
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| format!("tokenizer.json lacks {token}"))
        };
        let no_timestamps = id(spec::NO_TIMESTAMPS_TOKEN)?;
        // Multilingual vocabularies hold 99 language tokens, English-only ones
        // none; either way the timestamps follow <|notimestamps|>.
        let multilingual = config.vocab_size >= 51865;
        let task = match multilingual {
            true => vec![id("<|en|>")?, id(spec::TRANSCRIBE_TOKEN)?],
            false => Vec::new(),
        };
        Ok(Self {
            eot: id(spec::EOT_TOKEN)?,
            sot: id(spec::SOT_TOKEN)?,
            sot_prev: id("<|startofprev|>")?,
            no_speech: spec::NO_SPEECH_TOKENS
                .iter()
                .find_map(|t| tokenizer.token_to_id(t)),
            no_timestamps,
            timestamp_begin: no_timestamps + 1,
            task,
            suppress: extra.suppress_ids.clone(),
            suppress_begin: extra.suppress_ids_begin.clone(),
            vocab: config.vocab_size,
            max_tokens: config.max_target_positions,
        })
    }

    fn is_timestamp(&self, token: u32) -> bool {
        token >= self.timestamp_begin
    }
}

/// What decoding one window gave.
pub(super) struct Window {
    /// The sampled tokens, without the prompt and the end token.
    pub tokens: Vec<u32>,
    pub avg_logprob: f64,
    pub no_speech_prob: f64,
    pub temperature: f32,
    /// It reached the end token (not the length limit).
    pub ended: bool,
}

/// A small deterministic generator for sampling at a temperature: the
/// same audio gives the same transcript.
pub(super) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Uniform in [0, 1) (SplitMix64).
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub(super) fn window(
    decoder: &Decoder,
    features: &Tensor,
    context: &[u32],
    special: &Special,
    temperature: f32,
    rng: &mut Rng,
    cancel: &AtomicBool,
) -> Result<Window, EngineError> {
    let mut tokens = Vec::new();
    // The text so far, as much as half the decoder's context holds.
    let room = special.max_tokens / 2 - 1;
    if !context.is_empty() {
        tokens.push(special.sot_prev);
        tokens.extend(&context[context.len().saturating_sub(room)..]);
    }
    tokens.push(special.sot);
    tokens.extend(&special.task);
    let start = tokens.len();
    let mut sum_logprob = 0.0;
    let mut no_speech_prob = 0.0;
    let mut ended = false;
    let limit = (special.max_tokens - start).min(special.max_tokens / 2);
    let mut state = decoder.start(features).map_err(inference)?;
    // The whole prompt first, then the token just chosen, a step at a time.
    let mut fed = 0;
    for step in 0..limit {
        if cancel.load(Ordering::Relaxed) {
            return Err(EngineError::Cancelled);
        }
        let mut logits = decoder
            .step(&mut state, &tokens[fed..])
            .map_err(inference)?;
        fed = tokens.len();
        if step == 0
            && let Some(id) = special.no_speech
        {
            no_speech_prob = f64::from(softmax(&logits)[id as usize]);
        }
        constrain(&mut logits, &tokens[start..], special);
        let logprobs = log_softmax(&logits);
        let next = match temperature > 0.0 {
            true => sample(&logits, temperature, rng),
            false => argmax(&logits),
        };
        sum_logprob += f64::from(logprobs[next as usize]);
        if next == special.eot {
            ended = true;
            break;
        }
        tokens.push(next);
    }
    let sampled = tokens.split_off(start);
    Ok(Window {
        avg_logprob: sum_logprob / (sampled.len() + usize::from(ended)).max(1) as f64,
        tokens: sampled,
        no_speech_prob,
        temperature,
        ended,
    })
}

/// Whisper's rules on what may come next: no suppressed symbols, timestamps
/// in pairs and never going back, a timestamp first (within the first
/// second), and a timestamp whenever timestamps together are likelier than
/// any one text token.
fn constrain(logits: &mut [f32], sampled: &[u32], special: &Special) {
    let ban = |logits: &mut [f32], range: std::ops::Range<usize>| {
        let end = range.end.min(logits.len());
        logits[range.start.min(end)..end].fill(f32::NEG_INFINITY)
    };
    let ts = special.timestamp_begin as usize;
    let vocab = special.vocab.min(logits.len());
    for &id in &special.suppress {
        ban(logits, id as usize..id as usize + 1);
    }
    ban(
        logits,
        special.no_timestamps as usize..special.no_timestamps as usize + 1,
    );
    if sampled.is_empty() {
        for &id in &special.suppress_begin {
            ban(logits, id as usize..id as usize + 1);
        }
        ban(logits, 0..ts);
        ban(logits, ts + MAX_INITIAL_TIMESTAMP_STEPS as usize + 1..vocab);
        return;
    }
    let last_is_ts = sampled.last().is_some_and(|t| special.is_timestamp(*t));
    let before_last_is_ts = sampled.len() < 2 || special.is_timestamp(sampled[sampled.len() - 2]);
    if last_is_ts {
        match before_last_is_ts {
            // A pair just closed: text (or the end) comes next.
            true => ban(logits, ts..vocab),
            // A segment just opened or ended: a timestamp or the end.
            false => ban(logits, 0..special.eot as usize),
        }
    }
    if let Some(&latest) = sampled.iter().rev().find(|t| special.is_timestamp(**t)) {
        let floor = match last_is_ts && !before_last_is_ts {
            true => latest + 1,
            false => latest,
        };
        ban(logits, ts..floor as usize);
    }
    let logprobs = log_softmax(logits);
    let timestamp_mass = log_sum_exp(&logprobs[ts.min(vocab)..vocab]);
    let best_text = logprobs[..ts.min(vocab)]
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    if timestamp_mass > best_text {
        ban(logits, 0..ts);
    }
}

/// The window's tokens cut into timed pieces, and how far to move on.
pub(super) struct Parsed {
    pub pieces: Vec<Piece>,
    pub advance_frames: usize,
}

pub(super) struct Piece {
    pub start_secs: f64,
    pub end_secs: f64,
    /// Its text tokens (timestamps left out).
    pub tokens: Vec<u32>,
    /// All its tokens, timestamps in: what the next window is prompted
    /// with, so the model goes on marking time (without them it drifts
    /// into long untimed segments that repeat the prompt).
    pub with_timestamps: Vec<u32>,
}

pub(super) fn segments(tokens: &[u32], special: &Special, window_frames: usize) -> Parsed {
    let secs = |t: u32| f64::from(t - special.timestamp_begin) * SECS_PER_TIMESTAMP;
    let is_ts = |t: &u32| special.is_timestamp(*t);
    let text_of = |slice: &[u32]| slice.iter().copied().filter(|t| !is_ts(t)).collect();
    // Where one segment's closing timestamp meets the next one's opening.
    let mut cuts: Vec<usize> = (1..tokens.len())
        .filter(|&i| is_ts(&tokens[i - 1]) && is_ts(&tokens[i]))
        .collect();
    let single_ending =
        tokens.len() >= 2 && is_ts(&tokens[tokens.len() - 1]) && !is_ts(&tokens[tokens.len() - 2]);
    if cuts.is_empty() {
        let end = tokens
            .iter()
            .rev()
            .find(|t| is_ts(t))
            .map(|t| secs(*t))
            .filter(|s| *s > 0.0)
            .unwrap_or(window_frames as f64 / 100.0);
        let start = tokens
            .first()
            .filter(|t| is_ts(t))
            .map_or(0.0, |t| secs(*t));
        return Parsed {
            pieces: vec![Piece {
                start_secs: start,
                end_secs: end,
                tokens: text_of(tokens),
                with_timestamps: tokens.to_vec(),
            }],
            advance_frames: window_frames,
        };
    }
    if single_ending {
        cuts.push(tokens.len());
    }
    let mut pieces = Vec::new();
    let mut from = 0;
    for &cut in &cuts {
        let slice = &tokens[from..cut];
        if let (Some(first), Some(last)) = (slice.first(), slice.last())
            && is_ts(first)
            && is_ts(last)
        {
            pieces.push(Piece {
                start_secs: secs(*first),
                end_secs: secs(*last),
                tokens: text_of(slice),
                with_timestamps: slice.to_vec(),
            });
        }
        from = cut;
    }
    let advance_frames = match single_ending {
        // Every segment closed: the whole window is done.
        true => window_frames,
        // The last segment is unfinished: start the next window where it began.
        false => {
            let resume = tokens[from - 1];
            (((resume - special.timestamp_begin) as usize) * FRAMES_PER_TIMESTAMP)
                .clamp(1, window_frames)
        }
    };
    Parsed {
        pieces,
        advance_frames,
    }
}

fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, v)| {
            if *v > best.1 { (i, *v) } else { best }
        })
        .0 as u32
}

fn sample(logits: &[f32], temperature: f32, rng: &mut Rng) -> u32 {
    let scaled: Vec<f32> = logits.iter().map(|l| l / temperature).collect();
    let probs = softmax(&scaled);
    let mut left = rng.next() as f32;
    for (i, p) in probs.iter().enumerate() {
        left -= p;
        if left <= 0.0 {
            return i as u32;
        }
    }
    argmax(logits)
}

fn log_sum_exp(values: &[f32]) -> f32 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f32>().ln()
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let total = log_sum_exp(logits);
    logits.iter().map(|l| l - total).collect()
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    log_softmax(logits).into_iter().map(f32::exp).collect()
}
