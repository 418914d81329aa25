"""Search methods (``--method``): how the supernet is trained and how the network is picked at the end.

Every method trains the same supernet with the same loop (:mod:`spnas_dsl.search.loop`); a
method decides the share of the run spent in the warm-up (lambda 0, indicator dropout), whether
it needs a latency band (``--latency-budget``), and how the network is picked when the training
ends (:meth:`Method.pick`, given an :class:`Ending`). To add one: write its ``pick``, add a
:class:`Method` to :data:`METHODS`, document it in docs/search.md ("Methods") and in the list of
docs/compiler.md ("How to add a search method"); ``tests/test_search.py`` runs a tiny search with
every registered method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spnas_dsl.search.budget import BudgetFit, Decisions

OFFICIAL_WARMUP_FRACTION = 6255 / 10008  # official code: 6255 warm-up steps of 10008


@dataclass
class Ending:
    """What a method sees when the supernet's training ends."""

    setup: Any  # the search's :class:`spnas_dsl.search.setup.Setup`
    answer: Decisions  # the thresholds' decisions
    fit: BudgetFit | None  # the answer fitted into the budget band (with a budget)
    accuracy: float  # the supernet's held-out accuracy at the answer (last epoch)
    log: Callable[[str], None]


@dataclass
class Picked:
    decisions: Decisions
    accuracy: float  # held-out accuracy of the supernet at ``decisions`` (inherited weights)
    selection: Any = None  # selection.SelectionResult (evolution)


def pick_paper(end: Ending) -> Picked:
    """The thresholds' answer (fitted into the band with a budget), as the paper reads it."""
    decisions = end.fit.decisions if end.fit is not None else end.answer
    if decisions == end.answer:
        return Picked(decisions, end.accuracy)
    s = end.setup  # the fitted network's accuracy with the supernet's weights (no fine-tuning)
    s.supernet.select(decisions)
    return Picked(decisions, s.evaluate(s.cfg.epochs)["top1"])


def pick_evolution(end: Ending) -> Picked:
    """The best network of the band by the supernet's held-out cross-entropy (:mod:`spnas_dsl.search.selection`)."""
    from spnas_dsl.search.config import BN_RECALIBRATION_BATCHES
    from spnas_dsl.search.selection import select_in_band

    s, fit = end.setup, end.fit
    start = fit.decisions if fit is not None else end.answer
    band = (fit.floor_ms, fit.budget) if fit is not None and fit.in_band else None
    selection = select_in_band(s, start, band, evaluations=s.cfg.evaluations, selection_images=s.cfg.selection_images,
                               bn_batches=BN_RECALIBRATION_BATCHES, log=end.log)
    return Picked(selection.best.decisions, selection.best.accuracy, selection)


@dataclass(frozen=True)
class Method:
    name: str
    pick: Callable[[Ending], Picked]
    warmup_fraction: float  # default share of the epochs in the warm-up (--warmup-epochs overrides)
    needs_band: bool  # refuses to run without --latency-budget


METHODS: dict[str, Method] = {
    "evolution": Method("evolution", pick_evolution, warmup_fraction=1.0, needs_band=True),
    "paper": Method("paper", pick_paper, warmup_fraction=OFFICIAL_WARMUP_FRACTION, needs_band=False),
}
