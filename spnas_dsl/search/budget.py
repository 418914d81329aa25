"""Landing a search on its latency budget: the supernet's most valued network inside the band.

The thresholds' answer of a budget search is rarely on the budget: lambda is steered by the
hard latency, but the decisions move in discrete jumps, so the search ends somewhere under
(or over) it. :func:`fit_to_budget` replaces the one-way greedy repair: it picks, over the
whole space, the network that the supernet values most among those whose predicted latency
lies in ``[floor * budget, budget]``, priced exactly by the latency graph.

The value of a network is the sum over its searched layers of the value of their options;
the value of an option is the sum of the *relative margins* ``(norm - threshold) / (|norm| +
|threshold|)`` of the decisions it turns on (its kernel shells beyond the smallest, its channel
groups beyond the first, and the layer itself where skip is a candidate). The thresholds'
answer turns on exactly the decisions with a positive margin, so it is the unconstrained
maximum: inside the band the fit moves away from it both ways, dropping the decisions the
supernet kept on least firmly and adding those it came closest to keeping, at the best value
per ms. Relative margins make kernel-shell and channel-group norms (of different scales)
comparable.

The search over the space is a multiple-choice knapsack solved exactly by dynamic programming
over the raw table latency in steps of ``resolution * budget`` (the band's edges are checked on
exact sums).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spnas_dsl.ir import Layer, Network, Option
from spnas_dsl.passes import with_options
from spnas_dsl.shapes import infer_shapes

Decisions = dict[int, Option]  # searched layer index -> its option

DEFAULT_FLOOR = 0.98  # the written network is at least 98 % of the budget (when the space allows)


@dataclass
class BudgetMove:
    """One layer whose decision the fit changed (relative to the thresholds' answer)."""

    index: int
    before: str
    after: str
    delta_ms: float  # raw table ms added (> 0) or saved (< 0)
    delta_value: float  # change of the supernet's value (<= 0 by construction of the answer)

    def __str__(self) -> str:
        return f"layer {self.index} {self.before}->{self.after} ({self.delta_ms:+.4g} ms)"


@dataclass
class BudgetFit:
    """The network the fit chose and how it relates to the band."""

    decisions: dict[int, Option]
    latency_ms: float  # predicted (calibrated)
    budget: float
    floor_ms: float
    in_band: bool  # floor_ms <= latency_ms <= budget
    moves: list[BudgetMove] = field(default_factory=list)
    note: str = ""  # why the band could not be reached, when it could not

    def describe(self) -> str:
        """One line for the header of ``arch.spnas``."""
        where = (f"{self.latency_ms:.4g} ms, in the band {self.floor_ms:.4g} .. {self.budget:.4g} ms"
                 if self.in_band else f"{self.latency_ms:.4g} ms ({self.note})")
        moves = ", ".join(str(m) for m in self.moves) if self.moves else "none (the thresholds' answer is in the band)"
        return f"budget fit: {where}; moves: {moves}"


def relative_margin(norm: float, threshold: float) -> float:
    """``(norm - threshold) / (|norm| + |threshold|)`` in [-1, 1] (0 when both are 0)."""
    scale = abs(norm) + abs(threshold)
    return 0.0 if scale == 0 else (norm - threshold) / scale


def option_value(layer: Layer, option: Option, margins: dict[str, float]) -> float:
    """The supernet's value of ``option`` at a searched ``layer``: the summed margins of the
    decisions it turns on (``margins``: decision name -> relative margin, e.g. ``k5``, ``e6``,
    ``skip``; a decision missing from it counts 0)."""
    if option.is_skip:
        return 0.0
    value = margins.get("skip", 0.0) if layer.skip else 0.0
    kernels = sorted(layer.kernel.values) if layer.kernel else []
    expansions = sorted(layer.expansion.values) if layer.expansion else []
    value += sum(margins.get(f"k{k}", 0.0) for k in kernels[1:] if k <= (option.kernel or 0))
    value += sum(margins.get(f"e{e}", 0.0) for e in expansions[1:] if e <= (option.expansion or 0))
    return value


def margins_of(report: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Layer index -> decision name -> relative margin, from ``Supernet.decision_report()``."""
    return {int(r["index"]): {name: relative_margin(d["norm"], d["threshold"]) for name, d in r["decisions"].items()}
            for r in report}


class Pricer:
    """Exact predicted latency of a decision set, fast (per-option table figures cached)."""

    def __init__(self, space: Network, graph):
        self.graph = graph
        self.options = {s.index: list(s.layer.options) for s in infer_shapes(space).layers if s.layer.is_searched}
        self.ms = {i: {o: graph.option_latency(i, o) for o in opts} for i, opts in self.options.items()}
        self.fixed = graph.fixed_ms

    def __call__(self, decisions: Decisions) -> float:
        return float(self.graph.calibrate(self.fixed + sum(self.ms[i][o] for i, o in decisions.items())))


def fit_to_budget(space: Network, graph, decisions: dict[int, Option], report: list[dict[str, Any]],
                  budget: float, floor: float = DEFAULT_FLOOR, resolution: float = 2e-4) -> BudgetFit:
    """The most valued network of ``space`` with ``floor * budget <= predicted <= budget``.

    ``decisions`` is the thresholds' answer (layer index -> option), ``report`` the supernet's
    decision report (norms and thresholds), ``graph`` the space's :class:`LatencyGraph`. When no
    network of the space lies in the band, the closest one at or under the budget is returned
    (and ``in_band`` is False, ``note`` says why); when even the fastest network is over the
    budget, the fastest network.
    """
    layers = {s.index: s.layer for s in infer_shapes(space).layers if s.index in decisions}
    margins = margins_of(report)
    indices = sorted(layers)
    floor_ms = floor * budget
    step = max(resolution * budget, 1e-12)

    fixed = graph.fixed_ms
    priced_layers = [[(o, graph.option_latency(i, o), option_value(layers[i], o, margins.get(i, {})))
                      for o in layers[i].options] for i in indices]
    # the least the layers after each one can add: partial sums that cannot end under the budget are dropped
    rest = [0.0] * (len(indices) + 1)
    for j in range(len(indices) - 1, -1, -1):
        rest[j] = rest[j + 1] + min(ms for _, ms, _ in priced_layers[j])
    if float(graph.calibrate(fixed + rest[0])) > budget + 1e-9:  # even the fastest network is over
        fastest = {i: min(priced, key=lambda p: p[1])[0] for i, priced in zip(indices, priced_layers)}
        return _result(space, graph, layers, margins, decisions, fastest, budget, floor_ms, False,
                       f"every network of the space is over the budget; the fastest is "
                       f"{float(graph.calibrate(fixed + rest[0])):.4g} ms")

    # every partial sum is compared in raw table ms: the calibration is inverted once, not applied per state
    raw_limit = graph.target.calibration.invert(budget) - fixed + 1e-9
    # state: bin of the raw sum -> (value, exact raw sum, options so far); ties keep the higher value
    states: dict[int, tuple[float, float, tuple[Option, ...]]] = {0: (0.0, 0.0, ())}
    for j, priced in enumerate(priced_layers):
        nxt: dict[int, tuple[float, float, tuple[Option, ...]]] = {}
        for value, raw, chosen in states.values():
            for option, ms, v in priced:
                total = raw + ms
                if total + rest[j + 1] > raw_limit:
                    continue
                key = int(total // step)
                cand = (value + v, total, chosen + (option,))
                old = nxt.get(key)
                if old is None or cand[0] > old[0] + 1e-12:
                    nxt[key] = cand
        states = nxt

    scored = [(value, float(graph.calibrate(fixed + raw)), chosen) for value, raw, chosen in states.values()]
    in_band = [s for s in scored if floor_ms - 1e-9 <= s[1] <= budget + 1e-9]
    note = ""
    if in_band:
        best = max(in_band, key=lambda s: (s[0], s[1]))
    else:
        best = max(scored, key=lambda s: (s[1], s[0]))  # every state left is under the budget
        note = (f"no network of the space lies in {floor_ms:.4g} .. {budget:.4g} ms; the closest under the budget "
                f"is {best[1]:.4g} ms")
    return _result(space, graph, layers, margins, decisions, dict(zip(indices, best[2])), budget, floor_ms,
                   bool(in_band), note)


def _result(space, graph, layers, margins, decisions, chosen, budget, floor_ms, in_band, note) -> BudgetFit:
    """The fit of ``chosen`` with its moves away from ``decisions``."""
    moves = []
    for index in sorted(layers):
        before, after = decisions[index], chosen[index]
        if before != after:
            layer, m = layers[index], margins.get(index, {})
            moves.append(BudgetMove(index, str(before), str(after),
                                    graph.option_latency(index, after) - graph.option_latency(index, before),
                                    option_value(layer, after, m) - option_value(layer, before, m)))
    latency = graph.predict(with_options(space, chosen))
    return BudgetFit(chosen, latency, budget, floor_ms, in_band, moves, note)


def latency_percentile(space: Network, graph, percent: float, samples: int = 20_000, seed: int = 0) -> float:
    """The ``percent``-th percentile (ms) of the predicted latencies of the networks of ``space``
    (each searched layer's option drawn uniformly; exact over the space when it has at most
    ``samples`` networks). Makes a budget portable between machines: ``--latency-budget 40%``
    asks for a network faster than 60 % of the space on whatever machine timed the table."""
    import itertools
    import math
    import random

    pricer = Pricer(space, graph)
    layers = sorted(pricer.options)
    total = math.prod(len(pricer.options[i]) for i in layers)
    if total <= samples:
        combos = itertools.product(*(pricer.options[i] for i in layers))
    else:
        rng = random.Random(seed)
        combos = (tuple(rng.choice(pricer.options[i]) for i in layers) for _ in range(samples))
    values = sorted(pricer(dict(zip(layers, c))) for c in combos)
    position = percent / 100 * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)
