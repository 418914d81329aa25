"""The op registry: every block kind of the language, keyed by name; ``op_for`` finds an option's."""

from __future__ import annotations

from spnas_dsl.ir import Option
from spnas_dsl.ops._base import Op, Site
from spnas_dsl.ops._mbconv import DepthwiseSeparableOp, ExpandedE1Op, GroupedOp, InvertedResidualOp
from spnas_dsl.ops._skip import IdentityOp, ProjectionSkipOp

OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    """Add ``op`` to the registry (its name must be new); the registry-wide tests then cover it."""
    if op.name in OPS:
        raise ValueError(f"op '{op.name}' is already registered")
    OPS[op.name] = op
    return op


for _op in (InvertedResidualOp(), DepthwiseSeparableOp(), ExpandedE1Op(), GroupedOp(), IdentityOp(),
            ProjectionSkipOp()):
    register(_op)


def op_for(option: Option, site: Site) -> Op:
    """The op that ``option`` is at ``site`` (exactly one matches: tested over the registry)."""
    for op in OPS.values():
        if op.matches(option, site):
            return op
    raise ValueError(f"no registered op builds {option} at {site.text()}; known: {', '.join(OPS)}")


def option_kind(option: Option, site: Site) -> str:
    """The op kind (registry key) of ``option`` at ``site``."""
    return op_for(option, site).name
