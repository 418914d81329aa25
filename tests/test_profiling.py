"""Profiling: timing statistics, calibration fits, lut build / validate / export, profile.

Fast tests use no runtime at all. Tests marked ``slow`` convert a tiny space's models with
TensorFlow and time them with LiteRT (a minimal timing configuration: only the machinery is
tested here; accuracy figures are measured by the commands in docs/targets.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spnas_dsl.cli import main
from spnas_dsl.errors import TargetError
from spnas_dsl.ir import SKIP, Option
from spnas_dsl.parser import parse_text
from spnas_dsl.passes import with_options
from spnas_dsl.profiling import lut as L
from spnas_dsl.profiling import models as M
from spnas_dsl.profiling.timing import aggregate, percentile, process_factors, time_session
from spnas_dsl.targets import load_target

TINY = """
network tiny {
    input 32x32x3
    classes 10
    stem conv k=3 c=8 s=2
    stage a c=16 s=2 {
        mbconv k=<3,5> e=<3,6>
        mbconv k=<3,5> e=<3,6> | skip
    }
    head conv c=32 dropout=0.0
}
"""
TINY_NET = TINY.replace("network tiny", "network tinynet").replace(
    "mbconv k=<3,5> e=<3,6> | skip", "mbconv k=3 e=6").replace("k=<3,5> e=<3,6>", "k=5 e=3")
FAST = ["--processes", "1", "--rounds", "2", "--runs", "3", "--min-seconds", "0"]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.spnas"
    path.write_text(TINY)
    return path, parse_text(TINY, str(path))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SPNAS_CACHE_DIR", str(folder))
    return folder


# ------------------------------------------------------------------------------ statistics
def test_percentile_and_aggregate():
    assert percentile([3.0], 10) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 10) == pytest.approx(1.0)
    raw = [{"visits": [1.0, 1.2, 1.1], "samples": [1.0, 1.0, 1.2, 1.1]},
           {"visits": [2.0, 2.0, 2.2], "samples": [2.0, 2.2]},
           {"visits": [1.5], "samples": [1.5]}]
    t = aggregate("m", raw)
    assert t.process_ms == [1.1, 2.0, 1.5]
    assert t.median_ms == t.value_ms == 1.5  # median over processes of the per-process medians
    assert aggregate("m", raw, "p10").value_ms == pytest.approx(1.5)  # median of the processes' p10s
    assert aggregate("m", raw, "p10").process_ms == [pytest.approx(1.0), pytest.approx(2.02), 1.5]
    assert t.min_ms == 1.0 and t.runs == 7
    assert t.p10_ms <= t.median_ms <= t.p90_ms
    assert "visit_ms" not in t.to_dict() and t.to_dict(visits=True)["visit_ms"][0] == [1.0, 1.2, 1.1]


def test_process_factors_divide_out_a_slow_process():
    # process 1 ran every model 1.5x slower (a slow phase of the machine for its whole life)
    figures = [{"a": 1.0, "b": 2.0, "c": 4.0}, {"a": 1.5, "b": 3.0, "c": 6.0}, {"a": 1.01, "b": 1.98, "c": 4.0}]
    factors = process_factors(figures)
    assert factors[1] == pytest.approx(1.5, rel=0.02) and min(factors) == 1.0
    raw = {k: [{"visits": [f[k]], "samples": [f[k]]} for f in figures] for k in "abc"}
    plain = aggregate("b", raw["b"])
    fixed = aggregate("b", raw["b"], factors=factors, across="normalized")
    assert plain.value_ms == 2.0 and fixed.value_ms == pytest.approx(2.0, rel=0.01)
    assert aggregate("a", raw["a"], factors=factors, across="normalized").value_ms == pytest.approx(1.0, rel=0.01)
    assert aggregate("b", raw["b"], across="min").value_ms == 1.98  # the fastest process's figure
    # two slow processes of three: the median alone would report the slow figure
    figures[2] = {"a": 1.5, "b": 3.0, "c": 6.0}
    raw = [{"visits": [f["b"]], "samples": [f["b"]]} for f in figures]
    assert aggregate("b", raw).value_ms == 3.0
    assert aggregate("b", raw, factors=process_factors(figures), across="normalized").value_ms == pytest.approx(2.0)
    with pytest.raises(ValueError):
        aggregate("b", raw, across="mean")
    assert process_factors([{"a": 1.0}]) == [1.0]


def test_time_session_warms_up_then_times():
    calls = []
    samples = time_session(lambda: calls.append(1), warmup=3, runs=5)
    assert len(calls) == 8 and len(samples) == 5 and all(s >= 0 for s in samples)
    samples = time_session(lambda: None, warmup=0, runs=1, min_ms=0.05, clock="thread")
    assert sum(samples) >= 0.05


# ------------------------------------------------------------------------------ calibration
def test_fit_recovers_scale_and_offset():
    raw = [10.0, 14.0, 20.0, 25.0]
    measured = [1.08 * r + 0.3 for r in raw]
    scale, offset = L.fit(raw, measured, "affine")
    assert scale == pytest.approx(1.08) and offset == pytest.approx(0.3)
    scale, offset = L.fit(raw, measured, "scale")
    assert offset == 0.0 and 1.08 < scale < 1.12
    scale, offset = L.fit([10.0, 20.0], [11.0, 22.0], "affine")  # too few networks: scale only
    assert (scale, offset) == (pytest.approx(1.1), 0.0)


def test_errors():
    e = L.errors([11.0, 9.0], [10.0, 10.0])
    assert e["rmse_ms"] == pytest.approx(1.0)
    assert e["mape_pct"] == pytest.approx(10.0) and e["max_error_pct"] == pytest.approx(10.0)
    assert e["mean_error_pct"] == pytest.approx(0.0)


# ------------------------------------------------------------------------------ spaces and networks
def test_space_parts_of_tiny(tiny):
    _, space = tiny
    parts = M.space_parts(space)
    sigs = [p.signature for p in parts]
    assert len(sigs) == len(set(sigs)) == 10
    assert sigs[0] == "conv:i32x32x3:o8:s2:k3" and sigs[-1] == "head:i8x8x16:o32:c10"
    assert "mbconv:i16x16x8:o16:s2:k5e6" in sigs and "mbconv:i8x8x16:o16:s1:k3e6" in sigs


def test_network_ids_round_trip(tiny):
    _, space = tiny
    net = with_options(space, [Option(kernel=5, expansion=3), SKIP])
    assert M.network_id(net) == "tiny:k5e3,skip"
    assert M.from_network_id(space, "tiny:k5e3,skip") == net
    assert M.network_parts(net) == ["conv:i32x32x3:o8:s2:k3", "mbconv:i16x16x8:o16:s2:k5e3", "head:i8x8x16:o32:c10"]
    with pytest.raises(TargetError):
        M.from_network_id(space, "other:k5e3,skip")
    with pytest.raises(TargetError):
        M.from_network_id(space, "tiny:k7e3,skip")


def test_calibration_and_random_networks_are_distinct(tiny):
    _, space = tiny
    cal = [M.network_id(n) for n in L.calibration_networks(space, 3)]
    # random networks: distinct, the same every time, another set for another seed
    assert len(set(cal)) == 3 and cal == [M.network_id(n) for n in L.calibration_networks(space, 3)]
    assert cal != [M.network_id(n) for n in L.calibration_networks(space, 3, seed=1)]
    assert L.calibration_networks(space, 0) == []
    nets = [M.network_id(n) for n in M.random_networks(space, 100, seed=1, exclude=cal)]
    assert len(nets) == len(set(nets)) == 4 * 5 - 3  # the whole space but the calibration networks
    assert not set(nets) & set(cal)


# ------------------------------------------------------------------------------ errors a user can make
def test_pixel1_is_read_only(tiny, cache, capsys):
    path, _ = tiny
    with pytest.raises(TargetError, match="read-only"):
        L.make_measurer("pixel1")
    assert main(["profile", str(path), "--target", "pixel1"]) == 1
    err = capsys.readouterr().err
    assert "read-only" in err and "cannot be profiled" in err and "host-tflite" in err
    assert main(["lut", "build", str(path), "--target", "pixel1"]) == 1
    assert "read-only" in capsys.readouterr().err


def test_unknown_target(tiny, cache, capsys):
    path, _ = tiny
    assert main(["lut", "build", str(path), "--target", "pixel9"]) == 1
    assert "cannot be profiled" in capsys.readouterr().err


@pytest.mark.parametrize("content", ['{"version": 1, "name": "host-tflite", "entr', "not json at all", "[]",
                                     '{"version": 1, "name": "host-tflite"}'])
def test_corrupt_or_partial_table_is_a_clear_error(tiny, cache, capsys, content):
    path, _ = tiny
    table = cache / "targets" / "host-tflite.json"
    table.parent.mkdir(parents=True)
    table.write_text(content)
    assert main(["lut", "build", str(path), "--target", "host-tflite"]) == 1
    err = capsys.readouterr().err
    assert str(table) in err and "--fresh" in err
    assert "Traceback" not in err
    assert table.read_text() == content  # never overwritten without --fresh


def _table(measurer, entries, device=None):
    data = L.make_table(measurer, entries, None, "test", "2026-01-01").model_dump(mode="json")
    if device:
        data["device"] = device
    return json.dumps(data)


def test_table_of_another_machine_is_not_extended(tiny, cache, capsys):
    path, _ = tiny
    measurer = L.make_measurer("host-tflite")
    table = cache / "targets" / "host-tflite.json"
    table.parent.mkdir(parents=True)
    table.write_text(_table(measurer, [{"signature": "conv:i32x32x3:o8:s2:k3", "latency_ms": 0.01}],
                            device="host CPU: some other CPU (64 cores)"))
    assert main(["lut", "build", str(path), "--target", "host-tflite"]) == 1
    err = capsys.readouterr().err
    assert "some other CPU" in err and "--fresh" in err


def test_lut_export(cache, tmp_path, capsys):
    measurer = L.make_measurer("host-tflite")
    table = cache / "targets" / "host-tflite.json"
    table.parent.mkdir(parents=True)
    table.write_text(_table(measurer, [{"signature": "conv:i32x32x3:o8:s2:k3", "latency_ms": 0.01}]))
    out = tmp_path / "exported"
    out.mkdir()
    assert main(["lut", "export", "host-tflite", "--to", str(out)]) == 0
    exported = out / "host-tflite.json"
    assert json.loads(exported.read_text())["entries"] == [{"signature": "conv:i32x32x3:o8:s2:k3", "latency_ms": 0.01}]
    assert main(["lut", "export", "host-tflite", "--to", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["lut", "export", "host-onnxruntime", "--to", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_lut_export_never_writes_into_the_package(cache, capsys):
    """Without --to: a usage error, and nothing appears in the installed package's targets/ folder."""
    from spnas_dsl.resources import data_path

    measurer = L.make_measurer("host-tflite")
    table = cache / "targets" / "host-tflite.json"
    table.parent.mkdir(parents=True)
    table.write_text(_table(measurer, [{"signature": "conv:i32x32x3:o8:s2:k3", "latency_ms": 0.01}]))
    package_targets = data_path("targets")
    before = sorted(p.name for p in package_targets.iterdir())
    with pytest.raises(SystemExit) as exc:
        main(["lut", "export", "host-tflite"])
    assert exc.value.code == 2
    assert "the following arguments are required: --to" in capsys.readouterr().err
    assert sorted(p.name for p in package_targets.iterdir()) == before


