//! Continuous batching: one llama.cpp context per loaded model, with a
//! sequence slot per call that may run at once. Each decode step carries the
//! next token of every generating sequence and, in the room left, chunks of
//! the prompts still being read, so a long prompt never stalls the others.
//!
//! A slot keeps the KV of its last sequence when that one ends: the next call
//! whose prompt starts the same way (system prompt, tool definitions, the
//! conversation so far) reads only the rest. The KV cache is unified, so a
//! prefix held by any slot, busy or idle, is shared by reference.
//!
//! The worker owns the context on a thread of its own; calls reach it over a
//! channel and hear back over one of their own. No state passes from one
//! sequence to another but the KV of a common token prefix, which is exactly
//! what that prefix's own decode would have left.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::{argmax, sampler, valid_utf8_prefix};
use crate::engine::{
    EngineError, FinishReason, Generation, Sampling, Timings, cut_at_stop, per_second,
    stop_safe_len,
};

/// One call, as the worker takes it: the prompt already tokenized.
pub(super) struct Job {
    pub tokens: Vec<LlamaToken>,
    pub max_tokens: u32,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    /// Set by the caller to stop it; seen before the next decode step.
    pub cancel: Arc<AtomicBool>,
    pub events: Sender<Event>,
    /// Generate exactly `max_tokens`, as a benchmark does: an end of
    /// generation token does not end it (calibration runs).
    pub until_max_tokens: bool,
}

/// What a call hears from the worker.
pub(super) enum Event {
    /// The text so far that can be shown (never a possible stop string's start).
    Token {
        text: String,
        completion_tokens: u32,
    },
    Done(Result<Generation, EngineError>),
}

/// How the worker batches.
#[derive(Debug, Clone, Copy)]
pub(super) struct BatchSettings {
    pub slots: usize,
    /// Most tokens in one decode step (generating tokens and prompt chunks).
    pub batch_size: usize,
    /// Reuse the KV of a common prompt prefix.
    pub prefix_cache: bool,
}

pub(super) struct Worker<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    settings: BatchSettings,
    slots: Vec<Slot>,
    pending: VecDeque<Job>,
    batch: LlamaBatch<'static>,
    /// Counts admissions, to tell the least recently used slot.
    clock: u64,
}

struct Slot {
    seq: i32,
    /// The tokens whose KV this sequence holds, at positions 0.., in order.
    held: Vec<LlamaToken>,
    last_used: u64,
    running: Option<Sequence>,
}

struct Sequence {
    job: Job,
    /// Prompt tokens with KV: reused from a prefix, or decoded.
    prompt_done: usize,
    cached_prompt_tokens: usize,
    sampler: Option<LlamaSampler>,
    bytes: Vec<u8>,
    completion_tokens: u32,
    /// Sampled, to be decoded in the next step.
    next: Option<LlamaToken>,
    admitted: Instant,
    first_logits: Option<Instant>,
}

/// What the sequence of one slot put into a decode step.
struct Fed {
    slot: usize,
    feed: Feed,
    /// Where its logits are in the batch: set when it asked for them (its
    /// generated token, or its prompt's last token).
    logits_at: Option<i32>,
}

enum Feed {
    Generated(LlamaToken),
    Prompt(usize),
}

impl<'m> Worker<'m> {
    pub fn new(model: &'m LlamaModel, ctx: LlamaContext<'m>, settings: BatchSettings) -> Self {
        let slots = (0..settings.slots)
            .map(|seq| Slot {
                seq: seq as i32,
                held: Vec::new(),
                last_used: 0,
                running: None,
            })
            .collect();
        Self {
            model,
            ctx,
            settings,
            slots,
            pending: VecDeque::new(),
            batch: LlamaBatch::new(settings.batch_size, 1),
            clock: 0,
        }
    }

    /// Serve calls until every sender is gone and nothing runs.
    pub fn run(mut self, jobs: Receiver<Job>) {
        while self.receive(&jobs) {
            self.drop_cancelled();
            self.admit();
            if self.slots.iter().any(|s| s.running.is_some()) {
                self.step();
            }
        }
    }

