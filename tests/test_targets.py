"""Target registry and lookup-table files: schema, errors naming the file, lookup rule, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spnas_dsl.cli import main
from spnas_dsl.errors import TargetError
from spnas_dsl.targets import KNOWN_TARGETS, list_targets, load_target, local_table_path, resolve_spec
from spnas_dsl.targets.table import LatencyTable, dump_table, load_table, parse_table, write_table

REPO = Path(__file__).resolve().parent.parent
PIXEL1 = REPO / "targets" / "pixel1.json"
REFERENCE = Path("/work/shared/reference/pixel1_runtime_model.json")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test gets an empty local-table cache."""
    monkeypatch.setenv("SPNAS_CACHE_DIR", str(tmp_path / "cache"))


def minimal(**changes) -> dict:
    data = {
        "name": "toy", "description": "a toy table", "device": "nowhere", "runtime": "none", "threads": 1,
        "source": "made up for a test", "date": "2025-01-01",
        "entries": [{"signature": "mbconv:i8x8x8:o8:s1:k3e3", "latency_ms": 1.5}],
    }
    data.update(changes)
    return data


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


# ---------------------------------------------------------------- table files

def test_minimal_table_defaults():
    table = parse_table(json.dumps(minimal()))
    assert table.version == 1 and table.fixed_groups == [] and not table.read_only
    assert table.calibration.scale == 1.0 and table.calibration.offset_ms == 0.0
    assert table.calibration.is_identity


def test_corrupt_json_names_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "name": "toy",\n  "entries": [\n    {"signature": oops}\n  ]\n}\n')
    with pytest.raises(TargetError) as info:
        load_table(bad)
    err = info.value
    assert err.span is not None and err.span.file == str(bad)
    assert (err.span.line, err.span.column) == (4, 19)
    assert str(bad) in err.render() and "4:19" in err.render()


def test_truncated_file(tmp_path):
    path = tmp_path / "partial.json"
    path.write_text(PIXEL1.read_text()[:500])
    with pytest.raises(TargetError) as info:
        load_table(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"threads": "one"}, "threads"),
        ({"threads": 1.5}, "threads"),
        ({"entries": [{"signature": "mbconv:i8x8x8:o8:s1:k3e3", "latency_ms": "fast"}]}, "entries[0].latency_ms"),
        ({"entries": [{"signature": "mbconv:i8x8x8:o8:s1:k3e3", "latency_ms": -1.0}]}, "entries[0].latency_ms"),
        ({"entries": [{"signature": "not a signature", "latency_ms": 1.0}]}, "entries[0].signature"),
        ({"entries": [{"signature": "mbconv:i8x8x8:o8:s1:k3e3", "latency_ms": 1.0, "positon": 3}]}, "unknown field"),
        ({"entries": {"a": 1}}, "entries"),
        ({"calibration": {"scale": 0}}, "calibration.scale"),
        ({"calibration": {"scale": "2"}}, "calibration.scale"),
        ({"fixed_groups": [{"signatures": [], "latency_ms": 1.0}]}, "fixed_groups[0].signatures"),
        ({"version": 2}, "version"),
        ({"entries": [{"signature": "mbconv:i8x8x8:o8:s1:k3e3", "latency_ms": 1.0, "position": 2},
                      {"signature": "mbconv:i8x8x8:o8:s1:k3e3", "latency_ms": 2.0, "position": 2}]}, "duplicate"),
    ],
)
def test_wrong_types_name_file_and_field(tmp_path, changes, expected):
    path = write_json(tmp_path / "wrong.json", minimal(**changes))
    with pytest.raises(TargetError) as info:
        load_table(path)
    assert str(path) in str(info.value) and expected in str(info.value)


@pytest.mark.parametrize("field", ["name", "device", "runtime", "threads", "source", "date", "entries"])
def test_missing_field(tmp_path, field):
    data = minimal()
    del data[field]
    path = write_json(tmp_path / "missing.json", data)
    with pytest.raises(TargetError, match=f"{field}: missing field"):
        load_table(path)