def test_validate_without_a_table(tiny, cache, capsys):
    path, _ = tiny
    assert main(["lut", "validate", str(path), "--target", "host-tflite", "--samples", "3"]) == 1
    assert "lut build" in capsys.readouterr().err


def test_profile_rejects_a_space_and_a_wrong_model_file(tiny, cache, tmp_path, capsys):
    path, _ = tiny
    assert main(["profile", str(path), "--target", "host-tflite"]) == 2
    assert "search space" in capsys.readouterr().err
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    assert main(["profile", str(onnx), "--target", "host-tflite"]) == 2
    assert ".tflite" in capsys.readouterr().err


# ------------------------------------------------------------------------------ with LiteRT (slow)
@pytest.fixture(scope="session")
def host_table(tmp_path_factory):
    """A tiny space's host-tflite table, built once: (cache folder, space file, build report)."""
    folder = tmp_path_factory.mktemp("profiling")
    space_file = folder / "tiny.spnas"
    space_file.write_text(TINY)
    old = os.environ.get("SPNAS_CACHE_DIR")
    os.environ["SPNAS_CACHE_DIR"] = str(folder / "cache")
    try:
        report = L.build_lut(parse_text(TINY, str(space_file)),
                             L.make_measurer("host-tflite", config=_fast_config()),
                             calibrate=3, chunk=5, log=lambda m: None)
    finally:
        if old is None:
            del os.environ["SPNAS_CACHE_DIR"]
        else:
            os.environ["SPNAS_CACHE_DIR"] = old
    return folder / "cache", space_file, report