    /// Take new calls: wait for one when idle. False once no call can come.
    fn receive(&mut self, jobs: &Receiver<Job>) -> bool {
        let idle = self.pending.is_empty() && self.slots.iter().all(|s| s.running.is_none());
        if idle {
            match jobs.recv() {
                Ok(job) => self.pending.push_back(job),
                Err(_) => return false,
            }
        }
        loop {
            match jobs.try_recv() {
                Ok(job) => self.pending.push_back(job),
                Err(TryRecvError::Empty) => return true,
                // Still finish what runs; the next idle wait ends the worker.
                Err(TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// End cancelled sequences now, freeing their KV cells at once.
    fn drop_cancelled(&mut self) {
        self.pending.retain(|job| {
            let cancelled = job.cancel.load(Ordering::Relaxed);
            if cancelled {
                let _ = job.events.send(Event::Done(Err(EngineError::Cancelled)));
            }
            !cancelled
        });
        for index in 0..self.slots.len() {
            let cancelled = self.slots[index]
                .running
                .as_ref()
                .is_some_and(|s| s.job.cancel.load(Ordering::Relaxed));
            if cancelled {
                self.end(index, Err(EngineError::Cancelled));
            }
        }
    }

    /// Start waiting calls in free slots, each reusing the longest prefix it can.
    fn admit(&mut self) {
        while let Some(free) = self.free_slot_for_next() {
            let job = self.pending.pop_front().expect("a call is waiting");
            self.clock += 1;
            let reused = self.reuse_prefix(free, &job.tokens);
            let reused = self.checked_reuse(free, reused);
            let slot = &mut self.slots[free];
            slot.last_used = self.clock;
            slot.running = Some(Sequence {
                sampler: sampler(&job.sampling),
                job,
                prompt_done: reused,
                cached_prompt_tokens: reused,
                bytes: Vec::new(),
                completion_tokens: 0,
                next: None,
                admitted: Instant::now(),
                first_logits: None,
            });
        }
    }

    /// The free slot the next waiting call should take: the one holding the
    /// longest prefix of its prompt, else the least recently used.
    fn free_slot_for_next(&self) -> Option<usize> {
        let tokens = &self.pending.front()?.tokens;
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.running.is_none())
            .max_by_key(|(_, s)| (common_prefix(&s.held, tokens), u64::MAX - s.last_used))
            .map(|(index, _)| index)
    }

    /// Make slot `index` hold the longest prefix of `tokens` any slot holds,
    /// and nothing after it; the number of prompt tokens left to read is the
    /// rest. At least the last prompt token is read again, for its logits.
    fn reuse_prefix(&mut self, index: usize, tokens: &[LlamaToken]) -> usize {
        let longest = tokens.len() - 1;
        if !self.settings.prefix_cache {
            self.forget(index, 0);
            return 0;
        }
        let own = common_prefix(&self.slots[index].held, tokens).min(longest);
        let (source, best) = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i, common_prefix(&s.held, tokens).min(longest)))
            .max_by_key(|(_, n)| *n)
            .unwrap_or((index, 0));
        if best <= own {
            return self.forget(index, own);
        }
        if !self.copy_prefix(source, index, best) {
            return 0;
        }
        self.slots[index].held = tokens[..best].to_vec();
        best
    }

    /// `reused` if the memory of slot `index` holds exactly positions
    /// `0..reused`, as llama.cpp reports them; else nothing (all read again).
    fn checked_reuse(&mut self, index: usize, reused: usize) -> usize {
        if reused == 0 {
            return 0;
        }
        let seq = self.slots[index].seq;
        let (first, last) = (
            self.ctx.kv_cache_seq_pos_min(seq),
            self.ctx.kv_cache_seq_pos_max(seq),
        );
        if first == 0 && last + 1 == reused as i32 {
            return reused;
        }
        tracing::warn!(
            reused,
            first,
            last,
            "a reused prompt prefix is not whole in the KV cache; reading the prompt again"
        );
        self.forget(index, 0)
    }

    /// Share the first `len` positions of `from`'s KV with `to` (which
    /// keeps nothing of its own); false if llama.cpp refused.
    fn copy_prefix(&mut self, from: usize, to: usize, len: usize) -> bool {
        self.forget(to, 0);
        let (src, dst) = (self.slots[from].seq, self.slots[to].seq);
        self.ctx
            .copy_kv_cache_seq(src, dst, Some(0), Some(len as u32))
            .is_ok()
    }

    /// Drop the KV of slot `index` from position `keep` on; what it keeps.
    fn forget(&mut self, index: usize, keep: usize) -> usize {
        let slot = &mut self.slots[index];
        let removed = self
            .ctx
            .clear_kv_cache_seq(Some(slot.seq as u32), Some(keep as u32), None);
        match removed {
            Ok(true) => {
                slot.held.truncate(keep);
                keep
            }
            // A partial removal the memory cannot do: drop it all.
            _ => {
                let _ = self
                    .ctx
                    .clear_kv_cache_seq(Some(slot.seq as u32), None, None);
                slot.held.clear();
                0
            }
        }
    }

    /// One decode step over every running sequence, then a token for each
    /// sequence whose logits it produced.
    fn step(&mut self) {
        let fed = match self.fill_batch() {
            Ok(fed) => fed,
            Err(e) => return self.fail_all(e),
        };
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            let error = EngineError::Inference(format!("llama.cpp decode: {e}"));
            for fed in fed {
                self.end(fed.slot, Err(error.clone()));
            }
            return;
        }
        for fed in fed {
            self.record_fed(fed.slot, fed.feed);
            if let Some(at) = fed.logits_at {
                self.next_token(fed.slot, at);
            }
        }
    }

