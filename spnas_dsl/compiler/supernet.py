"""Lowering a search space to the single-path supernet (paper Sec. 3, Eq. 1-4).

Every searched layer becomes one :class:`SuperMBConv`: its expand conv produces
``in * max(e)`` channels and its depthwise conv is one :class:`SuperKernel` of size
``max(k)``. Each architectural decision is a trainable threshold ``t`` (initialised to 0, so
the search starts from the largest network) compared with the L2 norm of a subset of the
superkernel (the official code's plain norm, not squared):

- kernel (nested shells, Eq. 1-2):
  ``w_k = w_3 + 1(||s_5|| > t_k5) * (s_5 + 1(||s_7|| > t_k7) * s_7)``, ``s_k`` = the shell of
  the k x k kernel outside the next smaller one; shell norms are taken on the raw weight.
- expansion (nested channel groups, Eq. 3-4): group ``i`` = channels ``[in*e_{i-1}, in*e_i)``,
  its norm taken on ``w_k``; group ``i`` is on when every group ``1..i`` passes its threshold.
- skip (Eq. 3-4's outer indicator, ``t_e3`` in the paper): where skip is a candidate,
  ``1(||w_k, group 0|| > t_skip)`` multiplies the whole branch, leaving only the residual.

``1(x > t)`` is hard in the forward pass and has the gradient of ``sigmoid(x - t)``
(straight-through). Masks are applied so that a SuperMBConv at a hard decision computes
exactly the concrete block of that option: the kernel shells on the depthwise weight, the
channel groups on the activations after ``bn2 + ReLU`` (masking the weight alone would leave
BN's bias on dropped channels), the skip indicator on the branch output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from spnas_dsl.compiler.blocks import SinglePathNet, batch_norm, block_for, set_batch_norm
from spnas_dsl.compiler.nesting import check_nestable
from spnas_dsl.errors import LoweringError
from spnas_dsl.ir import Layer, Network, Option
from spnas_dsl.latency.indicators import LayerIndicators
from spnas_dsl.shapes import infer_shapes
from spnas_dsl.targets.registry import Target


class LatencyModel(Protocol):
    """What the supernet needs from a latency graph (``spnas_dsl.latency.graph.LatencyGraph``)."""

    def relaxed_latency(self, indicators: dict[int, LayerIndicators]) -> torch.Tensor:
        """Latency in ms of the whole network (fixed parts included), differentiable in the indicators."""
        ...


class SupernetOutput(NamedTuple):
    logits: torch.Tensor
    latency_ms: torch.Tensor | None  # relaxed latency (ms), None when the supernet has no target


class _StraightThrough(torch.autograd.Function):
    """``1(norm > threshold)`` forward; the gradient of ``sigmoid(norm - threshold)`` backward.

    One autograd node instead of the five of ``hard + (sig - sig.detach())``: a supernet step
    builds dozens of indicators, and on a CPU their small ops' overhead is what the supernet
    pays over its largest child (benchmarks/supernet_cost.py).
    """

    @staticmethod
    def forward(ctx, norm: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        if norm.device.type == "cpu":  # scalars: the slope in Python, one multiply left for backward
            sig = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, float(norm) - float(threshold)))))
            ctx.slope = sig * (1.0 - sig)
        else:  # no host synchronisation on an accelerator
            sig = torch.sigmoid(norm - threshold)
            ctx.slope = sig * (1 - sig)
        return (norm > threshold).to(norm.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = grad * ctx.slope
        return g, -g


def straight_through_indicator(norm: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``1(norm > threshold)`` in the forward pass (exactly 0 or 1), gradient of ``sigmoid(norm - threshold)``."""
    return _StraightThrough.apply(norm, threshold)


_ON, _OFF = -1.0, 1e9  # thresholds that a norm (>= 0) always passes / never reaches


def _nested_mask(parts: torch.Tensor, on: list[torch.Tensor]) -> torch.Tensor:
    """``parts[0] + sum_i (prod_{j<=i} on_j) * parts[i+1]``: the multiplier of nested subsets
    (kernel shells or channel groups), written with as few small ops as possible (one multiply
    per decision): a supernet step computes it for every searched layer."""
    mask = parts[0]
    reach: torch.Tensor | None = None
    for flag, part in zip(on, parts[1:]):
        reach = flag if reach is None else reach * flag
        mask = mask + reach * part
    return mask


