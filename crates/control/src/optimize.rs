//! `optimize_system(target_metric)`: tune this device's engine settings
//! for a goal by measuring them, never by guessing.
//!
//! The settings in use are measured first, then candidates one setting at
//! a time (on a Jetson that allows it the power mode and pinned clocks,
//! then parallel slots, threads, batch size, micro-batch size and flash
//! attention), each against the best so far
//! (a coordinate search), until every candidate is measured, the time
//! budget is spent or the candidate limit is reached. Each measurement is a
//! `calibrate_engine` call on the replica: concurrent calls on its real
//! loaded model, giving way to real calls. Meanwhile this module samples the
//! device's hottest thermal zone and, on a Jetson, its power rails.
//!
//! The winner is applied through the settings (saved, and followed by the
//! compute server at once) and, for power, through nvpmodel and
//! jetson_clocks; the device is put back as it was after a dry run or a
//! failed search. What the winner replaced is kept in the data dir, so
//! `revert` restores it, after a restart too.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetsonmind_contract::calibration::{
    CALIBRATE_ENGINE, CalibrateArgs, Calibration, EngineTuning, FlashAttention, Trial, TrialFigures,
};
use jetsonmind_core::auth::Principal;
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, NumberOrString, ProgressNotificationParam, ProgressToken,
};
use jetsonmind_core::unit::CallContext;
use jetsonmind_data::settings::Settings;
use jetsonmind_telemetry::{JetsonReader, LinuxReader};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::OptimizeConfig;
use crate::fleet::{Attempt, Fleet, Replica};
use crate::power::{DevicePower, Power};
use crate::schema::{OptimizeSystemArgs, TargetMetric};
use crate::{describe_attempt, write_settings};

/// The settings a search changes, as dotted keys.
const TUNED_KEYS: [&str; 5] = [
    "compute.threads",
    "compute.parallel",
    "compute.batch_size",
    "compute.ubatch_size",
    "compute.flash_attention",
];

/// Where the settings an optimization replaced are kept, in the data dir.
const APPLIED_FILE: &str = "optimize_applied.json";

/// How often the device is sampled while a candidate runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Candidate values of each setting, besides the one in use.
const PARALLEL_VALUES: [u32; 4] = [1, 2, 4, 8];
const BATCH_VALUES: [u32; 3] = [128, 512, 2048];
/// Micro-batches tried, up to the batch.
const UBATCH_VALUES: [u32; 4] = [64, 128, 256, 512];

/// One point of the search: engine settings and, where power is varied,
/// the device's power state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    #[serde(flatten)]
    pub engine: EngineTuning,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DevicePower>,
}

/// One measured candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub settings: Candidate,
    /// The settings in use when the search began.
    pub current: bool,
    pub clients: u32,
    pub figures: TrialFigures,
    /// The hottest thermal zone seen while it ran.
    pub hottest_c: Option<f64>,
    /// Energy from the power rails while it ran (a Jetson's INA3221).
    pub joules: Option<f64>,
    /// The figure the goal ranks by; absent when the candidate is out.
    pub score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluded: Option<String>,
}

/// What the goal ranks by.
#[derive(Debug, Clone, Serialize)]
pub struct Basis {
    pub metric: TargetMetric,
    /// What `score` is, in words and units.
    pub score: String,
    pub higher_is_better: bool,
}

/// The settings replaced by the last applied optimization.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Applied {
    target_metric: TargetMetric,
    /// Each tuned key's saved value before (null: it was not set).
    before: Map<String, Value>,
    /// The power state before, when the optimization changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_before: Option<DevicePower>,
    after: Candidate,
}

/// A search's inputs.
struct Search<'a> {
    fleet: &'a Fleet,
    replica: Arc<Replica>,
    caller: &'a Principal,
    context: &'a CallContext,
    telemetry_root: PathBuf,
    metric: TargetMetric,
    limit_c: f64,
    model: Option<String>,
    prompt_tokens: u32,
    max_tokens: u32,
    deadline: Instant,
    max_candidates: usize,
    rails: bool,
    power: &'a Power,
    /// The power modes searched; empty when power is not varied.
    modes: Vec<u32>,
}

pub struct Optimizer {
    pub telemetry_root: PathBuf,
    pub defaults: OptimizeConfig,
    pub power: Power,
}

