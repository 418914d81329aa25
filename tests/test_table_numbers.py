"""Hostile lookup tables: every number of a table is checked (finite, in range, positive
predictions), JSON that breaks the decoder is a TargetError naming the file, and one bad file
in the user's table cache names itself without breaking `spnasc targets` or the other tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spnas_dsl.cli import main
from spnas_dsl.errors import TargetError
from spnas_dsl.targets import list_targets, load_target, local_table_path, resolve_spec
from spnas_dsl.targets.table import LatencyTable, parse_table, write_table

REPO = Path(__file__).resolve().parent.parent
PIXEL1 = REPO / "targets" / "pixel1.json"
SPNASNET = REPO / "examples" / "spnasnet.spnas"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPNAS_CACHE_DIR", str(tmp_path / "cache"))


def pixel1_text(**calibration) -> str:
    """pixel1.json, writable and with a changed calibration (JSON numbers written verbatim)."""
    text = PIXEL1.read_text().replace('"read_only": true', '"read_only": false')
    cal = {"scale": "1.0", "offset_ms": "0.0", **calibration}
    return text.replace('"calibration": {"scale": 1.0, "offset_ms": 0.0',
                        f'"calibration": {{"scale": {cal["scale"]}, "offset_ms": {cal["offset_ms"]}')


DEEP = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a": ' * 100_000 + "1" + "}" * 100_000
HUGE_INT = pixel1_text().replace('"threads": 1', '"threads": ' + "9" * 5000)


@pytest.mark.parametrize("text,message", [
    (DEEP, "JSON nested too deeply"),
    (DEEP_OBJECT, "JSON nested too deeply"),
    (HUGE_INT, "Exceeds the limit (4300 digits) for integer string conversion"),
    (pixel1_text().replace('"threads": 1', '"threads": ' + "9" * 300), "threads: Input should be less than or equal"),
    (pixel1_text().replace('"position": 1}', '"position": ' + "9" * 300 + "}", 1), "position: Input should be less"),
    (pixel1_text().replace('"latency_ms": 4.4905', '"latency_ms": 1e999', 1), "entries[0].latency_ms: must be a finite"),
    (pixel1_text().replace('"latency_ms": 4.4905', '"latency_ms": 1e300', 1), "entries[0].latency_ms: must be a finite"),
    (pixel1_text().replace('"latency_ms": 4.4905', '"latency_ms": NaN', 1), "entries[0].latency_ms: must be a finite"),
    (pixel1_text(scale="Infinity"), "calibration.scale: must be a finite number in (0, 1000], got inf"),
    (pixel1_text(scale="NaN"), "calibration.scale: must be a finite number in (0, 1000], got nan"),
    (pixel1_text(scale="0"), "calibration.scale: must be a finite number"),
    (pixel1_text(scale="-2.0"), "calibration.scale: must be a finite number"),
    (pixel1_text(offset_ms="NaN"), "calibration.offset_ms: must be a finite number of milliseconds"),
    (pixel1_text(offset_ms="-Infinity"), "calibration.offset_ms: must be a finite number of milliseconds"),
    (pixel1_text(offset_ms="-1e300"), "calibration.offset_ms: must be a finite number of milliseconds"),
])
def test_bad_numbers_and_structures_are_target_errors(text, message):
    with pytest.raises(TargetError) as info:
        parse_table(text, "t.json")
    assert "t.json" in str(info.value) and message in str(info.value)


def test_a_large_negative_offset_is_rejected_by_latency(tmp_path, capsys):
    table = tmp_path / "neg.json"
    table.write_text(pixel1_text(offset_ms="-1000.0"))
    assert main(["latency", str(SPNASNET), "--target", str(table)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert (f"error: target 'pixel1' ({table}): its calibration (scale 1, offset_ms -1000) predicts "
            "-919.56 ms for the fastest network of 'spnasnet'; predictions must be positive") in err
    table.write_text(pixel1_text(offset_ms="-5.0"))  # an intercept that keeps predictions positive is fine
    assert main(["latency", str(SPNASNET), "--target", str(table)]) == 0


def test_a_search_stops_on_a_bad_calibration_before_training(tmp_path):
    """The supernet of a search prices decisions with LatencyGraph.build: the same check."""
    from spnas_dsl.compiler.supernet import lower_to_supernet
    from spnas_dsl.parser import load

    table = tmp_path / "neg.json"
    table.write_text(pixel1_text(offset_ms="-1000.0"))
    with pytest.raises(TargetError, match="predictions must be positive"):
        lower_to_supernet(load(REPO / "spaces" / "mnasnet.spnas"), target=load_target(str(table)))


@pytest.mark.parametrize("bad", [DEEP, HUGE_INT, pixel1_text(scale="Infinity")], ids=["deep", "huge-int", "inf-scale"])
def test_one_bad_cache_file_names_itself_and_breaks_nothing(bad, capsys):
    write_table(local_table_path("bench"), LatencyTable.model_validate(
        json.loads(pixel1_text()) | {"name": "bench"}))
    broken = local_table_path("broken")
    broken.write_text(bad)
    assert main(["targets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["targets"]}
    assert rows["bench"]["built"] and rows["bench"]["signatures"] == 44
    assert not rows["broken"]["built"] and rows["broken"]["table"] == str(broken)
    assert str(broken) in rows["broken"]["status"] and "unusable" in rows["broken"]["status"]
    assert main(["targets"]) == 0
    assert f"table: {broken}: unusable (invalid" in capsys.readouterr().out
    # The "unknown target" message lists the good tables and does not trip over the bad one.
    with pytest.raises(TargetError, match=r"unknown target 'nope'; known: pixel1, .*bench") as info:
        resolve_spec("nope")
    assert str(info.value).endswith(f"(unusable tables in the cache: {broken}; see `spnasc targets`)")
    assert [r.spec.name for r in list_targets() if r.spec.name == "bench"] == ["bench"]


def test_no_traceback_for_a_hostile_cache_in_a_subprocess(tmp_path):
    cache = tmp_path / "cache"
    (cache / "targets").mkdir(parents=True)
    (cache / "targets" / "deep.json").write_text(DEEP)
    (cache / "targets" / "huge.json").write_text(HUGE_INT)
    env = {"SPNAS_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "spnas_dsl", "targets"], capture_output=True, text=True,
                          env=env, cwd=REPO, check=False, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert "deep.json: unusable (invalid target table" in proc.stdout and "huge.json: unusable" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "spnas_dsl", "latency", str(SPNASNET), "--target", "pixel9"],
                          capture_output=True, text=True, env=env, cwd=REPO, check=False, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "unknown target 'pixel9'; known: pixel1, " in proc.stderr and "host-tflite" in proc.stderr
