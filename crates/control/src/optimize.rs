//! `optimize_system(target_metric)`: tune this device's engine settings
//! for a goal by measuring them, never by guessing.
//!
//! The settings in use are measured first, then candidates one setting at
//! a time (parallel slots, threads, batch size), each against the best so
//! far (a coordinate search), until every candidate is measured, the time
//! budget is spent or the candidate limit is reached. Each measurement is a
//! `calibrate_engine` call on the replica: concurrent calls on its real
//! loaded model, giving way to real calls. Meanwhile this module samples the
//! device's hottest thermal zone and, on a Jetson, its power rails.
//!
//! The winner is applied through the settings (saved, and followed by the
//! compute server at once); what it replaced is kept in the data dir, so
//! `revert` restores it, after a restart too.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetsonmind_contract::calibration::{
    CALIBRATE_ENGINE, CalibrateArgs, Calibration, EngineTuning, Trial, TrialFigures,
};
use jetsonmind_core::auth::Principal;
use jetsonmind_core::config::OptimizeConfig;
use jetsonmind_core::rmcp::model::{
    CallToolRequestParams, NumberOrString, ProgressNotificationParam, ProgressToken,
};
use jetsonmind_core::unit::CallContext;
use jetsonmind_data::settings::Settings;
use jetsonmind_data::telemetry::{JetsonReader, LinuxReader};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::fleet::{Attempt, Fleet, Replica};
use crate::schema::{OptimizeSystemArgs, TargetMetric};
use crate::{describe_attempt, write_settings};

/// The settings a search changes, as dotted keys.
const TUNED_KEYS: [&str; 3] = ["compute.threads", "compute.parallel", "compute.batch_size"];

/// Where the settings an optimization replaced are kept, in the data dir.
const APPLIED_FILE: &str = "optimize_applied.json";

/// How often the device is sampled while a candidate runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Candidate values of each setting, besides the one in use.
const PARALLEL_VALUES: [u32; 4] = [1, 2, 4, 8];
const BATCH_VALUES: [u32; 3] = [128, 512, 2048];

/// One measured candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub settings: EngineTuning,
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
    after: EngineTuning,
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
}

pub struct Optimizer {
    pub telemetry_root: PathBuf,
    pub defaults: OptimizeConfig,
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
        let current = replica
            .report()
            .and_then(|r| r.engine)
            .ok_or("the replica has not reported its engine settings yet; try again shortly")?;
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
        };
        let started = Instant::now();
        let (rows, stopped_by) = search.run(current).await?;
        let basis = basis(metric, rails, limit_c);
        let (winner, why) = decide(&rows, &basis, self.defaults.min_gain_percent);
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
            "dry_run": dry_run,
            "applied": Value::Null,
        });
        if let (Some(winner), Some(settings)) = (winner, settings)
            && !dry_run
            && winner.settings != current
        {
            outcome["applied"] = apply(settings, metric, winner.settings).await?;
        }
        Ok(outcome)
    }
}