impl Optimizer {
    /// Measure candidates for `args.target_metric` and apply the best
    /// through `settings`, unless `dry_run`.
    pub async fn optimize(
        &self,
        fleet: &Fleet,
        settings: Option<&Settings>,
        args: &OptimizeSystemArgs,
        caller: &Principal,
        context: &CallContext,
    ) -> Result<Value, String> {
        let metric = args
            .target_metric
            .ok_or("`target_metric` is required: latency, throughput, efficiency or thermal")?;
        let dry_run = args.dry_run.unwrap_or(false);
        if !dry_run && settings.is_none() {
            return Err("this control server cannot write settings: use dry_run".into());
        }
        let replica = local_replica(fleet, args.replica.as_deref())?;
        let engine = replica
            .report()
            .and_then(|r| r.engine)
            .ok_or("the replica has not reported its engine settings yet; try again shortly")?;
        let (modes, device, power) = match self.power.searchable() {
            Ok((modes, state)) => {
                let ids = modes.iter().map(|m| m.id).collect();
                (
                    ids,
                    Some(state),
                    json!({ "searched": true, "modes": modes }),
                )
            }
            Err(why) => (Vec::new(), None, json!({ "searched": false, "why": why })),
        };
        let current = Candidate { engine, device };
        let limit_c = args.limit_c.unwrap_or(self.defaults.thermal_limit_c);
        let rails = power_watts(&self.telemetry_root).is_some();
        if metric == TargetMetric::Thermal && hottest_c(&self.telemetry_root).is_none() {
            return Err(
                "`thermal` needs a temperature sensor, and this machine shows none \
                        (no /sys/class/thermal zone)"
                    .into(),
            );
        }
        let budget = Duration::from_secs(args.budget_secs.unwrap_or(self.defaults.budget_secs));
        let search = Search {
            fleet,
            replica: replica.clone(),
            caller,
            context,
            telemetry_root: self.telemetry_root.clone(),
            metric,
            limit_c,
            model: args.model.clone(),
            prompt_tokens: args.prompt_tokens.unwrap_or(self.defaults.prompt_tokens),
            max_tokens: args.max_tokens.unwrap_or(self.defaults.max_tokens),
            deadline: Instant::now() + budget,
            max_candidates: args
                .max_candidates
                .map_or(self.defaults.max_candidates, |n| n as usize),
            rails,
            power: &self.power,
            modes,
        };
        let started = Instant::now();
        let (rows, stopped_by) = match search.run(current).await {
            Ok(searched) => searched,
            Err(e) => {
                return Err(match self.settle_power(device).await {
                    Ok(()) => e,
                    Err(settling) => format!("{e}; and {settling}"),
                });
            }
        };
        let basis = basis(metric, rails, limit_c);
        let (winner, why) = decide(&rows, &basis, self.defaults.min_gain_percent);
        let applying = winner.filter(|w| !dry_run && w.settings != current);
        // The device ends in the applied winner's power state, else as it was.
        self.settle_power(applying.map_or(device, |w| w.settings.device))
            .await?;
        let mut outcome = json!({
            "target_metric": metric,
            "replica": replica.name(),
            "basis": basis,
            "workload": {
                "prompt_tokens": search.prompt_tokens,
                "max_tokens": search.max_tokens,
                "clients": match metric {
                    TargetMetric::Latency => "1",
                    _ => "one per parallel slot",
                },
            },
            "candidates": rows,
            "current": current,
            "winner": winner.map(|w| w.settings),
            "why": why,
            // How much the best candidate measured beat the settings in use.
            "best_gain_percent": best(&rows, basis.higher_is_better)
                .and_then(|b| gain(&rows, b, &basis)),
            "searched_secs": started.elapsed().as_secs_f64(),
            "stopped_by": stopped_by,
            "power": power,
            "dry_run": dry_run,
            "applied": Value::Null,
        });
        if let (Some(winner), Some(settings)) = (applying, settings) {
            outcome["applied"] = apply(settings, metric, device, winner.settings).await?;
        }
        Ok(outcome)
    }

