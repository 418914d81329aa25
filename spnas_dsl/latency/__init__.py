"""Latency prediction: a network's parts priced on a target (:class:`LatencyGraph`), the typed
nodes of that graph, and the decisions it prices as 0/1 indicators (:class:`LayerIndicators`).

Modules: ``graph`` (the graph), ``nodes`` (its node and row types), ``pricing`` (table lookup
and fixed groups), ``indicators`` (decisions; it needs torch, so it is imported from its module,
not handed on here: the front end prices networks without torch), ``score`` (a table against
measured networks).
"""

from spnas_dsl.latency.graph import LatencyGraph
from spnas_dsl.latency.nodes import FixedGroupUse, LatencyNode, LayerLatency, as_option

__all__ = ["FixedGroupUse", "LatencyGraph", "LatencyNode", "LayerLatency", "as_option"]
