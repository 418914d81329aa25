"""The latency graph: a network's parts in order, each with the target's latency of each candidate.

Nodes are :class:`~spnas_dsl.latency.nodes.LatencyNode` (keys ``"stem"``, ``0 .. n-1`` for the
MBConv layers, ``"head"``), joined by edges in network order; :meth:`LatencyGraph.node` returns one.

Totals are ``calibration.scale * raw_sum + calibration.offset_ms`` (identity by default);
per-layer figures (:meth:`LatencyGraph.option_latency`, :meth:`LatencyGraph.breakdown`,
:attr:`LatencyGraph.fixed_ms`) are the table's raw figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import networkx as nx

from spnas_dsl.errors import TargetError, UsageError
from spnas_dsl.ir import Network, Option
from spnas_dsl.latency.nodes import (
    HEAD,
    STEM,
    FixedGroupUse,
    LatencyNode,
    LayerLatency,
    NodeKey,
    as_option,
    hwc_text,
)
from spnas_dsl.latency.pricing import missing_message, price_nodes
from spnas_dsl.shapes import infer_shapes
from spnas_dsl.targets.registry import Target
from spnas_dsl.targets.signature import head_signature, layer_signature, stem_signature

if TYPE_CHECKING:
    import torch

    from spnas_dsl.latency.indicators import LayerIndicators

__all__ = ["FixedGroupUse", "LatencyGraph", "LatencyNode", "LayerLatency", "as_option"]


class LatencyGraph:
    """A network (or space) priced on a target. Build with :meth:`LatencyGraph.build`."""

    def __init__(self, network: Network, target: Target, graph: nx.DiGraph, groups: list[FixedGroupUse]):
        self.network = network
        self.target = target
        self.graph = graph  # node attribute "node": the LatencyNode; edge attribute "hwc"
        self.groups = groups
        self.order: list[NodeKey] = list(nx.topological_sort(graph))
        self.nodes: dict[NodeKey, LatencyNode] = {key: graph.nodes[key]["node"] for key in self.order}
        self._layer_tables: dict[tuple, list] = {}  # (device, dtype) -> per searched layer (index, R, R_skip)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, network: Network, target: Target) -> LatencyGraph:
        """Price every candidate of every part of ``network`` on ``target`` (resolved by the
        command: :func:`spnas_dsl.targets.load_target`).

        Raises :class:`TargetError` listing every signature the target's table lacks, with how
        to profile them.
        """
        if not isinstance(target, Target):
            raise TypeError(f"LatencyGraph.build needs a Target (spnas_dsl.targets.load_target), not {target!r}")
        shapes = infer_shapes(network)
        parts = [LatencyNode(key=STEM, kind="stem", name="stem", index=None, op="conv", in_hwc=shapes.input_hwc,
                             out_channels=shapes.stem_out[2], stride=network.stem.stride, candidates=(None,),
                             signatures={None: stem_signature(network, shapes)}, label=f"k{network.stem.kernel}")]
        for s in shapes.layers:
            options = tuple(s.layer.options)
            parts.append(LatencyNode(key=s.index, kind="mbconv", name=s.name, index=s.index, op="mbconv",
                                     in_hwc=s.in_hwc, out_channels=s.out_hwc[2], stride=s.stride, candidates=options,
                                     signatures={o: layer_signature(s, o) for o in options}))
        parts.append(LatencyNode(key=HEAD, kind="head", name="head", index=None, op="head", in_hwc=shapes.head_in,
                                 out_channels=shapes.head_channels, stride=1, candidates=(None,),
                                 signatures={None: head_signature(shapes)}, label=f"c{shapes.head_channels}"))
        parts, groups = price_nodes(network, parts, target)
        g = nx.DiGraph()
        for previous, node in zip([None, *parts], parts):
            g.add_node(node.key, node=node)
            if previous is not None:
                g.add_edge(previous.key, node.key, hwc=node.in_hwc)
        graph = cls(network, target, g, groups)
        # Every prediction of the space must be a positive number of milliseconds: a calibration
        # offset far below zero would otherwise print -919.56 ms and drive a search into nonsense.
        fastest = graph.min_ms()
        if not fastest > 0:
            cal = target.calibration
            raise TargetError(
                f"target '{target.name}' ({target.path}): its calibration (scale {cal.scale:g}, offset_ms "
                f"{cal.offset_ms:g}) predicts {fastest:.2f} ms for the fastest network of '{network.name}'; "
                "predictions must be positive: fix or refit the table's calibration"
            )
        return graph

    # ------------------------------------------------------------------ structure
    def node(self, key: NodeKey) -> LatencyNode:
        """Node ``key`` (``"stem"``, a layer index, or ``"head"``)."""
        if key not in self.nodes:
            raise UsageError(f"network '{self.network.name}' has no layer {key}")
        return self.nodes[key]

    def layer_keys(self) -> list[int]:
        """The MBConv layer indices, in order."""
        return [k for k in self.order if isinstance(k, int)]

    def searched(self) -> list[int]:
        """Indices of the layers with more than one candidate."""
        return [k for k in self.layer_keys() if self.nodes[k].is_searched]

    def calibrate(self, raw_ms: Any) -> Any:
        """Apply the table's calibration (``scale * raw + offset_ms``) to a raw sum (float or tensor)."""
        return self.target.calibration.apply(raw_ms)

    @property
    def fixed_ms(self) -> float:
        """Raw latency of everything that has one candidate: fixed groups, stem, head, concrete layers."""
        total = sum(g.latency_ms for g in self.groups)
        for key in self.order:
            node = self.nodes[key]
            if node.fixed_group is None and len(node.candidates) == 1:
                total += node.latency_ms[node.candidates[0]]
        return total

    # ------------------------------------------------------------------ per option
    def option_latency(self, index: int, option: Option | str) -> float:
        """Raw table latency (ms) of ``option`` at MBConv layer ``index`` (0 for a skip).

        An option that is not a candidate of the layer is looked up on the fly (same shape).
        """
        option = as_option(option)
        node = self.node(index)
        if option in node.latency_ms:
            return node.latency_ms[option]
        if node.fixed_group is not None:
            if option in node.candidates:
                raise TargetError(
                    f"layer {index} ({node.name}) is priced jointly in fixed group {node.fixed_group} "
                    f"of target '{self.target.name}'; it has no latency of its own"
                )
            raise TargetError(
                f"layer {index} ({node.name}) is fixed to {node.candidates[0]} in '{self.network.name}' "
                f"and priced in a fixed group of target '{self.target.name}': {option} cannot be priced there"
            )
        if option.is_skip:
            return 0.0
        shape = next(s for s in infer_shapes(self.network).layers if s.index == index)
        sig = layer_signature(shape, option)
        found = self.target.lookup(sig, index)
        if found is None:
            raise TargetError(missing_message(self.network, self.target, [(node.where, sig)], []))
        return found.latency_ms

    def _options_of(self, concrete: Network) -> list[Option]:
        """The chosen option of each layer of ``concrete``, checked against this macro-architecture."""
        if not concrete.is_concrete:
            raise UsageError(f"'{concrete.name}' is a search space: pick one option per layer to predict its latency")
        shapes = infer_shapes(concrete)
        ours = infer_shapes(self.network)
        problems = []
        if stem_signature(concrete, shapes) != self.nodes[STEM].signatures[None]:
            problems.append("stem differs")
        if head_signature(shapes) != self.nodes[HEAD].signatures[None]:
            problems.append("head differs")
        if len(shapes.layers) != len(ours.layers):
            problems.append(f"{len(shapes.layers)} layers instead of {len(ours.layers)}")
        else:
            for a, b in zip(shapes.layers, ours.layers):
                if (a.in_hwc, a.out_hwc, a.stride) != (b.in_hwc, b.out_hwc, b.stride):
                    problems.append(f"layer {a.index}: {hwc_text(a.in_hwc)} -> {hwc_text(a.out_hwc)} s{a.stride} instead of "
                                    f"{hwc_text(b.in_hwc)} -> {hwc_text(b.out_hwc)} s{b.stride}")
                    break
        if problems:
            raise UsageError(f"network '{concrete.name}' does not have the macro-architecture of "
                             f"'{self.network.name}': {'; '.join(problems)}")
        return [s.layer.options[0] for s in shapes.layers]

    # ------------------------------------------------------------------ whole networks
    def breakdown(self, concrete: Network | None = None) -> list[LayerLatency]:
        """Per-part latencies of ``concrete`` (default: this graph's network, if concrete), in order.

        Parts priced in a fixed group have ``latency_ms=None`` and their ``fixed_group`` set; the
        raw total is ``sum(row latencies) + sum(group latencies)``.
        """
        options = self._options_of(concrete if concrete is not None else self.network)
        rows = []
        for key in self.order:
            node = self.nodes[key]
            group = node.fixed_group
            if isinstance(key, int):
                option = options[key]
                if group is not None and option != node.candidates[0]:
                    self.option_latency(key, option)  # raises: the group cannot price this option
                op, choice, sig = ("skip" if option.is_skip else "mbconv"), str(option), node.signatures.get(option)
                if sig is None and not option.is_skip:
                    sig = layer_signature(_shape(self.network, key), option)
            else:
                option, op, choice, sig = None, node.op, node.label, node.signatures[None]
            if group is not None:
                latency, rule = None, "group"
            elif isinstance(key, int):
                latency = self.option_latency(key, option)
                rule = node.rules.get(option) or ("skip" if option.is_skip else self._rule(sig, key))
            else:
                latency, rule = node.latency_ms[None], node.rules[None]
            rows.append(LayerLatency(
                name=node.name, index=node.index, op=op, choice=choice, input=hwc_text(node.in_hwc),
                out_channels=node.out_channels, stride=node.stride, signature=sig,
                latency_ms=latency, fixed_group=group, rule=rule,
            ))
        return rows

    def _rule(self, sig: str, index: int) -> str:
        found = self.target.lookup(sig, index)
        return found.rule if found else ""

    def raw_total(self, concrete: Network | None = None) -> float:
        """Uncalibrated sum of the table figures of ``concrete``."""
        rows = self.breakdown(concrete)
        return sum(g.latency_ms for g in self.groups) + sum(r.latency_ms or 0.0 for r in rows)

    def predict(self, concrete: Network | None = None) -> float:
        """Predicted latency (ms, calibrated) of a concrete network of this macro-architecture."""
        return float(self.calibrate(self.raw_total(concrete)))

    def _extreme(self, pick) -> float:
        total = self.fixed_ms
        for key in self.searched():
            total += pick(self.nodes[key].latency_ms.values())
        return float(self.calibrate(total))

    def min_ms(self) -> float:
        """Latency (ms, calibrated) of the fastest network of the space (layer choices are independent)."""
        return self._extreme(min)

    def max_ms(self) -> float:
        """Latency (ms, calibrated) of the slowest network of the space."""
        return self._extreme(max)

    def _per_layer(self, sign: int) -> list[Option]:
        chosen = []
        for key in self.layer_keys():
            node = self.nodes[key]
            if len(node.candidates) == 1:
                chosen.append(node.candidates[0])
                continue
            latency = node.latency_ms
            chosen.append(max(node.candidates, key=lambda o, ms=latency: (
                sign * ms[o], sign * (o.kernel or 0), sign * (o.expansion or 0))))
        return chosen

    def largest(self) -> list[Option]:
        """The slowest option of each layer (ties: larger kernel, then expansion): the maximum-latency network."""
        return self._per_layer(+1)

    def smallest(self) -> list[Option]:
        """The fastest option of each layer (ties: smaller kernel, then expansion, skip first)."""
        return self._per_layer(-1)

    # ------------------------------------------------------------------ differentiable
    def relaxed_latency(self, indicators: dict[int, LayerIndicators]) -> torch.Tensor:
        """Differentiable latency (ms, calibrated), paper Eq. 9-12 generalised.

        ``fixed_ms + sum over searched layers i of sum_o weight_i(o) * R_i(o)`` with the weights of
        :meth:`LayerIndicators.option_weights`; at hard 0/1 indicators it equals :meth:`predict` of
        the chosen network. Layers absent from ``indicators`` must be concrete (one candidate).
        """
        import torch

        if not indicators:
            return torch.as_tensor(self.calibrate(float(self.fixed_ms)))
        sample = next(iter(indicators.values()))
        ref = next((t for t in (*sample.kernel_on, *sample.expansion_on, sample.active) if t is not None), None)
        batches = self._tables(ref.device if ref is not None else torch.device("cpu"),
                               ref.dtype if ref is not None else torch.float32)
        total: Any = self.fixed_ms
        for keys, grid, skip_ms in batches:
            missing = [key for key in keys if key not in indicators]
            if missing:
                raise ValueError(f"layer {missing[0]} ({self.nodes[missing[0]].name}) is searched but has no indicators")
            layers = [indicators[key] for key in keys]
            # Every layer with this grid shape at once (a supernet step prices all of them; per layer,
            # the few tiny ops cost more than their arithmetic): P(kernel level) and P(expansion level)
            # as (layers, levels) matrices, then E[R] = pk @ R @ pe per layer, the multilinear form
            # of LayerIndicators.option_weights.
            pk = _level_rows([ind.kernel_on for ind in layers], grid)
            pe = _level_rows([ind.expansion_on for ind in layers], grid)
            expected = (torch.bmm(pk.unsqueeze(1), grid).squeeze(1) * pe).sum(1)  # (layers,)
            if any(ind.active is not None for ind in layers):  # a skip prices skip_ms
                one = grid.new_ones(())
                active = torch.stack([one if ind.active is None else _as(ind.active, grid) for ind in layers])
                expected = active * (expected - skip_ms) + skip_ms
            total = total + expected.sum()
        if not isinstance(total, torch.Tensor):
            total = torch.tensor(float(total))
        return self.calibrate(total)

    def _tables(self, device, dtype) -> list:
        """The searched layers in batches of one grid shape: (indices, R[layer, kernel, expansion],
        skip latency per layer), as tensors cached per device/dtype."""
        import torch

        cache_key = (str(device), dtype)
        if cache_key not in self._layer_tables:
            by_shape: dict[tuple[int, int], tuple[list, list, list]] = {}
            for key in self.searched():
                node = self.nodes[key]
                options = [o for o in node.candidates if not o.is_skip]
                kernels = sorted({o.kernel for o in options})
                expansions = sorted({o.expansion for o in options})
                # the layer's own options (e.g. k3e1x where e=1 keeps its expansion conv)
                by_ke = {(o.kernel, o.expansion): o for o in options}
                grid = [[self.option_latency(key, by_ke.get((k, e), Option(kernel=k, expansion=e)))
                         for e in expansions] for k in kernels]
                skip_ms = self.option_latency(key, Option()) if any(o.is_skip for o in node.candidates) else 0.0
                keys, grids, skips = by_shape.setdefault((len(kernels), len(expansions)), ([], [], []))
                keys.append(key)
                grids.append(grid)
                skips.append(skip_ms)
            self._layer_tables[cache_key] = [
                (keys, torch.tensor(grids, dtype=dtype, device=device), torch.tensor(skips, dtype=dtype, device=device))
                for keys, grids, skips in by_shape.values()]
        return self._layer_tables[cache_key]

    def __iter__(self) -> Iterator[NodeKey]:
        return iter(self.order)

    def __repr__(self) -> str:
        return (f"LatencyGraph({self.network.name!r} on {self.target.name!r}: {len(self.order)} parts, "
                f"{len(self.searched())} searched)")


def _as(flag, like):
    """An indicator (tensor or number) as a tensor of ``like``'s dtype and device (a tensor as is)."""
    import torch

    return torch.as_tensor(flag, dtype=like.dtype, device=like.device)


def _level_rows(on: list[list], like):
    """``P(level i)`` of each layer's nested on/off flags (one list per layer, all of one length),
    as a (layers, levels) matrix: ``reach_i - reach_{i+1}``, ``reach_i = prod_{j<i} on_j``."""
    import torch

    n = len(on[0])
    if n == 0:
        return like.new_ones(len(on), 1)
    flags = torch.stack([_as(f, like) for layer in on for f in layer]).view(len(on), n)
    if n == 1:  # the common case (two candidates): [1 - on, on]
        return torch.cat([1 - flags, flags], 1)
    reach = torch.cat([like.new_ones(len(on), 1), torch.cumprod(flags, 1)], 1)
    return reach - torch.cat([reach[:, 1:], like.new_zeros(len(on), 1)], 1)


def _shape(network: Network, index: int):
    return infer_shapes(network).layers[index]