    /// Leave the device in `state` (nothing where power is not varied).
    async fn settle_power(&self, state: Option<DevicePower>) -> Result<(), String> {
        let Some(state) = state else { return Ok(()) };
        self.power
            .set_state(state)
            .await
            .map(drop)
            .map_err(|e| format!("cannot leave the device in its power state: {e}"))
    }
}

/// Write `after` into the settings, keeping what they replace: what the
/// first of successive optimizations replaced, so `revert` goes back to the
/// settings from before any of them. The device is in `after`'s power state
/// already; `device` is the state that replaced.
async fn apply(
    settings: &Settings,
    metric: TargetMetric,
    device: Option<DevicePower>,
    after: Candidate,
) -> Result<Value, String> {
    let earlier = std::fs::read_to_string(applied_path(settings))
        .ok()
        .and_then(|text| serde_json::from_str::<Applied>(&text).ok());
    let changed_device = device.filter(|_| after.device != device);
    let (before, device_before) = match earlier {
        Some(earlier) => (earlier.before, earlier.device_before.or(changed_device)),
        None => (saved_values(settings)?, changed_device),
    };
    let engine = after.engine;
    let patch = json!({ "compute": {
        "threads": engine.threads,
        "parallel": engine.parallel,
        "batch_size": engine.batch_size,
        "ubatch_size": engine.ubatch_size,
        "flash_attention": engine.flash_attention,
    }});
    let update = write_settings(settings, &patch).await?;
    let applied = Applied {
        target_metric: metric,
        before,
        device_before,
        after,
    };
    let text = serde_json::to_string_pretty(&applied).map_err(|e| e.to_string())?;
    let path = applied_path(settings);
    std::fs::write(&path, text)
        .map_err(|e| format!("applied, but cannot keep {}: {e}", path.display()))?;
    Ok(update)
}

/// The tuned keys' saved values (null: not set).
fn saved_values(settings: &Settings) -> Result<Map<String, Value>, String> {
    let mut before = Map::new();
    for key in TUNED_KEYS {
        let saved = settings.saved(key).map_err(|e| e.to_string())?;
        let value = saved.map_or(Ok(Value::Null), serde_json::to_value);
        before.insert(key.into(), value.map_err(|e| e.to_string())?);
    }
    Ok(before)
}

/// Restore the settings (and power state) the applied optimizations replaced.
pub async fn revert(settings: &Settings, power: &Power) -> Result<Value, String> {
    let path = applied_path(settings);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("nothing to revert: no optimization has been applied".into());
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let applied: Applied = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not readable: {e}", path.display()))?;
    let mut compute = Map::new();
    for (key, value) in &applied.before {
        let name = key.strip_prefix("compute.").unwrap_or(key);
        compute.insert(name.to_string(), value.clone());
    }
    let update = write_settings(settings, &json!({ "compute": compute })).await?;
    if let Some(state) = applied.device_before {
        power
            .set_state(state)
            .await
            .map_err(|e| format!("settings restored, but not the power state: {e}"))?;
    }
    std::fs::remove_file(&path)
        .map_err(|e| format!("restored, but cannot remove {}: {e}", path.display()))?;
    Ok(json!({
        "reverted": applied.target_metric,
        "restored": applied.before,
        "restored_power": applied.device_before,
        "replaced": applied.after,
        "update": update,
    }))
}

fn applied_path(settings: &Settings) -> PathBuf {
    settings.current().data.dir.join(APPLIED_FILE)
}

/// The replica to tune: the one named, else the first on this machine
/// that reports its engine settings (not another node's, not a provider).
pub(crate) fn local_replica(fleet: &Fleet, named: Option<&str>) -> Result<Arc<Replica>, String> {
    if let Some(name) = named {
        return fleet
            .replica(name)
            .ok_or_else(|| format!("no replica named `{name}`"));
    }
    fleet
        .replicas()
        .into_iter()
        .find(|r| {
            r.remote_node().is_none()
                && r.link.is_up()
                && r.report().is_some_and(|report| report.engine.is_some())
        })
        .ok_or_else(|| "no compute replica on this machine is up to be tuned".into())
}