def _fast_config():
    from spnas_dsl.profiling.timing import TimingConfig

    return TimingConfig(warmup=1, runs=3, visit_ms=0.0, rounds=2, processes=1, min_seconds=0.0)


@pytest.mark.slow
def test_lut_build_writes_a_calibrated_table(host_table):
    folder, _, report = host_table
    table = json.loads(report.path.read_text())
    assert report.path == folder / "targets" / "host-tflite.json"
    assert len(table["entries"]) == 10 and all(e["latency_ms"] > 0 for e in table["entries"])
    assert table["device"].startswith("host CPU: ") and "ai-edge-litert" in table["runtime"]
    assert table["threads"] == 1 and table["date"]
    cal = table["calibration"]
    assert cal["scale"] > 0 and len(cal["networks"]) == 3 and cal["date"]
    assert all(n.startswith("tiny:") for n in cal["networks"])
    assert len(report.calibration_rows) == 3


@pytest.mark.slow
def test_lut_build_resumes_keeping_measured_signatures(host_table, tmp_path, monkeypatch, capsys):
    folder, space_file, _ = host_table
    cache = tmp_path / "cache"
    import shutil

    shutil.copytree(folder, cache)  # the models are cached: nothing is converted again
    monkeypatch.setenv("SPNAS_CACHE_DIR", str(cache))
    table = cache / "targets" / "host-tflite.json"
    data = json.loads(table.read_text())
    full = {e["signature"]: e["latency_ms"] for e in data["entries"]}
    data["entries"] = data["entries"][:5]  # as a build killed after its first chunk leaves it
    data["calibration"] = {"scale": 1.0, "offset_ms": 0.0, "networks": [], "date": None}
    table.write_text(json.dumps(data))
    assert main(["lut", "build", str(space_file), "--target", "host-tflite", "--calibrate", "3", "--json",
                 *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kept"] == 5 and report["measured"] == 5
    after = {e["signature"]: e["latency_ms"] for e in json.loads(table.read_text())["entries"]}
    assert set(after) == set(full)
    for sig in list(full)[:5]:
        assert after[sig] == full[sig]
    assert report["calibration"]["networks"]
    # Nothing missing and calibrated: nothing to do.
    assert main(["lut", "build", str(space_file), "--target", "host-tflite", "--calibrate", "3", "--json",
                 *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["measured"] == 0 and report["kept"] == 10


@pytest.mark.slow
def test_profile_tiny_concrete_network(host_table, tmp_path, monkeypatch, capsys):
    folder, _, _ = host_table
    monkeypatch.setenv("SPNAS_CACHE_DIR", str(folder))
    net = tmp_path / "tinynet.spnas"
    net.write_text(TINY_NET)
    assert main(["profile", str(net), "--target", "host-tflite", "--runs", "30", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["median_ms"] > 0 and out["p10_ms"] <= out["median_ms"] <= out["p90_ms"]
    assert out["runs"] >= 30 and out["threads"] == 1
    assert out["predicted_ms"] is not None and out["predicted_ms"] > 0  # the table prices it
    assert main(["profile", str(net), "--target", "host-tflite", "--runs", "10"]) == 0
    assert "median" in capsys.readouterr().out


@pytest.mark.slow
def test_lut_validate_json(host_table, tmp_path, monkeypatch, capsys):
    folder, space_file, _ = host_table
    monkeypatch.setenv("SPNAS_CACHE_DIR", str(folder))
    plot = tmp_path / "fig7.png"
    assert main(["lut", "validate", str(space_file), "--target", "host-tflite", "--samples", "3", "--json",
                 "--plot", str(plot), *FAST]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("rmse_ms", "mape_pct", "max_error_pct", "stored_calibration", "in_run_calibration",
                "uncalibrated_sum", "networks", "calibration_networks"):
        assert key in report
    assert report["samples"] == 3 and len(report["networks"]) == 3
    cal = {c["network"] for c in report["calibration_networks"]}
    assert cal == set(json.loads((folder / "targets" / "host-tflite.json").read_text())["calibration"]["networks"])
    assert not cal & {n["network"] for n in report["networks"]}  # calibration networks are excluded
    for block in ("stored_calibration", "in_run_calibration", "uncalibrated_sum"):
        assert {"rmse_ms", "mape_pct", "max_error_pct"} <= set(report[block])
    assert plot.stat().st_size > 1000


@pytest.mark.slow
def test_latency_graph_and_search_use_the_built_table(host_table, tmp_path, monkeypatch):
    folder, space_file, _ = host_table
    monkeypatch.setenv("SPNAS_CACHE_DIR", str(folder))
    from spnas_dsl.latency.graph import LatencyGraph

    space = parse_text(TINY, str(space_file))
    graph = LatencyGraph.build(space, load_target("host-tflite"))
    net = with_options(space, [Option(kernel=5, expansion=3), SKIP])
    table = json.loads((folder / "targets" / "host-tflite.json").read_text())
    figures = {e["signature"]: e["latency_ms"] for e in table["entries"]}
    raw = sum(figures[s] for s in M.network_parts(net))
    assert graph.predict(net) == pytest.approx(table["calibration"]["scale"] * raw + table["calibration"]["offset_ms"])
    try:
        import spnas_dsl.cli.search  # noqa: F401
    except ModuleNotFoundError:
        pytest.skip("no search command yet")
    out = tmp_path / "run"
    rc = main(["search", str(space_file), "--target", "host-tflite", "--data", "synthetic:64", "--epochs", "1",
               "--batch-size", "16", "--out", str(out), "--quiet", "--device", "cpu"])
    assert rc == 0
    assert (out / "arch.spnas").exists()


@pytest.mark.slow
def test_onnxruntime_profile(tmp_path, cache, capsys):
    net = tmp_path / "tinynet.spnas"
    net.write_text(TINY_NET)
    assert main(["profile", str(net), "--target", "host-onnxruntime", "--runs", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["median_ms"] > 0 and "onnxruntime" in out["runtime"]
    onnx_files = list(Path(cache).rglob("*.onnx"))
    assert len(onnx_files) == 1
    assert main(["profile", str(onnx_files[0]), "--target", "host-onnxruntime", "--runs", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["median_ms"] > 0


@pytest.mark.slow
def test_stitched_network_has_the_converted_operators(host_table, monkeypatch):
    folder, _, _ = host_table
    monkeypatch.setenv("SPNAS_CACHE_DIR", str(folder))
    from spnas_dsl.backends.tflite import TFLiteModel, op_names

    net = parse_text(TINY_NET, "tinynet.spnas")
    key = M.network_id(net)
    stitched = M.ensure_models([M.network_job("tflite", net, key)])[key]
    converted = M.ensure_models([M.network_job("tflite", net, key, stitch=False)])[key]
    assert stitched != converted
    assert op_names(stitched) == op_names(converted)
    a, b = TFLiteModel(stitched), TFLiteModel(converted)
    assert a.input_shape == b.input_shape == (1, 32, 32, 3)
    import numpy as np

    assert a.run(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 10)


def test_stitch_rejects_mismatched_parts():
    with pytest.raises(ValueError):
        M.stitch_tflite([])
