//! Jetson telemetry from sysfs, the paths jetson-stats reads: board model,
//! L4T release, GPU load and clocks (devfreq), INA3221 power rails (hwmon),
//! fan, and the nvpmodel power mode. Every path is under a root directory so
//! tests run on fake trees.

use std::path::PathBuf;

use serde::Serialize;

use super::sysfs::{file_name, list_dir, read_number, read_trimmed};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JetsonMetrics {
    /// `/proc/device-tree/model`, e.g. "NVIDIA Jetson Orin Nano Developer Kit".
    pub model: String,
    /// L4T release from `/etc/nv_tegra_release`, e.g. "36.4.0".
    pub l4t: Option<String>,
    pub gpu: Option<GpuMetrics>,
    pub rails: Vec<PowerRail>,
    pub fan_percent: Option<f64>,
    pub power_mode: Option<PowerMode>,
    /// Where GPU load, GPU clock and rails came from (`None`: nowhere).
    pub sources: JetsonSources,
    /// The tegrastats fallback, present when it was wanted for this snapshot.
    pub tegrastats: Option<TegrastatsStatus>,
}

/// What the metrics JSON says about the fallback.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TegrastatsStatus {
    /// The command line run, e.g. `["tegrastats", "--interval", "1000"]`.
    pub command: Vec<String>,
    pub running: bool,
    /// Age of the latest line, in milliseconds; `None` until a line arrives
    /// and after the program stops (a stopped program's line is not current).
    pub line_age_ms: Option<u64>,
    /// Why the program last failed to start, stopped, or printed something odd.
    pub last_error: Option<String>,
    /// How many times it was started (or tried to be).
    pub starts: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct JetsonSources {
    pub gpu_load: Option<MetricSource>,
    pub gpu_freq: Option<MetricSource>,
    pub rails: Option<MetricSource>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricSource {
    Sysfs,
    Tegrastats,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuMetrics {
    pub name: String,
    /// 0..=100; the driver reports per mille.
    pub load_percent: Option<f64>,
    pub freq_mhz: Option<f64>,
    pub min_freq_mhz: Option<f64>,
    pub max_freq_mhz: Option<f64>,
    pub governor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerRail {
    pub name: String,
    pub voltage_mv: Option<f64>,
    pub current_ma: Option<f64>,
    pub power_mw: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerMode {
    pub id: u32,
    pub name: Option<String>,
}

/// GPU devfreq device names across Jetson generations.
const GPU_DEVFREQ: &[&str] = &["gpu", "gb10b", "ga10b", "gv11b", "gp10b", "gm20b"];

pub struct JetsonReader {
    root: PathBuf,
}

impl JetsonReader {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// `None` when this is not a Jetson.
    pub fn read(&self) -> Option<JetsonMetrics> {
        let model = read_trimmed(&self.path("proc/device-tree/model"))?;
        let release = read_trimmed(&self.path("etc/nv_tegra_release"));
        if !model.contains("Jetson") && release.is_none() {
            return None;
        }
        let gpu = self.gpu();
        let rails = self.rails();
        let sysfs_if = |found: bool| found.then_some(MetricSource::Sysfs);
        let sources = JetsonSources {
            gpu_load: sysfs_if(gpu.as_ref().is_some_and(|g| g.load_percent.is_some())),
            gpu_freq: sysfs_if(gpu.as_ref().is_some_and(|g| g.freq_mhz.is_some())),
            rails: sysfs_if(!rails.is_empty()),
        };
        Some(JetsonMetrics {
            model,
            l4t: release.as_deref().and_then(parse_l4t),
            gpu,
            rails,
            fan_percent: self.fan_percent(),
            power_mode: self.power_mode(),
            sources,
            tegrastats: None,
        })
    }

    fn gpu(&self) -> Option<GpuMetrics> {
        let dir = list_dir(&self.path("sys/class/devfreq"))
            .into_iter()
            .find(|d| {
                file_name(d)
                    .rsplit('.')
                    .next()
                    .is_some_and(|n| GPU_DEVFREQ.contains(&n))
            })?;
        let mhz = |file: &str| read_number(&dir.join(file)).map(|hz| hz / 1e6);
        let load = read_number(&dir.join("device/load"))
            .or_else(|| read_number(&self.path("sys/devices/platform/gpu.0/load")))
            .or_else(|| read_number(&self.path("sys/devices/gpu.0/load")));
        Some(GpuMetrics {
            name: file_name(&dir),
            load_percent: load.map(|per_mille| per_mille / 10.0),
            freq_mhz: mhz("cur_freq"),
            min_freq_mhz: mhz("min_freq"),
            max_freq_mhz: mhz("max_freq"),
            governor: read_trimmed(&dir.join("governor")),
        })
    }

    /// INA3221 channels: `inN_label`, `inN_input` (mV), `currN_input` (mA).
    fn rails(&self) -> Vec<PowerRail> {
        let mut rails = Vec::new();
        for device in list_dir(&self.path("sys/bus/i2c/drivers/ina3221")) {
            for hwmon in list_dir(&device.join("hwmon")) {
                for channel in 1..=4 {
                    let Some(name) = read_trimmed(&hwmon.join(format!("in{channel}_label"))) else {
                        continue;
                    };
                    let voltage = read_number(&hwmon.join(format!("in{channel}_input")));
                    let current = read_number(&hwmon.join(format!("curr{channel}_input")));
                    let power = voltage.zip(current).map(|(mv, ma)| mv * ma / 1000.0);
                    rails.push(PowerRail {
                        name,
                        voltage_mv: voltage,
                        current_ma: current,
                        power_mw: power,
                    });
                }
            }
        }
        rails
    }

    /// The PWM fan's duty cycle: `pwm1` of the `pwmfan` hwmon, 0..=255.
    fn fan_percent(&self) -> Option<f64> {
        list_dir(&self.path("sys/class/hwmon"))
            .into_iter()
            .find(|h| {
                read_trimmed(&h.join("name")).is_some_and(|n| n == "pwmfan" || n == "pwm-fan")
            })
            .and_then(|h| read_number(&h.join("pwm1")))
            .map(|pwm| pwm / 255.0 * 100.0)
    }

    /// The power modes `/etc/nvpmodel.conf` defines, by id.
    pub fn power_modes(&self) -> Vec<PowerMode> {
        let conf = std::fs::read_to_string(self.path("etc/nvpmodel.conf")).unwrap_or_default();
        let mut modes: Vec<PowerMode> = conf
            .lines()
            .filter_map(|line| {
                let id = power_model_field(line, "ID=")?.parse().ok()?;
                let name = power_model_field(line, "NAME=").map(str::to_string);
                Some(PowerMode { id, name })
            })
            .collect();
        modes.sort_by_key(|m| m.id);
        modes.dedup_by_key(|m| m.id);
        modes
    }

    /// Whether the clocks are pinned at their maximum, as `jetson_clocks`
    /// leaves them: the GPU's lowest allowed clock is its highest. `None`
    /// without a GPU devfreq node.
    pub fn clocks_pinned(&self) -> Option<bool> {
        let gpu = self.gpu()?;
        Some(gpu.min_freq_mhz? == gpu.max_freq_mhz?)
    }

    /// `/var/lib/nvpmodel/status` (`pmode:0002 fmode:quiet`) named by `/etc/nvpmodel.conf`.
    fn power_mode(&self) -> Option<PowerMode> {
        let status = read_trimmed(&self.path("var/lib/nvpmodel/status"))?;
        let id: u32 = status
            .split_whitespace()
            .find_map(|f| f.strip_prefix("pmode:"))?
            .parse()
            .ok()?;
        let name = self.power_modes().into_iter().find(|m| m.id == id);
        Some(PowerMode {
            id,
            name: name.and_then(|m| m.name),
        })
    }
}

/// `# R36 (release), REVISION: 4.0, GCID: …` -> "36.4.0".
pub fn parse_l4t(release: &str) -> Option<String> {
    let major = release.strip_prefix("# R")?.split_whitespace().next()?;
    let revision = release.split("REVISION:").nth(1)?.split(',').next()?.trim();
    Some(format!("{major}.{revision}"))
}

/// A field (`ID=`, `NAME=`) of an nvpmodel.conf `POWER_MODEL` line.
fn power_model_field<'l>(line: &'l str, key: &str) -> Option<&'l str> {
    if !line.contains("POWER_MODEL") {
        return None;
    }
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key))
        .map(|v| v.trim_end_matches('>'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsonmind_testkit::fake_root::{jetson_board, write};
    use std::path::Path;

    /// The files an Orin Nano on JetPack 6 exposes, with real values.
    fn orin_nano(root: &Path) {
        jetson_board(root, "NVIDIA Jetson Orin Nano Developer Kit");
        write(
            root,
            "etc/nv_tegra_release",
            "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n",
        );
        let gpu = "sys/class/devfreq/17000000.ga10b";
        write(root, &format!("{gpu}/cur_freq"), "306000000\n");
        write(root, &format!("{gpu}/min_freq"), "306000000\n");
        write(root, &format!("{gpu}/max_freq"), "624750000\n");
        write(root, &format!("{gpu}/governor"), "nvhost_podgov\n");
        write(root, &format!("{gpu}/device/load"), "473\n");
        write(
            root,
            "sys/class/devfreq/3100000.memory/cur_freq",
            "2133000000\n",
        );
        let ina = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1";
        write(root, &format!("{ina}/in1_label"), "VDD_IN\n");
        write(root, &format!("{ina}/in1_input"), "5072\n");
        write(root, &format!("{ina}/curr1_input"), "936\n");
        write(root, &format!("{ina}/in2_label"), "VDD_CPU_GPU_CV\n");
        write(root, &format!("{ina}/in2_input"), "5064\n");
        write(root, &format!("{ina}/curr2_input"), "96\n");
        write(root, "sys/class/hwmon/hwmon2/name", "pwmfan\n");
        write(root, "sys/class/hwmon/hwmon2/pwm1", "51\n");
        write(root, "var/lib/nvpmodel/status", "pmode:0001 fmode:quiet\n");
        write(
            root,
            "etc/nvpmodel.conf",
            "< POWER_MODEL ID=0 NAME=15W >\n< POWER_MODEL ID=1 NAME=7W >\n",
        );
    }

    #[test]
    fn reads_an_orin_nano_tree() {
        let dir = tempfile::tempdir().unwrap();
        orin_nano(dir.path());
        let m = JetsonReader::new(dir.path()).read().unwrap();
        assert_eq!(m.model, "NVIDIA Jetson Orin Nano Developer Kit");
        assert_eq!(m.l4t.as_deref(), Some("36.4.0"));
        let gpu = m.gpu.unwrap();
        assert_eq!(gpu.name, "17000000.ga10b");
        assert_eq!(gpu.load_percent, Some(47.3));
        assert_eq!(
            (gpu.freq_mhz, gpu.max_freq_mhz),
            (Some(306.0), Some(624.75))
        );
        assert_eq!(gpu.governor.as_deref(), Some("nvhost_podgov"));
        assert_eq!(m.rails.len(), 2);
        assert_eq!(m.rails[0].name, "VDD_IN");
        assert_eq!(m.rails[0].power_mw, Some(5072.0 * 936.0 / 1000.0));
        assert_eq!(m.fan_percent, Some(20.0));
        assert_eq!(
            m.sources,
            JetsonSources {
                gpu_load: Some(MetricSource::Sysfs),
                gpu_freq: Some(MetricSource::Sysfs),
                rails: Some(MetricSource::Sysfs),
            }
        );
        assert_eq!(
            m.power_mode,
            Some(PowerMode {
                id: 1,
                name: Some("7W".into())
            })
        );
        let reader = JetsonReader::new(dir.path());
        let names: Vec<_> = reader
            .power_modes()
            .into_iter()
            .map(|m| (m.id, m.name))
            .collect();
        assert_eq!(names, vec![(0, Some("15W".into())), (1, Some("7W".into()))]);
        assert_eq!(reader.clocks_pinned(), Some(false));
        write(
            dir.path(),
            "sys/class/devfreq/17000000.ga10b/min_freq",
            "624750000\n",
        );
        assert_eq!(reader.clocks_pinned(), Some(true));
    }

    #[test]
    fn an_ordinary_pc_is_not_a_jetson() {
        let dir = tempfile::tempdir().unwrap();
        assert!(JetsonReader::new(dir.path()).read().is_none());
        jetson_board(dir.path(), "Raspberry Pi 4 Model B");
        assert!(JetsonReader::new(dir.path()).read().is_none());
        assert!(
            JetsonReader::new("/").read().is_none() || Path::new("/etc/nv_tegra_release").exists()
        );
    }

    #[test]
    fn l4t_releases() {
        assert_eq!(
            parse_l4t("# R32 (release), REVISION: 7.4, GCID: 33514132").as_deref(),
            Some("32.7.4")
        );
        assert_eq!(parse_l4t("garbage"), None);
    }
}