    /// The batch of this step: first every generating sequence's next token,
    /// then prompt chunks in the order the calls came, as room allows.
    fn fill_batch(&mut self) -> Result<Vec<Fed>, EngineError> {
        let add_error = |e: &dyn std::fmt::Display| EngineError::Inference(e.to_string());
        self.batch.clear();
        let mut fed = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let position = slot.held.len() as i32;
            let Some(sequence) = slot.running.as_mut() else {
                continue;
            };
            if let Some(token) = sequence.next.take() {
                let logits_at = Some(self.batch.n_tokens());
                self.batch
                    .add(token, position, &[slot.seq], true)
                    .map_err(|e| add_error(&e))?;
                fed.push(Fed {
                    slot: index,
                    feed: Feed::Generated(token),
                    logits_at,
                });
            }
        }
        let mut reading: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                self.slots[i]
                    .running
                    .as_ref()
                    .is_some_and(|s| s.prompt_done < s.job.tokens.len())
            })
            .collect();
        reading.sort_by_key(|&i| self.slots[i].last_used);
        for index in reading {
            let room = self.settings.batch_size - self.batch.n_tokens() as usize;
            if room == 0 {
                break;
            }
            let slot = &mut self.slots[index];
            let sequence = slot.running.as_mut().expect("reading a prompt");
            let tokens = &sequence.job.tokens;
            let end = tokens.len().min(sequence.prompt_done + room);
            let mut logits_at = None;
            for at in sequence.prompt_done..end {
                let last = at + 1 == tokens.len();
                if last {
                    logits_at = Some(self.batch.n_tokens());
                }
                self.batch
                    .add(tokens[at], at as i32, &[slot.seq], last)
                    .map_err(|e| add_error(&e))?;
            }
            fed.push(Fed {
                slot: index,
                feed: Feed::Prompt(end - sequence.prompt_done),
                logits_at,
            });
        }
        Ok(fed)
    }

    /// The slot now holds the KV of what it fed.
    fn record_fed(&mut self, index: usize, feed: Feed) {
        let slot = &mut self.slots[index];
        let Some(sequence) = slot.running.as_mut() else {
            return;
        };
        match feed {
            Feed::Generated(token) => slot.held.push(token),
            Feed::Prompt(count) => {
                let start = sequence.prompt_done;
                slot.held
                    .extend_from_slice(&sequence.job.tokens[start..start + count]);
                sequence.prompt_done += count;
            }
        }
    }

    /// Sample the next token of slot `index` from the logits at `at`, tell
    /// the caller, and end the sequence when it is done.
    fn next_token(&mut self, index: usize, at: i32) {
        let model = self.model;
        let vocab = model.vocab();
        let ctx = &self.ctx;
        let sequence = self.slots[index]
            .running
            .as_mut()
            .expect("it produced logits");
        sequence.first_logits.get_or_insert_with(Instant::now);
        if sequence.completion_tokens == sequence.job.max_tokens {
            return self.end_generated(index, FinishReason::Length);
        }
        let token = match sequence.sampler.as_mut() {
            Some(sampler) => sampler.sample(ctx, at),
            None => argmax(ctx.get_logits_ith(at)),
        };
        if vocab.is_eog(token) && !sequence.job.until_max_tokens {
            return self.end_generated(index, FinishReason::Stop);
        }
        sequence.completion_tokens += 1;
        sequence
            .bytes
            .extend(vocab.token_to_piece(token, false, None));
        let mut text = valid_utf8_prefix(&sequence.bytes).to_string();
        if cut_at_stop(&mut text, &sequence.job.stop) {
            sequence.bytes.truncate(text.len());
            return self.end_generated(index, FinishReason::Stop);
        }
        text.truncate(stop_safe_len(&text, &sequence.job.stop));
        let told = sequence.job.events.send(Event::Token {
            text,
            completion_tokens: sequence.completion_tokens,
        });
        if told.is_err() {
            // The caller is gone.
            return self.end(index, Err(EngineError::Cancelled));
        }
        if sequence.completion_tokens == sequence.job.max_tokens {
            return self.end_generated(index, FinishReason::Length);
        }
        sequence.next = Some(token);
    }

    fn end_generated(&mut self, index: usize, finish_reason: FinishReason) {
        let sequence = self.slots[index].running.as_ref().expect("running");
        let generation = generation(sequence, finish_reason);
        self.end(index, Ok(generation));
    }

    /// Tell the caller how its sequence ended and free the slot. A slot
    /// whose sequence failed or was cancelled keeps no KV: it may be
    /// half-written, and a cancelled call's cells are freed at once.
    fn end(&mut self, index: usize, outcome: Result<Generation, EngineError>) {
        let keep = outcome.is_ok();
        if let Some(sequence) = self.slots[index].running.take() {
            let _ = sequence.job.events.send(Event::Done(outcome));
        }
        if !keep {
            self.forget(index, 0);
        }
    }

    fn fail_all(&mut self, error: EngineError) {
        for index in 0..self.slots.len() {
            if self.slots[index].running.is_some() {
                self.end(index, Err(error.clone()));
            }
        }
    }
}