impl Search<'_> {
    /// The rows measured, in order, and what ended the search.
    async fn run(&self, current: Candidate) -> Result<(Vec<Row>, &'static str), String> {
        let mut rows = vec![self.measure(current, true).await?];
        let higher = basis(self.metric, self.rails, self.limit_c).higher_is_better;
        let mut tried = BTreeSet::new();
        tried.insert(describe(&current));
        for setting in self.settings_searched(current.device.is_some()) {
            let start = best(&rows, higher).map_or(current, |w| w.settings);
            for value in setting.values(&start, self.cores(), &self.modes) {
                let base = best(&rows, higher).map_or(current, |w| w.settings);
                let candidate = setting.set(base, value);
                if !tried.insert(describe(&candidate)) {
                    continue;
                }
                if Instant::now() >= self.deadline {
                    return Ok((rows, "time budget"));
                }
                if rows.len() >= self.max_candidates {
                    return Ok((rows, "candidate limit"));
                }
                rows.push(self.measure(candidate, false).await?);
                self.report_progress(&rows).await;
            }
        }
        Ok((rows, "every candidate measured"))
    }

    fn cores(&self) -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// The settings searched, in order: power first (it moves every other
    /// figure), where it is varied. Latency is one call at a time: the
    /// number of slots does not change it, so it is left as it is.
    fn settings_searched(&self, power: bool) -> Vec<Setting> {
        let power = match power {
            true => vec![Setting::PowerMode, Setting::MaxClocks],
            false => Vec::new(),
        };
        let slots = match self.metric {
            TargetMetric::Latency => vec![],
            _ => vec![Setting::Parallel],
        };
        let engine = [
            Setting::Threads,
            Setting::BatchSize,
            Setting::UbatchSize,
            Setting::FlashAttention,
        ];
        [power, slots, engine.to_vec()].concat()
    }

    /// One candidate, measured by the replica while the device is sampled.
    async fn measure(&self, settings: Candidate, current: bool) -> Result<Row, String> {
        if let Some(state) = settings.device {
            self.power
                .set_state(state)
                .await
                .map_err(|e| format!("cannot set a candidate's power state: {e}"))?;
        }
        let engine = settings.engine;
        let clients = match self.metric {
            TargetMetric::Latency => 1,
            _ => engine.parallel,
        };
        let args = CalibrateArgs {
            model: self.model.clone(),
            trial: Trial {
                threads: engine.threads,
                slots: engine.parallel,
                batch_size: engine.batch_size,
                ubatch_size: engine.ubatch_size,
                flash_attention: engine.flash_attention,
                clients,
                prompt_tokens: self.prompt_tokens,
                max_tokens: self.max_tokens,
            },
        };
        let arguments = serde_json::to_value(&args)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        let params = CallToolRequestParams::new(CALIBRATE_ENGINE).with_arguments(arguments);
        let call = self.fleet.call_on(
            &self.replica,
            params,
            self.caller,
            None,
            &self.context.cancel,
        );
        let (attempt, samples) = sampled(call, &self.telemetry_root).await;
        let calibration = calibration_of(attempt)?;
        let wall_secs = calibration.figures.wall_ms / 1000.0;
        let mut row = Row {
            settings,
            current,
            clients,
            hottest_c: samples.hottest_c,
            joules: samples.mean_watts.map(|watts| watts * wall_secs),
            figures: calibration.figures.clone(),
            score: None,
            excluded: None,
        };
        match score(&row, &calibration, self.metric, self.limit_c) {
            Ok(score) => row.score = Some(score),
            Err(why) => row.excluded = Some(why),
        }
        Ok(row)
    }

    async fn report_progress(&self, rows: &[Row]) {
        let Some(sink) = &self.context.progress else {
            return;
        };
        let last = rows.last().expect("a row was just measured");
        let message = format!(
            "measured {} candidate(s); last: {}: {}",
            rows.len(),
            describe(&last.settings),
            match (last.score, &last.excluded) {
                (Some(score), _) => format!("{score:.2}"),
                (None, Some(why)) => why.clone(),
                (None, None) => "-".into(),
            }
        );
        // The sink puts the caller's own token in.
        let token = ProgressToken(NumberOrString::Number(0));
        let params = ProgressNotificationParam::new(token, rows.len() as f64)
            .with_total(self.max_candidates as f64)
            .with_message(message);
        sink.report(params).await;
    }
}

/// A setting the search varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    PowerMode,
    MaxClocks,
    Parallel,
    Threads,
    BatchSize,
    UbatchSize,
    FlashAttention,
}

