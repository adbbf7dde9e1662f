//! Calibration: a candidate's settings measured on the loaded model, in a
//! context of their own beside the one that serves calls, so the model's
//! weights are shared and serving goes on with its own settings.
//!
//! The run is the decode worker that serves calls (continuous batching),
//! only with the candidate's threads, slots and batch, no prefix reuse, and
//! calls that each read a prompt of their own and generate to `max_tokens`.
//! Real calls come first: when one is waiting or running, the run is
//! cancelled, and it starts again once the engine has been quiet a moment,
//! so a measurement never mixes with real traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use llama_cpp_2::token::LlamaToken;

use super::batch::{Event, Job};
use super::{LlamaEngine, TextSettings, start_worker};
use crate::engine::{EngineError, Sampling, Traffic, Trial, TrialFigures, per_second};

/// Most times one run starts again after giving way to calls.
const MAX_RESTARTS: u32 = 20;
/// How long no call may have run before a run starts.
const QUIET_FOR: Duration = Duration::from_millis(200);
/// Longest wait for such a moment.
const MAX_WAIT: Duration = Duration::from_secs(120);
/// How often the run looks for real calls and for its own tokens.
const POLL: Duration = Duration::from_micros(500);

/// One call of a run, as the run hears it.
struct Call {
    heard: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    first_token: Option<Instant>,
    /// When it ended, with its prompt and generated tokens.
    done: Option<(Instant, u32, u32)>,
}

impl LlamaEngine {
    pub(super) fn run_trial(
        &self,
        trial: &Trial,
        traffic: &(dyn Fn() -> Traffic + Sync),
    ) -> Result<TrialFigures, EngineError> {
        check(trial)?;
        let limit = trial.prompt_tokens + trial.max_tokens + 1;
        EngineError::unless_it_fits(
            trial.prompt_tokens,
            trial.max_tokens,
            self.info.context_train.max(256),
        )?;
        let settings = TextSettings {
            threads: trial.threads,
            context_size: limit,
            gpu_layers: 0,
            slots: trial.slots,
            batch_size: trial.batch_size,
            ubatch_size: trial.ubatch_size,
            flash_attention: trial.flash_attention,
            prefix_cache: false,
        };
        let (jobs, worker) = start_worker(self.model.clone(), "calibration", &settings, limit)
            .map_err(|reason| {
                EngineError::Inference(format!("cannot start a calibration context: {reason}"))
            })?;
        let prompts: Vec<_> = (0..trial.clients)
            .map(|i| self.synthetic_prompt(i, trial.prompt_tokens as usize))
            .collect();
        let outcome = runs_until_measured(&jobs, &prompts, trial, traffic);
        drop(jobs);
        let _ = worker.join();
        outcome
    }

    /// A prompt of exactly `tokens` tokens, different for each call `i`
    /// from its first tokens on, so no two calls share a prefix.
    fn synthetic_prompt(&self, i: u32, tokens: usize) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        let sentence = format!(
            "Report {i}: the river valleys, the old mills and the roads between the towns \
             of the north, as the travellers of year {} told them. ",
            1800 + i
        );
        let mut prompt = Vec::with_capacity(tokens);
        while prompt.len() < tokens {
            prompt.extend(vocab.tokenize(sentence.as_bytes(), prompt.is_empty(), false));
        }
        prompt.truncate(tokens);
        prompt
    }
}

fn check(trial: &Trial) -> Result<(), EngineError> {
    let zero = [
        ("threads", trial.threads as u32),
        ("slots", trial.slots),
        ("batch_size", trial.batch_size),
        ("clients", trial.clients),
        ("prompt_tokens", trial.prompt_tokens),
        ("max_tokens", trial.max_tokens),
    ]
    .into_iter()
    .find(|(_, value)| *value == 0);
    match zero {
        Some((name, _)) => Err(EngineError::Inference(format!(
            "calibration: `{name}` must be at least 1"
        ))),
        None => Ok(()),
    }
}

/// Run until one run ends without a real call coming, waiting for quiet
/// before each.
fn runs_until_measured(
    jobs: &Sender<Job>,
    prompts: &[Vec<LlamaToken>],
    trial: &Trial,
    traffic: &(dyn Fn() -> Traffic + Sync),
) -> Result<TrialFigures, EngineError> {
    for yielded in 0..=MAX_RESTARTS {
        wait_for_quiet(traffic)?;
        if yielded == 0 {
            warm_up(jobs, &prompts[0])?;
        }
        if let Some(mut figures) = measure(jobs, prompts, trial, traffic)? {
            figures.yielded = yielded;
            return Ok(figures);
        }
    }
    Err(EngineError::Inference(format!(
        "calibration gave way to real calls {MAX_RESTARTS} times; try again when the device is \
         less busy"
    )))
}

/// One short call before the first run, as llama-bench does: a new
/// context's first decodes allocate and plan its compute graph, which no
/// later call pays for.
fn warm_up(jobs: &Sender<Job>, prompt: &[LlamaToken]) -> Result<(), EngineError> {
    let stopped = || EngineError::Inference("the calibration decode thread stopped".into());
    let (events, heard) = mpsc::channel();
    let job = Job {
        tokens: prompt.to_vec(),
        max_tokens: 2,
        sampling: greedy(),
        stop: Vec::new(),
        cancel: Arc::new(AtomicBool::new(false)),
        events,
        until_max_tokens: true,
    };
    jobs.send(job).map_err(|_| stopped())?;
    for event in heard {
        if let Event::Done(outcome) = event {
            return outcome.map(|_| ());
        }
    }
    Err(stopped())
}