/// Write `after` into the settings, keeping what they replace: what the
/// first of successive optimizations replaced, so `revert` goes back to the
/// settings from before any of them.
async fn apply(
    settings: &Settings,
    metric: TargetMetric,
    after: EngineTuning,
) -> Result<Value, String> {
    let earlier = std::fs::read_to_string(applied_path(settings))
        .ok()
        .and_then(|text| serde_json::from_str::<Applied>(&text).ok());
    let before = match earlier {
        Some(earlier) => earlier.before,
        None => saved_values(settings)?,
    };
    let patch = json!({ "compute": {
        "threads": after.threads,
        "parallel": after.parallel,
        "batch_size": after.batch_size,
    }});
    let update = write_settings(settings, &patch).await?;
    let applied = Applied {
        target_metric: metric,
        before,
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

/// Restore the settings the applied optimizations replaced.
pub async fn revert(settings: &Settings) -> Result<Value, String> {
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
    std::fs::remove_file(&path)
        .map_err(|e| format!("restored, but cannot remove {}: {e}", path.display()))?;
    Ok(json!({
        "reverted": applied.target_metric,
        "restored": applied.before,
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
    async fn run(&self, current: EngineTuning) -> Result<(Vec<Row>, &'static str), String> {
        let mut rows = vec![self.measure(current, true).await?];
        let higher = basis(self.metric, self.rails, self.limit_c).higher_is_better;
        let mut tried: BTreeSet<(usize, u32, u32)> = BTreeSet::new();
        tried.insert(key(&current));
        for setting in self.settings_searched() {
            for value in setting.values(&current, self.cores()) {
                let base = best(&rows, higher).map_or(current, |w| w.settings);
                let candidate = setting.set(base, value);
                if !tried.insert(key(&candidate)) {
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

    /// The settings searched, in order. Latency is one call at a time: the
    /// number of slots does not change it, so it is left as it is.
    fn settings_searched(&self) -> Vec<Setting> {
        match self.metric {
            TargetMetric::Latency => vec![Setting::Threads, Setting::BatchSize],
            _ => vec![Setting::Parallel, Setting::Threads, Setting::BatchSize],
        }
    }

    /// One candidate, measured by the replica while the device is sampled.
    async fn measure(&self, settings: EngineTuning, current: bool) -> Result<Row, String> {
        let clients = match self.metric {
            TargetMetric::Latency => 1,
            _ => settings.parallel,
        };
        let args = CalibrateArgs {
            model: self.model.clone(),
            trial: Trial {
                threads: settings.threads,
                slots: settings.parallel,
                batch_size: settings.batch_size,
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
            "measured {} candidate(s); last: threads {}, parallel {}, batch {}: {}",
            rows.len(),
            last.settings.threads,
            last.settings.parallel,
            last.settings.batch_size,
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
    Parallel,
    Threads,
    BatchSize,
}

impl Setting {
    /// The values tried, the one in use among them, in increasing order.
    fn values(self, current: &EngineTuning, cores: usize) -> Vec<u32> {
        let cores = cores as u32;
        let mut values = match self {
            Setting::Parallel => PARALLEL_VALUES.to_vec(),
            Setting::Threads => vec![cores, (cores / 2).max(1), (cores * 3 / 4).max(1)],
            Setting::BatchSize => BATCH_VALUES.to_vec(),
        };
        values.push(self.of(current));
        let set: BTreeSet<u32> = values.into_iter().collect();
        set.into_iter().collect()
    }

    fn of(self, t: &EngineTuning) -> u32 {
        match self {
            Setting::Parallel => t.parallel,
            Setting::Threads => t.threads as u32,
            Setting::BatchSize => t.batch_size,
        }
    }

    fn set(self, t: EngineTuning, value: u32) -> EngineTuning {
        match self {
            Setting::Parallel => EngineTuning {
                parallel: value,
                ..t
            },
            Setting::Threads => EngineTuning {
                threads: value as usize,
                ..t
            },
            Setting::BatchSize => EngineTuning {
                batch_size: value,
                ..t
            },
        }
    }
}

fn key(t: &EngineTuning) -> (usize, u32, u32) {
    (t.threads, t.parallel, t.batch_size)
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
    let settings = |r: &Row| {
        format!(
            "threads {}, parallel {}, batch {}",
            r.settings.threads, r.settings.parallel, r.settings.batch_size
        )
    };
    let best_of = format!(
        "{} measured the best score of {measured} candidates ({score:.2}: {})",
        settings(best),
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

    fn row(parallel: u32, score: Option<f64>, current: bool) -> Row {
        Row {
            settings: EngineTuning {
                threads: 2,
                parallel,
                batch_size: 512,
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
        let mut config = jetsonmind_core::Config::default();
        config.data.dir = dir.path().to_path_buf();
        let settings = Settings::fixed(config);
        let tuning = |threads| EngineTuning {
            threads,
            parallel: 2,
            batch_size: 256,
        };
        apply(&settings, TargetMetric::Throughput, tuning(1))
            .await
            .unwrap();
        apply(&settings, TargetMetric::Latency, tuning(2))
            .await
            .unwrap();
        let applied = settings.current().compute;
        assert_eq!(
            (applied.threads, applied.parallel, applied.batch_size),
            (2, 2, 256)
        );
        let reverted = revert(&settings).await.unwrap();
        assert_eq!(reverted["restored"]["compute.threads"], Value::Null);
        let restored = settings.current().compute;
        let defaults = jetsonmind_core::Config::default().compute;
        assert_eq!(
            (restored.threads, restored.parallel, restored.batch_size),
            (defaults.threads, defaults.parallel, defaults.batch_size)
        );
        let nothing = revert(&settings).await.unwrap_err();
        assert!(nothing.contains("nothing to revert"), "{nothing}");
    }

    #[test]
    fn the_best_score_wins_by_the_goal_direction() {
        let rows = vec![
            row(1, Some(10.0), true),
            row(2, Some(15.0), false),
            row(4, None, false),
        ];
        assert_eq!(best(&rows, true).unwrap().settings.parallel, 2);
        assert_eq!(best(&rows, false).unwrap().settings.parallel, 1);
        let throughput = basis(TargetMetric::Throughput, false, 80.0);
        let won = best(&rows, true).unwrap();
        assert_eq!(gain(&rows, won, &throughput), Some(50.0));
        let latency = basis(TargetMetric::Latency, false, 80.0);
        let lowest = best(&rows, false).unwrap();
        assert_eq!(gain(&rows, lowest, &latency), Some(0.0));
    }

    #[test]
    fn candidate_values_include_the_current_one_once() {
        let current = EngineTuning {
            threads: 3,
            parallel: 2,
            batch_size: 100,
        };
        assert_eq!(Setting::Parallel.values(&current, 4), vec![1, 2, 4, 8]);
        assert_eq!(Setting::Threads.values(&current, 4), vec![2, 3, 4]);
        assert_eq!(
            Setting::BatchSize.values(&current, 4),
            vec![100, 128, 512, 2048]
        );
        let changed = Setting::Threads.set(current, 1);
        assert_eq!(
            (changed.threads, changed.parallel, changed.batch_size),
            (1, 2, 100)
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