/// Flash attention as a search value.
const FLASH: [FlashAttention; 3] = [
    FlashAttention::Auto,
    FlashAttention::On,
    FlashAttention::Off,
];

impl Setting {
    /// The values tried, the one in use among them, in increasing order.
    fn values(self, current: &Candidate, cores: usize, modes: &[u32]) -> Vec<u32> {
        let cores = cores as u32;
        let mut values = match self {
            Setting::PowerMode => modes.to_vec(),
            Setting::MaxClocks => vec![0, 1],
            Setting::Parallel => PARALLEL_VALUES.to_vec(),
            Setting::Threads => vec![cores, (cores / 2).max(1), (cores * 3 / 4).max(1)],
            Setting::BatchSize => BATCH_VALUES.to_vec(),
            Setting::UbatchSize => UBATCH_VALUES
                .into_iter()
                .filter(|u| *u <= current.engine.batch_size)
                .collect(),
            // On and off; auto is one of them, by llama.cpp's choice.
            Setting::FlashAttention => vec![1, 2],
        };
        values.extend(self.of(current));
        let set: BTreeSet<u32> = values.into_iter().collect();
        set.into_iter().collect()
    }

    /// Its value in `c`; none for power where power is not varied.
    fn of(self, c: &Candidate) -> Option<u32> {
        let engine = &c.engine;
        match self {
            Setting::PowerMode => c.device.map(|d| d.power_mode),
            Setting::MaxClocks => c.device.map(|d| u32::from(d.max_clocks)),
            Setting::Parallel => Some(engine.parallel),
            Setting::Threads => Some(engine.threads as u32),
            Setting::BatchSize => Some(engine.batch_size),
            Setting::UbatchSize => Some(engine.ubatch_size),
            Setting::FlashAttention => FLASH
                .iter()
                .position(|f| *f == engine.flash_attention)
                .map(|i| i as u32),
        }
    }

    fn set(self, c: Candidate, value: u32) -> Candidate {
        let (mut engine, mut device) = (c.engine, c.device);
        match (self, device.as_mut()) {
            (Setting::PowerMode, Some(d)) => d.power_mode = value,
            (Setting::MaxClocks, Some(d)) => d.max_clocks = value != 0,
            (Setting::PowerMode | Setting::MaxClocks, None) => {}
            (Setting::Parallel, _) => engine.parallel = value,
            (Setting::Threads, _) => engine.threads = value as usize,
            // The micro-batch is never more than the batch (llama.cpp clamps it).
            (Setting::BatchSize, _) => {
                engine.batch_size = value;
                engine.ubatch_size = engine.ubatch_size.min(value);
            }
            (Setting::UbatchSize, _) => engine.ubatch_size = value,
            (Setting::FlashAttention, _) => {
                engine.flash_attention = FLASH[value as usize % FLASH.len()]
            }
        }
        Candidate { engine, device }
    }
}

/// A candidate in words, for progress and the verdict.
fn describe(c: &Candidate) -> String {
    let e = &c.engine;
    let engine = format!(
        "threads {}, parallel {}, batch {}, micro-batch {}, flash attention {}",
        e.threads,
        e.parallel,
        e.batch_size,
        e.ubatch_size,
        format!("{:?}", e.flash_attention).to_lowercase()
    );
    match c.device {
        Some(d) => format!(
            "power mode {}, clocks {}, {engine}",
            d.power_mode,
            if d.max_clocks { "pinned" } else { "free" }
        ),
        None => engine,
    }
}

/// What a goal ranks by, with the measured figure's meaning.
pub fn basis(metric: TargetMetric, rails: bool, limit_c: f64) -> Basis {
    let (score, higher_is_better) = match metric {
        TargetMetric::Throughput => (
            "generated tokens per second, all calls together".into(),
            true,
        ),
        TargetMetric::Latency => (
            "milliseconds for one call: its first token, then the rest".into(),
            false,
        ),
        TargetMetric::Efficiency if rails => {
            ("generated tokens per joule (power rails)".into(), true)
        }
        TargetMetric::Efficiency => (
            "generated tokens per CPU second (no power rails here: CPU time stands in for energy)"
                .into(),
            true,
        ),
        TargetMetric::Thermal => (
            format!("generated tokens per second, with the hottest zone under {limit_c} °C"),
            true,
        ),
    };
    Basis {
        metric,
        score,
        higher_is_better,
    }
}