/// How many tokens `a` and `b` share from the start.
fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn generation(sequence: &Sequence, finish_reason: FinishReason) -> Generation {
    let first = sequence.first_logits.unwrap_or_else(Instant::now);
    let prompt_ms = first.duration_since(sequence.admitted).as_secs_f64() * 1000.0;
    let generation_ms = first.elapsed().as_secs_f64() * 1000.0;
    let read = (sequence.job.tokens.len() - sequence.cached_prompt_tokens) as u32;
    Generation {
        text: String::from_utf8_lossy(&sequence.bytes).into_owned(),
        prompt_tokens: sequence.job.tokens.len() as u32,
        cached_prompt_tokens: sequence.cached_prompt_tokens as u32,
        completion_tokens: sequence.completion_tokens,
        finish_reason,
        timings: Timings {
            prompt_ms,
            generation_ms,
            prompt_tokens_per_second: per_second(read, prompt_ms),
            generation_tokens_per_second: per_second(sequence.completion_tokens, generation_ms),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefixes() {
        let t = |v: &[i32]| v.iter().map(|&i| LlamaToken(i)).collect::<Vec<_>>();
        assert_eq!(common_prefix(&t(&[1, 2, 3]), &t(&[1, 2, 4])), 2);
        assert_eq!(common_prefix(&t(&[1, 2]), &t(&[1, 2, 3])), 2);
        assert_eq!(common_prefix(&t(&[]), &t(&[1])), 0);
        assert_eq!(common_prefix(&t(&[5]), &t(&[1])), 0);
    }
}
