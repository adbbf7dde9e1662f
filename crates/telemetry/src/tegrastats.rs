//! A parser for `tegrastats` lines, every format from JetPack 3 to 7.
//!
//! tegrastats is the fallback telemetry source on a Jetson (sysfs is read
//! first). Its line is a sequence of fields in no fixed order; each field is
//! recognised by its shape. Anything not recognised is kept in `unparsed`
//! rather than dropped, so a new format shows up instead of hiding.

use serde::Serialize;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TegraStats {
    /// `MM-DD-YYYY HH:MM:SS` when the line starts with one (JetPack 5+).
    pub timestamp: Option<String>,
    pub ram: Option<Usage>,
    pub swap: Option<Swap>,
    pub iram: Option<Usage>,
    /// One entry per core, in order; `None` for a core that is off.
    pub cpus: Vec<Option<CpuCore>>,
    pub engines: Vec<Engine>,
    pub temperatures: Vec<Temperature>,
    pub rails: Vec<Rail>,
    /// Denver MTS foreground/background load (TX2).
    pub mts: Option<(f64, f64)>,
    pub unparsed: Vec<String>,
}

/// Used and total, in the unit of the field (MB for RAM and SWAP, kB for IRAM).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Usage {
    pub used: f64,
    pub total: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Swap {
    pub used_mb: f64,
    pub total_mb: f64,
    pub cached_mb: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuCore {
    pub load_percent: f64,
    pub freq_mhz: Option<f64>,
}

/// A clocked engine: `EMC_FREQ 3%@204`, `GR3D_FREQ 12%@[1300,1300]`, `APE 150`, `NVDEC off`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Engine {
    pub name: String,
    pub off: bool,
    pub load_percent: Option<f64>,
    /// One frequency, or one per GPC (`@[..]`).
    pub freq_mhz: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Temperature {
    pub name: String,
    /// `None` when the sensor is offline (tegrastats prints -256C).
    pub celsius: Option<f64>,
    /// JetPack 7 prints `cur/max`.
    pub max_celsius: Option<f64>,
}

/// A power rail; JetPack 4 prints no unit (mW implied), later ones `mW`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rail {
    pub name: String,
    pub current_mw: f64,
    pub average_mw: f64,
    /// The third value of JetPack 7 lines.
    pub peak_mw: Option<f64>,
}

impl TegraStats {
    pub fn engine(&self, name: &str) -> Option<&Engine> {
        self.engines.iter().find(|e| e.name == name)
    }

    pub fn temperature(&self, name: &str) -> Option<&Temperature> {
        self.temperatures
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }

    pub fn rail(&self, name: &str) -> Option<&Rail> {
        self.rails.iter().find(|r| r.name == name)
    }
}

/// Parse one line of `tegrastats` output.
pub fn parse(line: &str) -> TegraStats {
    let mut stats = TegraStats::default();
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let mut i = 0;
    if tokens.len() >= 2 && is_date(tokens[0]) && is_time(tokens[1]) {
        stats.timestamp = Some(format!("{} {}", tokens[0], tokens[1]));
        i = 2;
    }
    while i < tokens.len() {
        i += parse_field(&tokens[i..], &mut stats).unwrap_or_else(|| {
            stats.unparsed.push(tokens[i].to_string());
            1
        });
    }
    stats
}

