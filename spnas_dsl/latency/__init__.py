"""Latency prediction: layer signatures and the :class:`LatencyGraph` of a network on a target.

``LatencyGraph`` is imported lazily (``from spnas_dsl.latency import LatencyGraph`` works) so
that the table module can use the signature helpers without an import cycle.
"""

from __future__ import annotations

from typing import Any

from spnas_dsl.latency.signature import (
    head_signature,
    is_signature,
    layer_signature,
    mbconv_signature,
    parse_mbconv_signature,
    stem_signature,
)

__all__ = [
    "LatencyGraph", "LayerLatency", "head_signature", "is_signature", "layer_signature", "mbconv_signature",
    "parse_mbconv_signature", "stem_signature",
]


def __getattr__(name: str) -> Any:
    if name in ("LatencyGraph", "LayerLatency"):
        from spnas_dsl.latency import graph

        return getattr(graph, name)
    raise AttributeError(f"module 'spnas_dsl.latency' has no attribute '{name}'")