fn greedy() -> Sampling {
    Sampling {
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        seed: 0,
    }
}

fn wait_for_quiet(traffic: &(dyn Fn() -> Traffic + Sync)) -> Result<(), EngineError> {
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    loop {
        match traffic() {
            Traffic::Cancelled => return Err(EngineError::Cancelled),
            Traffic::Calls => quiet_since = Instant::now(),
            Traffic::Quiet if quiet_since.elapsed() >= QUIET_FOR => return Ok(()),
            Traffic::Quiet => {}
        }
        if started.elapsed() > MAX_WAIT {
            return Err(EngineError::Inference(format!(
                "calibration waited {} s for real calls to leave room; try again when the \
                 device is less busy",
                MAX_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One run: every call sent at once; `None` when a real call came.
fn measure(
    jobs: &Sender<Job>,
    prompts: &[Vec<LlamaToken>],
    trial: &Trial,
    traffic: &(dyn Fn() -> Traffic + Sync),
) -> Result<Option<TrialFigures>, EngineError> {
    let stopped = || EngineError::Inference("the calibration decode thread stopped".into());
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let mut calls = Vec::with_capacity(prompts.len());
    for tokens in prompts {
        let (events, heard) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            tokens: tokens.clone(),
            max_tokens: trial.max_tokens,
            sampling: greedy(),
            stop: Vec::new(),
            cancel: cancel.clone(),
            events,
            until_max_tokens: true,
        };
        jobs.send(job).map_err(|_| stopped())?;
        calls.push(Call {
            heard,
            cancel,
            first_token: None,
            done: None,
        });
    }
    while calls.iter().any(|c| c.done.is_none()) {
        let now = traffic();
        if now != Traffic::Quiet {
            for call in &calls {
                call.cancel.store(true, Ordering::Relaxed);
            }
            return match now {
                Traffic::Cancelled => Err(EngineError::Cancelled),
                _ => Ok(None),
            };
        }
        let mut heard_any = false;
        for call in calls.iter_mut().filter(|c| c.done.is_none()) {
            heard_any |= hear(call).map_err(|e| e.unwrap_or_else(stopped))?;
        }
        if !heard_any {
            std::thread::sleep(POLL);
        }
    }
    let cpu_seconds = process_cpu_seconds() - cpu_before;
    Ok(Some(figures(&calls, started, cpu_seconds)))
}

/// Take what `call` has heard; whether it heard anything. `Err(None)`: the
/// worker stopped.
fn hear(call: &mut Call) -> Result<bool, Option<EngineError>> {
    let mut heard = false;
    loop {
        match call.heard.try_recv() {
            Ok(Event::Token { .. }) => {
                call.first_token.get_or_insert_with(Instant::now);
                heard = true;
            }
            Ok(Event::Done(outcome)) => {
                let generation = outcome.map_err(Some)?;
                let tokens = (generation.prompt_tokens, generation.completion_tokens);
                call.done = Some((Instant::now(), tokens.0, tokens.1));
                return Ok(true);
            }
            Err(TryRecvError::Empty) => return Ok(heard),
            Err(TryRecvError::Disconnected) => return Err(None),
        }
    }
}

fn figures(calls: &[Call], started: Instant, cpu_seconds: f64) -> TrialFigures {
    let ms = |at: Instant| at.duration_since(started).as_secs_f64() * 1000.0;
    let ended: Vec<_> = calls.iter().filter_map(|c| c.done).collect();
    let wall_ms = ended.iter().map(|(at, ..)| ms(*at)).fold(0.0, f64::max);
    let first_tokens: Vec<f64> = calls.iter().filter_map(|c| c.first_token.map(ms)).collect();
    let per_token: Vec<f64> = calls
        .iter()
        .filter_map(|c| {
            let (done, _, generated) = c.done?;
            let first = c.first_token?;
            (generated > 1)
                .then(|| done.duration_since(first).as_secs_f64() * 1000.0 / (generated - 1) as f64)
        })
        .collect();
    let prompt_tokens: u32 = ended.iter().map(|(_, prompt, _)| prompt).sum();
    let generated: u32 = ended.iter().map(|(.., generated)| generated).sum();
    let last_first_token = first_tokens.iter().copied().fold(0.0, f64::max);
    TrialFigures {
        wall_ms,
        time_to_first_token_ms: median(first_tokens),
        per_token_ms: median(per_token),
        prompt_tokens_per_second: per_second(prompt_tokens, last_first_token),
        tokens_per_second: per_second(generated, wall_ms),
        cpu_seconds,
        tokens_per_cpu_second: match cpu_seconds > 0.0 {
            true => generated as f64 / cpu_seconds,
            false => 0.0,
        },
        yielded: 0,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() % 2 {
        1 => values[mid],
        _ => (values[mid - 1] + values[mid]) / 2.0,
    }
}

/// User and system CPU time of this process so far.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given, which lives
    // for the call; an all-zero rusage is a valid value of it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn a_zero_in_a_trial_is_refused_by_name() {
        let trial = Trial {
            threads: 2,
            slots: 1,
            batch_size: 0,
            ubatch_size: 0,
            flash_attention: Default::default(),
            clients: 1,
            prompt_tokens: 8,
            max_tokens: 8,
        };
        let error = check(&trial).unwrap_err().to_string();
        assert!(error.contains("`batch_size` must be at least 1"), "{error}");
    }
}
