"""The latency graph: a network's parts in order, each with the target's latency of each candidate.

Nodes (keys ``"stem"``, ``0 .. n-1`` for the MBConv layers, ``"head"``) are joined by edges in
network order and carry: ``kind`` (stem/mbconv/head), ``name``, ``index``, ``op``, ``in_hwc``,
``out_channels``, ``stride``, ``candidates`` (the layer's options; ``[None]`` for stem and head),
``signatures`` and ``latency_ms`` (dicts keyed by candidate), ``rules`` (how each figure was
looked up) and ``fixed_group`` (the index of the table's fixed group that prices the part
jointly with others, or ``None``).

Totals are ``calibration.scale * raw_sum + calibration.offset_ms`` (identity by default);
per-layer figures (:meth:`LatencyGraph.option_latency`, :meth:`LatencyGraph.breakdown`,
:attr:`LatencyGraph.fixed_ms`) are the table's raw figures.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import networkx as nx

from spnas_dsl.errors import TargetError, UsageError
from spnas_dsl.ir import SKIP, Network, Option
from spnas_dsl.latency.signature import head_signature, layer_signature, stem_signature
from spnas_dsl.shapes import infer_shapes
from spnas_dsl.targets import Target, load_target

if TYPE_CHECKING:
    import torch

    from spnas_dsl.compiler.indicators import LayerIndicators

STEM, HEAD = "stem", "head"
NodeKey = str | int


@dataclass(frozen=True)
class LayerLatency:
    """One row of a breakdown: a part of a concrete network and its latency on the target."""

    name: str  # "stem", "<stage>.<position>", "head"
    index: int | None  # MBConv layer index (None for stem and head)
    op: str  # conv, mbconv, skip, head
    choice: str  # "k3" (stem), "k3e6" / "skip" (layer), "c1280" (head)
    input: str  # HxWxC
    out_channels: int
    stride: int
    signature: str | None  # None for a skip
    latency_ms: float | None  # None when priced jointly in a fixed group
    fixed_group: int | None = None
    rule: str = ""  # position | signature | mean | skip | group

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class FixedGroupUse:
    """A fixed group of the table that prices some parts of this network jointly."""

    index: int
    latency_ms: float
    note: str
    members: tuple[NodeKey, ...]


_OPTION_RE = re.compile(r"^k(\d+)e(\d+)(x?)(?:g(\d+))?$")


def as_option(option: Option | str) -> Option:
    """An :class:`Option` from an Option or its text (``"k3e6"``, ``"skip"``)."""
    if isinstance(option, Option):
        return option
    text = option.strip().lower()
    if text == "skip":
        return SKIP
    if text == "skip_proj":
        return Option(project=True)
    m = _OPTION_RE.match(text)
    if m:
        k, e, x, g = m.groups()
        return Option(kernel=int(k), expansion=int(e), expand_always=bool(x), groups=int(g or 1))
    raise UsageError(f"'{option}' is not an option (expected kKeE[x][gG], e.g. k3e6 or k3e1xg2, skip or skip_proj)")


def _hwc(t: tuple[int, int, int]) -> str:
    return "x".join(str(v) for v in t)


class LatencyGraph:
    """A network (or space) priced on a target. Build with :meth:`LatencyGraph.build`."""

    def __init__(self, network: Network, target: Target, graph: nx.DiGraph, groups: list[FixedGroupUse]):
        self.network = network
        self.target = target
        self.graph = graph
        self.groups = groups
        self.order: list[NodeKey] = list(nx.topological_sort(graph))
        self._layer_tables: dict[tuple, list] = {}  # (device, dtype) -> per searched layer (index, R, R_skip)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, network: Network, target: Target | str = "pixel1") -> LatencyGraph:
        """Price every candidate of every part of ``network`` on ``target`` (a name or a Target).

        Raises :class:`TargetError` listing every signature the target's table lacks, with how
        to profile them.
        """
        if isinstance(target, str):
            target = load_target(target)
        shapes = infer_shapes(network)
        g = nx.DiGraph()
        g.add_node(STEM, kind="stem", name="stem", index=None, op="conv", in_hwc=shapes.input_hwc,
                   out_channels=shapes.stem_out[2], stride=network.stem.stride, candidates=[None],
                   signatures={None: stem_signature(network, shapes)}, label=f"k{network.stem.kernel}")
        previous: NodeKey = STEM
        for s in shapes.layers:
            options = s.layer.options
            g.add_node(s.index, kind="mbconv", name=s.name, index=s.index, op="mbconv", in_hwc=s.in_hwc,
                       out_channels=s.out_hwc[2], stride=s.stride, candidates=list(options),
                       signatures={o: layer_signature(s, o) for o in options}, label=None)
            g.add_edge(previous, s.index, hwc=s.in_hwc)
            previous = s.index
        g.add_node(HEAD, kind="head", name="head", index=None, op="head", in_hwc=shapes.head_in,
                   out_channels=shapes.head_channels, stride=1, candidates=[None],
                   signatures={None: head_signature(shapes)}, label=f"c{shapes.head_channels}")
        g.add_edge(previous, HEAD, hwc=shapes.head_in)
        for key in g.nodes:
            g.nodes[key].update(latency_ms={}, rules={}, fixed_group=None)

        groups, notes = _assign_fixed_groups(g, target)
        missing: list[tuple[str, str]] = []
        for key in g.nodes:
            node = g.nodes[key]
            if node["fixed_group"] is not None:
                continue
            for option in node["candidates"]:
                sig = node["signatures"][option]
                if sig is None:
                    node["latency_ms"][option], node["rules"][option] = 0.0, "skip"
                    continue
                found = target.lookup(sig, node["index"])
                if found is None:
                    missing.append((_where(node), sig))
                else:
                    node["latency_ms"][option], node["rules"][option] = found.latency_ms, found.rule
        if missing:
            raise TargetError(_missing_message(network, target, missing, notes))
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
    def node(self, key: NodeKey) -> dict[str, Any]:
        """The attributes of node ``key`` (``"stem"``, a layer index, or ``"head"``)."""
        if key not in self.graph:
            raise UsageError(f"network '{self.network.name}' has no layer {key}")
        return self.graph.nodes[key]

    def layer_keys(self) -> list[int]:
        """The MBConv layer indices, in order."""
        return [k for k in self.order if isinstance(k, int)]

    def searched(self) -> list[int]:
        """Indices of the layers with more than one candidate."""
        return [k for k in self.layer_keys() if len(self.graph.nodes[k]["candidates"]) > 1]

    def calibrate(self, raw_ms: Any) -> Any:
        """Apply the table's calibration (``scale * raw + offset_ms``) to a raw sum (float or tensor)."""
        return self.target.calibration.apply(raw_ms)

    @property
    def fixed_ms(self) -> float:
        """Raw latency of everything that has one candidate: fixed groups, stem, head, concrete layers."""
        total = sum(g.latency_ms for g in self.groups)
        for key in self.order:
            node = self.graph.nodes[key]
            if node["fixed_group"] is None and len(node["candidates"]) == 1:
                total += node["latency_ms"][node["candidates"][0]]
        return total

    # ------------------------------------------------------------------ per option
    def option_latency(self, index: int, option: Option | str) -> float:
        """Raw table latency (ms) of ``option`` at MBConv layer ``index`` (0 for a skip).

        An option that is not a candidate of the layer is looked up on the fly (same shape).
        """
        option = as_option(option)
        node = self.node(index)
        if option in node["latency_ms"]:
            return node["latency_ms"][option]
        if node["fixed_group"] is not None:
            if option in node["candidates"]:
                raise TargetError(
                    f"layer {index} ({node['name']}) is priced jointly in fixed group {node['fixed_group']} "
                    f"of target '{self.target.name}'; it has no latency of its own"
                )
            raise TargetError(
                f"layer {index} ({node['name']}) is fixed to {node['candidates'][0]} in '{self.network.name}' "
                f"and priced in a fixed group of target '{self.target.name}': {option} cannot be priced there"
            )
        if option.is_skip:
            return 0.0
        shape = next(s for s in infer_shapes(self.network).layers if s.index == index)
        sig = layer_signature(shape, option)
        found = self.target.lookup(sig, index)
        if found is None:
            raise TargetError(_missing_message(self.network, self.target, [(_where(node), sig)], []))
        return found.latency_ms

    def _options_of(self, concrete: Network) -> list[Option]:
        """The chosen option of each layer of ``concrete``, checked against this macro-architecture."""
        if not concrete.is_concrete:
            raise UsageError(f"'{concrete.name}' is a search space: pick one option per layer to predict its latency")
        shapes = infer_shapes(concrete)
        ours = infer_shapes(self.network)
        problems = []
        if stem_signature(concrete, shapes) != self.graph.nodes[STEM]["signatures"][None]:
            problems.append("stem differs")
        if head_signature(shapes) != self.graph.nodes[HEAD]["signatures"][None]:
            problems.append("head differs")
        if len(shapes.layers) != len(ours.layers):
            problems.append(f"{len(shapes.layers)} layers instead of {len(ours.layers)}")
        else:
            for a, b in zip(shapes.layers, ours.layers):
                if (a.in_hwc, a.out_hwc, a.stride) != (b.in_hwc, b.out_hwc, b.stride):
                    problems.append(f"layer {a.index}: {_hwc(a.in_hwc)} -> {_hwc(a.out_hwc)} s{a.stride} instead of "
                                    f"{_hwc(b.in_hwc)} -> {_hwc(b.out_hwc)} s{b.stride}")
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
            node = self.graph.nodes[key]
            group = node["fixed_group"]
            if isinstance(key, int):
                option = options[key]
                if group is not None and option != node["candidates"][0]:
                    self.option_latency(key, option)  # raises: the group cannot price this option
                op, choice, sig = ("skip" if option.is_skip else "mbconv"), str(option), node["signatures"].get(option)
                if sig is None and not option.is_skip:
                    sig = layer_signature(_shape(self.network, key), option)
            else:
                option, op, choice, sig = None, node["op"], node["label"], node["signatures"][None]
            if group is not None:
                latency, rule = None, "group"
            elif isinstance(key, int):
                latency = self.option_latency(key, option)
                rule = node["rules"].get(option) or ("skip" if option.is_skip else self._rule(sig, key))
            else:
                latency, rule = node["latency_ms"][None], node["rules"][None]
            rows.append(LayerLatency(
                name=node["name"], index=node["index"], op=op, choice=choice, input=_hwc(node["in_hwc"]),
                out_channels=node["out_channels"], stride=node["stride"], signature=sig,
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
            total += pick(self.graph.nodes[key]["latency_ms"].values())
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
            node = self.graph.nodes[key]
            if len(node["candidates"]) == 1:
                chosen.append(node["candidates"][0])
                continue
            latency = node["latency_ms"]
            chosen.append(max(node["candidates"], key=lambda o, ms=latency: (
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

        total: Any = self.fixed_ms
        if not indicators:
            return torch.as_tensor(self.calibrate(float(total)))
        sample = next(iter(indicators.values()))
        ref = next((t for t in (*sample.kernel_on, *sample.expansion_on, sample.active) if t is not None), None)
        tables = self._tables(ref.device if ref is not None else torch.device("cpu"),
                              ref.dtype if ref is not None else torch.float32)
        for key, grid, skip_ms in tables:
            if key not in indicators:
                raise ValueError(f"layer {key} ({self.graph.nodes[key]['name']}) is searched but has no indicators")
            ind = indicators[key]
            # P(kernel level) and P(expansion level) as vectors, then E[R] = pk @ R @ pe: the
            # multilinear form of LayerIndicators.option_weights in a few ops per layer
            layer = _levels(ind.kernel_on, grid) @ grid @ _levels(ind.expansion_on, grid)
            if ind.active is not None:
                layer = ind.active * layer if not skip_ms else ind.active * (layer - skip_ms) + skip_ms
            total = total + layer
        if not isinstance(total, torch.Tensor):
            total = torch.tensor(float(total))
        return self.calibrate(total)

    def _tables(self, device, dtype) -> list:
        """Per searched layer: (index, R[kernel, expansion] as a tensor, skip latency), cached per device/dtype."""
        import torch

        cache_key = (str(device), dtype)
        if cache_key not in self._layer_tables:
            tables = []
            for key in self.searched():
                node = self.graph.nodes[key]
                options = [o for o in node["candidates"] if not o.is_skip]
                kernels = sorted({o.kernel for o in options})
                expansions = sorted({o.expansion for o in options})
                # the layer's own options (e.g. k3e1x where e=1 keeps its expansion conv)
                by_ke = {(o.kernel, o.expansion): o for o in options}
                grid = torch.tensor([[self.option_latency(key, by_ke.get((k, e), Option(kernel=k, expansion=e)))
                                      for e in expansions] for k in kernels], dtype=dtype, device=device)
                skip_ms = self.option_latency(key, Option()) if any(o.is_skip for o in node["candidates"]) else 0.0
                tables.append((key, grid, skip_ms))
            self._layer_tables[cache_key] = tables
        return self._layer_tables[cache_key]

    def __iter__(self) -> Iterator[NodeKey]:
        return iter(self.order)

    def __repr__(self) -> str:
        return (f"LatencyGraph({self.network.name!r} on {self.target.name!r}: {len(self.order)} parts, "
                f"{len(self.searched())} searched)")


def _levels(on: list, like):
    """``P(level i)`` of nested on/off flags: ``reach_i - reach_{i+1}``, ``reach_i = prod_{j<i} on_j``."""
    import torch

    if not on:
        return like.new_ones(1)
    if len(on) == 1:  # the common case (two candidates): [1 - on, on]
        flag = torch.as_tensor(on[0], dtype=like.dtype, device=like.device)
        return torch.stack([1 - flag, flag])
    flags = torch.stack([torch.as_tensor(f, dtype=like.dtype, device=like.device) for f in on])
    reach = torch.cat([like.new_ones(1), torch.cumprod(flags, 0)])
    return reach - torch.cat([reach[1:], like.new_zeros(1)])


def _shape(network: Network, index: int):
    return infer_shapes(network).layers[index]


def _where(node: dict[str, Any]) -> str:
    if node["index"] is None:
        return node["name"]
    return f"layer {node['index']} ({node['name']})"


def _assign_fixed_groups(g: nx.DiGraph, target: Target) -> tuple[list[FixedGroupUse], list[str]]:
    """Give each fixed group of the table whose signatures are all in the network its parts.

    Only parts with one candidate (stem, head, concrete layers) can join a group; a signature
    listed twice needs two parts. Returns the groups used and notes on groups that matched
    only in part (to explain missing signatures).
    """
    eligible = [k for k in nx.topological_sort(g)
                if len(g.nodes[k]["candidates"]) == 1 and g.nodes[k]["signatures"][g.nodes[k]["candidates"][0]]]
    used: list[FixedGroupUse] = []
    notes: list[str] = []
    taken: set[NodeKey] = set()
    for gi, group in enumerate(target.table.fixed_groups):
        members: list[NodeKey] = []
        lacking: list[str] = []
        for sig in group.signatures:
            key = next((k for k in eligible if k not in taken and k not in members
                        and g.nodes[k]["signatures"][g.nodes[k]["candidates"][0]] == sig), None)
            if key is None:
                lacking.append(sig)
            else:
                members.append(key)
        if not lacking:
            for key in members:
                g.nodes[key]["fixed_group"] = gi
            taken.update(members)
            used.append(FixedGroupUse(gi, group.latency_ms, group.note, tuple(members)))
        elif members:
            notes.append(f"fixed group {gi} ({group.latency_ms:g} ms: {group.note or 'parts priced jointly'}) "
                         f"prices {', '.join(group.signatures)} only together; this network lacks {', '.join(lacking)}")
    return used, notes


def _missing_message(network: Network, target: Target, missing: list[tuple[str, str]], notes: list[str]) -> str:
    seen: dict[str, list[str]] = {}
    for where, sig in missing:
        seen.setdefault(sig, []).append(where)
    plural = "s" if len(seen) != 1 else ""
    head = f"target '{target.name}' ({target.path}) has no latency for {len(seen)} signature{plural} of '{network.name}':"
    lines = [head]
    for sig, wheres in seen.items():
        lines.append(f"  {sig}  at {', '.join(wheres)}")
    lines += [f"  note: {n}" for n in notes]
    space = network.span.file if network.span and network.span.file else "SPACE"
    if target.read_only:
        lines.append(f"'{target.name}' is a read-only table ({target.spec.what}) that cannot be profiled here; "
                     f"profile the space on a local target instead: spnasc lut build {space} --target host-tflite")
    else:
        lines.append(f"profile them with: spnasc lut build {space} --target {target.name}")
    return "\n".join(lines)
