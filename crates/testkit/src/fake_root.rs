//! A fake filesystem root (`/proc`, `/sys`, `/etc`) for the readers that
//! take one, so a test can be a Jetson, a PC, hot or cool.

use std::path::Path;

/// Write `text` at `rel` under `root`, creating its directories.
pub fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("a file under the root"))
        .expect("the fake tree's directories");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// The board's name in the device tree, as a Jetson's firmware writes it.
pub fn jetson_board(root: &Path, model: &str) {
    write(root, "proc/device-tree/model", &format!("{model}\0"));
}

/// An Orin Nano as a container sees it: board and release, a GPU devfreq
/// clock, but no GPU load file and no INA3221 rails.
pub fn containerised_orin_nano(root: &Path) {
    jetson_board(root, "NVIDIA Jetson Orin Nano Developer Kit");
    write(
        root,
        "etc/nv_tegra_release",
        "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic\n",
    );
    write(
        root,
        "sys/class/devfreq/17000000.ga10b/cur_freq",
        "306000000\n",
    );
}

/// Thermal zone `index` named `kind`, reading `celsius`.
pub fn thermal_zone(root: &Path, index: u32, kind: &str, celsius: f64) {
    let zone = format!("sys/class/thermal/thermal_zone{index}");
    write(root, &format!("{zone}/type"), &format!("{kind}\n"));
    let millidegrees = (celsius * 1000.0).round() as i64;
    write(root, &format!("{zone}/temp"), &format!("{millidegrees}\n"));
}
