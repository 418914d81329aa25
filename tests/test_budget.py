"""Landing on the latency budget (spnas_dsl.search.budget) and the proxy's kernel-decision coverage
(spnas_dsl.search.proxy)."""

from __future__ import annotations

import itertools
import json
import random
import sys
from pathlib import Path

import pytest

from spnas_dsl.ir import Option
from spnas_dsl.latency.graph import LatencyGraph
from spnas_dsl.parser import load
from spnas_dsl.passes import with_options
from spnas_dsl.search.budget import fit_to_budget, option_value, relative_margin
from spnas_dsl.search.proxy import kernel_decision_coverage
from spnas_dsl.shapes import infer_shapes
from spnas_dsl.targets import load_target

sys.path.insert(0, str(Path(__file__).parent))
from test_search import FM_SPACE, MNASNET, TINY, one_thread, search, write_table  # noqa: F401


def random_report(space, seed: int) -> list[dict]:
    """A decision report with random norms and thresholds for every searched layer."""
    rng = random.Random(seed)
    report = []
    for s in infer_shapes(space).layers:
        layer = s.layer
        if not layer.is_searched:
            continue
        names = [f"k{k}" for k in sorted(layer.kernel.values)[1:]] + [f"e{e}" for e in sorted(layer.expansion.values)[1:]]
        names += ["skip"] if layer.skip else []
        report.append({"index": s.index, "decisions": {n: {"norm": rng.uniform(0, 3), "threshold": rng.uniform(0, 3)}
                                                       for n in names}})
    return report


def answer_of(space, report) -> dict[int, Option]:
    """The options the report's margins turn on (the thresholds' answer)."""
    from spnas_dsl.search.budget import margins_of

    margins = margins_of(report)
    layers = {s.index: s.layer for s in infer_shapes(space).layers if s.layer.is_searched}
    return {i: max(layers[i].options, key=lambda o: option_value(layers[i], o, margins[i])) for i in layers}


@pytest.fixture(scope="module")
def fm_table(tmp_path_factory) -> Path:
    return write_table(FM_SPACE, tmp_path_factory.mktemp("table") / "tiny.json")


def test_relative_margin():
    assert relative_margin(3.0, 1.0) == pytest.approx(0.5)
    assert relative_margin(1.0, 3.0) == pytest.approx(-0.5)
    assert relative_margin(0.0, 0.0) == 0.0


def test_fit_is_the_best_network_of_the_band_by_exhaustive_search(fm_table):
    """On the 8,000-network space: the fit's choice is the most valued network in the band."""
    space = load(FM_SPACE)
    graph = LatencyGraph.build(space, load_target(str(fm_table)))
    report = random_report(space, seed=3)
    from spnas_dsl.search.budget import margins_of

    margins = margins_of(report)
    layers = {s.index: s.layer for s in infer_shapes(space).layers if s.layer.is_searched}
    indices = sorted(layers)
    everything = []
    for options in itertools.product(*(layers[i].options for i in indices)):
        d = dict(zip(indices, options))
        everything.append((sum(option_value(layers[i], d[i], margins[i]) for i in indices),
                           graph.predict(with_options(space, d)), d))
    for budget in (5.5, 7.0, 9.0):
        fit = fit_to_budget(space, graph, answer_of(space, report), report, budget)
        assert fit.in_band and 0.98 * budget <= fit.latency_ms <= budget
        assert fit.latency_ms == pytest.approx(graph.predict(with_options(space, fit.decisions)))
        best = max(v for v, ms, _ in everything if 0.98 * budget <= ms <= budget)
        assert sum(option_value(layers[i], fit.decisions[i], margins[i]) for i in indices) == pytest.approx(best)


