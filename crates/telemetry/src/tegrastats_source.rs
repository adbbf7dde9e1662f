//! `tegrastats` run in the background as a fallback telemetry source.
//!
//! Containers on a Jetson often hide the sysfs files for GPU load
//! (`/sys/devices/gpu.0/load`) and the INA3221 power rails, while the
//! `tegrastats` program still reports both. [`TegrastatsSource`] runs it,
//! parses every line and keeps the latest one; a metrics snapshot reads
//! that line and never waits for the program.
//!
//! The program starts lazily, when a snapshot asks for it. When it is
//! missing or exits, the reason is kept and the next start waits for the
//! retry interval, so a broken setup costs one spawn per interval, not a
//! busy loop. Dropping the source stops the program.

use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::jetson::{GpuMetrics, JetsonMetrics, MetricSource, PowerRail, TegrastatsStatus};
use super::tegrastats::{self, TegraStats};

/// How long a program that closed its output gets to exit, and its stderr to close.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Longest program output kept in an error message.
const MAX_ERROR_CHARS: usize = 300;

/// Runs a tegrastats command and keeps its latest parsed line.
pub struct TegrastatsSource {
    command: Vec<String>,
    retry: Duration,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    latest: Option<(TegraStats, Instant)>,
    last_error: Option<String>,
    running: bool,
    last_start: Option<Instant>,
    starts: u32,
    task: Option<JoinHandle<()>>,
}

impl TegrastatsSource {
    /// Nothing runs until [`ensure_running`](Self::ensure_running).
    /// A zero `retry` is taken as one second so a failing program cannot spin.
    pub fn new(command: Vec<String>, retry: Duration) -> Self {
        Self {
            command,
            retry: retry.max(Duration::from_secs(1)),
            state: Arc::default(),
        }
    }

    /// Start the program unless it runs, or was started less than the retry
    /// interval ago. Returns at once: output is read by a background task.
    /// Outside a tokio runtime it only records why it cannot start.
    pub fn ensure_running(&self) {
        let mut state = lock(&self.state);
        let retry_due = state.last_start.is_none_or(|at| at.elapsed() >= self.retry);
        if state.running || !retry_due {
            return;
        }
        state.last_start = Some(Instant::now());
        state.starts += 1;
        match self.spawn() {
            Ok((program, child, runtime)) => {
                state.running = true;
                let task = watch(program, child, Arc::clone(&self.state));
                state.task = Some(runtime.spawn(task));
            }
            Err(error) => state.last_error = Some(error),
        }
    }

    /// The latest parsed line and how long ago it arrived.
    pub fn latest(&self) -> Option<(TegraStats, Duration)> {
        let state = lock(&self.state);
        let (stats, at) = state.latest.as_ref()?;
        Some((stats.clone(), at.elapsed()))
    }

