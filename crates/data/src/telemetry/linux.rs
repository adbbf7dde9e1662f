//! Linux `/proc` and `/sys` readers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// One snapshot of this machine.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SystemMetrics {
    pub hostname: Option<String>,
    pub kernel: Option<String>,
    pub uptime_seconds: Option<f64>,
    pub load_average: Option<[f64; 3]>,
    pub cpu: CpuMetrics,
    pub memory: MemoryMetrics,
    pub thermal_zones: Vec<ThermalZone>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuMetrics {
    pub cores: usize,
    /// Busy share over the sampling interval, 0..=100, all cores together.
    pub usage_percent: Option<f64>,
    /// Busy share per core, in `/proc/stat` order.
    pub per_core_percent: Vec<f64>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MemoryMetrics {
    pub total_bytes: Option<u64>,
    /// What the kernel says can be allocated without swapping (`MemAvailable`).
    pub available_bytes: Option<u64>,
    pub used_percent: Option<f64>,
    pub swap_total_bytes: Option<u64>,
    pub swap_free_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThermalZone {
    pub name: String,
    pub celsius: f64,
}

/// Cumulative jiffies of one CPU line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

impl CpuTimes {
    /// Busy percentage between two samples; `None` when no time passed.
    pub fn usage_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        (total > 0).then(|| (busy as f64 / total as f64 * 100.0).clamp(0.0, 100.0))
    }
}

/// Reads metrics under `root`. CPU usage needs two samples, so the reader
/// keeps the previous one; the first read samples twice, `first_interval` apart.
pub struct LinuxReader {
    root: PathBuf,
    first_interval: Duration,
    previous: Mutex<Option<Vec<CpuTimes>>>,
}

impl LinuxReader {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            first_interval: Duration::from_millis(100),
            previous: Mutex::new(None),
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    fn read(&self, relative: &str) -> Option<String> {
        std::fs::read_to_string(self.path(relative)).ok()
    }

    pub async fn snapshot(&self) -> SystemMetrics {
        SystemMetrics {
            hostname: self
                .read("proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string()),
            kernel: self
                .read("proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string()),
            uptime_seconds: self.read("proc/uptime").and_then(|s| parse_uptime(&s)),
            load_average: self.read("proc/loadavg").and_then(|s| parse_loadavg(&s)),
            cpu: self.cpu().await,
            memory: self
                .read("proc/meminfo")
                .map(|s| parse_meminfo(&s))
                .unwrap_or_default(),
            thermal_zones: read_thermal_zones(&self.path("sys/class/thermal")),
        }
    }

    async fn cpu(&self) -> CpuMetrics {
        let now = self.cpu_times();
        let earlier = self
            .previous
            .lock()
            .expect("cpu sample lock")
            .replace(now.clone());
        let (earlier, now) = match earlier {
            Some(earlier) if earlier.len() == now.len() => (earlier, now),
            _ => {
                tokio::time::sleep(self.first_interval).await;
                let later = self.cpu_times();
                *self.previous.lock().expect("cpu sample lock") = Some(later.clone());
                (now, later)
            }
        };
        let usages: Vec<Option<f64>> = now
            .iter()
            .zip(&earlier)
            .map(|(n, e)| n.usage_since(e))
            .collect();
        CpuMetrics {
            cores: now.len().saturating_sub(1),
            usage_percent: usages.first().copied().flatten(),
            per_core_percent: usages.iter().skip(1).map(|u| u.unwrap_or(0.0)).collect(),
        }
    }

    /// The aggregate line first, then one per core.
    fn cpu_times(&self) -> Vec<CpuTimes> {
        self.read("proc/stat")
            .map(|s| parse_proc_stat(&s))
            .unwrap_or_default()
    }
}

pub fn parse_proc_stat(text: &str) -> Vec<CpuTimes> {
    text.lines()
        .filter(|line| line.starts_with("cpu"))
        .filter_map(|line| {
            let fields: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest counted in user).
            if fields.len() < 4 {
                return None;
            }
            let total: u64 = fields.iter().take(8).sum();
            let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
            Some(CpuTimes {
                busy: total - idle,
                total,
            })
        })
        .collect()
}

pub fn parse_meminfo(text: &str) -> MemoryMetrics {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    let total = field("MemTotal");
    let available = field("MemAvailable");
    let used_percent = match (total, available) {
        (Some(t), Some(a)) if t > 0 => Some((t.saturating_sub(a)) as f64 / t as f64 * 100.0),
        _ => None,
    };
    MemoryMetrics {
        total_bytes: total,
        available_bytes: available,
        used_percent,
        swap_total_bytes: field("SwapTotal"),
        swap_free_bytes: field("SwapFree"),
    }
}

fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// `thermal_zone*/{type,temp}`; temp is in millidegrees Celsius.
fn read_thermal_zones(dir: &Path) -> Vec<ThermalZone> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut zones: Vec<(String, ThermalZone)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| {
            let path = e.path();
            let millis: f64 = std::fs::read_to_string(path.join("temp"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let name = std::fs::read_to_string(path.join("type"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| e.file_name().to_string_lossy().into_owned());
            Some((
                e.file_name().to_string_lossy().into_owned(),
                ThermalZone {
                    name,
                    celsius: millis / 1000.0,
                },
            ))
        })
        .collect();
    zones.sort_by_key(|(file, _)| natural_key(file));
    zones.into_iter().map(|(_, zone)| zone).collect()
}

fn natural_key(name: &str) -> (String, u64) {
    let digits: String = name.chars().filter(|c| c.is_ascii_digit()).collect();
    (
        name.trim_end_matches(|c: char| c.is_ascii_digit())
            .to_string(),
        digits.parse().unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn fake_tree(root: &Path, stat: &str) {
        write(root, "proc/stat", stat);
        write(
            root,
            "proc/meminfo",
            "MemTotal:       8000000 kB\nMemFree:  100 kB\nMemAvailable:   2000000 kB\nSwapTotal: 1024 kB\nSwapFree: 512 kB\n",
        );
        write(root, "proc/loadavg", "0.50 1.25 2.00 1/123 4567\n");
        write(root, "proc/uptime", "12345.67 20000.00\n");
        write(root, "proc/sys/kernel/hostname", "orin-nano\n");
        write(
            root,
            "sys/class/thermal/thermal_zone0/type",
            "cpu-thermal\n",
        );
        write(root, "sys/class/thermal/thermal_zone0/temp", "45500\n");
        write(
            root,
            "sys/class/thermal/thermal_zone10/type",
            "tj-thermal\n",
        );
        write(root, "sys/class/thermal/thermal_zone10/temp", "51000\n");
        write(
            root,
            "sys/class/thermal/thermal_zone2/type",
            "gpu-thermal\n",
        );
        write(root, "sys/class/thermal/thermal_zone2/temp", "44000\n");
    }

    #[tokio::test]
    async fn reads_a_fake_tree() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(
            dir.path(),
            "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0\ncpu1 50 0 50 400 0 0 0 0\n",
        );
        let reader = LinuxReader::new(dir.path());
        // Prime the sample, then advance: core0 fully busy, core1 idle.
        let _ = reader.snapshot().await;
        write(
            dir.path(),
            "proc/stat",
            "cpu  200 0 100 900 0 0 0 0 0 0\ncpu0 150 0 50 400 0 0 0 0\ncpu1 50 0 50 500 0 0 0 0\n",
        );
        let m = reader.snapshot().await;
        assert_eq!(m.hostname.as_deref(), Some("orin-nano"));
        assert_eq!(m.load_average, Some([0.5, 1.25, 2.0]));
        assert_eq!(m.uptime_seconds, Some(12345.67));
        assert_eq!(m.cpu.cores, 2);
        assert_eq!(m.cpu.per_core_percent, vec![100.0, 0.0]);
        assert_eq!(m.cpu.usage_percent, Some(50.0));
        assert_eq!(m.memory.total_bytes, Some(8_000_000 * 1024));
        assert_eq!(m.memory.available_bytes, Some(2_000_000 * 1024));
        assert_eq!(m.memory.used_percent, Some(75.0));
        let names: Vec<_> = m
            .thermal_zones
            .iter()
            .map(|z| (z.name.as_str(), z.celsius))
            .collect();
        assert_eq!(
            names,
            vec![
                ("cpu-thermal", 45.5),
                ("gpu-thermal", 44.0),
                ("tj-thermal", 51.0)
            ]
        );
    }

    #[tokio::test]
    async fn missing_files_give_empty_fields_not_errors() {
        let dir = tempfile::tempdir().unwrap();
        let m = LinuxReader::new(dir.path()).snapshot().await;
        assert_eq!(m.cpu.cores, 0);
        assert!(m.memory.total_bytes.is_none());
        assert!(m.thermal_zones.is_empty());
    }

    #[tokio::test]
    async fn this_machine_has_real_figures() {
        let m = LinuxReader::new("/").snapshot().await;
        assert!(m.cpu.cores >= 1);
        assert!(m.memory.total_bytes.unwrap() > 0);
        assert!(m.uptime_seconds.unwrap() > 0.0);
        let usage = m.cpu.usage_percent.unwrap();
        assert!((0.0..=100.0).contains(&usage));
    }
}
