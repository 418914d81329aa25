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

from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from spnas_dsl.builder import BlockSite, build_blocks
from spnas_dsl.compiler.blocks import SinglePathNet, set_batch_norm
from spnas_dsl.compiler.decisions import StepDecisions
from spnas_dsl.compiler.nesting import check_space_nests
from spnas_dsl.compiler.network import concrete_block
from spnas_dsl.compiler.superkernel import SuperKernel, SuperMBConv, scaled_batch_norm, straight_through_indicator
from spnas_dsl.ir import Network, Option
from spnas_dsl.latency.indicators import LayerIndicators
from spnas_dsl.passes import require_same_macro, with_options
from spnas_dsl.targets.registry import Target

__all__ = ["LatencyModel", "SuperKernel", "SuperMBConv", "Supernet", "SupernetOutput", "lower_to_supernet",
           "require_same_macro", "scaled_batch_norm", "straight_through_indicator", "supernet_block"]


class LatencyModel(Protocol):
    """What the supernet needs from a latency graph (``spnas_dsl.latency.graph.LatencyGraph``)."""

    def relaxed_latency(self, indicators: dict[int, LayerIndicators]) -> torch.Tensor:
        """Latency in ms of the whole network (fixed parts included), differentiable in the indicators."""
        ...


class SupernetOutput(NamedTuple):
    logits: torch.Tensor
    latency_ms: torch.Tensor | None  # relaxed latency (ms), None when the supernet has no target


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
        layout = SinglePathNet(space, blocks)  # the stem and head of the concrete network, adopted as they are
        for name, module in layout.named_children():
            self.add_module(name, module)
        self.step_decisions = StepDecisions(list(self.searched_blocks()))  # a plain attribute, not a module

    def searched_blocks(self) -> Iterator[SuperMBConv]:
        """The SuperMBConv of every searched layer, in layer order."""
        for stage in self.blocks:
            for block in stage:
                if isinstance(block, SuperMBConv):
                    yield block

    def forward(self, x: torch.Tensor) -> SupernetOutput:
        """Logits and the relaxed latency (paper Eq. 9-12), from one set of indicators."""
        x = self.act1(self.bn1(self.conv_stem(x)))
        # every layer's indicators at once (as each block's indicators() would give them, but a
        # fixed number of ops), computed once: the same tensors mask and price the layers
        searched = list(self.searched_blocks())
        indicators = {block.index: ind for block, ind in zip(searched, self.step_decisions(searched))}
        for stage in self.blocks:
            for block in stage:
                x = block(x, indicators[block.index]) if isinstance(block, SuperMBConv) else block(x)
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
        """The concrete network of the current decisions: ``passes.with_options`` of ``ir``
        (default: the space, else an IR of the same macro-architecture) and :meth:`decisions`."""
        ir = self.space if ir is None else ir
        require_same_macro(self.space, ir)
        return with_options(ir, self.decisions())

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


def supernet_block(site: BlockSite) -> nn.Module:
    """The block factory of the supernet: every layer keeps its position (``blocks.<s>.<i>``):
    a :class:`SuperMBConv` for a searched layer, the concrete block for a fixed one, ``nn.Identity``
    for a fixed identity skip."""
    shape, layer = site.shape, site.shape.layer
    if not layer.is_searched:
        return concrete_block(site) or nn.Identity()
    return SuperMBConv(shape.in_hwc[2], shape.out_hwc[2], shape.stride, layer.kernel.values, layer.expansion.values,
                       layer.skip, index=shape.index, name=shape.name, expand_always=layer.expand_always)


def lower_to_supernet(ir: Network, target: Target | None = None, *, latency_graph: LatencyModel | None = None) -> Supernet:
    """Build the single-path supernet of a search space.

    ``target`` (a Target, resolved by the command with ``load_target``) builds the latency graph that
    prices the decisions (``Supernet.forward`` then returns the relaxed latency); or pass a
    ready ``latency_graph``. Raises :class:`LoweringError` (located on the ``e=<...>`` choice)
    when a layer's expansions cannot be nested.
    """
    check_space_nests(ir)
    stages = build_blocks(ir, supernet_block)
    if latency_graph is None and target is not None:
        from spnas_dsl.latency.graph import LatencyGraph

        latency_graph = LatencyGraph.build(ir, target)
    return set_batch_norm(Supernet(ir, stages, latency_graph), ir.bn_eps, ir.bn_momentum)
