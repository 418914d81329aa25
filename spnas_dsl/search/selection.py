"""Selecting the network after the supernet is trained: evolution with inherited weights.

The paper reads the network off the thresholds (``--method paper``). ``--method evolution``
starts there and then looks around it: candidate networks inside the latency band are scored
by the held-out accuracy of the trained supernet at their decisions (weights inherited, no
training; BatchNorm statistics re-estimated for each candidate, because the supernet's running
statistics mix every sub-network it trained), and a small constrained evolutionary search
(after SPOS, Guo et al. 2020) keeps the best, breeds them by uniform crossover and per-layer
mutation, and rejects every child outside the band, priced exactly by the latency graph.

Every candidate is scored on the same calibration batches and the same held-out images, so
differences between candidates are paired (the images' noise is shared). Candidates are ranked
by their held-out cross-entropy (lower is better), the accuracy breaking ties: the mean
cross-entropy is a continuous score, so it orders networks whose top-1 differs by a few images.
Measured against 25 networks trained from scratch (3 seeds each; docs/results.md, claim 2c,
``benchmarks/supernet_ranking.py``), six supernets' cross-entropy ranked them better than their
top-1 in 5 of 6 (Spearman +0.47 against +0.32 on average).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from spnas_dsl.search.budget import Decisions, Pricer


@dataclass
class EvolutionSettings:
    """How many networks the selection scores and how it breeds them."""

    evaluations: int = 48  # networks scored (the thresholds' answer and the initial population included)
    population: int = 12
    parents: int = 4  # the best networks kept each generation
    mutation: float = 0.2  # per-layer probability of a new random option
    tries: int = 2000  # draws to find one child inside the band


@dataclass
class Scored:
    decisions: Decisions
    accuracy: float
    ce: float
    latency_ms: float
    origin: str  # answer | random | mutation | crossover

    @property
    def key(self) -> tuple[float, float]:
        """Higher is better: the lower held-out cross-entropy, then the higher accuracy."""
        return (-self.ce, self.accuracy)

    def to_dict(self) -> dict:
        return {"decisions": {str(i): str(o) for i, o in sorted(self.decisions.items())}, "accuracy": self.accuracy,
                "ce": self.ce, "latency_ms": self.latency_ms, "origin": self.origin}


@dataclass
class SelectionResult:
    best: Scored
    answer: Scored  # the network the selection started from, scored the same way
    scored: list[Scored] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"best": self.best.to_dict(), "start": self.answer.to_dict(), "evaluations": len(self.scored),
                "seconds": self.seconds, "scored": [s.to_dict() for s in self.scored]}


class SupernetScorer:
    """Held-out scores of a trained supernet at given decisions (inherited weights, BN re-estimated).

    Scores a copy (indicator dropout off), so the supernet and the random state are untouched.
    Before each score the copy's BN statistics are re-estimated on ``calibration`` (the first
    ``calibration_images``; None: all of it) for those decisions (:func:`training.precise_bn`):
    the supernet's running statistics mix every sub-network it trained. ``info``: the process
    group (scores are summed over ranks). Used for the held-out accuracy at every epoch's end
    and for every candidate of the evolution (one batch list shared by all: paired scores).
    """

    def __init__(self, supernet, info, calibration, held_out, calibration_images: int | None = None):
        import copy

        self.probe = copy.deepcopy(supernet)
        self.probe.set_indicator_dropout(0.0)
        self.info = info
        self.calibration = calibration
        self.held_out = held_out
        self.calibration_images = calibration_images

    def scores(self, decisions: Decisions | None = None) -> dict[str, float]:
        """``{"top1", "loss", "images"}`` at ``decisions`` (None: the supernet's current ones)."""
        from spnas_dsl.training import evaluate, precise_bn

        if decisions is not None:
            self.probe.select(decisions)
        precise_bn(self.probe, self.calibration, self.calibration_images)
        return evaluate(self.probe, self.held_out, self.info, ks=(1,), logits_of=lambda out: out.logits)

    def __call__(self, decisions: Decisions) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) at ``decisions``: what :func:`evolve` ranks by (:attr:`Scored.key`)."""
        scores = self.scores(decisions)
        return scores["top1"], scores["loss"]


def evolve(start: Decisions, pricer: Pricer, score: Callable[[Decisions], tuple[float, float]], lo: float, hi: float,
           settings: EvolutionSettings, seed: int, log: Callable[[str], None] = lambda _: None) -> SelectionResult:
    """Constrained evolutionary selection inside ``lo <= latency <= hi`` starting from ``start``.

    ``start`` (the thresholds' answer, already fitted to the band) is scored first; the first
    population is mutations of it and uniform random networks of the band; each generation keeps
    the ``parents`` best scored networks and breeds the next population from them.
    """
    import time

    started = time.monotonic()
    rng = random.Random(seed)
    layers = sorted(pricer.options)
    cache: dict[tuple, Scored] = {}
    order: list[Scored] = []

    def key(d: Decisions) -> tuple:
        return tuple(str(d[i]) for i in layers)

    def in_band(d: Decisions) -> bool:
        return lo - 1e-9 <= pricer(d) <= hi + 1e-9

    def evaluate(d: Decisions, origin: str) -> Scored | None:
        k = key(d)
        if k in cache:
            return None
        acc, ce = score(d)
        s = Scored(dict(d), acc, ce, pricer(d), origin)
        cache[k] = s
        order.append(s)
        return s

    def draw(make: Callable[[], Decisions]) -> Decisions | None:
        for _ in range(settings.tries):
            d = make()
            if key(d) not in cache and in_band(d):
                return d
        return None

    def mutate(parent: Decisions) -> Decisions:
        child = dict(parent)
        for i in layers:
            if rng.random() < settings.mutation:
                child[i] = rng.choice(pricer.options[i])
        return child

    def crossover(a: Decisions, b: Decisions) -> Decisions:
        return {i: (a if rng.random() < 0.5 else b)[i] for i in layers}

    def uniform() -> Decisions:
        return {i: rng.choice(pricer.options[i]) for i in layers}

    answer = evaluate(start, "answer")
    assert answer is not None
    log(f"selection: start {_fmt(start, layers)} at {answer.latency_ms:.4g} ms: held-out CE {answer.ce:.4f}, "
        f"acc {answer.accuracy:.2%}")
    budget = max(settings.evaluations, 1)
    # first population: half around the answer, half uniform in the band
    for n in range(settings.population - 1):
        if len(order) >= budget:
            break
        make = (lambda: mutate(start)) if n % 2 == 0 else uniform
        d = draw(make)
        if d is not None:
            evaluate(d, "mutation" if n % 2 == 0 else "random")
    generation = 0
    while len(order) < budget:
        generation += 1
        parents = sorted(order, key=lambda s: s.key, reverse=True)[:settings.parents]
        made = 0
        for n in range(settings.population):
            if len(order) >= budget:
                break
            if n % 2 == 0 or len(parents) < 2:
                d = draw(lambda parents=parents: mutate(rng.choice(parents).decisions))
                origin = "mutation"
            else:
                a, b = rng.sample(parents, 2)
                d = draw(lambda a=a, b=b: mutate(crossover(a.decisions, b.decisions)) if rng.random() < 0.5
                         else crossover(a.decisions, b.decisions))
                origin = "crossover"
            if d is not None and evaluate(d, origin) is not None:
                made += 1
        best = max(order, key=lambda s: s.key)
        log(f"selection: generation {generation}, {len(order)} scored, best {_fmt(best.decisions, layers)} "
            f"CE {best.ce:.4f}, acc {best.accuracy:.2%} at {best.latency_ms:.4g} ms")
        if made == 0:  # the band holds no network not yet scored near the parents
            break
    best = max(order, key=lambda s: s.key)
    return SelectionResult(best, answer, order, time.monotonic() - started)


def _fmt(d: Decisions, layers: list[int]) -> str:
    return " ".join(str(d[i]) for i in layers)


def selection_scorer(s, *, selection_images: int, bn_batches: int) -> SupernetScorer:
    """The scorer :func:`select_in_band` ranks candidates with, for the search ``s`` (a
    :class:`spnas_dsl.search.setup.Setup`): BN re-estimated on the first ``bn_batches`` shuffled
    training batches (seed ``cfg.seed + 2``; only those are loaded), scores on at most
    ``selection_images`` held-out images (the subset drawn with seed ``cfg.seed + 3``), the same
    for every candidate."""
    import itertools

    from spnas_dsl.data import subset_indices

    seed = s.cfg.seed
    calib = list(itertools.islice(s.batches(s.data.train, seed=seed + 2), bn_batches))
    val = s.data.val
    if len(val) > selection_images:
        val = val.subset(subset_indices(len(val), selection_images, seed + 3))
    held_out = list(s.batches(val, seed=0, shuffle=False))
    return SupernetScorer(s.supernet, s.info, calib, held_out)


def select_in_band(s, start: Decisions, band: tuple[float, float] | None, *, evaluations: int,
                   selection_images: int, bn_batches: int, log: Callable[[str], None]) -> SelectionResult:
    """``--method evolution`` at the end of the search ``s`` (a :class:`spnas_dsl.search.setup.Setup`):
    the best network of the band by the supernet's held-out cross-entropy.

    ``band`` is the budget's ``(floor * budget, budget)``; None (no budget, or a budget the space
    cannot meet): ``[floor * L, L]``, L the latency of ``start`` and floor ``--budget-floor``.
    Every candidate is scored by :func:`selection_scorer` (the same BN batches and held-out
    images for all; scores are summed over the process group's ranks).
    """
    pricer = Pricer(s.space, s.graph)
    lo, hi = band if band is not None else (s.cfg.budget_floor * pricer(start), pricer(start))
    scorer = selection_scorer(s, selection_images=selection_images, bn_batches=bn_batches)
    images = sum(len(y) for _, y in scorer.held_out)
    log(f"selection: evolution in {lo:.4g} .. {hi:.4g} ms, {evaluations} networks, "
        f"{images} held-out images per network (per process)")
    return evolve(start, pricer, scorer, lo, hi, EvolutionSettings(evaluations=evaluations), seed=s.cfg.seed, log=log)