def test_fit_moves_both_ways_on_pixel1():
    """From the largest network down to the band, and from the smallest one up to it."""
    space = load(MNASNET)
    graph = LatencyGraph.build(space, load_target("pixel1"))
    report = random_report(space, seed=1)
    largest = dict(zip(graph.layer_keys(), graph.largest()))
    smallest = dict(zip(graph.layer_keys(), graph.smallest()))
    largest = {i: largest[i] for i in graph.searched()}
    smallest = {i: smallest[i] for i in graph.searched()}
    for start, budget in ((largest, 80.0), (smallest, 80.0), (largest, 45.0), (smallest, 120.0)):
        fit = fit_to_budget(space, graph, start, report, budget)
        assert fit.in_band, fit.note
        assert 0.98 * budget <= graph.predict(with_options(space, fit.decisions)) <= budget
        assert fit.moves
        ups = [m for m in fit.moves if m.delta_ms > 0]
        assert ups if start is smallest else [m for m in fit.moves if m.delta_ms < 0]


def test_fit_outside_the_space_says_so():
    space = load(MNASNET)
    graph = LatencyGraph.build(space, load_target("pixel1"))
    report = random_report(space, seed=2)
    answer = answer_of(space, report)
    over = fit_to_budget(space, graph, answer, report, graph.max_ms() * 1.5)
    assert not over.in_band and "closest under the budget" in over.note
    assert over.latency_ms == pytest.approx(graph.max_ms())
    under = fit_to_budget(space, graph, answer, report, graph.min_ms() * 0.5)
    assert not under.in_band and "over the budget" in under.note


def read_result(out: Path) -> tuple[dict, str]:
    return json.loads((out / "search.json").read_text()), (out / "arch.spnas").read_text()


@pytest.mark.parametrize("budget", [5.5, 7.0, 9.0])
@pytest.mark.parametrize("method", ["paper", "evolution"])
def test_search_lands_in_the_band_fashion_mnist(fm_table, tmp_path, capsys, budget, method):
    code, _out, err = search(FM_SPACE, "--target", fm_table, *TINY, "--epochs", "2", "--latency-budget", budget,
                             "--method", method, "--evaluations", "8", "--out", tmp_path / "o", capsys=capsys)
    assert code == 0, err
    data, text = read_result(tmp_path / "o")
    ms = data["result"]["latency_ms"]
    assert 0.98 * budget <= ms <= budget
    assert f"latency budget: {budget:g} ms" in text and "budget fit:" in text and f"method: {method}" in text
    graph = LatencyGraph.build(load(FM_SPACE), load_target(str(fm_table)))
    assert graph.predict(load(tmp_path / "o" / "arch.spnas")) == pytest.approx(ms)
    if method == "evolution":
        sel = data["result"]["selection"]
        assert 1 <= sel["evaluations"] <= 8
        assert all(0.98 * budget - 1e-9 <= s["latency_ms"] <= budget + 1e-9 for s in sel["scored"])
        best_ce = min(s["ce"] for s in sel["scored"])  # the lowest held-out CE, then the best accuracy
        assert sel["best"]["ce"] == best_ce
        assert sel["best"]["accuracy"] == max(s["accuracy"] for s in sel["scored"] if s["ce"] == best_ce)


@pytest.mark.slow
@pytest.mark.parametrize("budget", [50.0, 80.0, 110.0])
def test_search_lands_in_the_band_mnasnet_pixel1(tmp_path, capsys, budget):
    code, _out, err = search(MNASNET, "--target", "pixel1", "--data", "synthetic:64", "--image-size", "8",
                             "--batch-size", "32", "--epochs", "2", "--warmup-epochs", "1", "--latency-budget", budget,
                             "--method", "paper", "--quiet", "--out", tmp_path / "o", capsys=capsys)
    assert code == 0, err
    data, _text = read_result(tmp_path / "o")
    assert 0.98 * budget <= data["result"]["latency_ms"] <= budget


def test_kernel_decision_coverage_of_the_shipped_spaces():
    mnasnet = load(MNASNET)
    assert kernel_decision_coverage(mnasnet, 224) == []
    at32 = kernel_decision_coverage(mnasnet, 32)
    uninformed = {c.index for c in at32 if c.level == "uninformed"}
    partial = {c.index for c in at32 if c.level == "partial"}
    assert uninformed == set(range(10, 21))  # 2x2 and 1x1 maps: a 5x5 kernel is a 3x3 one there
    assert partial == {6, 7, 8, 9}  # 4x4 maps
    fm = kernel_decision_coverage(load(FM_SPACE), 28)
    assert [(c.index, c.level, c.map_hw) for c in fm] == [(6, "partial", (4, 4))]


