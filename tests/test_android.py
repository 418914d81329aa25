"""android:SERIAL targets: the benchmark_model output parser and the adb flow (with a fake adb).

The fake adb (tests/data/fake_adb.sh) records its calls and prints a captured-format
benchmark_model output; model files are put in the model cache beforehand, so these tests
need neither a phone nor TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spnas_dsl.cli import main
from spnas_dsl.errors import TargetError
from spnas_dsl.parser import parse_text
from spnas_dsl.profiling import models as M
from spnas_dsl.profiling.android import parse_benchmark_output

DATA = Path(__file__).parent / "data"
OLD = DATA / "benchmark_model_v2_9_reference_kernels.txt"
NEW = DATA / "benchmark_model_v2_17_xnnpack.txt"

TINY = """
network tiny {
    input 32x32x3
    classes 10
    stem conv k=3 c=8 s=2
    stage a c=16 s=2 {
        mbconv k=<3,5> e=<3,6>
        mbconv k=3 e=<3,6> | skip
    }
    head conv c=32 dropout=0.0
}
"""


# ------------------------------------------------------------------------------ parser
def test_parse_older_tab_separated_format():
    r = parse_benchmark_output(OLD.read_text())
    assert r.graph == "/data/local/tmp/spnas/mbconv_i56x56x24_o24_s1_k3e6.tflite"
    assert r.threads == 1
    assert r.count == 155
    assert r.avg_ms == pytest.approx(6.4523)
    assert (r.min_ms, r.max_ms, r.std_ms) == pytest.approx((6.371, 6.781, 0.061))
    assert r.first_ms == pytest.approx(7.302) and r.init_ms == pytest.approx(1.742)
    assert [op.node_type for op in r.ops] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "ADD"]
    assert r.ops[1].avg_ms == pytest.approx(1.632)
    assert r.ops[3].name == "[model/add/add]:3"
    assert r.ops_ms == pytest.approx(2.380 + 1.632 + 2.296 + 0.135)


def test_parse_newer_info_prefixed_format():
    r = parse_benchmark_output(NEW.read_text())
    assert r.graph.endswith("mbconv_i112x112x16_o24_s2_k3e3.tflite")
    assert r.count == 568
    assert r.avg_ms == pytest.approx(1.7026)
    assert len(r.ops) == 4  # the initialisation table (ModifyGraphWithDelegate...) is not an operator
    assert r.ops[0].node_type == "Convolution (NHWC, F32) GEMM"
    assert r.ops[2].name == "Delegate/Convolution (NHWC, F32) DWConv:2"
    assert r.ops[1].percent == pytest.approx(17.359)
    assert r.ops_ms == pytest.approx(0.655 + 0.284 + 0.471 + 0.226)


def test_parse_times_called_counts_per_run():
    text = NEW.read_text().replace(
        "0.000                1       Delegate/Constant Pad", "0.000                3       Delegate/Constant Pad")
    r = parse_benchmark_output(text)
    assert r.ops[1].times_called == 3
    assert r.ops[1].total_ms == pytest.approx(3 * 0.284)


def test_parse_failure_names_the_tool_error():
    with pytest.raises(TargetError, match="Could not open"):
        parse_benchmark_output((DATA / "benchmark_model_error.txt").read_text(), "benchmark_model on X")


def test_parse_garbage_is_a_target_error():
    with pytest.raises(TargetError, match="reported no timings"):
        parse_benchmark_output("/system/bin/sh: benchmark_model: not found\n")
    with pytest.raises(TargetError, match="reported no timings"):
        parse_benchmark_output("")


# ------------------------------------------------------------------------------ the adb flow
@pytest.fixture
def fake_phone(tmp_path, monkeypatch):
    """PATH has the fake adb; returns (space file, benchmark binary, call log, space)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    shutil.copy(DATA / "fake_adb.sh", adb)
    adb.chmod(0o755)
    log = tmp_path / "adb_calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(OLD))
    monkeypatch.setenv("SPNAS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ADB", raising=False)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF fake benchmark_model")
    space_file = tmp_path / "tiny.spnas"
    space_file.write_text(TINY)
    space = parse_text(TINY, str(space_file))
    # Model files as the cache would hold them: the phone never looks inside (no TensorFlow needed).
    for part in M.space_parts(space):
        job = M.part_job("tflite", space, part)
        job.path.parent.mkdir(parents=True, exist_ok=True)
        job.path.write_bytes(b"TFL3 fake " + part.signature.encode())
    return space_file, binary, log, space


