"""deploy/run_on_pixel.sh against a fake adb: one phone, two phones, the Pixel 1's 4 cores,
the headline timing without op profiling, microseconds reported as milliseconds; and the
README's units, 64-bit and XNNPACK wording."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from spnas_dsl.backends.deploy import TEMPLATES, _fill

VALUES = {"NETWORK": "net", "DEFAULT_MODEL": "net.tflite", "LAST_MODEL": "net_int8.tflite",
          "MODELS": "net.tflite, net_int8.tflite"}

# A fake adb: `devices` lists $FAKE_DEVICES ("SERIAL:STATE ..."); `-s SERIAL shell ...` answers
# getprop with $FAKE_MODEL_<SERIAL>, the CPU list with $FAKE_CPUS, and benchmark_model with a
# report in microseconds. Every call is logged.
FAKE_ADB = r"""#!/bin/sh
echo "$@" >> "$FAKE_LOG"
if [ "$1" = devices ]; then
    echo "List of devices attached"
    for d in $FAKE_DEVICES; do printf '%s\t%s\n' "${d%%:*}" "${d#*:}"; done
    exit 0
fi
[ "$1" = -s ] || { echo "fake adb: no -s" >&2; exit 1; }
serial="$2"; shift 2
case "$*" in
    "shell getprop ro.product.model") eval "echo \"\$FAKE_MODEL_$serial\"";;
    "shell cat /sys/devices/system/cpu/possible") echo "$FAKE_CPUS";;
    *benchmark_model\ --graph*)
        echo "The input model file size (MB): 17.1"
        echo "Inference timings in us: Init: 31000, First inference: 95000, Warmup (avg): 81000.1, Inference (avg): 79480.5";;
esac
exit 0
"""


@pytest.fixture
def deploy(tmp_path):
    """A deploy/ folder as the build writes it, a model, a benchmark_model file and a fake adb."""
    folder = tmp_path / "deploy"
    folder.mkdir()
    script = folder / "run_on_pixel.sh"
    script.write_text(_fill((TEMPLATES / "run_on_pixel.sh").read_text(), VALUES))
    script.chmod(0o755)
    (tmp_path / "net.tflite").write_bytes(b"TFL3")
    (folder / "benchmark_model").write_bytes(b"\x7fELF")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "adb").write_text(FAKE_ADB)
    (bin_dir / "adb").chmod(0o755)
    log = tmp_path / "adb.log"
    env = {k: v for k, v in os.environ.items() if k != "ANDROID_SERIAL"}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_LOG=str(log), FAKE_CPUS="0-3",
               FAKE_MODEL_FA1="Pixel", FAKE_MODEL_FA2="Pixel 2", FAKE_MODEL_X9="Nexus 5X")

    def run(devices: str, **extra) -> tuple[subprocess.CompletedProcess, list[str]]:
        log.write_text("")
        proc = subprocess.run([str(script)], capture_output=True, text=True, cwd=tmp_path, check=False,
                              env=dict(env, FAKE_DEVICES=devices, **extra), timeout=60)
        return proc, log.read_text().splitlines()

    return run, folder


def _benchmark_calls(calls: list[str]) -> list[str]:
    return [c for c in calls if "--graph=" in c]


def test_one_pixel_1(deploy):
    run, folder = deploy
    proc, calls = run("FA1:device")
    assert proc.returncode == 0, proc.stderr
    assert all(c == "devices" or c.startswith("-s FA1 ") for c in calls)
    headline, profiled = _benchmark_calls(calls)
    # The Pixel 1 has 4 cores: its big pair cpu2-3 is mask c (f0 would make taskset fail).
    assert headline.startswith("-s FA1 shell taskset c /data/local/tmp/spnas/benchmark_model")
    assert "--num_threads=1" in headline and "--enable_op_profiling=false" in headline
    assert "--num_runs=100" in headline
    assert "--enable_op_profiling=true" in profiled and "--num_runs=20" in profiled
    assert "on Pixel (FA1; 1 thread, pinned with taskset c)" in proc.stdout
    assert "headline: 79.48 ms per inference (Inference (avg) 79480.5 us, no op profiling)" in proc.stdout
    assert "Inference (avg): 79480.5" in (folder / "benchmark_net.txt").read_text()
    assert (folder / "benchmark_net_ops.txt").exists()


def test_two_phones_ask_for_a_serial(deploy):
    run, _ = deploy
    proc, calls = run("FA1:device FA2:device")
    assert proc.returncode == 1 and not _benchmark_calls(calls)
    assert proc.stderr.strip() == ("run_on_pixel.sh: 2 phones connected (FA1 FA2): choose one with "
                                   "ANDROID_SERIAL=SERIAL ./run_on_pixel.sh")
    assert "no phone connected" not in proc.stderr
    proc, calls = run("FA1:device FA2:device", ANDROID_SERIAL="FA2", FAKE_CPUS="0-7")
    assert proc.returncode == 0, proc.stderr
    headline = _benchmark_calls(calls)[0]
    assert headline.startswith("-s FA2 shell taskset f0 ")  # the Pixel 2's big cluster
    proc, _ = run("FA1:device", ANDROID_SERIAL="FA7")
    assert proc.returncode == 1 and "ANDROID_SERIAL=FA7 is not a connected phone" in proc.stderr


def test_no_phone_and_unauthorized_phone(deploy):
    run, _ = deploy
    proc, _ = run("")
    assert proc.returncode == 1 and "no phone connected" in proc.stderr
    proc, _ = run("FA1:unauthorized")
    assert proc.returncode == 1 and "no usable phone: FA1 (unauthorized)" in proc.stderr


def test_cpu_mask_choices(deploy):
    run, _ = deploy
    proc, calls = run("X9:device")  # an unknown phone is not pinned
    assert proc.returncode == 0 and _benchmark_calls(calls)[0].startswith("-s X9 shell /data/local/tmp/spnas/")
    proc, calls = run("FA1:device", CPU_MASK="none", PROFILE_RUNS="0")
    assert proc.returncode == 0 and len(_benchmark_calls(calls)) == 1 and "taskset" not in calls[-1]
    proc, calls = run("FA1:device", CPU_MASK="f0")  # cpu4-7 on a 4-core phone
    assert proc.returncode == 1 and not _benchmark_calls(calls)
    assert "CPU_MASK=f0 names CPUs beyond cpu3 of 'Pixel' (cpus 0-3)" in proc.stderr
    proc, _ = run("FA1:device", CPU_MASK="big")
    assert proc.returncode == 1 and "not a hexadecimal taskset mask" in proc.stderr


def test_readme_units_64_bit_profiling_and_xnnpack():
    readme = _fill((TEMPLATES / "README.md").read_text(), VALUES)
    assert "Pixel 3 and later" not in readme
    assert "every Pixel,\n  the Pixel 1 and Pixel 2 included" in readme
    assert "**microseconds**" in readme and "79480.5 µs = 79.48 ms" in readme
    assert "--enable_op_profiling=false" in readme and "separate and shorter run" in readme
    assert "before TFLite had\nan XNNPACK delegate" in readme and "--use_xnnpack=false" in readme
    assert "| Pixel, Pixel XL (Snapdragon 821) | 4 | cpu2-3 | `c` |" in readme
    assert "ANDROID_SERIAL=SERIAL" in readme


def test_script_is_valid_bash():
    script = Path(TEMPLATES / "run_on_pixel.sh")
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
