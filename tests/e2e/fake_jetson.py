"""A fake Jetson for tests: the files an Orin Nano shows under /proc, /sys, /etc and /var/lib, kept
under a root directory, and stand-in `nvpmodel` and `jetson_clocks` commands that change those files
as the real ones change a board, and record each call in ROOT/calls.log.

As a module: `make_tree(root)` and `config_env(root)` (the settings that point a server at it).
As a program: `fake_jetson.py ROOT nvpmodel MODE` or `fake_jetson.py ROOT jetson_clocks [--store|--restore]`.
"""

import json
import sys
from pathlib import Path

GPU = "sys/class/devfreq/17000000.ga10b"
RAIL = "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1"
MODES = {0: "MAXN", 1: "7W"}
# The board's input current at 5 V in each mode (mA), and what pinned clocks add.
CURRENT_MA = {0: 3000, 1: 1400}
PINNED_EXTRA_MA = 1000
BASE_HZ, MAX_HZ = 306000000, 624750000


def write(root, relative, text):
    path = Path(root) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def read(root, relative):
    return (Path(root) / relative).read_text().strip()


def make_tree(root, mode=0):
    write(root, "proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\0")
    write(root, "etc/nv_tegra_release", "# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic\n")
    conf = "".join(f"< POWER_MODEL ID={i} NAME={name} >\n" for i, name in MODES.items())
    write(root, "etc/nvpmodel.conf", conf)
    write(root, f"{GPU}/max_freq", f"{MAX_HZ}\n")
    write(root, f"{GPU}/cur_freq", f"{BASE_HZ}\n")
    write(root, f"{RAIL}/in1_label", "VDD_IN\n")
    write(root, f"{RAIL}/in1_input", "5000\n")
    set_mode(root, mode)


def set_mode(root, mode):
    """What nvpmodel does: the mode's limits, which also let go of pinned clocks."""
    write(root, "var/lib/nvpmodel/status", f"pmode:{mode:04d} fmode:quiet\n")
    write(root, f"{GPU}/min_freq", f"{BASE_HZ}\n")
    set_current(root)


def set_current(root):
    mode = int(read(root, "var/lib/nvpmodel/status").split()[0].split(":")[1])
    pinned = read(root, f"{GPU}/min_freq") == read(root, f"{GPU}/max_freq")
    write(root, f"{RAIL}/curr1_input", f"{CURRENT_MA[mode] + PINNED_EXTRA_MA * pinned}\n")


def config_env(root):
    """Environment settings that point `jetsonmind serve` at the tree and the stand-in commands."""
    command = [sys.executable, str(Path(__file__).resolve()), str(root)]
    return {
        "JETSONMIND_TELEMETRY__ROOT": str(root),
        "JETSONMIND_CONTROL__ALLOW_POWER_CHANGES": "true",
        "JETSONMIND_CONTROL__NVPMODEL_SET_COMMAND": json.dumps(command + ["nvpmodel", "{mode}"]),
        "JETSONMIND_CONTROL__JETSON_CLOCKS_COMMAND": json.dumps(command + ["jetson_clocks"]),
        "JETSONMIND_CONTROL__JETSON_CLOCKS_STORE_COMMAND": json.dumps(command + ["jetson_clocks", "--store"]),
        "JETSONMIND_CONTROL__JETSON_CLOCKS_RESTORE_COMMAND": json.dumps(
            command + ["jetson_clocks", "--restore"]
        ),
    }


def calls(root):
    """The stand-in commands' calls so far, as their argument lists."""
    log = Path(root) / "calls.log"
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def main(root, program, *args):
    with open(Path(root) / "calls.log", "a") as log:
        log.write(" ".join([program, *args]) + "\n")
    if program == "nvpmodel":
        mode = int(args[0])
        if mode not in MODES:
            sys.exit(f"NVPM ERROR: invalid mode {mode}")
        set_mode(root, mode)
    elif args == ("--store",):
        write(root, "stored_min_freq", read(root, f"{GPU}/min_freq"))
    elif args == ("--restore",):
        write(root, f"{GPU}/min_freq", read(root, "stored_min_freq") + "\n")
    else:
        write(root, f"{GPU}/min_freq", read(root, f"{GPU}/max_freq") + "\n")
    set_current(root)


if __name__ == "__main__":
    main(*sys.argv[1:])