def _calls(log: Path) -> list[list[str]]:
    return [line.split("\t")[:-1] for line in log.read_text().splitlines()] if log.exists() else []


def test_android_lut_build_pushes_runs_and_parses(fake_phone, capsys):
    space_file, binary, log, space = fake_phone
    rc = main(["lut", "build", str(space_file), "--target", "android:FAKE123", "--calibrate", "0",
               "--processes", "1", "--benchmark-binary", str(binary), "--json"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["measured"] == 8 and report["kept"] == 0
    table = json.loads(Path(report["table"]).read_text())
    assert Path(report["table"]).name == "android_FAKE123.json"
    assert table["name"] == "android:FAKE123"
    assert "Google Pixel 1" in table["device"] and "arm64-v8a" in table["device"]
    assert table["threads"] == 1
    sigs = {e["signature"]: e["latency_ms"] for e in table["entries"]}
    assert set(sigs) == {p.signature for p in M.space_parts(space)}
    assert all(v == pytest.approx(6.4523) for v in sigs.values())

    calls = _calls(log)
    assert all(c[:2] == ["-s", "FAKE123"] for c in calls)
    assert ["-s", "FAKE123", "push", str(binary), "/data/local/tmp/spnas/benchmark_model"] in calls
    assert ["-s", "FAKE123", "shell", "chmod 755 /data/local/tmp/spnas/benchmark_model"] in calls
    runs = [c[3] for c in calls if c[2] == "shell" and "--graph=" in c[3]]
    pushes = [c for c in calls if c[2] == "push" and c[3] != str(binary)]
    assert len(runs) == 8 and len(pushes) == 8
    for run in runs:
        assert run.startswith("/data/local/tmp/spnas/benchmark_model --graph=/data/local/tmp/spnas/")
        assert "--num_threads=1" in run and "--enable_op_profiling=true" in run
        assert "; rm -f /data/local/tmp/spnas/" in run  # the model is removed from the phone after its run
    pushed = {Path(c[3]).name for c in pushes}
    assert pushed == {M.part_job("tflite", space, p).path.name for p in M.space_parts(space)}


def test_android_needs_the_benchmark_binary(fake_phone, monkeypatch, capsys):
    space_file, _, _, _ = fake_phone
    monkeypatch.delenv("SPNAS_BENCHMARK_MODEL", raising=False)
    rc = main(["lut", "build", str(space_file), "--target", "android:FAKE123"])
    assert rc == 2
    assert "benchmark_model" in capsys.readouterr().err


def test_android_failed_run_is_reported(fake_phone, monkeypatch, capsys):
    space_file, binary, _, _ = fake_phone
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(DATA / "benchmark_model_error.txt"))
    rc = main(["lut", "build", str(space_file), "--target", "android:FAKE123", "--calibrate", "0",
               "--processes", "1", "--benchmark-binary", str(binary)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "FAKE123" in err and "Could not open" in err


def test_android_build_killed_then_resumed_keeps_measured_signatures(fake_phone, monkeypatch, capsys):
    space_file, binary, log, _ = fake_phone
    table_file = Path(os.environ["SPNAS_CACHE_DIR"]) / "targets" / "android_FAKE123.json"
    env = dict(os.environ, FAKE_ADB_SLEEP="0.3")
    cmd = [sys.executable, "-m", "spnas_dsl", "lut", "build", str(space_file), "--target", "android:FAKE123",
           "--calibrate", "0", "--processes", "1", "--chunk", "2", "--benchmark-binary", str(binary)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if table_file.exists() and len(json.loads(table_file.read_text())["entries"]) >= 2:
                break
            time.sleep(0.05)
        proc.kill()
    finally:
        proc.wait(timeout=30)
    before = {e["signature"]: e for e in json.loads(table_file.read_text())["entries"]}
    assert 2 <= len(before) < 8, "the build should have been killed part-way"
    log.write_text("")
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(NEW))  # a different figure: kept entries must not change
    rc = main(["lut", "build", str(space_file), "--target", "android:FAKE123", "--calibrate", "0",
               "--processes", "1", "--benchmark-binary", str(binary), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kept"] == len(before) and report["measured"] == 8 - len(before)
    after = {e["signature"]: e for e in json.loads(table_file.read_text())["entries"]}
    assert len(after) == 8
    for sig, entry in before.items():
        assert after[sig] == entry
    new = [after[s]["latency_ms"] for s in after if s not in before]
    assert all(v == pytest.approx(1.7026) for v in new)
    runs = [c for c in _calls(log) if c[2] == "shell" and "--graph=" in c[3]]
    assert len(runs) == 8 - len(before)
