//! Power modes and clocks: on a Jetson, report and (when the config allows
//! it) change them through `nvpmodel` and `jetson_clocks`; elsewhere say
//! plainly that it is not supported here. `optimize_system` varies them as
//! a [`DevicePower`] among its candidates.

use std::path::PathBuf;
use std::time::Duration;

use jetsonmind_telemetry::{JetsonReader, PowerMode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::ControlConfig;
use crate::schema::OptimizeAction;

/// Longest a power command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Power {
    /// Where `/proc` and `/sys` are (a fake tree in tests).
    root: PathBuf,
    allow_changes: bool,
    query: Vec<String>,
    set_mode: Vec<String>,
    max_clocks: Vec<String>,
    store_clocks: Vec<String>,
    restore_clocks: Vec<String>,
}

/// A Jetson's power state, as `optimize_system` varies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePower {
    /// The nvpmodel mode id.
    pub power_mode: u32,
    /// Clocks pinned at their maximum (`jetson_clocks`).
    pub max_clocks: bool,
}

#[derive(Debug, Serialize)]
pub struct CommandRun {
    pub command: Vec<String>,
    pub exit_code: Option<i32>,
    pub output: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error("not supported here: {0}")]
    NotSupported(String),
    #[error("{0}")]
    Refused(String),
    #[error("`{command}` failed: {reason}")]
    Command { command: String, reason: String },
}

impl Power {
    pub fn new(root: impl Into<PathBuf>, config: &ControlConfig) -> Self {
        Self {
            root: root.into(),
            allow_changes: config.allow_power_changes,
            query: config.nvpmodel_query_command.clone(),
            set_mode: config.nvpmodel_set_command.clone(),
            max_clocks: config.jetson_clocks_command.clone(),
            store_clocks: config.jetson_clocks_store_command.clone(),
            restore_clocks: config.jetson_clocks_restore_command.clone(),
        }
    }

    /// The modes this board offers and its state now, when power may be
    /// varied here; else why not.
    pub fn searchable(&self) -> Result<(Vec<PowerMode>, DevicePower), String> {
        let reader = JetsonReader::new(&self.root);
        if reader.read().is_none() {
            return Err("not a Jetson".into());
        }
        if !self.allow_changes {
            return Err("control.allow_power_changes is off".into());
        }
        let modes = reader.power_modes();
        if modes.is_empty() {
            return Err("/etc/nvpmodel.conf names no power mode".into());
        }
        let state = self
            .state()
            .ok_or("no power mode in /var/lib/nvpmodel/status")?;
        Ok((modes, state))
    }

    /// The power mode and clocks now.
    pub fn state(&self) -> Option<DevicePower> {
        let reader = JetsonReader::new(&self.root);
        Some(DevicePower {
            power_mode: reader.read()?.power_mode?.id,
            max_clocks: reader.clocks_pinned().unwrap_or(false),
        })
    }

    /// Put the device in `target`: the mode first (a mode change sets the
    /// clocks' limits anew), then the clocks, whose settings are kept before
    /// they are pinned and put back when they are let go.
    pub async fn set_state(&self, target: DevicePower) -> Result<Vec<CommandRun>, PowerError> {
        self.check_allowed()?;
        let not_jetson = || PowerError::NotSupported("no power state here".into());
        let mut ran = Vec::new();
        if self.state().ok_or_else(not_jetson)?.power_mode != target.power_mode {
            ran.push(run_checked(&self.set_mode_argv(target.power_mode)).await?);
        }
        match (
            self.state().ok_or_else(not_jetson)?.max_clocks,
            target.max_clocks,
        ) {
            (false, true) => {
                ran.push(run_checked(&self.store_clocks).await?);
                ran.push(run_checked(&self.max_clocks).await?);
            }
            (true, false) => ran.push(run_checked(&self.restore_clocks).await?),
            _ => {}
        }
        Ok(ran)
    }

    fn set_mode_argv(&self, mode: u32) -> Vec<String> {
        self.set_mode
            .iter()
            .map(|a| a.replace("{mode}", &mode.to_string()))
            .collect()
    }

    pub async fn run(
        &self,
        action: OptimizeAction,
        mode: Option<u32>,
    ) -> Result<Value, PowerError> {
        let jetson = JetsonReader::new(&self.root).read().ok_or_else(|| {
            PowerError::NotSupported(
                "power modes and clocks are set through nvpmodel and jetson_clocks on an NVIDIA \
                 Jetson; this machine is not one (no Jetson in /proc/device-tree/model)"
                    .into(),
            )
        })?;
        match action {
            OptimizeAction::Report => {
                let query = run_command(&self.query).await;
                Ok(json!({
                    "board": jetson.model,
                    "l4t": jetson.l4t,
                    "power_mode": jetson.power_mode,
                    "gpu": jetson.gpu,
                    "fan_percent": jetson.fan_percent,
                    "nvpmodel": query.map_err(|e| e.to_string()),
                    "changes_allowed": self.allow_changes,
                }))
            }
            OptimizeAction::SetPowerMode => {
                let mode = mode.ok_or_else(|| {
                    PowerError::Refused("`mode` (an nvpmodel mode id) is required".into())
                })?;
                self.check_allowed()?;
                let argv = self.set_mode_argv(mode);
                Ok(json!({ "ran": run_checked(&argv).await? }))
            }
            OptimizeAction::MaxClocks => {
                self.check_allowed()?;
                Ok(json!({ "ran": run_checked(&self.max_clocks).await? }))
            }
            OptimizeAction::Optimize | OptimizeAction::Revert => Err(PowerError::Refused(
                "not a power action: report, set_power_mode or max_clocks".into(),
            )),
        }
    }

    fn check_allowed(&self) -> Result<(), PowerError> {
        match self.allow_changes {
            true => Ok(()),
            false => Err(PowerError::Refused(
                "changing power modes or clocks is off: set control.allow_power_changes = true \
                 (the commands usually need root)"
                    .into(),
            )),
        }
    }
}

async fn run_checked(argv: &[String]) -> Result<CommandRun, PowerError> {
    let run = run_command(argv).await?;
    match run.exit_code {
        Some(0) => Ok(run),
        code => Err(PowerError::Command {
            command: argv.join(" "),
            reason: format!("exit code {code:?}: {}", run.output.trim()),
        }),
    }
}

async fn run_command(argv: &[String]) -> Result<CommandRun, PowerError> {
    let fail = |reason: String| PowerError::Command {
        command: argv.join(" "),
        reason,
    };
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| fail("empty command".into()))?;
    let output = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(COMMAND_TIMEOUT, output)
        .await
        .map_err(|_| fail(format!("no answer within {} s", COMMAND_TIMEOUT.as_secs())))?
        .map_err(|e| fail(e.to_string()))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok(CommandRun {
        command: argv.to_vec(),
        exit_code: output.status.code(),
        output: text,
    })
}