class SuperKernel(nn.Conv2d):
    """The depthwise superkernel of one searched layer, with its decision thresholds.

    ``weight`` is ``(channels, 1, max(k), max(k))``. Thresholds are scalar parameters named
    ``threshold_k<k>`` (one per kernel shell beyond the smallest), ``threshold_e<e>`` (one per
    channel group beyond the first) and ``threshold_skip`` (where skip is a candidate).
    """

    def __init__(self, in_chs: int, kernels: tuple[int, ...], expansions: tuple[int, ...], stride: int,
                 skip: bool):
        channels = in_chs * max(expansions)
        size = max(kernels)
        super().__init__(channels, channels, size, stride, size // 2, groups=channels, bias=False)
        self.kernels = kernels
        self.expansions = expansions
        self.group_ends = tuple(in_chs * e for e in expansions)  # channel group i = [end_{i-1}, end_i)
        self.skip = skip
        self.p_drop = 0.0
        shells = torch.zeros(len(kernels), size, size)
        for i, k in enumerate(kernels):  # shell i = the k x k centre minus the next smaller centre
            lo = (size - k) // 2
            shells[i, lo:lo + k, lo:lo + k] = 1.0
            if i:
                shells[i] -= shells[:i].sum(0)
        self.register_buffer("shells", shells, persistent=False)
        groups = torch.zeros(len(expansions), channels)  # row i: 1 on channel group i
        for i, (lo, hi) in enumerate(zip((0,) + self.group_ends[:-1], self.group_ends)):
            groups[i, lo:hi] = 1.0
        self.register_buffer("channel_groups", groups, persistent=False)
        for name in self.decision_names:
            self.register_parameter(f"threshold_{name}", nn.Parameter(torch.zeros(())))

    @property
    def decision_names(self) -> list[str]:
        """``k5, k7, ...`` (kernel shells), ``e6, ...`` (channel groups), ``skip``, in that order."""
        names = [f"k{k}" for k in self.kernels[1:]] + [f"e{e}" for e in self.expansions[1:]]
        return names + (["skip"] if self.skip else [])

    def threshold(self, name: str) -> nn.Parameter:
        return getattr(self, f"threshold_{name}")

    def decide(self, dropout: bool | None = None) -> tuple[LayerIndicators, dict[str, torch.Tensor]]:
        """The indicators of every decision and the norms they compared.

        ``dropout``: drop indicators with probability ``p_drop`` (default: in training mode).
        The expansion and skip norms are taken on ``w_k``, the kernel as selected (Eq. 3-4).
        """
        drop = self.p_drop if (self.training if dropout is None else dropout) else 0.0
        norms: dict[str, torch.Tensor] = {}

        def gate(name: str, norm: torch.Tensor) -> torch.Tensor:
            norms[name] = norm
            on = straight_through_indicator(norm, self.threshold(name))
            if drop > 0:  # indicator dropout: a dropped subset is off for this step
                on = on * (torch.rand((), device=on.device) >= drop).to(on.dtype)
            return on

        kernel_on = [gate(f"k{k}", torch.linalg.vector_norm(self.weight * shell))
                     for k, shell in zip(self.kernels[1:], self.shells[1:])]
        w_k = self.weight * self._kernel_mask(kernel_on)  # Eq. 1-2
        expansion_on = [gate(f"e{e}", torch.linalg.vector_norm(w_k[lo:hi]))
                        for e, lo, hi in zip(self.expansions[1:], self.group_ends[:-1], self.group_ends[1:])]
        active = gate("skip", torch.linalg.vector_norm(w_k[:self.group_ends[0]])) if self.skip else None
        return LayerIndicators(self.kernels, self.expansions, kernel_on, expansion_on, active, w_k), norms

    def _kernel_mask(self, kernel_on: list[torch.Tensor]) -> torch.Tensor:
        """(k, k) multiplier: 1 on the smallest kernel, prod_{j<=i} kernel_on[j] on shell i+1 (Eq. 1)."""
        return _nested_mask(self.shells, kernel_on)

    def channel_mask(self, indicators: LayerIndicators) -> torch.Tensor | None:
        """(channels,) multiplier of the channel groups (Eq. 3-4); None with a single group."""
        if not indicators.expansion_on:
            return None
        return _nested_mask(self.channel_groups, indicators.expansion_on)

    def forward(self, x: torch.Tensor, indicators: LayerIndicators) -> torch.Tensor:  # type: ignore[override]
        """Depthwise conv with the kernel shells of ``indicators`` (channel groups are masked later)."""
        weight = indicators.kernel_weight
        if weight is None:
            weight = self.weight * self._kernel_mask(indicators.kernel_on)
        return self._conv_forward(x, weight, None)


def scaled_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``bn(x) * scale`` for a scalar ``scale``, as one op: the scale multiplies BN's affine
    weight and bias instead of the activation (same values and gradients, one pass fewer over
    the block's output). Running statistics are updated exactly as ``bn(x)`` would."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return F.batch_norm(x, bn.running_mean if track else None, bn.running_var if track else None,
                        bn.weight * scale, bn.bias * scale, use_batch_stats, factor, bn.eps)


class SuperMBConv(nn.Module):
    """All candidates of one searched layer in one block (module names of the concrete blocks).

    Expansions > 1: ``conv_pw, bn1, act1, conv_dw (SuperKernel), bn2, act2, conv_pwl, bn3``
    (InvertedResidual); expansion 1 only: ``conv_dw, bn1, act1, conv_pw, bn2``
    (DepthwiseSeparableConv). ``index`` is the IR layer index, ``name`` ``<stage>.<position>``.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, kernels: tuple[int, ...],
                 expansions: tuple[int, ...], skip: bool, index: int = -1, name: str = "",
                 expand_always: bool = False):
        super().__init__()
        self.index = index
        self.name = name
        self.has_residual = stride == 1 and in_chs == out_chs
        # expand=always: e=1 is the first channel group of the expansion conv, so <1,3,6> nests
        self.has_expand = expansions[0] > 1 or expand_always
        self.expand_always = expand_always
        mid = in_chs * max(expansions)
        if self.has_expand:
            self.conv_pw = nn.Conv2d(in_chs, mid, 1, bias=False)
            self.bn1 = batch_norm(mid)
            self.act1 = nn.ReLU(inplace=True)
            self.conv_dw = SuperKernel(in_chs, kernels, expansions, stride, skip)
            self.bn2 = batch_norm(mid)
            self.act2 = nn.ReLU(inplace=True)
            self.conv_pwl = nn.Conv2d(mid, out_chs, 1, bias=False)
            self.bn3 = batch_norm(out_chs)
        else:
            self.conv_dw = SuperKernel(in_chs, kernels, expansions, stride, skip)
            self.bn1 = batch_norm(in_chs)
            self.act1 = nn.ReLU(inplace=True)
            self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
            self.bn2 = batch_norm(out_chs)

    def indicators(self, dropout: bool | None = None) -> LayerIndicators:
        """This layer's decisions from the current weights and thresholds (see ``SuperKernel.decide``)."""
        ind = self.conv_dw.decide(dropout)[0]
        ind.expand_always = self.expand_always
        return ind

    @torch.no_grad()
    def select(self, option: Option) -> None:
        """Set the thresholds so that the hard decisions pick ``option`` (to evaluate one sub-network)."""
        dw = self.conv_dw
        if option.is_skip:
            if not dw.skip:
                raise ValueError(f"layer {self.index} ({self.name}) cannot be skipped")
            dw.threshold("skip").fill_(_OFF)
            return
        if option.kernel not in dw.kernels or option.expansion not in dw.expansions:
            raise ValueError(f"layer {self.index} ({self.name}): {option} is not a candidate")
        for k in dw.kernels[1:]:
            dw.threshold(f"k{k}").fill_(_ON if k <= option.kernel else _OFF)
        for e in dw.expansions[1:]:
            dw.threshold(f"e{e}").fill_(_ON if e <= option.expansion else _OFF)
        if dw.skip:
            dw.threshold("skip").fill_(_ON)

    def forward(self, x: torch.Tensor, indicators: LayerIndicators | None = None) -> torch.Tensor:
        """The block at the decisions ``indicators`` (computed here when not given)."""
        ind = self.indicators() if indicators is None else indicators
        if self.has_expand:
            y = self.act1(self.bn1(self.conv_pw(x)))
            y = self.act2(self.bn2(self.conv_dw(y, ind)))  # kernel shells masked on the weight (Eq. 1-2)
            mask = self.conv_dw.channel_mask(ind)
            if mask is not None:
                # Channel groups masked after BN + ReLU (Eq. 3-4), folded into the projection's input
                # channels: conv(y * m, W) == conv(y, W * m) in value and in every gradient, and masking
                # the (out, in*6) weight is far cheaper than the (batch, in*6, H, W) activation.
                y = F.conv2d(y, self.conv_pwl.weight * mask.view(1, -1, 1, 1))
            else:
                y = self.conv_pwl(y)
            last_bn = self.bn3
        else:
            y = self.act1(self.bn1(self.conv_dw(x, ind)))
            y = self.conv_pw(y)
            last_bn = self.bn2
        # skip: the whole branch off (only the residual is left), folded into the last BN's affine
        y = last_bn(y) if ind.active is None else scaled_batch_norm(last_bn, y, ind.active)
        return x + y if self.has_residual else y


def require_same_macro(space: Network, network: Network) -> None:
    """Raise :class:`LoweringError` unless ``network`` has the macro-architecture of ``space``.

    Same input, classes, width, stem, head, and stages of the same names, widths, strides and
    numbers of layers (the layers' candidates may differ).
    """
    def fail(what: str, span: Any) -> None:
        raise LoweringError(
            f"'{network.name}' does not have the macro-architecture of space '{space.name}': {what}",
            span or network.span,
        )

    for field in ("input", "classes", "width_multiplier", "bn_eps", "bn_momentum", "stem", "head"):
        mine, theirs = getattr(network, field), getattr(space, field)
        if mine != theirs:
            fail(f"{field} differs ({mine!s} vs {theirs!s})", getattr(mine, "span", None))
    if len(network.stages) != len(space.stages):
        fail(f"{len(network.stages)} stages vs {len(space.stages)}", None)
    for mine, theirs in zip(network.stages, space.stages):
        ours = (mine.name, mine.channels, mine.stride, len(mine.layers))
        if ours != (theirs.name, theirs.channels, theirs.stride, len(theirs.layers)):
            fail(
                f"stage '{mine.name}' c={mine.channels} s={mine.stride} with {len(mine.layers)} layers vs "
                f"stage '{theirs.name}' c={theirs.channels} s={theirs.stride} with {len(theirs.layers)} layers",
                mine.span,
            )


class Supernet(nn.Module):
    """The single-path supernet of a search space.

    Module names are those of the concrete network (``conv_stem, bn1, act1, blocks, conv_head,
    bn2, act2, global_pool, flatten, dropout, classifier``), except that ``blocks.<s>.<i>`` keeps
    every layer position of the IR: a :class:`SuperMBConv` for a searched layer, the concrete
    block for a fixed one, ``nn.Identity`` for a skip-only layer.
    """

    def __init__(self, space: Network, blocks: list[list[nn.Module]], latency_graph: LatencyModel | None = None):
        super().__init__()
        self.space = space
        self.latency_graph = latency_graph
        shapes = infer_shapes(space)
        layout = SinglePathNet(  # the stem and head of the concrete network, adopted as they are
            stem=(shapes.input_hwc[2], shapes.stem_out[2], space.stem.kernel, space.stem.stride),
            blocks=blocks,
            head=(shapes.head_in[2], shapes.head_channels),
            classes=space.classes,
            dropout=space.head.dropout,
        )
        for name, module in layout.named_children():
            self.add_module(name, module)

    def searched_blocks(self) -> Iterator[SuperMBConv]:
        """The SuperMBConv of every searched layer, in layer order."""
        for stage in self.blocks:
            for block in stage:
                if isinstance(block, SuperMBConv):
                    yield block

    def forward(self, x: torch.Tensor) -> SupernetOutput:
        """Logits and the relaxed latency (paper Eq. 9-12), from one set of indicators."""
        x = self.act1(self.bn1(self.conv_stem(x)))
        indicators: dict[int, LayerIndicators] = {}
        for stage in self.blocks:
            for block in stage:
                if isinstance(block, SuperMBConv):
                    ind = block.indicators()  # computed once: the same tensors mask and price the layer
                    indicators[block.index] = ind
                    x = block(x, ind)
                else:
                    x = block(x)
        x = self.act2(self.bn2(self.conv_head(x)))
        x = self.flatten(self.global_pool(x))
        logits = self.classifier(self.dropout(x))
        latency = None if self.latency_graph is None else self.latency_graph.relaxed_latency(indicators)
        return SupernetOutput(logits, latency)

    def select(self, decisions: dict[int, Option]) -> None:
        """Set the thresholds of the given layers (index -> option) so that they pick those options."""
        blocks = {block.index: block for block in self.searched_blocks()}
        for index, option in decisions.items():
            if index not in blocks:
                raise ValueError(f"layer {index} is not a searched layer of '{self.space.name}'")
            blocks[index].select(option)

    def set_indicator_dropout(self, p_drop: float) -> None:
        """Drop each decision's indicator with probability ``p_drop`` in training mode (0 = off).

        The official code keeps each indicator with probability 0.6 during the warm-up
        (``p_drop=0.4``) so the supernet does not learn as an ensemble. A dropped indicator
        turns its subset off for one step; dropping the ``active`` indicator of a layer that
        may be skipped makes the layer a skip. Unlike TF's dropout, kept indicators are not
        rescaled (a gate stays 0 or 1).
        """
        if not 0.0 <= p_drop < 1.0:
            raise ValueError(f"indicator dropout must be in [0, 1), got {p_drop}")
        for block in self.searched_blocks():
            block.conv_dw.p_drop = float(p_drop)

    def threshold_parameters(self) -> list[nn.Parameter]:
        """The decision thresholds (exclude them from weight decay)."""
        return [p for name, p in self.named_parameters() if name.rsplit(".", 1)[-1].startswith("threshold_")]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the thresholds."""
        return [p for name, p in self.named_parameters() if not name.rsplit(".", 1)[-1].startswith("threshold_")]

    @torch.no_grad()
    def hard_indicators(self) -> dict[int, LayerIndicators]:
        """The current hard decisions of every searched layer (no dropout, no graph)."""
        return {block.index: block.indicators(dropout=False) for block in self.searched_blocks()}

    def decisions(self) -> dict[int, Option]:
        """Layer index -> the option the current hard indicators select (dropout ignored)."""
        return {index: ind.chosen() for index, ind in self.hard_indicators().items()}

    @torch.no_grad()
    def latency_ms(self) -> float | None:
        """The target's latency (ms) of the current decisions; None without a target."""
        if self.latency_graph is None:
            return None
        return float(self.latency_graph.relaxed_latency(self.hard_indicators()))

    def derive(self, ir: Network | None = None) -> Network:
        """The concrete network of the current decisions: ``ir`` (default: the space) with each
        searched layer replaced by its chosen option (spans kept), the other layers unchanged."""
        ir = self.space if ir is None else ir
        require_same_macro(self.space, ir)
        chosen = self.decisions()
        layers = [Layer.from_option(chosen[shape.index], span=shape.layer.span) if shape.index in chosen
                  else shape.layer for shape in infer_shapes(ir).layers]
        return ir.replace_layers(layers)

    @torch.no_grad()
    def decision_report(self) -> list[dict[str, Any]]:
        """Per searched layer: index, name, chosen option and each decision's norm and threshold.

        ``[{"index": 1, "name": "s16.0", "option": "k5e6",
            "decisions": {"k5": {"norm": 3.2, "threshold": 0.0, "on": True}, ...}}, ...]``
        """
        report = []
        for block in self.searched_blocks():
            indicators, norms = block.conv_dw.decide(dropout=False)
            decisions = {}
            for name, norm in norms.items():
                threshold = float(block.conv_dw.threshold(name))
                decisions[name] = {"norm": float(norm), "threshold": threshold, "on": float(norm) > threshold}
            report.append({"index": block.index, "name": block.name, "option": str(indicators.chosen()),
                           "decisions": decisions})
        return report


def lower_to_supernet(ir: Network, target: Target | None = None, *, latency_graph: LatencyModel | None = None) -> Supernet:
    """Build the single-path supernet of a search space.

    ``target`` (a Target, resolved by the command with ``load_target``) builds the latency graph that
    prices the decisions (``Supernet.forward`` then returns the relaxed latency); or pass a
    ready ``latency_graph``. Raises :class:`LoweringError` (located on the ``e=<...>`` choice)
    when a layer's expansions cannot be nested.
    """
    shapes = infer_shapes(ir)
    stage_index = {s.name: i for i, s in enumerate(ir.stages)}
    stages: list[list[nn.Module]] = [[] for _ in ir.stages]
    for shape in shapes.layers:
        layer = shape.layer
        in_chs, out_chs = shape.in_hwc[2], shape.out_hwc[2]
        if layer.is_searched:
            check_nestable(layer, shape.changes_shape)
            if layer.kernel is None:  # only reachable with alternatives check_nestable rejects
                raise LoweringError("a searched layer needs an 'mbconv'", layer.span)
            block: nn.Module = SuperMBConv(in_chs, out_chs, shape.stride, layer.kernel.values,
                                           layer.expansion.values, layer.skip, index=shape.index, name=shape.name,
                                           expand_always=layer.expand_always)
        else:
            block = block_for(layer.options[0], in_chs, out_chs, shape.stride) or nn.Identity()
        stages[stage_index[shape.stage]].append(block)
    if latency_graph is None and target is not None:
        from spnas_dsl.latency.graph import LatencyGraph

        latency_graph = LatencyGraph.build(ir, target)
    return set_batch_norm(Supernet(ir, stages, latency_graph), ir.bn_eps, ir.bn_momentum)
