//! Linux `/proc` and `/sys` readers.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::gpu::DiscreteGpu;
use super::jetson::{JetsonMetrics, JetsonReader};
use super::sysfs::{file_name, list_dir, read_number, read_trimmed};
use super::tegrastats_source::{self, TegrastatsSource};
use super::{TegrastatsMode, TelemetrySettings};

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
    pub disks: Vec<DiskUsage>,
    pub network: Vec<NetworkInterface>,
    /// Present on an NVIDIA Jetson: GPU, power rails, fan, power mode.
    pub jetson: Option<JetsonMetrics>,
    /// Discrete NVIDIA GPUs seen through NVML (the `nvml` feature); empty without it.
    pub gpus: Vec<DiscreteGpu>,
    /// Why `gpus` may be incomplete, e.g. "NVML not available: …".
    pub gpus_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DiskUsage {
    pub mount_point: String,
    pub filesystem: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Counters since boot; rates come from two reads.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NetworkInterface {
    pub name: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
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

/// The few figures routing needs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Vitals {
    pub total_memory_bytes: Option<u64>,
    pub available_memory_bytes: Option<u64>,
    pub max_temperature_c: Option<f64>,
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
/// It also owns the lazily started sources: tegrastats and NVML.
pub struct LinuxReader {
    root: PathBuf,
    first_interval: Duration,
    previous: Mutex<Option<Vec<CpuTimes>>>,
    tegrastats_mode: TegrastatsMode,
    tegrastats: TegrastatsSource,
    #[cfg(feature = "nvml")]
    nvml: super::nvml::NvmlReader,
}

impl LinuxReader {
    /// A reader with the default [`TelemetrySettings`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_settings(root, TelemetrySettings::default())
    }

    /// Nothing is started here: tegrastats when a Jetson snapshot needs it,
    /// NVML on the first snapshot.
    pub fn with_settings(root: impl Into<PathBuf>, settings: TelemetrySettings) -> Self {
        Self {
            root: root.into(),
            first_interval: Duration::from_millis(100),
            previous: Mutex::new(None),
            tegrastats_mode: settings.tegrastats,
            tegrastats: TegrastatsSource::new(
                settings.tegrastats_command,
                Duration::from_secs(settings.tegrastats_retry_secs),
            ),
            #[cfg(feature = "nvml")]
            nvml: super::nvml::NvmlReader::new(),
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    fn read(&self, relative: &str) -> Option<String> {
        std::fs::read_to_string(self.path(relative)).ok()
    }

    /// Memory and the hottest thermal zone only: cheap enough to read on
    /// every health check (`jetson://compute/status`).
    pub fn vitals(&self) -> Vitals {
        let memory = self
            .read("proc/meminfo")
            .map(|s| parse_meminfo(&s))
            .unwrap_or_default();
        Vitals {
            total_memory_bytes: memory.total_bytes,
            available_memory_bytes: memory.available_bytes,
            max_temperature_c: read_thermal_zones(&self.path("sys/class/thermal"))
                .iter()
                .map(|z| z.celsius)
                .reduce(f64::max),
        }
    }

    /// The CPUs' clocks as a share of their maximum, averaged over the CPUs
    /// (cpufreq's `scaling_cur_freq` / `cpuinfo_max_freq`): under load, a
    /// figure well below 100 means the clocks are held down (throttling).
    /// `None` without cpufreq (most virtual machines).
    pub fn cpu_clock_percent(&self) -> Option<f64> {
        let shares: Vec<f64> = list_dir(&self.path("sys/devices/system/cpu"))
            .into_iter()
            .filter(|cpu| {
                let name = file_name(cpu);
                name.strip_prefix("cpu")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .filter_map(|cpu| {
                let now = read_number(&cpu.join("cpufreq/scaling_cur_freq"))?;
                let max = read_number(&cpu.join("cpufreq/cpuinfo_max_freq"))?;
                (max > 0.0).then(|| (now / max * 100.0).min(100.0))
            })
            .collect();
        (!shares.is_empty()).then(|| shares.iter().sum::<f64>() / shares.len() as f64)
    }

    pub async fn snapshot(&self) -> SystemMetrics {
        let (gpus, gpus_error) = self.discrete_gpus();
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
            disks: self
                .read("proc/mounts")
                .map(|m| self.disks(&m))
                .unwrap_or_default(),
            network: self
                .read("proc/net/dev")
                .map(|d| parse_net_dev(&d))
                .unwrap_or_default(),
            jetson: self.jetson(),
            gpus,
            gpus_error,
        }
    }

    /// Sysfs first; the latest tegrastats line fills the gaps (or, in
    /// `always` mode, takes over). Never waits for the program.
    fn jetson(&self) -> Option<JetsonMetrics> {
        let mut metrics = JetsonReader::new(&self.root).read()?;
        let sysfs_lacks = metrics
            .gpu
            .as_ref()
            .is_none_or(|g| g.load_percent.is_none())
            || metrics.rails.is_empty();
        let wanted = match self.tegrastats_mode {
            TegrastatsMode::Never => false,
            TegrastatsMode::Always => true,
            TegrastatsMode::Auto => sysfs_lacks,
        };
        if wanted {
            self.tegrastats.ensure_running();
            if let Some((stats, _age)) = self.tegrastats.latest() {
                let prefer = self.tegrastats_mode == TegrastatsMode::Always;
                tegrastats_source::merge(&mut metrics, &stats, prefer);
            }
            metrics.tegrastats = Some(self.tegrastats.status());
        }
        Some(metrics)
    }

    #[cfg(feature = "nvml")]
    fn discrete_gpus(&self) -> (Vec<DiscreteGpu>, Option<String>) {
        self.nvml.read()
    }

    #[cfg(not(feature = "nvml"))]
    fn discrete_gpus(&self) -> (Vec<DiscreteGpu>, Option<String>) {
        (Vec::new(), None)
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

    /// Real filesystems from `/proc/mounts`, sized with statvfs.
    fn disks(&self, mounts: &str) -> Vec<DiskUsage> {
        let mut disks: Vec<DiskUsage> = Vec::new();
        for (mount_point, filesystem) in parse_mounts(mounts) {
            if disks.iter().any(|d| d.mount_point == mount_point) {
                continue;
            }
            let path = self.root.join(mount_point.trim_start_matches('/'));
            if let Some((total_bytes, available_bytes)) = statvfs(&path) {
                disks.push(DiskUsage {
                    mount_point,
                    filesystem,
                    total_bytes,
                    available_bytes,
                });
            }
        }
        disks
    }
}

/// Filesystem types that hold data (not proc, sysfs, tmpfs, cgroup…).
const DISK_FILESYSTEMS: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "exfat", "f2fs", "zfs", "ntfs", "ntfs3", "nfs",
    "nfs4", "overlay",
];

/// (mount point, filesystem type) of the data filesystems in `/proc/mounts`.
pub fn parse_mounts(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_device, mount_point, filesystem) =
                (fields.next()?, fields.next()?, fields.next()?);
            DISK_FILESYSTEMS
                .contains(&filesystem)
                .then(|| (unescape_mount(mount_point), filesystem.to_string()))
        })
        .collect()
}

/// `/proc/mounts` writes a space as `\040` (octal escapes).
fn unescape_mount(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest
            .get(at + 1..at + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(byte as char);
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn statvfs(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct of the right type.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as u64;
    Some((stat.f_blocks as u64 * block, stat.f_bavail as u64 * block))
}

/// `/proc/net/dev`: two header lines, then `name: rx_bytes rx_packets … tx_bytes tx_packets …`.
pub fn parse_net_dev(text: &str) -> Vec<NetworkInterface> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let v: Vec<u64> = counters
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            (v.len() >= 10).then(|| NetworkInterface {
                name: name.trim().to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                tx_bytes: v[8],
                tx_packets: v[9],
            })
        })
        .collect()
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
    let mut zones: Vec<(String, ThermalZone)> = list_dir(dir)
        .into_iter()
        .filter(|zone| file_name(zone).starts_with("thermal_zone"))
        .filter_map(|zone| {
            let millis = read_number(&zone.join("temp"))?;
            let name = read_trimmed(&zone.join("type")).unwrap_or_else(|| file_name(&zone));
            Some((
                file_name(&zone),
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
    use jetsonmind_testkit::fake_root::{thermal_zone, write};

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
        thermal_zone(root, 0, "cpu-thermal", 45.5);
        thermal_zone(root, 10, "tj-thermal", 51.0);
        thermal_zone(root, 2, "gpu-thermal", 44.0);
    }

    #[test]
    fn cpu_clocks_held_down_show_as_a_share_of_their_maximum() {
        let dir = tempfile::tempdir().unwrap();
        let reader = LinuxReader::new(dir.path());
        assert_eq!(reader.cpu_clock_percent(), None, "no cpufreq");
        for (cpu, now) in [("cpu0", "1000000"), ("cpu1", "2000000")] {
            let freq = format!("sys/devices/system/cpu/{cpu}/cpufreq");
            write(dir.path(), &format!("{freq}/scaling_cur_freq"), now);
            write(dir.path(), &format!("{freq}/cpuinfo_max_freq"), "2000000");
        }
        // Not a CPU: ignored.
        write(
            dir.path(),
            "sys/devices/system/cpu/cpufreq/policy0/scaling_cur_freq",
            "1",
        );
        assert_eq!(reader.cpu_clock_percent(), Some(75.0));
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

    #[test]
    fn mounts_keep_data_filesystems_once() {
        let mounts = "proc /proc proc rw 0 0\n/dev/sda1 / ext4 rw 0 0\ntmpfs /run tmpfs rw 0 0\n\
                      /dev/sdb1 /mnt/my\\040disk xfs rw 0 0\n";
        assert_eq!(
            parse_mounts(mounts),
            vec![
                ("/".to_string(), "ext4".to_string()),
                ("/mnt/my disk".to_string(), "xfs".to_string())
            ]
        );
    }

    #[test]
    fn net_dev_counters() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n\
                    lo: 100 2 0 0 0 0 0 0 100 2 0 0 0 0 0 0\n  eth0: 5000 40 0 0 0 0 0 0 7000 50 0 0 0 0 0 0\n";
        let interfaces = parse_net_dev(text);
        assert_eq!(interfaces.len(), 2);
        assert_eq!(
            (
                interfaces[1].name.as_str(),
                interfaces[1].rx_bytes,
                interfaces[1].tx_packets
            ),
            ("eth0", 5000, 50)
        );
    }

    #[tokio::test]
    async fn missing_files_give_empty_fields_not_errors() {
        let dir = tempfile::tempdir().unwrap();
        let m = LinuxReader::new(dir.path()).snapshot().await;
        assert_eq!(m.cpu.cores, 0);
        assert!(m.memory.total_bytes.is_none());
        assert!(m.thermal_zones.is_empty());
        assert!(m.disks.is_empty() && m.network.is_empty() && m.jetson.is_none());
    }

    #[cfg(not(feature = "nvml"))]
    #[tokio::test]
    async fn without_nvml_the_gpu_list_is_empty() {
        let m = LinuxReader::new("/").snapshot().await;
        assert!(m.gpus.is_empty() && m.gpus_error.is_none());
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["gpus"], serde_json::json!([]));
        assert!(json["gpus_error"].is_null());
    }

    #[tokio::test]
    async fn this_machine_has_real_figures() {
        let m = LinuxReader::new("/").snapshot().await;
        assert!(m.cpu.cores >= 1);
        assert!(m.memory.total_bytes.unwrap() > 0);
        assert!(m.uptime_seconds.unwrap() > 0.0);
        let usage = m.cpu.usage_percent.unwrap();
        assert!((0.0..=100.0).contains(&usage));
        let root = m
            .disks
            .iter()
            .find(|d| d.mount_point == "/")
            .expect("a root filesystem");
        assert!(root.total_bytes > 0 && root.available_bytes <= root.total_bytes);
        assert!(m.network.iter().any(|i| i.name == "lo"));
    }
}
