"""Smoke tests of the claim benchmarks' helpers (benchmarks/): fast, no timing, no training."""

from __future__ import annotations

import pytest
import torch

from benchmarks import _results as R
from spnas_dsl.ir import Option
from spnas_dsl.parser import parse_text
from spnas_dsl.shapes import infer_shapes
from spnas_dsl.targets import load_target

TINY = """
network tiny {
    input 16x16x3
    classes 5
    width 1.0
    stem conv k=3 c=8 s=2
    stage a c=8 s=1 {
        mbconv k=3 e=1
    }
    stage b c=16 s=2 {
        mbconv k=<3,5> e=<3,6>
        mbconv k=<3,5> e=<3,6> | skip
    }
    stage c c=16 s=1 {
        mbconv k=<3,5,7> e=<2,4> | skip
    }
    head conv c=32 dropout=0.0
}
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread (restored afterwards): on a busy 2-core machine two OpenMP threads make
    these tiny convolutions many times slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def tiny():
    return parse_text(TINY, "tiny.spnas")


# ------------------------------------------------------------------------------ results.md sections
def test_replace_section_inserts_in_claim_order_and_keeps_the_rest():
    text = R.HEADER
    text = R.replace_section(text, "export_parity", "## five\nbody 5")
    text = R.replace_section(text, "search_cost", "## one\nbody 1")
    text = R.replace_section(text, "kernel_subsets", "## three")
    assert text.startswith(R.HEADER.rstrip("\n"))
    order = [text.index(f"<!-- claim:{n} -->") for n in ("search_cost", "kernel_subsets", "export_parity")]
    assert order == sorted(order)
    before = text
    text = R.replace_section(text, "kernel_subsets", "## three, again\nnew body")
    assert "new body" in text and "## three\n" not in text
    # everything outside the replaced section is byte-identical
    start, end = "<!-- claim:kernel_subsets -->", "<!-- /claim:kernel_subsets -->"
    assert before[:before.index(start)] == text[:text.index(start)]
    assert before[before.index(end):] == text[text.index(end):]
    assert R.replace_section(text, "kernel_subsets", "## three, again\nnew body") == text  # idempotent


def test_replace_section_unknown_name_appends_and_malformed_files_are_refused():
    text = R.replace_section("# doc\n", "other", "x")
    assert text.endswith("<!-- claim:other -->\nx\n<!-- /claim:other -->\n")
    with pytest.raises(ValueError):
        R.replace_section("<!-- claim:a -->\nno end\n", "a", "x")
    with pytest.raises(ValueError):
        R.replace_section("<!-- claim:a -->\n<!-- /claim:a -->\n<!-- claim:a -->\n<!-- /claim:a -->", "a", "x")
    with pytest.raises(ValueError):
        R.replace_section("", "bad name", "x")


def test_write_section_creates_then_updates_one_section(tmp_path):
    path = tmp_path / "docs" / "results.md"
    R.write_section("search_cost", "## one\nfirst", path)
    R.write_section("runtime_model", "## four\nfour", path)
    R.write_section("search_cost", "## one\nsecond", path)
    text = path.read_text()
    assert text.startswith("# Reproducing")
    assert R.read_section("search_cost", path) == "## one\nsecond"
    assert R.read_section("runtime_model", path) == "## four\nfour"
    assert R.read_section("export_parity", path) is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.md"]  # no temporary left behind


def test_section_header_and_tables():
    head = R.section_header("Claim X", "python -m benchmarks.x --quick", 1, ["extra line"])
    assert "- command: `python -m benchmarks.x --quick`" in head and "torch " in head and "- extra line" in head
    assert R.cpu_model()
    table = R.md_table(["a", "b"], [["x", 1], ["y", 2]])
    assert table.splitlines()[1] == "| :--- | ---: |"
    assert R.mean_std([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    assert R.mean_std([5.0]) == (5.0, 0.0)


# ------------------------------------------------------------------------------ multi-path supernet
def _decisions(space, options):
    return {s.index: o for s, o in zip(infer_shapes(space).layers, options) if s.layer.is_searched}


def test_multipath_with_one_hot_weights_is_the_single_option_network(tiny):
    from benchmarks.multipath import MixedOp, lower_to_multipath
    from spnas_dsl.profiling.models import choices, random_networks

    torch.manual_seed(0)
    net = lower_to_multipath(tiny)
    ops = net.mixed_ops()
    assert [len(op.options) for op in ops] == [4, 5, 7]
    assert all(isinstance(op, MixedOp) for op in ops)
    x = torch.randn(3, 3, 16, 16)
    net.train()
    net(x)  # BN statistics that are not the identity
    net.eval()
    concretes = random_networks(tiny, 6, seed=3)
    assert any(o.is_skip for n in concretes for o in choices(n))
    for concrete in concretes:
        decisions = _decisions(tiny, choices(concrete))
        out = net(x, net.one_hot(decisions))
        ref = net.extract(concrete).eval()(x)
        torch.testing.assert_close(out.logits, ref, rtol=0, atol=1e-6)
        assert out.latency_ms is None


def test_multipath_parameters_and_gradients(tiny):
    from benchmarks.multipath import lower_to_multipath
    from benchmarks.supernet_cost import largest_network
    from spnas_dsl.compiler.network import lower_to_network

    net = lower_to_multipath(tiny)
    alphas = sum(p.numel() for p in net.arch_parameters())
    assert alphas == 4 + 5 + 7  # one architecture parameter per candidate
    weights = sum(p.numel() for p in net.weight_parameters())
    assert weights + alphas == sum(p.numel() for p in net.parameters())
    largest = sum(p.numel() for p in lower_to_network(largest_network(tiny)).parameters())
    assert weights > largest  # every (k, e) option has weights of its own
    out = net(torch.randn(2, 3, 16, 16))
    out.logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.arch_parameters())
    assert set(net.decisions()) == {op.index for op in net.mixed_ops()}


def test_multipath_expected_latency_at_one_hot_is_the_table_prediction():
    from benchmarks.multipath import lower_to_multipath
    from spnas_dsl.latency.graph import LatencyGraph
    from spnas_dsl.profiling.models import choices, random_networks

    space = parse_text((R.REPO / "spaces" / "mnasnet.spnas").read_text(), "mnasnet.spnas")
    net = lower_to_multipath(space, target=load_target("pixel1")).eval()
    graph = LatencyGraph.build(space, load_target("pixel1"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for concrete in random_networks(space, 2, seed=5):
            out = net(x, net.one_hot(_decisions(space, choices(concrete))))
            assert float(out.latency_ms) == pytest.approx(graph.predict(concrete), rel=1e-5)
        uniform = float(net(x).latency_ms)
    assert graph.min_ms() < uniform < graph.max_ms()


# ------------------------------------------------------------------------------ per-claim helpers
def test_search_cost_fit_and_step(tiny):
    from benchmarks.multipath import lower_to_multipath
    from benchmarks.search_cost import fit_line, make_step

    fixed, per = fit_line([(4, 120.0), (16, 240.0)])
    assert (fixed, per) == (pytest.approx(80.0), pytest.approx(10.0))
    net = lower_to_multipath(tiny).train()
    step = make_step(net, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    before = [p.detach().clone() for p in net.arch_parameters()]
    wall, cpu = step()
    assert wall > 0 and cpu >= 0
    assert any(not torch.equal(a, p) for a, p in zip(before, net.arch_parameters()))


def test_search_quality_samples_within_the_band():
    from benchmarks.search_quality import Candidates, sample_in_band
    from spnas_dsl.latency.graph import LatencyGraph
    from spnas_dsl.passes import with_options

    space = parse_text((R.REPO / "spaces" / "mnasnet.spnas").read_text(), "mnasnet.spnas")
    graph = LatencyGraph.build(space, load_target("pixel1"))
    cands = Candidates(space, graph)
    picked, drawn = sample_in_band(cands, 3, 75.0, 80.0, seed=0)  # the paper's band
    assert len(picked) == 3 and drawn >= 3
    for d in picked:
        assert 75.0 <= cands.pricer(d) <= 80.0
        assert cands.pricer(d) == pytest.approx(graph.predict(with_options(space, d)))


def test_search_quality_baselines_are_the_largest_in_the_band():
    from benchmarks.search_quality import Candidates
    from spnas_dsl.latency.graph import LatencyGraph
    from spnas_dsl.passes import with_options
    from spnas_dsl.shapes import summarize

    space = parse_text((R.REPO / "spaces" / "mnasnet.spnas").read_text(), "mnasnet.spnas")
    graph = LatencyGraph.build(space, load_target("pixel1"))
    cands = Candidates(space, graph)
    pool, how = cands.pool(75.0, 80.0, seed=0, limit=3000)
    assert pool and "uniform draws" in how
    for d in pool[:5]:  # the layers' sizes plus the common stem and head are the network's
        net = summarize(with_options(space, d))
        params, macs = cands.size(d)
        assert net.params_min - params == summarize(with_options(space, pool[0])).params_min - cands.size(pool[0])[0]
        assert net.macs_min - macs == summarize(with_options(space, pool[0])).macs_min - cands.size(pool[0])[1]


def test_kernel_subsets_sampler_and_extract_agree():
    from benchmarks.kernel_subsets import KernelSampler, backbone, searched_indices
    from spnas_dsl.compiler.extract import extract
    from spnas_dsl.compiler.supernet import lower_to_supernet

    space = parse_text((R.REPO / "spaces" / "fashion_mnist.spnas").read_text(), "fashion_mnist.spnas")
    k3 = backbone(space, 3)
    assert all(s.layer.options[0] in (Option(kernel=3, expansion=6), Option(kernel=3, expansion=1))
               for s in infer_shapes(k3).layers)
    torch.manual_seed(0)
    supernet = lower_to_supernet(space)
    indices = searched_indices(space)
    sampler = KernelSampler(supernet, indices, "layer", seed=0)
    for _ in range(3):
        sampler()
        assert all(o.expansion == 6 and o.kernel in (3, 5) for o in supernet.decisions().values())
    assert sum(sampler.counts.values()) == 3 * len(indices)
    network_sampler = KernelSampler(supernet, indices, "network", seed=1)
    network_sampler()
    assert len({o.kernel for o in supernet.decisions().values()}) == 1
    supernet.select({i: Option(kernel=3, expansion=6) for i in indices})
    supernet.eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(supernet(x).logits, extract(supernet, k3).eval()(x), rtol=1e-4, atol=1e-5)


def test_runtime_model_table_coverage_and_export_percentile():
    from benchmarks.export_parity import percentile
    from benchmarks.runtime_model import table_covers

    pixel1 = R.REPO / "targets" / "pixel1.json"
    assert table_covers(R.REPO / "spaces" / "mnasnet.spnas", pixel1)
    assert not table_covers(R.REPO / "spaces" / "fashion_mnist.spnas", pixel1)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert percentile([0.0, 10.0], 0.9) == pytest.approx(9.0)


def test_search_quality_noise_separates_the_common_seed_effect():
    from benchmarks.search_quality import noise_of, percentile_among

    # three networks, two seeds; seed 1 is 2 points better for every network: no residual noise
    pooled, residual, seed_means = noise_of([[85.0, 87.0], [86.0, 88.0], [84.0, 86.0]])
    assert pooled == pytest.approx(2 ** 0.5) and residual == pytest.approx(0.0, abs=1e-9)
    assert seed_means == pytest.approx([85.0, 87.0])
    _, residual, _ = noise_of([[85.0, 87.0], [86.0, 87.0], [84.0, 87.0]])
    assert residual > 0.5
    assert percentile_among(3.0, [1.0, 2.0, 3.0, 4.0]) == pytest.approx(62.5)


def test_local_tables_extremes_drift_and_counts():
    from benchmarks.local_tables import FROM_NETWORKS, drift, extreme_networks, parse_counts
    from spnas_dsl.profiling import models as M

    space = parse_text((R.REPO / "spaces" / "fashion_mnist.spnas").read_text(), "fashion_mnist.spnas")
    largest, smallest = extreme_networks(space)
    assert M.network_id(largest) == "fashion_mnist:k3e1,k5e6,k5e6,k5e6,k5e6,k5e6,k5e6,k3e6"
    assert M.network_id(smallest) == "fashion_mnist:k3e1,k3e3,skip,k3e3,skip,k3e3,skip,k3e6"
    assert drift({"a": 2.0, "b": 3.0, "c": 1.0}, {"a": 1.0, "b": 2.0}) == pytest.approx(1.75)
    assert drift({"a": 1.0}, {}) is None
    assert parse_counts(["mnasnet=40"], FROM_NETWORKS) == {**FROM_NETWORKS, "mnasnet": 40}
    with pytest.raises(SystemExit):
        parse_counts(["mnasnet=5"], FROM_NETWORKS)


@pytest.mark.slow
def test_local_tables_quick_runs_both_modes_on_the_same_networks(tmp_path, monkeypatch):
    """``benchmarks.local_tables --quick`` on fashion_mnist (a tiny timing configuration: the machinery, not
    the figures): both tables built, both scored on the same held-out and extreme networks."""
    pytest.importorskip("ai_edge_litert")
    from benchmarks import local_tables
    from spnas_dsl.targets.measurements import load_measurements

    monkeypatch.setenv("SPNAS_CACHE_DIR", str(tmp_path / "cache"))
    before = R.RESULTS.read_bytes()
    (result,) = local_tables.main(["--quick", "--no-write", "--spaces", "fashion_mnist", "--work", str(tmp_path / "w")])
    assert R.RESULTS.read_bytes() == before  # --no-write
    assert result["layers"]["models_timed"] == 28 + 4 * 2 and result["networks"]["models_timed"] == 12
    held = load_measurements(result["truth"]["heldout_file"], "host-tflite")
    assert held.count == 6 and all(v > 0 for v in held.latency_ms)
    assert load_measurements(result["truth"]["extremes_file"], "host-tflite").count == 2
    for mode in ("layers", "networks"):
        scored = result[mode]["heldout"]
        assert scored["networks"] == 6 and scored["mape_pct"] >= 0 and -1 <= scored["spearman"] <= 1
        assert abs(result[mode]["largest_error_pct"]) < 100 and result[mode]["drift"] > 0
    assert (tmp_path / "w" / "report.json").exists()


def test_supernet_ranking_scores_a_real_supernet_against_trained_networks(tmp_path, capsys):
    """``benchmarks.supernet_ranking`` on a tiny real search and six 'trained' networks whose truth
    is their parameter count: the parameters row ranks them perfectly and picks the largest."""
    import itertools
    import json
    import sys
    from pathlib import Path

    from benchmarks import supernet_ranking
    from spnas_dsl.cli import main
    from spnas_dsl.parser import load
    from spnas_dsl.passes import with_options
    from spnas_dsl.shapes import summarize

    sys.path.insert(0, str(Path(__file__).parent))
    from test_search import FM_SPACE, TINY, write_table

    table = write_table(FM_SPACE, tmp_path / "tiny.json")
    out = tmp_path / "search"
    assert main(["search", str(FM_SPACE), "--target", str(table), *TINY, "--epochs", "1", "--latency-budget", "40%",
                 "--evaluations", "2", "--out", str(out)]) == 0
    space = load(FM_SPACE)
    layers = [s.index for s in infer_shapes(space).layers if s.layer.is_searched]
    options = [infer_shapes(space).layers[i].layer.options for i in layers]
    trained = tmp_path / "trained"
    for n, combo in enumerate(itertools.islice(itertools.product(*options), 0, 600, 100)):
        params = summarize(with_options(space, dict(zip(layers, combo)))).params_max
        slug = "_".join(map(str, combo))
        for seed in range(3):
            run = trained / f"{slug}-t{seed}"
            run.mkdir(parents=True)
            (run / "metrics.json").write_text(json.dumps({"top1": 0.5 + params * 1e-7 + 1e-4 * ((n + seed) % 3),
                                                          "parameters": params, "multiply_adds": 1000 - n}))
    best = max(json.loads(p.read_text())["top1"] for p in trained.glob("*-t*/metrics.json"))
    (trained / "stray-tx").mkdir()  # not a run's folder: skipped, as a run cut off while writing its metrics
    (trained / "stray-tx" / "metrics.json").write_text("{")
    capsys.readouterr()
    supernet_ranking.main(["--no-write", "--searches", str(out), "--trained", str(trained)])
    text = capsys.readouterr().out
    assert "6 networks scored" in text
    params_row = next(line for line in text.splitlines() if line.startswith("| parameters"))
    assert "+1.00" in params_row
    assert f"{100 * best:.2f}"[:4] in params_row
    with pytest.raises(SystemExit, match="no search checkpoint"):
        supernet_ranking.main(["--no-write", "--searches", str(tmp_path), "--trained", str(trained)])
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="damaged"):
        supernet_ranking.main(["--no-write", "--searches", str(tmp_path / "damaged"), "--trained", str(trained)])


def test_search_quality_refuses_counts_below_one(capsys):
    from benchmarks import search_quality

    with pytest.raises(SystemExit) as exit_info:
        search_quality.main(["--train-seeds", "0", "--no-write"])
    assert exit_info.value.code == 2 and "--train-seeds must be >= 1, got 0" in capsys.readouterr().err
