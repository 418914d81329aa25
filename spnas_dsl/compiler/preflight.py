"""The rules a search enforces on a space, checked without building anything (no torch).

``spnasc check --for-search [--target T]`` reports them all, located, before a search runs:
the space must have a searched layer, every searched layer must nest in one superkernel
(``compiler.nesting``: what ``lower_to_supernet`` enforces) and, where a target is named, the
target's table must price every candidate (what ``LatencyGraph.build`` enforces).
"""

from __future__ import annotations

from typing import Any

from spnas_dsl.compiler.nesting import nesting_errors
from spnas_dsl.errors import SpnasError, UsageError
from spnas_dsl.ir import Network

__all__ = ["search_errors"]


def search_errors(space: Network, target: Any = None) -> list[SpnasError]:
    """Every error ``spnasc search`` would raise on ``space`` at lowering time (empty: it lowers).

    ``target``: a loaded target (or None: coverage is not checked).
    """
    errors: list[SpnasError] = []
    if not any(layer.is_searched for _, _, layer in space.iter_layers()):
        errors.append(UsageError(f"'{space.name}' is a concrete network, not a search space: nothing to search",
                                 space.span))
    seen = set()
    for error in nesting_errors(space):  # a repeated line (`4x mbconv ...`) is one error, at its text
        if (error.span, error.message) not in seen:
            seen.add((error.span, error.message))
            errors.append(error)
    if target is not None:
        from spnas_dsl.errors import TargetError
        from spnas_dsl.latency.graph import LatencyGraph

        try:
            LatencyGraph.build(space, target)
        except TargetError as exc:
            exc.span = exc.span or space.span  # the missing signatures are listed; point at the space
            errors.append(exc)
    return errors
