"""The op registry: one entry per block kind (candidate parameters, cost, torch module, Keras
lowering, latency signature, timm string, whether it nests in the superkernel).

How to add an op: docs/compiler.md ("How to add an op").
"""

from spnas_dsl.ops._base import Op, Site
from spnas_dsl.ops._registry import OPS, op_for, option_kind, register

__all__ = ["OPS", "Op", "Site", "op_for", "option_kind", "register"]