def test_search_warns_about_uninformed_decisions(tmp_path, capsys):
    """mnasnet at a 32x32 proxy: the warning before the search starts, and in search.json."""
    code, out, err = search(MNASNET, "--target", "pixel1", "--data", "synthetic:32", "--image-size", "32",
                            "--batch-size", "32", "--epochs", "1", "--method", "paper", "--quiet",
                            "--out", tmp_path / "o", capsys=capsys)
    assert code == 0, err
    text = out + err
    warning = text[:text.index("epoch 1/1")]  # before the first epoch ends
    assert "kernel decision(s) of 'mnasnet' are not fully informed" in warning
    assert "layer 18 (s192.1) k5: on a 1x1 map a 5x5 kernel computes the same as 3x3" in warning
    data, arch = read_result(tmp_path / "o")
    recorded = data["kernel_decisions_not_informed"]
    assert len(recorded) == 15 and {r["level"] for r in recorded} == {"uninformed", "partial"}
    assert "uninformed 10:k5" in arch


def test_percentile_budget_is_resolved_on_the_table(fm_table, tmp_path, capsys):
    """--latency-budget 40%: the 40th percentile of the space's latencies (exact over 8,000 networks)."""
    from spnas_dsl.search.budget import latency_percentile

    space = load(FM_SPACE)
    graph = LatencyGraph.build(space, load_target(str(fm_table)))
    p40 = latency_percentile(space, graph, 40)
    assert graph.min_ms() < p40 < graph.max_ms()
    code, _out, err = search(FM_SPACE, "--target", fm_table, *TINY, "--epochs", "1", "--latency-budget", "40%",
                             "--method", "paper", "--out", tmp_path / "o", capsys=capsys)
    assert code == 0, err
    data, text = read_result(tmp_path / "o")
    assert data["config"]["budget_percentile"] == 40 and data["config"]["latency_budget"] is None
    assert 0.98 * p40 <= data["result"]["latency_ms"] <= p40
    assert "the 40th percentile of the space" in text
    code, _out, err = search(FM_SPACE, "--target", fm_table, *TINY, "--latency-budget", "140%", "--out",
                             tmp_path / "p", capsys=capsys)
    assert code == 2 and "between 0 and 100" in err and "Traceback" not in err


def test_methods_record_their_networks(fm_table, tmp_path, capsys):
    """--method paper writes the fitted thresholds' answer; --method evolution trains without a latency
    phase and starts its selection from the fit of that supernet's answer."""
    args = [*TINY, "--epochs", "2", "--latency-budget", "7", "--evaluations", "4"]
    assert search(FM_SPACE, "--target", fm_table, *args, "--method", "paper", "--out", tmp_path / "p")[0] == 0
    assert search(FM_SPACE, "--target", fm_table, *args, "--out", tmp_path / "e")[0] == 0  # default with a budget
    paper, _ = read_result(tmp_path / "p")
    evolution, text = read_result(tmp_path / "e")
    assert paper["result"]["method"] == "paper" and paper["result"]["selection"] is None
    assert paper["result"]["decisions"] == paper["result"]["budget_fit"]["decisions"]
    assert paper["warmup_steps"] < paper["total_steps"]
    assert evolution["result"]["method"] == "evolution" and evolution["warmup_steps"] == evolution["total_steps"]
    assert evolution["result"]["selection"]["start"]["decisions"] == evolution["result"]["budget_fit"]["decisions"]
    assert "no latency phase" in text


def test_evolution_needs_a_budget(fm_table, tmp_path, capsys):
    code, _out, err = search(FM_SPACE, "--target", fm_table, *TINY, "--lambda", "0.02", "--method", "evolution",
                             "--out", tmp_path / "o", capsys=capsys)
    assert code == 2 and "--method evolution searches a latency band" in err
