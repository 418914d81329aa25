"""Layer signatures, the LatencyGraph on the pixel1 table (paper check figures), relaxed latency, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spnas_dsl.cli import main
from spnas_dsl.errors import TargetError, UsageError
from spnas_dsl.ir import SKIP, Network, Option
from spnas_dsl.latency import LatencyGraph
from spnas_dsl.latency.indicators import LayerIndicators
from spnas_dsl.parser import load, parse_text
from spnas_dsl.passes import with_options
from spnas_dsl.shapes import infer_shapes
from spnas_dsl.targets import load_target
from spnas_dsl.targets.signature import head_signature, layer_signature, parse_mbconv_signature, stem_signature
from spnas_dsl.targets.table import load_table, write_table

REPO = Path(__file__).resolve().parent.parent
SPACE = REPO / "spaces" / "mnasnet.spnas"
SPNASNET = REPO / "examples" / "spnasnet.spnas"
FASHION = REPO / "spaces" / "fashion_mnist.spnas"
PIXEL1 = REPO / "targets" / "pixel1.json"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPNAS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def space() -> Network:
    return load(SPACE)


@pytest.fixture(scope="module")
def graph(space) -> LatencyGraph:
    return LatencyGraph.build(space, load_target("pixel1"))


def corner(graph: LatencyGraph, option: Option) -> Network:
    """Every searched layer of the space set to ``option``."""
    options = [option if len(graph.node(i).candidates) > 1 else graph.node(i).candidates[0]
               for i in graph.layer_keys()]
    return with_options(graph.network, options)


def hard_indicators(space: Network, concrete: Network, requires_grad: bool = True) -> dict[int, LayerIndicators]:
    """0/1 indicator tensors that select, in each searched layer of ``space``, the option of ``concrete``."""
    def t(value: bool) -> torch.Tensor:
        return torch.tensor(float(value), requires_grad=requires_grad)

    result = {}
    for s, c in zip(infer_shapes(space).layers, infer_shapes(concrete).layers):
        if not s.is_searched:
            continue
        chosen = c.layer.options[0]
        ks, es = s.layer.kernel.values, s.layer.expansion.values
        k = chosen.kernel or ks[0]
        e = chosen.expansion or es[0]
        result[s.index] = LayerIndicators(
            kernels=ks, expansions=es,
            kernel_on=[t(k >= kk) for kk in ks[1:]],
            expansion_on=[t(e >= ee) for ee in es[1:]],
            active=t(not chosen.is_skip) if s.layer.skip else None,
        )
    return result


def table_ms(position: int, option: str) -> float:
    """A figure of the pixel1 table file (never hard-coded)."""
    table = load_table(PIXEL1)
    return next(e.latency_ms for e in table.entries if e.position == position and e.signature.endswith(option))


# ---------------------------------------------------------------- signatures

def test_signatures(space):
    shapes = infer_shapes(space)
    assert stem_signature(space, shapes) == "conv:i224x224x3:o32:s2:k3"
    assert head_signature(shapes) == "head:i7x7x320:o1280:c1000"
    assert layer_signature(shapes.layers[0], Option(kernel=3, expansion=1)) == "mbconv:i112x112x32:o16:s1:k3e1"
    assert layer_signature(shapes.layers[2], Option(kernel=3, expansion=6)) == "mbconv:i56x56x24:o24:s1:k3e6"
    assert layer_signature(shapes.layers[1], Option(kernel=5, expansion=3)) == "mbconv:i112x112x16:o24:s2:k5e3"
    assert layer_signature(shapes.layers[2], SKIP) is None
    assert parse_mbconv_signature("mbconv:i56x56x24:o24:s1:k3e6") == ((56, 56, 24), 24, 1, Option(kernel=3, expansion=6))
    assert parse_mbconv_signature("head:i7x7x320:o1280:c1000") is None


def test_signatures_follow_width_multiplier(space):
    wide = parse_text(SPACE.read_text().replace("width 1.0", "width 1.4"))
    shapes = infer_shapes(wide)
    assert stem_signature(wide, shapes) == "conv:i224x224x3:o48:s2:k3"
    assert layer_signature(shapes.layers[2], Option(kernel=3, expansion=6)) == "mbconv:i56x56x32:o32:s1:k3e6"


def test_graph_structure(graph):
    assert graph.order[0] == "stem" and graph.order[-1] == "head" and graph.layer_keys() == list(range(22))
    assert graph.graph.number_of_edges() == 23
    node = graph.node(2)
    assert node.op == "mbconv" and node.in_hwc == (56, 56, 24) and node.out_channels == 24
    assert node.stride == 1 and [str(o) for o in node.candidates] == ["k3e3", "k3e6", "k5e3", "k5e6", "skip"]
    assert node.latency_ms[Option(kernel=5, expansion=6)] == table_ms(2, "k5e6")
    assert node.latency_ms[SKIP] == 0.0
    assert graph.searched() == list(range(1, 21))
    assert [graph.node(k).fixed_group for k in ("stem", 0, 21, "head")] == [0, 0, 0, 0]


# ---------------------------------------------------------------- check figures (paper)

def test_fixed_ms_is_the_group(graph):
    assert graph.fixed_ms == pytest.approx(load_table(PIXEL1).fixed_groups[0].latency_ms)


def test_spnasnet_predicts_80_44(graph):
    assert round(graph.predict(load(SPNASNET)), 2) == 80.44
    # a graph of the concrete network itself gives the same figure
    assert round(LatencyGraph.build(load(SPNASNET), load_target("pixel1")).predict(), 2) == 80.44


@pytest.mark.parametrize("option, expected", [("k5e6", 131.46), ("k3e6", 110.65), ("k3e3", 65.69)])
def test_corners(graph, option, expected):
    assert round(graph.predict(corner(graph, Option(kernel=int(option[1]), expansion=int(option[3])))), 2) == expected


def test_mobilenetv2_like_is_the_k3e6_corner(graph):
    assert round(graph.predict(load(REPO / "examples" / "mobilenetv2_like.spnas")), 2) == 110.65


def test_space_min_and_max(graph):
    table = load_table(PIXEL1)
    first_layers = [1, 5, 9, 13, 17]  # the stride-2 / channel-changing layers cannot be skipped
    expected_min = table.fixed_groups[0].latency_ms + sum(table_ms(i, "k3e3") for i in first_layers)
    assert graph.min_ms() == pytest.approx(expected_min)
    assert round(graph.min_ms(), 2) == 30.63
    assert round(graph.max_ms(), 2) == 131.46
    assert graph.max_ms() == pytest.approx(graph.predict(with_options(graph.network, graph.largest())))
    assert graph.min_ms() == pytest.approx(graph.predict(with_options(graph.network, graph.smallest())))
    assert [str(o) for o in graph.largest()[1:21]] == ["k5e6"] * 20
    assert graph.smallest()[2] == SKIP


def test_breakdown_sums_to_prediction(graph):
    net = load(SPNASNET)
    rows = graph.breakdown(net)
    assert [r.name for r in rows][:2] == ["stem", "first.0"] and rows[-1].name == "head"
    layer = {r.index: r for r in rows}
    assert layer[4].choice == "skip" and layer[4].latency_ms == 0.0 and layer[4].signature is None
    assert layer[0].latency_ms is None and layer[0].fixed_group == 0
    total = sum(r.latency_ms or 0 for r in rows) + graph.fixed_ms
    assert total == pytest.approx(graph.predict(net))
    assert {r.rule for r in rows} == {"group", "position", "skip"}


def test_option_latency(graph):
    assert graph.option_latency(3, "k5e3") == table_ms(3, "k5e3")
    assert graph.option_latency(3, Option(kernel=3, expansion=6)) == table_ms(3, "k3e6")
    assert graph.option_latency(4, "skip") == 0.0
    with pytest.raises(TargetError, match="fixed group"):
        graph.option_latency(0, "k3e1")
    with pytest.raises(TargetError, match="no latency for 1 signature"):
        graph.option_latency(3, "k7e6")
    with pytest.raises(UsageError):
        graph.option_latency(3, "big")


def test_predict_needs_a_concrete_network_of_the_same_macro_architecture(graph, space):
    with pytest.raises(UsageError, match="search space"):
        graph.predict(space)
    other = parse_text(SPNASNET.read_text().replace("c=40 s=2", "c=48 s=2"))
    with pytest.raises(UsageError, match="macro-architecture"):
        graph.predict(other)


def test_mean_rule_for_a_signature_at_another_position(capsys, tmp_path):
    # five layers in stage s24: every later layer sits one position after where pixel1 measured it
    text = SPNASNET.read_text().replace("3x mbconv k=3 e=3\n        skip", "5x mbconv k=3 e=3")
    net = parse_text(text, "five.spnas")
    g = LatencyGraph.build(net, load_target("pixel1"))
    rows = {r.index: r for r in g.breakdown()}
    assert rows[4].rule == "position" and rows[4].latency_ms == table_ms(4, "k3e3")
    mean = sum(table_ms(i, "k3e3") for i in (2, 3, 4)) / 3  # the signature of layers 2-4, at position 5
    assert rows[5].rule == "mean" and rows[5].latency_ms == pytest.approx(mean)
    assert rows[6].rule == "signature" and rows[6].latency_ms == table_ms(5, "k5e6")  # s40.0, measured at 5
    assert rows[22].fixed_group == 0  # the fixed group still matches (by signature)
    path = tmp_path / "five.spnas"
    path.write_text(text)
    assert main(["latency", str(path)]) == 0
    out = capsys.readouterr().out
    assert "*" in out and "mean of the table's entries" in out


def test_missing_signatures_are_all_listed():
    with pytest.raises(TargetError) as info:
        LatencyGraph.build(load(FASHION), load_target("pixel1"))
    message = str(info.value)
    shapes = infer_shapes(load(FASHION))
    assert "conv:i28x28x1:o16:s1:k3" in message and "head:i4x4x64:o256:c10" in message
    for s in shapes.layers:
        for option in s.layer.options:
            if not option.is_skip:
                assert layer_signature(s, option) in message
    assert "no latency for 28 signatures of 'fashion_mnist'" in message
    assert "spnasc lut build" in message and "--target host-tflite" in message


def test_calibration_applies_to_predict_extremes_and_relaxed(tmp_path, space):
    table = load_table(PIXEL1)
    calibrated = table.model_copy(update={"calibration": table.calibration.model_copy(
        update={"scale": 1.25, "offset_ms": -3.0, "networks": ["spnasnet"]})})
    path = tmp_path / "pixel1-cal.json"
    write_table(path, calibrated)
    plain = LatencyGraph.build(space, load_target("pixel1"))
    cal = LatencyGraph.build(space, load_target(str(path)))
    net = load(SPNASNET)
    assert cal.predict(net) == pytest.approx(1.25 * plain.predict(net) - 3.0)
    assert cal.max_ms() == pytest.approx(1.25 * plain.max_ms() - 3.0)
    assert cal.min_ms() == pytest.approx(1.25 * plain.min_ms() - 3.0)
    relaxed = cal.relaxed_latency(hard_indicators(space, net))
    assert float(relaxed.detach()) == pytest.approx(cal.predict(net), rel=1e-6)


# ---------------------------------------------------------------- relaxed latency

@pytest.mark.parametrize("which", ["spnasnet", "k5e6", "k3e3", "smallest"])
def test_relaxed_latency_at_hard_decisions_equals_predict(graph, space, which):
    if which == "spnasnet":
        net = load(SPNASNET)
    elif which == "smallest":
        net = with_options(graph.network, graph.smallest())
    else:
        net = corner(graph, Option(kernel=int(which[1]), expansion=int(which[3])))
    relaxed = graph.relaxed_latency(hard_indicators(space, net))
    assert isinstance(relaxed, torch.Tensor) and relaxed.dim() == 0
    assert float(relaxed.detach()) == pytest.approx(graph.predict(net), rel=1e-6)


def test_relaxed_latency_gradient(graph, space):
    net = load(SPNASNET)
    indicators = hard_indicators(space, net)
    relaxed = graph.relaxed_latency(indicators)
    relaxed.backward()
    # layer 1 is k3e3 without skip: d/d(kernel_on) = R(k5e3) - R(k3e3), d/d(expansion_on) = R(k3e6) - R(k3e3)
    layer1 = indicators[1]
    assert layer1.active is None
    assert float(layer1.kernel_on[0].grad) == pytest.approx(table_ms(1, "k5e3") - table_ms(1, "k3e3"), rel=1e-5)
    assert float(layer1.expansion_on[0].grad) == pytest.approx(table_ms(1, "k3e6") - table_ms(1, "k3e3"), rel=1e-5)
    # layer 4 is skipped: d/d(active) = R(k3e3) there
    assert float(indicators[4].active.grad) == pytest.approx(table_ms(4, "k3e3"), rel=1e-5)
    assert all(i.kernel_on[0].grad is not None for i in indicators.values())


def test_relaxed_latency_soft_indicators_interpolate(graph, space):
    net = load(SPNASNET)
    indicators = hard_indicators(space, net)
    indicators[1].kernel_on[0] = torch.tensor(0.5, requires_grad=True)
    half = (table_ms(1, "k3e3") + table_ms(1, "k5e3")) / 2
    expected = graph.predict(net) - table_ms(1, "k3e3") + half
    assert float(graph.relaxed_latency(indicators).detach()) == pytest.approx(expected, rel=1e-6)


def test_relaxed_latency_needs_every_searched_layer(graph, space):
    indicators = hard_indicators(space, load(SPNASNET))
    del indicators[7]
    with pytest.raises(ValueError, match="layer 7"):
        graph.relaxed_latency(indicators)


def soft_indicators(space: Network, seed: int) -> dict[int, LayerIndicators]:
    """Random indicators in (0, 1) (leaves with gradients) for every searched layer of ``space``."""
    g = torch.Generator().manual_seed(seed)

    def t() -> torch.Tensor:
        return torch.rand((), generator=g).requires_grad_()

    return {s.index: LayerIndicators(s.layer.kernel.values, s.layer.expansion.values,
                                     [t() for _ in s.layer.kernel.values[1:]], [t() for _ in s.layer.expansion.values[1:]],
                                     t() if s.layer.skip else None, expand_always=s.layer.expand_always)
            for s in infer_shapes(space).layers if s.is_searched}


@pytest.mark.parametrize("which", ["mnasnet/pixel1", "fbnet searchable, one k=3 layer/fpga"])
def test_relaxed_latency_is_the_sum_of_option_weights(space, which):
    """The batched relaxed latency (layers of one grid shape at once) is Eq. 9-12 layer by layer:
    fixed_ms + sum_i sum_o weight_i(o) R_i(o), in value and gradient, at soft indicators."""
    if which.startswith("mnasnet"):
        net, target = space, "pixel1"
    else:  # kernel grids of 1 and 2 levels, expansion grids of 3 (e=<1,3,6> expand=always)
        text = (REPO / "spaces" / "fbnet_cifar100_searchable.spnas").read_text()
        net, target = parse_text(text.replace("k=<3,5>", "k=3", 1)), "fpga"
    g = LatencyGraph.build(net, load_target(target))
    assert len(g._tables("cpu", torch.float32)) == (1 if which.startswith("mnasnet") else 2)
    indicators = soft_indicators(net, 0)
    leaves = [t for ind in indicators.values() for t in (*ind.kernel_on, *ind.expansion_on, ind.active)
              if t is not None]
    reference = g.calibrate(g.fixed_ms + sum(weight * g.option_latency(index, option)
                                             for index, ind in indicators.items()
                                             for option, weight in ind.option_weights().items()))
    got = g.relaxed_latency(indicators)
    torch.testing.assert_close(got, reference, rtol=1e-6, atol=0)
    for a, b in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(reference, leaves)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_relaxed_latency_of_a_concrete_network_is_constant():
    g = LatencyGraph.build(load(SPNASNET), load_target("pixel1"))
    assert float(g.relaxed_latency({})) == pytest.approx(g.predict())


# ---------------------------------------------------------------- CLI

def test_cli_latency_concrete_json(capsys):
    assert main(["latency", str(SPNASNET), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["latency_ms"] == pytest.approx(80.4411) and report["target"] == "pixel1" and report["concrete"]
    assert len(report["layers"]) == 24 and report["layers"][0]["name"] == "stem"
    assert {"signature", "latency_ms", "choice", "input", "out_channels", "stride"} <= set(report["layers"][3])
    assert report["fixed_groups"][0]["members"] == ["stem", "first.0", "last.0", "head"]


def test_cli_latency_space_json(capsys):
    assert main(["latency", str(SPACE), "--target", "pixel1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert round(report["latency_ms_min"], 2) == 30.63 and round(report["latency_ms_max"], 2) == 131.46
    assert "latency_ms" not in report and len(report["layers"]) == 24
    assert report["largest"][1:21] == ["k5e6"] * 20


def test_cli_latency_text(capsys):
    assert main(["latency", str(SPNASNET)]) == 0
    out = capsys.readouterr().out
    assert "predicted latency: 80.44 ms" in out and "mbconv:i56x56x24:o24:s1:k3e3" in out


def test_cli_latency_missing_signatures_subprocess():
    proc = subprocess.run([sys.executable, "-m", "spnas_dsl", "latency", str(FASHION)],
                          check=False, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert "error: target 'pixel1'" in proc.stderr and "conv:i28x28x1:o16:s1:k3" in proc.stderr


def test_cli_latency_subprocess_space():
    proc = subprocess.run([sys.executable, "-m", "spnas_dsl", "latency", str(SPACE)],
                          check=False, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "30.63 ms (fastest) .. 131.46 ms (slowest)" in proc.stdout
