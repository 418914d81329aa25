"""The evolution's selection inside the latency band (spnas_dsl.search.selection.evolve), with a
known score over the real fashion_mnist space priced by a real latency table."""

from __future__ import annotations

import itertools
import random
import sys
from pathlib import Path

import pytest

from spnas_dsl.latency.graph import LatencyGraph
from spnas_dsl.parser import load
from spnas_dsl.search.budget import Pricer
from spnas_dsl.search.selection import EvolutionSettings, evolve
from spnas_dsl.targets import load_target

sys.path.insert(0, str(Path(__file__).parent))
from test_search import FM_SPACE, write_table


@pytest.fixture(scope="module")
def pricer(tmp_path_factory) -> Pricer:
    table = write_table(FM_SPACE, tmp_path_factory.mktemp("table") / "tiny.json")
    space = load(FM_SPACE)
    return Pricer(space, LatencyGraph.build(space, load_target(str(table))))


def every_network(pricer: Pricer) -> list[dict]:
    layers = sorted(pricer.options)
    return [dict(zip(layers, combo)) for combo in itertools.product(*(pricer.options[i] for i in layers))]


def hidden_quality(decisions: dict) -> float:
    """A score with structure (larger options better in early layers, kernels in late ones) and no
    monotone shortcut: what the selection must find."""
    q = 0.0
    for i, o in decisions.items():
        if o.is_skip:
            q -= 0.3
            continue
        q += (0.4 if o.expansion == 6 else 0.0) * (1.0 if i < 4 else 0.2) + (0.5 if o.kernel == 5 else 0.0) * (i % 2)
    return q


def band_of(pricer: Pricer, networks: list[dict], quantile: float = 0.4) -> tuple[float, float]:
    latencies = sorted(pricer(d) for d in networks)
    budget = latencies[int(quantile * len(latencies))]
    return 0.98 * budget, budget


def test_evolution_stays_in_band_and_finds_a_top_network(pricer):
    networks = every_network(pricer)
    lo, hi = band_of(pricer, networks)
    in_band = sorted((hidden_quality(d) for d in networks if lo <= pricer(d) <= hi), reverse=True)
    assert len(in_band) > 100  # the band is a real choice
    start = next(d for d in networks if lo <= pricer(d) <= hi)

    def score(d: dict) -> tuple[float, float]:
        q = hidden_quality(d)
        return 0.5 + 0.01 * q, 1.0 - 0.1 * q  # (accuracy, cross-entropy): both agree here

    result = evolve(start, pricer, score, lo, hi, EvolutionSettings(evaluations=48), seed=0)
    assert result.answer.decisions == start and result.scored[0].origin == "answer"
    assert len(result.scored) <= 48
    assert len({tuple(sorted((i, str(o)) for i, o in s.decisions.items())) for s in result.scored}) == len(result.scored)
    assert all(lo - 1e-9 <= s.latency_ms <= hi + 1e-9 for s in result.scored)
    assert result.best.latency_ms == pytest.approx(pricer(result.best.decisions))
    # 48 of the band's networks scored, the best of them among the band's top 5 %
    assert hidden_quality(result.best.decisions) >= in_band[len(in_band) // 20]
    # better than the median of as many uniform draws from the band (the evolution searches)
    rng = random.Random(1)
    band = [d for d in networks if lo <= pricer(d) <= hi]
    assert hidden_quality(result.best.decisions) > sorted(hidden_quality(d) for d in rng.sample(band, 48))[24]


def test_evolution_ranks_by_cross_entropy_then_accuracy(pricer):
    """The held-out cross-entropy decides (lower is better); accuracy only breaks its ties."""
    networks = every_network(pricer)
    lo, hi = band_of(pricer, networks)
    start = next(d for d in networks if lo <= pricer(d) <= hi)

    def score(d: dict) -> tuple[float, float]:
        q = hidden_quality(d)
        return 0.9 - 0.01 * q, round(1.0 - 0.1 * q, 1)  # accuracy disagrees; CE ties in steps of 0.1

    result = evolve(start, pricer, score, lo, hi, EvolutionSettings(evaluations=24), seed=3)
    best_ce = min(s.ce for s in result.scored)
    assert result.best.ce == best_ce
    assert result.best.accuracy == max(s.accuracy for s in result.scored if s.ce == best_ce)