/// Parse the field starting at `t[0]`; the number of tokens it took.
fn parse_field(t: &[&str], stats: &mut TegraStats) -> Option<usize> {
    let next = t.get(1).copied();
    match t[0] {
        "RAM" => {
            // `RAM 330/3964MB (lfb 758x4MB)`: the largest free block is not kept.
            stats.ram = Some(usage(next?, "MB")?);
            Some(2 + group_length(&t[2..]))
        }
        "SWAP" => {
            // `SWAP 0/1982MB (cached 0MB)`
            let used = usage(next?, "MB")?;
            let cached = match t.get(2) {
                Some(&"(cached") => number(t.get(3)?.strip_suffix("MB)")?)?,
                _ => 0.0,
            };
            stats.swap = Some(Swap {
                used_mb: used.used,
                total_mb: used.total,
                cached_mb: cached,
            });
            Some(2 + group_length(&t[2..]))
        }
        "IRAM" => {
            // `IRAM 0/252kB(lfb 252kB)`: the group starts inside the value.
            let (value, group) = next?.split_once('(').unwrap_or((next?, ""));
            stats.iram = Some(usage(value, "kB")?);
            let open = !group.is_empty() && !group.ends_with(')');
            Some(2 + if open { close_group(&t[2..]) } else { 0 })
        }
        "CPU" if next.is_some_and(|n| n.starts_with('[')) => {
            stats.cpus = cpu_list(next?)?;
            Some(2)
        }
        "MTS" => {
            // `MTS fg 0% bg 0%`
            let fg = percent(t.get(2)?)?;
            let bg = percent(t.get(4)?)?;
            stats.mts = Some((fg, bg));
            Some(5)
        }
        name if is_temperature(name) => {
            stats.temperatures.push(temperature(name)?);
            Some(1)
        }
        name if is_name(name) && next.is_some_and(|n| n.contains('/')) => {
            stats.rails.push(rail(name, next?)?);
            Some(2)
        }
        name if is_name(name) && next.is_some_and(is_engine_value) => {
            stats.engines.push(engine(name, next?)?);
            Some(2)
        }
        _ => None,
    }
}

fn is_date(token: &str) -> bool {
    token.len() == 10
        && token.chars().enumerate().all(|(i, c)| {
            if i == 2 || i == 5 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        })
}

fn is_time(token: &str) -> bool {
    token.len() == 8
        && token.chars().enumerate().all(|(i, c)| {
            if i == 2 || i == 5 {
                c == ':'
            } else {
                c.is_ascii_digit()
            }
        })
}

fn is_name(token: &str) -> bool {
    token
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `name@41.5C`, `name@-256C`, `name@52.9C/52.9C`.
fn is_temperature(token: &str) -> bool {
    token
        .split_once('@')
        .is_some_and(|(name, value)| is_name(name) && value.ends_with('C'))
}

fn is_engine_value(token: &str) -> bool {
    token == "off" || token.contains('%') || token.starts_with('@') || number(token).is_some()
}

fn number(text: &str) -> Option<f64> {
    text.parse().ok()
}

fn percent(text: &str) -> Option<f64> {
    number(text.strip_suffix('%')?)
}

/// `330/3964MB` -> used 330, total 3964.
fn usage(text: &str, unit: &str) -> Option<Usage> {
    let (used, total) = text.strip_suffix(unit)?.split_once('/')?;
    Some(Usage {
        used: number(used)?,
        total: number(total)?,
    })
}

/// How many tokens a `(...)` group at the start of `t` spans (0 if none).
fn group_length(t: &[&str]) -> usize {
    match t.first() {
        Some(first) if first.starts_with('(') => close_group(t),
        _ => 0,
    }
}

/// Tokens up to and including the one that closes an open group.
fn close_group(t: &[&str]) -> usize {
    t.iter()
        .position(|s| s.ends_with(')'))
        .map_or(t.len(), |end| end + 1)
}

/// `[7%@102,off,10%,...]`
fn cpu_list(text: &str) -> Option<Vec<Option<CpuCore>>> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .split(',')
        .map(|core| {
            if core == "off" {
                return Some(None);
            }
            let (load, freq) = match core.split_once('@') {
                Some((load, freq)) => (load, Some(number(freq)?)),
                None => (core, None),
            };
            Some(Some(CpuCore {
                load_percent: percent(load)?,
                freq_mhz: freq,
            }))
        })
        .collect()
}

