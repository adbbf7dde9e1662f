//! Every tegrastats line of the sample file (real captures from JetPack 3 to 7)
//! parses completely, with the right figures.

use jetsonmind_telemetry::tegrastats::{TegraStats, parse};

const SAMPLES: &str = include_str!("fixtures/tegrastats_samples.txt");

/// (sample id, parsed line), in file order.
fn samples() -> Vec<(String, TegraStats)> {
    let mut id = String::new();
    let mut out = Vec::new();
    for line in SAMPLES.lines() {
        if let Some(rest) = line.strip_prefix("# id: ") {
            id = rest.trim().to_string();
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            out.push((id.clone(), parse(line)));
        }
    }
    out
}

fn sample(id: &str) -> TegraStats {
    samples()
        .into_iter()
        .find(|(i, _)| i == id)
        .unwrap_or_else(|| panic!("no sample {id}"))
        .1
}

#[test]
fn every_line_parses_completely() {
    let all = samples();
    assert_eq!(all.len(), 17);
    for (id, stats) in &all {
        assert!(stats.unparsed.is_empty(), "{id}: {:?}", stats.unparsed);
        assert!(stats.ram.is_some(), "{id}: no RAM");
    }
}

#[test]
fn memory_swap_and_iram() {
    let tx1 = sample("jetson-tx1-jp3-sudo");
    assert_eq!(
        (tx1.ram.unwrap().used, tx1.ram.unwrap().total),
        (388.0, 3984.0)
    );
    assert_eq!(
        (tx1.iram.unwrap().used, tx1.iram.unwrap().total),
        (0.0, 252.0)
    );
    let tx2 = sample("jetson-tx2-jp3");
    let swap = tx2.swap.unwrap();
    assert_eq!(
        (swap.used_mb, swap.total_mb, swap.cached_mb),
        (278.0, 8192.0, 23.0)
    );
    let r39 = sample("jetson-orin-nano-8gb-r39");
    assert_eq!(
        (r39.swap.unwrap().used_mb, r39.swap.unwrap().cached_mb),
        (2047.0, 209.0)
    );
    assert!(sample("jetson-thor-fragment").cpus.is_empty());
}

#[test]
fn cpu_cores_on_and_off() {
    let tx2 = sample("jetson-tx2-jp4-vddsys");
    assert_eq!(tx2.cpus.len(), 6);
    assert_eq!(tx2.cpus.iter().filter(|c| c.is_none()).count(), 2);
    assert_eq!(tx2.cpus[0].unwrap().load_percent, 1.0);
    assert_eq!(tx2.cpus[0].unwrap().freq_mhz, Some(345.0));
    let orin = sample("jetson-agx-orin-32gb-jp5");
    assert_eq!(orin.cpus.len(), 12);
    assert_eq!(orin.cpus[10].unwrap().load_percent, 55.0);
    let nx = sample("jetson-orin-nx-16gb-jp6");
    assert_eq!(nx.cpus.iter().filter(|c| c.is_some()).count(), 4);
    assert_eq!(nx.timestamp.as_deref(), Some("11-23-2025 22:47:56"));
}

#[test]
fn engines_in_every_form() {
    let nano = sample("jetson-nano-4gb-jp4");
    let gr3d = nano.engine("GR3D_FREQ").unwrap();
    assert_eq!((gr3d.load_percent, gr3d.freq_mhz.len()), (Some(42.0), 0));
    let sudo = sample("jetson-nano-4gb-jp4-sudo");
    assert_eq!(sudo.engine("EMC_FREQ").unwrap().freq_mhz, vec![204.0]);
    assert_eq!(sudo.engine("APE").unwrap().freq_mhz, vec![25.0]);
    let orin = sample("jetson-agx-orin-32gb-jp5-sudo");
    assert_eq!(orin.engine("GR3D2_FREQ").unwrap().load_percent, Some(37.0));
    assert_eq!(orin.engine("NVJPG1").unwrap().freq_mhz, vec![729.0]);
    let nano6 = sample("jetson-orin-nano-8gb-jp6-sudo");
    assert_eq!(nano6.engine("GR3D_FREQ").unwrap().freq_mhz, vec![305.0]);
    for name in ["NVDEC", "NVJPG", "NVJPG1", "VIC", "OFA"] {
        assert!(nano6.engine(name).unwrap().off, "{name}");
    }
    let thor = sample("jetson-thor-fragment");
    let gr3d = thor.engine("GR3D_FREQ").unwrap();
    assert_eq!(
        (gr3d.load_percent, gr3d.freq_mhz.clone()),
        (None, vec![1000.0, 1000.0, 1000.0])
    );
    let agx7 = sample("jetson-agx-orin-64gb-jp72");
    assert!(agx7.engine("PVA0_FREQ").unwrap().off);
    assert_eq!(
        agx7.engine("GR3D_FREQ").unwrap().freq_mhz,
        vec![1300.0, 1300.0]
    );
    let edge = sample("jetson-tx2-extra-edgecases");
    assert_eq!(edge.engine("NVENC").unwrap().freq_mhz, vec![716.0]);
    assert_eq!(edge.mts, Some((0.0, 0.0)));
}

#[test]
fn temperatures_offline_negative_and_max() {
    let orin = sample("jetson-agx-orin-32gb-jp5");
    assert_eq!(orin.temperature("GPU").unwrap().celsius, None);
    assert_eq!(orin.temperature("tj").unwrap().celsius, Some(41.468));
    let edge = sample("jetson-tx2-extra-edgecases");
    assert_eq!(edge.temperature("GPU").unwrap().celsius, Some(-51.0));
    let r39 = sample("jetson-orin-nano-8gb-r39");
    let cpu = r39.temperature("cpu").unwrap();
    assert_eq!((cpu.celsius, cpu.max_celsius), (Some(50.0), Some(50.0)));
    assert_eq!(sample("jetson-tx2-jp3").temperatures.len(), 8);
}

#[test]
fn power_rails_in_every_unit() {
    let tx2 = sample("jetson-tx2-jp3");
    let vin = tx2.rail("VDD_IN").unwrap();
    assert_eq!((vin.current_mw, vin.average_mw), (1931.0, 1931.0));
    let nano = sample("jetson-nano-4gb-jp4-sudo");
    assert_eq!(nano.rail("POM_5V_CPU").unwrap().average_mw, 105.0);
    let orin = sample("jetson-agx-orin-32gb-jp5-sudo");
    assert_eq!(orin.rail("VIN_SYS_5V0").unwrap().current_mw, 3522.0);
    assert_eq!(orin.rails.iter().filter(|r| r.name == "NC").count(), 2);
    let jp7 = sample("jetson-orin-nano-8gb-r39");
    let vin = jp7.rail("VDD_IN").unwrap();
    assert_eq!((vin.current_mw, vin.peak_mw), (9761.0, Some(9761.0)));
    let xavier = sample("jetson-agx-xavier-jp42");
    assert_eq!(xavier.rail("SYS5V").unwrap().current_mw, 3306.0);
    assert!(sample("jetson-agx-orin-32gb-jp5").rails.is_empty());
}
