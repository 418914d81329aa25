"""Measurement files, `spnasc lut fit` and `spnasc lut validate --measurements`, the shipped device tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spnas_dsl.cli import main
from spnas_dsl.ir import Layer
from spnas_dsl.latency.graph import LatencyGraph
from spnas_dsl.parser import load
from spnas_dsl.shapes import infer_shapes
from spnas_dsl.targets import DEVICE_KEYS, KNOWN_TARGETS, load_target
from spnas_dsl.targets.fit import fit_table, spearman
from spnas_dsl.targets.measurements import load_measurements, resolve

ROOT = Path(__file__).resolve().parent.parent
FBNET = ROOT / "spaces" / "fbnet_cifar100.spnas"
MEAS = ROOT / "targets" / "measurements" / "fbnet_cifar100_latency.json"
EXACT = ("pixel3", "raspi4", "fpga", "eyeriss")


def synthetic_file(path: Path, n: int = 300, noise: float = 0.0, seed: int = 0) -> tuple[Path, dict]:
    """A measurement file of random FBNet networks priced by a known additive model (+ noise)."""
    rng = np.random.default_rng(seed)
    ops = ["k3_e1", "k3_e1_g2", "k3_e3", "k3_e6", "k5_e1", "k5_e1_g2", "k5_e3", "k5_e6", "skip"]
    cost = rng.uniform(0.1, 2.0, size=(22, 9))
    cost[[i for i in range(22) if i not in (1, 5, 9, 13, 17, 21)], 8] = 0.0  # the identity skip is free
    archs = [[ops[j] for j in rng.integers(0, 9, size=22)] for _ in range(n)]
    lat = [3.0 + sum(cost[i, ops.index(op)] for i, op in enumerate(a)) for a in archs]
    lat = [v + rng.normal(0, noise) for v in lat]
    data = {"archs": archs, "latency_ms": {"dev": lat}, "devices": {"dev": "a made-up device"}}
    path.write_text(json.dumps(data))
    return path, data


def test_fit_recovers_an_additive_device_and_reports_cv(tmp_path):
    path, _ = synthetic_file(tmp_path / "m.json")
    space = load(FBNET)
    meas = load_measurements(path, "dev")
    result = fit_table(space, resolve(space, meas), meas.latency_ms)
    assert result.fit["max_abs_error_ms"] < 1e-3 and result.cv["max_abs_error_ms"] < 1e-3


def test_cli_fit_writes_a_target_that_latency_validate_and_search_read(tmp_path, capsys):
    path, data = synthetic_file(tmp_path / "m.json", noise=0.2)
    table = tmp_path / "dev.json"
    assert main(["lut", "fit", str(FBNET), "--measurements", str(path), "--device", "dev", "--out", str(table),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["networks"] == 300 and summary["cv"]["mape_pct"] > 0
    stored = json.loads(table.read_text())
    prov = stored["provenance"]
    assert prov["source_file"] == str(path) and prov["device"] == "dev" and prov["networks"] == 300
    assert len(prov["residuals_ms"]) == 300 and prov["units"] == "ms"
    import hashlib

    assert prov["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["cv"]["mape_pct"] == pytest.approx(summary["cv"]["mape_pct"])
    # an ordinary target: latency of a concrete network equals the fit's own prediction
    space = load(FBNET)
    options = resolve(space, load_measurements(path, "dev"))[0]
    net = space.replace_layers([Layer.from_option(o) for o in options])
    predicted = LatencyGraph.build(net, load_target(str(table))).predict()
    assert predicted == pytest.approx(data["latency_ms"]["dev"][0] - prov["residuals_ms"][0], abs=1e-4)
    plot = tmp_path / "fig7.png"
    assert main(["lut", "validate", str(FBNET), "--target", str(table), "--measurements", str(path),
                 "--device", "dev", "--json", "--plot", str(plot)]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("mape_pct", "rmse_ms", "max_error_pct", "within_5_pct", "within_10_pct", "spearman"):
        assert key in report
    assert report["mape_pct"] == pytest.approx(prov["fit"]["mape_pct"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", list(DEVICE_KEYS))
def test_shipped_device_tables_price_the_measured_networks(name, capsys):
    assert main(["lut", "validate", str(FBNET), "--target", name, "--measurements", str(MEAS),
                 "--device", name, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["networks"] == 2000 and report["device"] == DEVICE_KEYS[name]
    table = load_target(name).table
    assert table.provenance is not None and table.provenance.networks == 2000
    if name in EXACT:  # HW-NAS-Bench table sums: every network within 0.01 ms
        assert report["max_abs_error_ms"] <= 0.01
    else:  # in-sample error of the stored table, as its provenance says
        assert report["mape_pct"] == pytest.approx(table.provenance.fit["mape_pct"], rel=1e-6)
        assert report["spearman"] > 0.5


def test_targets_lists_provenance(capsys):
    assert main(["targets", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["targets"]}
    for name in DEVICE_KEYS:
        source = rows[name]["source"]
        assert "HELP (Lee et al., NeurIPS 2021" in source and "MIT licence" in source
        assert "held-out MAPE" in source and rows[name]["space"] == "spaces/fbnet_cifar100.spnas"
    for name in EXACT:
        assert "HW-NAS-Bench (Li et al., ICLR 2021" in rows[name]["source"]
    assert KNOWN_TARGETS["pixel1"].source


def _write(tmp_path, data) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


GOOD = {"archs": [["skip"] * 22], "latency_ms": {"dev": [5.0]}}


@pytest.mark.parametrize(
    "data, message",
    [
        ({**GOOD, "archs": [["k7_e1"] + ["skip"] * 21]}, "archs[0][0] = 'k7_e1' is not a candidate of layer 0"),
        ({**GOOD, "archs": [["skip"] * 21]}, "archs[0] has 21 ops, but 'fbnet_cifar100' has 22 layers"),
        ({**GOOD, "latency_ms": {"dev": [-1.0]}}, "latency_ms.dev[0] = -1.0: latencies must be finite"),
        ('{"archs": [' + json.dumps(["skip"] * 22) + '], "latency_ms": {"dev": [NaN]}}', "latency_ms.dev[0] = nan"),
        ({**GOOD, "latency_ms": {"other": [1.0]}}, "no device 'dev' (devices: other)"),
        ({**GOOD, "latency_ms": {"dev": [1.0, 2.0]}}, "latency_ms.dev has 2 values for 1 networks"),
        ({"latency_ms": {"dev": [1.0]}}, "missing key 'archs'"),
        ('{"archs": [', "invalid JSON in measurement file"),
    ],
)
@pytest.mark.parametrize("command", ["fit", "validate"])
def test_malformed_measurement_files_give_one_clear_error(tmp_path, capsys, data, message, command):
    path = _write(tmp_path, data)
    extra = ["--target", "pixel3"] if command == "validate" else ["--out", str(tmp_path / "t.json")]
    code = main(["lut", command, str(FBNET), "--measurements", str(path), "--device", "dev", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert str(path) in err


def test_spearman_handles_ties():
    assert spearman([1, 2, 2, 3], [10, 20, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pixel3", "galaxy-a50"])  # a table-sum family and a fitted-phone family
def test_tiny_search_on_fbnet_targets(tmp_path, target):
    out = tmp_path / "run"
    assert main(["search", str(ROOT / "spaces" / "fbnet_cifar100_searchable.spnas"), "--target", target,
                 "--data", "synthetic:32", "--image-size", "8", "--batch-size", "16", "--epochs", "1",
                 "--warmup-epochs", "0", "--quiet", "--out", str(out)]) == 0
    found = load(out / "arch.spnas")
    assert found.is_concrete
    result = json.loads((out / "search.json").read_text())["result"]
    assert LatencyGraph.build(found, load_target(target)).predict() == pytest.approx(result["latency_ms"], rel=1e-6)
    assert len(infer_shapes(found).layers) == 22


PROXYLESS_YAML = ROOT / "targets" / "sources" / "proxylessnas_pixel1_mobile_trim.yaml"


def _yaml_mean(key: str) -> float:
    text = PROXYLESS_YAML.read_text()
    block = text[text.index(key + ":\n"):]
    return float(block.split("mean:", 1)[1].split("\n", 1)[0])


def test_pixel1_proxylessnas_is_the_authors_table():
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_proxylessnas", ROOT / "tools" / "convert_proxylessnas.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    converted = tool.convert(tool.parse_yaml(PROXYLESS_YAML.read_text(), str(PROXYLESS_YAML)))
    shipped = load_target("pixel1-proxylessnas").table
    assert converted.entries == shipped.entries
    assert all(e.count and e.var is not None for e in shipped.entries)
    net = load(ROOT / "examples" / "spnasnet.spnas")
    rows = {r.name: r for r in LatencyGraph.build(net, load_target("pixel1-proxylessnas")).breakdown()}
    assert rows["stem"].latency_ms == pytest.approx(_yaml_mean("Conv-input:224x224x3-output:112x112x32"))
    assert rows["head"].latency_ms == pytest.approx(_yaml_mean("Conv_1-input:7x7x320-output:7x7x1280")
                                                    + _yaml_mean("Logits-input:7x7x1280-output:1000"))
    assert rows["s24.0"].latency_ms == pytest.approx(_yaml_mean(
        "expanded_conv-input:112x112x16-output:56x56x24-expand:3-kernel:3-stride:2-idskip:0"))
    # kernel 7 is priced too (the paper's table has only 3 and 5)
    text = (ROOT / "spaces" / "mnasnet.spnas").read_text().replace("k=<3,5>", "k=<3,5,7>")
    from spnas_dsl.parser import parse_text

    k7 = parse_text(text)
    assert LatencyGraph.build(k7, load_target("pixel1-proxylessnas")).max_ms() > LatencyGraph.build(
        load(ROOT / "spaces" / "mnasnet.spnas"), load_target("pixel1-proxylessnas")).max_ms()


@pytest.mark.slow
def test_tiny_search_on_pixel1_proxylessnas(tmp_path):
    out = tmp_path / "run"
    assert main(["search", str(ROOT / "spaces" / "mnasnet.spnas"), "--target", "pixel1-proxylessnas",
                 "--data", "synthetic:32", "--image-size", "8", "--batch-size", "16", "--epochs", "1",
                 "--warmup-epochs", "0", "--quiet", "--out", str(out)]) == 0
    found = load(out / "arch.spnas")
    result = json.loads((out / "search.json").read_text())["result"]
    assert LatencyGraph.build(found, load_target("pixel1-proxylessnas")).predict() == pytest.approx(result["latency_ms"], rel=1e-6)


TINY_SPACE = """\
network tiny {
    input 8x8x1
    classes 3
    width 1.0
    stem conv k=3 c=8 s=1
    stage a c=8 s=2 {
        mbconv k=<3,5> e=<1,3> expand=always
        mbconv k=3 e=<1,3> g=<1,2> expand=always | skip
    }
    head conv c=16 dropout=0.0
}
"""


@pytest.mark.slow
def test_lut_build_from_networks_times_whole_networks_and_fits(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPNAS_CACHE_DIR", str(tmp_path / "cache"))
    space = tmp_path / "tiny.spnas"
    space.write_text(TINY_SPACE)
    assert main(["lut", "build", str(space), "--target", "host-onnxruntime", "--from-networks", "10",
                 "--processes", "1", "--rounds", "1", "--min-seconds", "0", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["networks"] == 10
    table = load_target("host-onnxruntime").table
    assert table.provenance is not None and table.provenance.networks == 10
    assert table.provenance.source_file == report["measurements"]
    measured = json.loads(Path(report["measurements"]).read_text())
    assert len(measured["archs"]) == 10 and all(v > 0 for v in measured["latency_ms"]["host-onnxruntime"])
    # the measurement file it wrote is an ordinary one: lut validate scores the table on it
    assert main(["lut", "validate", str(space), "--target", "host-onnxruntime", "--measurements",
                 report["measurements"], "--device", "host-onnxruntime", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["mape_pct"] == pytest.approx(table.provenance.fit["mape_pct"], rel=1e-6)