def test_not_an_object_and_not_there(tmp_path):
    with pytest.raises(TargetError, match="expected a JSON object"):
        load_table(write_json(tmp_path / "list.json", [1, 2]))
    with pytest.raises(TargetError, match="does not exist"):
        load_table(tmp_path / "nowhere.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TargetError, match="not UTF-8"):
        load_table(tmp_path / "bin.json")


def test_write_and_read_back(tmp_path):
    table = LatencyTable.model_validate(minimal(
        fixed_groups=[{"signatures": ["conv:i8x8x3:o8:s1:k3"], "latency_ms": 2.0, "note": "stem"}],
        calibration={"scale": 1.1, "offset_ms": 0.5, "networks": ["a", "b"], "date": "2025-02-01"},
    ))
    path = tmp_path / "sub" / "toy.json"
    write_table(path, table)
    again = load_table(path)
    assert again == table
    assert dump_table(again) == path.read_text()


def test_pixel1_file_is_canonical_and_complete():
    table = load_table(PIXEL1)
    assert PIXEL1.read_text() == dump_table(table)
    assert table.read_only and table.threads == 1 and "21c1f3e" in table.source
    assert len(table.entries) == 80  # layers 1..20 x 4 options
    assert sorted({e.position for e in table.entries}) == list(range(1, 21))
    assert [g.latency_ms for g in table.fixed_groups] == [19.5999]
    assert len(table.fixed_groups[0].signatures) == 4


@pytest.mark.skipif(not REFERENCE.exists(), reason="the authors' reference table is not available")
def test_pixel1_file_matches_the_reference():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import convert_pixel1
    finally:
        sys.path.pop(0)
    table = convert_pixel1.convert(json.loads(REFERENCE.read_text()))
    assert dump_table(table) == PIXEL1.read_text()
    reference = json.loads(REFERENCE.read_text())
    by_pos = {(e.position, e.signature.rsplit(":", 1)[1]): e.latency_ms for e in table.entries}
    names = ["k3e3", "k3e6", "k5e3", "k5e6"]
    for layer in range(1, 21):
        for option, ms in reference[str(layer)].items():
            assert by_pos[(layer, names[int(option)])] == pytest.approx(ms, abs=1e-9)


# ---------------------------------------------------------------- lookup rule

def test_lookup_rule():
    table = parse_table(json.dumps(minimal(entries=[
        {"signature": "mbconv:i8x8x8:o8:s1:k3e3", "latency_ms": 1.0, "position": 2},
        {"signature": "mbconv:i8x8x8:o8:s1:k3e3", "latency_ms": 2.0, "position": 3},
        {"signature": "mbconv:i8x8x8:o8:s1:k3e6", "latency_ms": 5.0},
    ])))
    exact = table.lookup("mbconv:i8x8x8:o8:s1:k3e3", 3)
    assert (exact.latency_ms, exact.rule) == (2.0, "position")
    mean = table.lookup("mbconv:i8x8x8:o8:s1:k3e3", 7)
    assert (mean.latency_ms, mean.rule, mean.count) == (1.5, "mean", 2)
    assert table.lookup("mbconv:i8x8x8:o8:s1:k3e3").rule == "mean"
    alone = table.lookup("mbconv:i8x8x8:o8:s1:k3e6", 4)
    assert (alone.latency_ms, alone.rule) == (5.0, "signature")
    assert table.lookup("mbconv:i8x8x8:o8:s1:k5e6", 2) is None


def test_pixel1_lookup_shared_signature_uses_position_then_mean():
    target = load_target("pixel1")
    sig = "mbconv:i56x56x24:o24:s1:k3e3"  # layers 2, 3, 4
    assert target.lookup(sig, 3).latency_ms == 3.4223
    mean = target.lookup(sig, 9)
    assert mean.rule == "mean" and mean.latency_ms == pytest.approx((3.4111 + 3.4223 + 3.4216) / 3)


# ---------------------------------------------------------------- registry

def test_load_builtin_pixel1():
    target = load_target("pixel1")
    assert target.name == "pixel1" and target.read_only and target.path == PIXEL1
    assert target.spec.threads == 1 and not target.spec.profilable


def test_unknown_target_lists_known():
    with pytest.raises(TargetError) as info:
        load_target("pixel9")
    message = str(info.value)
    assert message.startswith("unknown target 'pixel9'; known: pixel1, ")
    for name in ("host-tflite", "host-onnxruntime", "android:SERIAL", "pixel2", "pixel1-proxylessnas"):
        assert name in message


def test_profilable_target_not_built_yet():
    with pytest.raises(TargetError, match=r"spnasc lut build SPACE --target host-tflite"):
        load_target("host-tflite")


def test_android_pattern():
    spec = resolve_spec("android:emulator-5554")
    assert spec.kind == "android" and spec.profilable and "emulator-5554" in spec.device
    assert local_table_path("android:10.0.0.2:5555").name == "android_10.0.0.2_5555.json"
    with pytest.raises(TargetError, match="lut build SPACE --target android:abc"):
        load_target("android:abc")


def test_local_table_in_cache(tmp_path):
    path = local_table_path("host-tflite")
    write_table(path, LatencyTable.model_validate(minimal(name="host-tflite")))
    target = load_target("host-tflite")
    assert target.path == path and target.spec.kind == "host"
    # a local table with its own name is a target too
    write_table(local_table_path("bench"), LatencyTable.model_validate(minimal(name="bench")))
    assert load_target("bench").spec.kind == "local"
    names = [row.spec.name for row in list_targets()]
    assert names[0] == "pixel1" and "bench" in names
    builtin = ["pixel1", "pixel1-proxylessnas", "pixel3", "raspi4", "fpga", "eyeriss", "pixel2", "galaxy-a50",
               "galaxy-s7", "essential-ph1", "xeon-gold-6226", "host-tflite", "host-onnxruntime", "android:SERIAL"]
    assert [n for n in names if n in builtin] == builtin


def test_table_named_for_another_target(tmp_path):
    write_table(local_table_path("host-tflite"), LatencyTable.model_validate(minimal(name="other")))
    with pytest.raises(TargetError, match="is for target 'other'"):
        load_target("host-tflite")


def test_table_file_as_target(tmp_path):
    path = write_json(tmp_path / "mine.json", minimal())
    target = load_target(str(path))
    assert target.name == "toy" and target.path == path and target.spec.kind == "file"


def test_known_targets_are_data():
    for name, spec in KNOWN_TARGETS.items():
        assert spec.name == name and spec.threads >= 1 and spec.device and spec.runtime


@pytest.mark.parametrize("name", [n for n, s in KNOWN_TARGETS.items() if s.table is not None])
def test_every_shipped_target_is_listed_and_prices_its_space(name, capsys):
    """Registry-wide (docs/compiler.md, "How to add a target"): a new shipped table is checked for free."""
    from spnas_dsl.latency import LatencyGraph
    from spnas_dsl.parser import load

    spec = KNOWN_TARGETS[name]
    assert main(["targets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["targets"]}
    assert rows[name]["built"] and rows[name]["signatures"] and rows[name]["space"] == spec.space
    target = load_target(name)
    assert (target.table.device, target.table.threads) == (spec.device, spec.threads)  # one source of details
    graph = LatencyGraph.build(load(REPO / spec.space), target)
    assert 0 < graph.min_ms() <= graph.max_ms()


# ---------------------------------------------------------------- CLI

def test_cli_targets_json(capsys, tmp_path):
    write_table(local_table_path("host-onnxruntime"), LatencyTable.model_validate(minimal(name="host-onnxruntime")))
    assert main(["targets", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in report["targets"]}
    assert rows["pixel1"]["built"] and rows["pixel1"]["signatures"] == 44 and not rows["pixel1"]["profilable"]
    assert rows["pixel1"]["table"] == str(PIXEL1)
    assert not rows["host-tflite"]["built"] and "not built yet: run spnasc lut build" in rows["host-tflite"]["status"]
    assert rows["host-onnxruntime"]["built"] and rows["host-onnxruntime"]["signatures"] == 1
    assert {"device", "runtime", "threads", "description"} <= set(rows["pixel1"])


def test_cli_targets_text(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "pixel1" in out and "Google Pixel 1, TFLite float, 1 thread" in out and "44 signatures" in out
    assert "not built yet: run spnasc lut build SPACE --target host-tflite" in out


def test_cli_corrupt_table_exits_without_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x",,}')
    proc = subprocess.run(
        [sys.executable, "-m", "spnas_dsl", "latency", str(REPO / "examples" / "spnasnet.spnas"), "--target", str(bad)],
        check=False, capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert f"{bad}:1:14: error: invalid JSON" in proc.stderr


def test_cli_unknown_target(capsys):
    status = main(["latency", str(REPO / "examples" / "spnasnet.spnas"), "--target", "pixel9"])
    assert status != 0
    assert "unknown target 'pixel9'; known: pixel1" in capsys.readouterr().err