/// `3%@204`, `42%`, `12%@[1300,1300]`, `@[1000,1000]`, `150` (MHz), `off`.
fn engine(name: &str, value: &str) -> Option<Engine> {
    let mut engine = Engine {
        name: name.to_string(),
        off: false,
        load_percent: None,
        freq_mhz: Vec::new(),
    };
    if value == "off" {
        engine.off = true;
        return Some(engine);
    }
    let (load, freq) = match value.split_once('@') {
        Some((load, freq)) => (load, Some(freq)),
        None if value.ends_with('%') => (value, None),
        None => ("", Some(value)),
    };
    if !load.is_empty() {
        engine.load_percent = Some(percent(load)?);
    }
    if let Some(freq) = freq {
        engine.freq_mhz = match freq.strip_prefix('[') {
            Some(list) => list
                .strip_suffix(']')?
                .split(',')
                .map(number)
                .collect::<Option<_>>()?,
            None => vec![number(freq)?],
        };
    }
    Some(engine)
}

fn temperature(token: &str) -> Option<Temperature> {
    let (name, value) = token.split_once('@')?;
    let celsius = |v: &str| number(v.strip_suffix('C')?);
    let (current, max) = match value.split_once('/') {
        Some((current, max)) => (celsius(current)?, Some(celsius(max)?)),
        None => (celsius(value)?, None),
    };
    let online = current > -256.0;
    Some(Temperature {
        name: name.to_string(),
        celsius: online.then_some(current),
        max_celsius: max.filter(|_| online),
    })
}

/// `933/933`, `2390mW/2390mW`, `5139mW/5139mW/5139mW`.
fn rail(name: &str, value: &str) -> Option<Rail> {
    let values: Vec<f64> = value
        .split('/')
        .map(|v| number(v.trim_end_matches("mW")))
        .collect::<Option<_>>()?;
    match values[..] {
        [current, average] => Some(Rail {
            name: name.to_string(),
            current_mw: current,
            average_mw: average,
            peak_mw: None,
        }),
        [current, average, peak] => Some(Rail {
            name: name.to_string(),
            current_mw: current,
            average_mw: average,
            peak_mw: Some(peak),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jetpack_7_line() {
        let s = parse(
            "07-25-2026 09:08:28 RAM 20642/62817MB (lfb 1x2MB) CPU [23%@2201,off] EMC_FREQ 3%@3199 \
             GR3D_FREQ 12%@[1300,1300] NVENC0 off APE 174 cpu@52.968C/52.968C gpu@-256C \
             VDD_GPU_SOC 5139mW/5139mW/5139mW",
        );
        assert!(s.unparsed.is_empty(), "{:?}", s.unparsed);
        assert_eq!(s.timestamp.as_deref(), Some("07-25-2026 09:08:28"));
        assert_eq!(
            s.ram,
            Some(Usage {
                used: 20642.0,
                total: 62817.0
            })
        );
        assert_eq!(
            s.cpus,
            vec![
                Some(CpuCore {
                    load_percent: 23.0,
                    freq_mhz: Some(2201.0)
                }),
                None
            ]
        );
        let gr3d = s.engine("GR3D_FREQ").unwrap();
        assert_eq!(
            (gr3d.load_percent, gr3d.freq_mhz.clone()),
            (Some(12.0), vec![1300.0, 1300.0])
        );
        assert!(s.engine("NVENC0").unwrap().off);
        assert_eq!(s.engine("APE").unwrap().freq_mhz, vec![174.0]);
        assert_eq!(s.temperature("cpu").unwrap().max_celsius, Some(52.968));
        assert_eq!(s.temperature("gpu").unwrap().celsius, None);
        assert_eq!(s.rail("VDD_GPU_SOC").unwrap().peak_mw, Some(5139.0));
    }

    #[test]
    fn unknown_fields_are_kept_not_dropped() {
        let s = parse("RAM 1/2MB FROB 3%@1 ??? thing");
        assert_eq!(s.unparsed, vec!["???".to_string(), "thing".to_string()]);
        assert_eq!(s.engine("FROB").unwrap().load_percent, Some(3.0));
    }
}