/// The figure `row` is ranked by, or why it is out.
fn score(
    row: &Row,
    calibration: &Calibration,
    metric: TargetMetric,
    limit_c: f64,
) -> Result<f64, String> {
    if let Some(bytes) = calibration.model_bytes
        && bytes > calibration.memory_budget_bytes
    {
        return Err(format!(
            "needs {} MiB, beyond the memory budget of {} MiB",
            bytes >> 20,
            calibration.memory_budget_bytes >> 20
        ));
    }
    let figures = &row.figures;
    match metric {
        TargetMetric::Throughput => Ok(figures.tokens_per_second),
        TargetMetric::Latency => Ok(figures.wall_ms),
        TargetMetric::Efficiency => match row.joules {
            Some(joules) if joules > 0.0 => {
                let generated = figures.tokens_per_second * figures.wall_ms / 1000.0;
                Ok(generated / joules)
            }
            _ => Ok(figures.tokens_per_cpu_second),
        },
        TargetMetric::Thermal => match row.hottest_c {
            Some(hottest) if hottest < limit_c => Ok(figures.tokens_per_second),
            Some(hottest) => Err(format!(
                "the hottest zone reached {hottest:.1} °C, over the limit of {limit_c} °C"
            )),
            None => Err("no temperature was read while it ran".into()),
        },
    }
}

fn best(rows: &[Row], higher_is_better: bool) -> Option<&Row> {
    let scored = rows.iter().filter_map(|r| r.score.map(|s| (s, r)));
    let best = match higher_is_better {
        true => scored.max_by(|a, b| a.0.total_cmp(&b.0)),
        false => scored.min_by(|a, b| a.0.total_cmp(&b.0)),
    };
    best.map(|(_, row)| row)
}

/// How much better the winner measured than the settings in use, in percent.
fn gain(rows: &[Row], winner: &Row, basis: &Basis) -> Option<f64> {
    let current = rows.iter().find(|r| r.current)?.score?;
    let won = winner.score?;
    if current == 0.0 {
        return None;
    }
    Some(match basis.higher_is_better {
        true => (won / current - 1.0) * 100.0,
        false => (current / won - 1.0) * 100.0,
    })
}

/// The settings to keep or apply, and why: the best measured, when it
/// beats the settings in use by at least `min_gain` percent (or those were
/// out); else the settings in use.
fn decide<'r>(rows: &'r [Row], basis: &Basis, min_gain: f64) -> (Option<&'r Row>, String) {
    let Some(best) = best(rows, basis.higher_is_better) else {
        return (
            None,
            "no candidate qualified: see each one's `excluded`".into(),
        );
    };
    let current = rows.iter().find(|r| r.current);
    let score = best.score.unwrap_or_default();
    let measured = rows.len();
    let best_of = format!(
        "{} measured the best score of {measured} candidates ({score:.2}: {})",
        describe(&best.settings),
        basis.score
    );
    match (current, current.and_then(|c| c.score)) {
        (Some(current), _) if best.current => (
            Some(current),
            format!("the settings in use: {best_of}; nothing to change"),
        ),
        (Some(current), Some(in_use)) => match gain(rows, best, basis) {
            Some(gain) if gain >= min_gain => (
                Some(best),
                format!("{best_of}, {gain:.1}% better than the settings in use ({in_use:.2})"),
            ),
            gain => (
                Some(current),
                format!(
                    "{best_of}, but only {:.1}% better than the settings in use ({in_use:.2}), \
                     within the {min_gain}% taken for noise \
                     (control.optimize.min_gain_percent): the settings in use stay",
                    gain.unwrap_or_default()
                ),
            ),
        },
        _ => (
            Some(best),
            format!("{best_of}; the settings in use were out"),
        ),
    }
}

fn calibration_of(attempt: Attempt) -> Result<Calibration, String> {
    let (ok, value) = describe_attempt(attempt);
    if !ok {
        let reason = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_string);
        return Err(format!("calibration: {reason}"));
    }
    serde_json::from_value(value).map_err(|e| format!("unreadable calibration result: {e}"))
}

/// What the device showed while a candidate ran.
#[derive(Debug, Default)]
struct Samples {
    hottest_c: Option<f64>,
    mean_watts: Option<f64>,
}