    pub fn status(&self) -> TegrastatsStatus {
        let state = lock(&self.state);
        TegrastatsStatus {
            command: self.command.clone(),
            running: state.running,
            line_age_ms: state
                .latest
                .as_ref()
                .map(|(_, at)| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
            last_error: state.last_error.clone(),
            starts: state.starts,
        }
    }

    /// The program's name, its process, and the runtime that will read it.
    fn spawn(&self) -> Result<(String, Child, Handle), String> {
        let runtime =
            Handle::try_current().map_err(|_| "no async runtime to run it on".to_string())?;
        let (program, args) = self
            .command
            .split_first()
            .ok_or_else(|| "the tegrastats command is empty".to_string())?;
        // Spawning registers the pipes with the runtime's reactor.
        let _entered = runtime.enter();
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start `{program}`: {e}"))?;
        Ok((program.clone(), child, runtime))
    }
}

impl Drop for TegrastatsSource {
    /// Aborting the task drops the child, and `kill_on_drop` ends the program.
    fn drop(&mut self) {
        if let Some(task) = lock(&self.state).task.take() {
            task.abort();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent field by field, so a panic elsewhere does not spoil it.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read the program's lines until it stops, then record why it stopped.
async fn watch(program: String, mut child: Child, state: Arc<Mutex<State>>) {
    let stderr = child.stderr.take().map(|e| tokio::spawn(last_line(e)));
    let read_error = match child.stdout.take() {
        Some(stdout) => read_lines(stdout, &state).await,
        None => Some("no output pipe".to_string()),
    };
    let why = stop_reason(&program, &mut child, stderr, read_error).await;
    let mut state = lock(&state);
    state.running = false;
    state.latest = None;
    state.last_error = Some(why);
}

/// Keep each stats line as the latest; `Some(error)` when reading fails.
async fn read_lines(stdout: impl AsyncRead + Unpin, state: &Mutex<State>) -> Option<String> {
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => record(&line, state),
            Ok(None) => return None,
            Err(e) => return Some(format!("cannot read its output: {e}")),
        }
    }
}

fn record(line: &str, state: &Mutex<State>) {
    let stats = tegrastats::parse(line);
    let mut state = lock(state);
    if is_stats_line(&stats) {
        state.latest = Some((stats, Instant::now()));
    } else if !line.trim().is_empty() {
        // A warning or usage text on stdout: say so rather than drop it.
        state.last_error = Some(format!("unrecognised output: {}", clip(line)));
    }
}

/// Every tegrastats line has RAM; engines or rails alone still count.
fn is_stats_line(stats: &TegraStats) -> bool {
    stats.ram.is_some() || !stats.engines.is_empty() || !stats.rails.is_empty()
}

async fn last_line(stderr: impl AsyncRead + Unpin) -> Option<String> {
    let mut lines = BufReader::new(stderr).lines();
    let mut last = None;
    while let Ok(Some(line)) = lines.next_line().await {
        if !line.trim().is_empty() {
            last = Some(line);
        }
    }
    last
}

/// Wait briefly for the exit status and the last stderr line; a program
/// that closed its output but keeps running is killed.
async fn stop_reason(
    program: &str,
    child: &mut Child,
    stderr: Option<JoinHandle<Option<String>>>,
    read_error: Option<String>,
) -> String {
    let exit = match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
        Ok(Ok(status)) => format!("stopped ({status})"),
        Ok(Err(e)) => format!("stopped (cannot get its status: {e})"),
        Err(_) => {
            let _ = child.kill().await;
            "closed its output and was stopped".to_string()
        }
    };
    let mut why = format!("`{program}` {exit}");
    if let Some(error) = read_error {
        why = format!("{why}; {error}");
    }
    if let Some(line) = stderr_line(stderr).await {
        why = format!("{why}: {}", clip(&line));
    }
    why
}

async fn stderr_line(task: Option<JoinHandle<Option<String>>>) -> Option<String> {
    let mut task = task?;
    match tokio::time::timeout(EXIT_GRACE, &mut task).await {
        Ok(line) => line.ok().flatten(),
        Err(_) => {
            // Something the program left behind still holds stderr open.
            task.abort();
            None
        }
    }
}

fn clip(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// Fill what sysfs lacked from a tegrastats line; with `prefer`, replace
/// what sysfs had too. Records the source of each value it sets.
pub fn merge(metrics: &mut JetsonMetrics, stats: &TegraStats, prefer: bool) {
    merge_gpu(metrics, stats, prefer);
    merge_rails(metrics, stats, prefer);
}

/// `GR3D_FREQ 12%@[1300,1300]`: the load, and the highest GPC clock.
fn merge_gpu(metrics: &mut JetsonMetrics, stats: &TegraStats, prefer: bool) {
    let Some(gr3d) = stats.engine("GR3D_FREQ") else {
        return;
    };
    let freq = gr3d.freq_mhz.iter().copied().reduce(f64::max);
    if gr3d.load_percent.is_none() && freq.is_none() {
        return;
    }
    let gpu = metrics.gpu.get_or_insert_with(|| GpuMetrics {
        name: "GR3D_FREQ".to_string(),
        load_percent: None,
        freq_mhz: None,
        min_freq_mhz: None,
        max_freq_mhz: None,
        governor: None,
    });
    if let Some(load) = gr3d.load_percent
        && (prefer || gpu.load_percent.is_none())
    {
        gpu.load_percent = Some(load);
        metrics.sources.gpu_load = Some(MetricSource::Tegrastats);
    }
    if let Some(freq) = freq
        && (prefer || gpu.freq_mhz.is_none())
    {
        gpu.freq_mhz = Some(freq);
        metrics.sources.gpu_freq = Some(MetricSource::Tegrastats);
    }
}

/// Rails give the instant power only; `NC` (not connected) channels are left out.
fn merge_rails(metrics: &mut JetsonMetrics, stats: &TegraStats, prefer: bool) {
    let rails: Vec<PowerRail> = stats
        .rails
        .iter()
        .filter(|r| r.name != "NC")
        .map(|r| PowerRail {
            name: r.name.clone(),
            voltage_mv: None,
            current_ma: None,
            power_mw: Some(r.current_mw),
        })
        .collect();
    if !rails.is_empty() && (prefer || metrics.rails.is_empty()) {
        metrics.rails = rails;
        metrics.sources.rails = Some(MetricSource::Tegrastats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jetson::JetsonSources;

    fn bare_jetson() -> JetsonMetrics {
        JetsonMetrics {
            model: "NVIDIA Jetson Orin Nano Developer Kit".into(),
            l4t: None,
            gpu: None,
            rails: Vec::new(),
            fan_percent: None,
            power_mode: None,
            sources: JetsonSources::default(),
            tegrastats: None,
        }
    }

    #[test]
    fn fills_gpu_and_rails_sysfs_lacked() {
        let mut m = bare_jetson();
        let line = tegrastats::parse(
            "RAM 1/2MB GR3D_FREQ 12%@[1300,1100] VDD_GPU_SOC 2390mW/2390mW NC 0mW/0mW",
        );
        merge(&mut m, &line, false);
        let gpu = m.gpu.unwrap();
        assert_eq!((gpu.load_percent, gpu.freq_mhz), (Some(12.0), Some(1300.0)));
        assert_eq!(m.rails.len(), 1);
        assert_eq!(
            (m.rails[0].name.as_str(), m.rails[0].power_mw),
            ("VDD_GPU_SOC", Some(2390.0))
        );
        assert_eq!(m.sources.gpu_load, Some(MetricSource::Tegrastats));
        assert_eq!(m.sources.rails, Some(MetricSource::Tegrastats));
    }

    #[test]
    fn keeps_sysfs_values_unless_preferred() {
        let mut m = bare_jetson();
        m.gpu = Some(GpuMetrics {
            name: "17000000.ga10b".into(),
            load_percent: None,
            freq_mhz: Some(306.0),
            min_freq_mhz: None,
            max_freq_mhz: None,
            governor: None,
        });
        m.sources.gpu_freq = Some(MetricSource::Sysfs);
        let line = tegrastats::parse("RAM 1/2MB GR3D_FREQ 40%@624");
        merge(&mut m, &line, false);
        let gpu = m.gpu.as_ref().unwrap();
        assert_eq!((gpu.load_percent, gpu.freq_mhz), (Some(40.0), Some(306.0)));
        assert_eq!(m.sources.gpu_freq, Some(MetricSource::Sysfs));
        merge(&mut m, &line, true);
        assert_eq!(m.gpu.unwrap().freq_mhz, Some(624.0));
        assert_eq!(m.sources.gpu_freq, Some(MetricSource::Tegrastats));
    }

    #[test]
    fn without_a_runtime_it_says_so() {
        let source = TegrastatsSource::new(vec!["tegrastats".into()], Duration::ZERO);
        source.ensure_running();
        let status = source.status();
        assert!(!status.running);
        assert_eq!(status.starts, 1);
        assert!(status.last_error.unwrap().contains("runtime"));
        // Within the retry interval nothing is tried again.
        source.ensure_running();
        assert_eq!(source.status().starts, 1);
    }

    #[test]
    fn long_output_is_clipped() {
        assert_eq!(clip(&"é".repeat(400)).chars().count(), MAX_ERROR_CHARS + 1);
        assert_eq!(clip(" short "), "short");
    }
}