/// Run `call`, sampling the device's temperature and power meanwhile.
async fn sampled<F: std::future::Future>(call: F, root: &std::path::Path) -> (F::Output, Samples) {
    let mut samples = Samples::default();
    let mut watts = Vec::new();
    let mut take = |samples: &mut Samples| {
        if let Some(c) = hottest_c(root) {
            samples.hottest_c = Some(samples.hottest_c.map_or(c, |h: f64| h.max(c)));
        }
        if let Some(w) = power_watts(root) {
            watts.push(w);
        }
    };
    take(&mut samples);
    tokio::pin!(call);
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    let output = loop {
        tokio::select! {
            output = &mut call => break output,
            _ = ticks.tick() => take(&mut samples),
        }
    };
    take(&mut samples);
    if !watts.is_empty() {
        samples.mean_watts = Some(watts.iter().sum::<f64>() / watts.len() as f64);
    }
    (output, samples)
}

fn hottest_c(root: &std::path::Path) -> Option<f64> {
    LinuxReader::new(root).vitals().max_temperature_c
}

/// The board's input power, from a Jetson's INA3221 rails: the rail that
/// measures the whole input when there is one (`VDD_IN`, `POM_5V_IN`),
/// else the sum of the rails.
pub(crate) fn power_watts(root: &std::path::Path) -> Option<f64> {
    let rails = JetsonReader::new(root).read()?.rails;
    let milliwatts: Vec<(String, f64)> = rails
        .into_iter()
        .filter_map(|r| Some((r.name, r.power_mw?)))
        .collect();
    if milliwatts.is_empty() {
        return None;
    }
    let input = milliwatts
        .iter()
        .find(|(name, _)| name.ends_with("_IN"))
        .map(|(_, mw)| *mw);
    Some(input.unwrap_or_else(|| milliwatts.iter().map(|(_, mw)| mw).sum()) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsonmind_compute::config::ComputeConfig;

    fn row(parallel: u32, score: Option<f64>, current: bool) -> Row {
        Row {
            settings: Candidate {
                engine: EngineTuning {
                    threads: 2,
                    parallel,
                    batch_size: 512,
                    ubatch_size: 512,
                    flash_attention: FlashAttention::Auto,
                },
                device: None,
            },
            current,
            clients: parallel,
            figures: TrialFigures {
                wall_ms: 1000.0,
                time_to_first_token_ms: 10.0,
                per_token_ms: 5.0,
                prompt_tokens_per_second: 100.0,
                tokens_per_second: 50.0,
                cpu_seconds: 2.0,
                tokens_per_cpu_second: 25.0,
                yielded: 0,
            },
            hottest_c: None,
            joules: None,
            score,
            excluded: None,
        }
    }

    #[tokio::test]
    async fn successive_optimizations_revert_to_the_settings_before_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = jetsonmind_core::Config::default().with(ComputeConfig::default());
        config.data.dir = dir.path().to_path_buf();
        let settings = Settings::fixed(config);
        let tuning = |threads| Candidate {
            engine: EngineTuning {
                threads,
                parallel: 2,
                batch_size: 256,
                ubatch_size: 256,
                flash_attention: FlashAttention::Auto,
            },
            device: None,
        };
        apply(&settings, TargetMetric::Throughput, None, tuning(1))
            .await
            .unwrap();
        apply(&settings, TargetMetric::Latency, None, tuning(2))
            .await
            .unwrap();
        let applied = settings.current().section::<ComputeConfig>().clone();
        assert_eq!(
            (applied.threads, applied.parallel, applied.batch_size),
            (2, 2, 256)
        );
        let power = Power::new(dir.path(), &Default::default());
        let reverted = revert(&settings, &power).await.unwrap();
        assert_eq!(reverted["restored"]["compute.threads"], Value::Null);
        let restored = settings.current().section::<ComputeConfig>().clone();
        let defaults = ComputeConfig::default();
        assert_eq!(
            (restored.threads, restored.parallel, restored.batch_size),
            (defaults.threads, defaults.parallel, defaults.batch_size)
        );
        let nothing = revert(&settings, &power).await.unwrap_err();
        assert!(nothing.contains("nothing to revert"), "{nothing}");
    }

    #[test]
    fn the_best_score_wins_by_the_goal_direction() {
        let rows = vec![
            row(1, Some(10.0), true),
            row(2, Some(15.0), false),
            row(4, None, false),
        ];
        assert_eq!(best(&rows, true).unwrap().settings.engine.parallel, 2);
        assert_eq!(best(&rows, false).unwrap().settings.engine.parallel, 1);
        let throughput = basis(TargetMetric::Throughput, false, 80.0);
        let won = best(&rows, true).unwrap();
        assert_eq!(gain(&rows, won, &throughput), Some(50.0));
        let latency = basis(TargetMetric::Latency, false, 80.0);
        let lowest = best(&rows, false).unwrap();
        assert_eq!(gain(&rows, lowest, &latency), Some(0.0));
    }

    #[test]
    fn candidate_values_include_the_current_one_once() {
        let engine = EngineTuning {
            threads: 3,
            parallel: 2,
            batch_size: 100,
            ubatch_size: 100,
            flash_attention: FlashAttention::Auto,
        };
        let current = Candidate {
            engine,
            device: None,
        };
        assert_eq!(Setting::Parallel.values(&current, 4, &[]), vec![1, 2, 4, 8]);
        assert_eq!(Setting::Threads.values(&current, 4, &[]), vec![2, 3, 4]);
        assert_eq!(
            Setting::BatchSize.values(&current, 4, &[]),
            vec![100, 128, 512, 2048]
        );
        let changed = Setting::Threads.set(current, 1).engine;
        assert_eq!(
            (changed.threads, changed.parallel, changed.batch_size),
            (1, 2, 100)
        );
        // Micro-batches up to the batch; flash attention on and off.
        assert_eq!(Setting::UbatchSize.values(&current, 4, &[]), vec![64, 100]);
        assert_eq!(
            Setting::FlashAttention.values(&current, 4, &[]),
            vec![0, 1, 2]
        );
        let smaller = Setting::BatchSize.set(current, 64).engine;
        assert_eq!((smaller.batch_size, smaller.ubatch_size), (64, 64));
        let off = Setting::FlashAttention.set(current, 2).engine;
        assert_eq!(off.flash_attention, FlashAttention::Off);
        // Power is varied only where the device has a power state.
        assert_eq!(Setting::PowerMode.values(&current, 4, &[0, 1]), vec![0, 1]);
        assert_eq!(Setting::PowerMode.set(current, 1), current);
        let jetson = Candidate {
            engine,
            device: Some(DevicePower {
                power_mode: 2,
                max_clocks: false,
            }),
        };
        assert_eq!(
            Setting::PowerMode.values(&jetson, 4, &[0, 1]),
            vec![0, 1, 2]
        );
        let pinned = Setting::MaxClocks.set(jetson, 1);
        assert_eq!(pinned.device.map(|d| d.max_clocks), Some(true));
        let flat = serde_json::to_value(pinned).unwrap();
        assert_eq!(
            (flat["threads"].clone(), flat["power_mode"].clone()),
            (json!(3), json!(2))
        );
    }

    #[test]
    fn thermal_excludes_what_ran_too_hot_and_memory_what_does_not_fit() {
        let calibration = |bytes| Calibration {
            model: "m".into(),
            trial: Trial {
                threads: 2,
                slots: 1,
                batch_size: 512,
                ubatch_size: 0,
                flash_attention: FlashAttention::Auto,
                clients: 1,
                prompt_tokens: 8,
                max_tokens: 8,
            },
            figures: row(1, None, true).figures,
            model_bytes: Some(bytes),
            memory_budget_bytes: 1 << 30,
        };
        let mut hot = row(1, None, true);
        hot.hottest_c = Some(81.0);
        let error = score(&hot, &calibration(1), TargetMetric::Thermal, 80.0).unwrap_err();
        assert!(error.contains("81.0 °C"), "{error}");
        hot.hottest_c = Some(79.0);
        assert_eq!(
            score(&hot, &calibration(1), TargetMetric::Thermal, 80.0),
            Ok(50.0)
        );
        let error = score(&hot, &calibration(2 << 30), TargetMetric::Throughput, 80.0).unwrap_err();
        assert!(error.contains("beyond the memory budget"), "{error}");
    }
}
