"""A multi-path supernet of a search space (FBNet / DARTS style): the comparison point of claim 1.

Single-Path NAS (paper Sec. 1-3) contrasts its one superkernel per layer with the multi-path
supernets of DARTS, ProxylessNAS and FBNet, where every candidate of a layer is a separate
path with its own weights and the layer's output is a weighted sum of all paths:

    y = sum_o softmax(alpha)_o * path_o(x)

Here every searched layer becomes a :class:`MixedOp` with one concrete block
(``compiler.blocks.torch_block``) per (k, e) option and an identity path where skip is a
candidate; ``alpha`` (one architecture parameter per option, initialised to 0: uniform) is
trained with the weights by one optimizer, as the single-path supernet's thresholds are. The
stem, the fixed layers and the head are the concrete network's. With a target, ``forward``
also returns the expected latency ``sum_o softmax(alpha)_o * R(o)`` (FBNet's differentiable
latency), from the same :class:`~spnas_dsl.latency.graph.LatencyGraph` the single-path
supernet uses.

This module is a benchmark baseline, not part of the compiler: it exists to measure what a
multi-path search costs (time per step, memory, parameters) on the same space.

    from benchmarks.multipath import lower_to_multipath
    net = lower_to_multipath(space, target=load_target("pixel1"))
    out = net(x)                            # MultiPathOutput(logits, latency_ms)
    out = net(x, net.one_hot(decisions))    # every layer's path weights fixed to one option
    concrete = net.extract(concrete_ir)     # that option's paths as a SinglePathNet
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from spnas_dsl.builder import BlockSite, build_blocks
from spnas_dsl.compiler.blocks import SinglePathNet, torch_block
from spnas_dsl.compiler.network import concrete_block, lower_to_network
from spnas_dsl.ir import Network, Option
from spnas_dsl.ops import Site


class MultiPathOutput(NamedTuple):
    logits: torch.Tensor
    latency_ms: torch.Tensor | None


def option_key(option: Option) -> str:
    """Module name of an option's path: ``k3e6``, ``skip``."""
    return str(option)


class MixedOp(nn.Module):
    """All candidates of one searched layer as parallel paths; output = sum of weight * path."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, options: list[Option], index: int = -1,
                 name: str = ""):
        super().__init__()
        self.index = index
        self.name = name
        self.options = list(options)
        self.paths = nn.ModuleDict()
        for option in self.options:
            # a skip is only an identity where the layer keeps the shape (validated by the language)
            block = torch_block(option, Site((1, 1, in_chs), out_chs, stride))
            self.paths[option_key(option)] = nn.Identity() if block is None else block
        self.alpha = nn.Parameter(torch.zeros(len(self.options)))  # architecture parameters

    def path_weights(self) -> torch.Tensor:
        return torch.softmax(self.alpha, dim=0)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        w = self.path_weights() if weights is None else weights
        out = None
        for i, option in enumerate(self.options):
            y = w[i] * self.paths[option_key(option)](x)  # every path runs: the multi-path cost
            out = y if out is None else out + y
        return out

    def chosen(self) -> Option:
        return self.options[int(torch.argmax(self.alpha.detach()))]


class MultiPathSupernet(nn.Module):
    """The multi-path supernet of a space; module names follow the concrete network's
    (``conv_stem, bn1, act1, blocks.<s>.<i>, conv_head, ...``), a :class:`MixedOp` for each
    searched layer (``blocks.<s>.<i>.paths.<option>``)."""

    def __init__(self, space: Network, blocks: list[list[nn.Module]], latency: dict[int, dict[Option, float]] | None,
                 fixed_ms: float = 0.0, calibrate: Any = None):
        super().__init__()
        self.space = space
        layout = SinglePathNet(space, blocks)
        for name, module in layout.named_children():
            self.add_module(name, module)
        self.latency = latency
        self.fixed_ms = fixed_ms
        self._calibrate = calibrate
        if latency is not None:  # per searched layer: the option latencies in path order, as a buffer
            for op in self.mixed_ops():
                table = torch.tensor([latency[op.index][o] for o in op.options], dtype=torch.float32)
                op.register_buffer("option_ms", table, persistent=False)

    def mixed_ops(self) -> list[MixedOp]:
        return [b for stage in self.blocks for b in stage if isinstance(b, MixedOp)]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [op.alpha for op in self.mixed_ops()]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def one_hot(self, decisions: dict[int, Option]) -> dict[int, torch.Tensor]:
        """Path weights that select ``decisions[index]`` in each given layer (0/1 vectors)."""
        out = {}
        for op in self.mixed_ops():
            if op.index in decisions:
                w = torch.zeros(len(op.options))
                w[op.options.index(decisions[op.index])] = 1.0
                out[op.index] = w
        return out

    def forward(self, x: torch.Tensor, path_weights: dict[int, torch.Tensor] | None = None) -> MultiPathOutput:
        """Logits (and the expected latency with a target). ``path_weights``: index -> weights
        over the layer's options replacing ``softmax(alpha)`` (e.g. :meth:`one_hot`)."""
        path_weights = path_weights or {}
        x = self.act1(self.bn1(self.conv_stem(x)))
        expected = []
        for stage in self.blocks:
            for block in stage:
                if isinstance(block, MixedOp):
                    w = path_weights.get(block.index)
                    w = block.path_weights() if w is None else w
                    x = block(x, w)
                    if self.latency is not None:
                        expected.append((w * block.option_ms).sum())
                else:
                    x = block(x)
        x = self.act2(self.bn2(self.conv_head(x)))
        logits = self.classifier(self.dropout(self.flatten(self.global_pool(x))))
        latency = None
        if self.latency is not None:
            raw = self.fixed_ms + torch.stack(expected).sum() if expected else torch.tensor(self.fixed_ms)
            latency = self._calibrate(raw) if self._calibrate is not None else raw
        return MultiPathOutput(logits, latency)

    def decisions(self) -> dict[int, Option]:
        """The option of largest alpha in every searched layer (how DARTS / FBNet derive)."""
        return {op.index: op.chosen() for op in self.mixed_ops()}

    @torch.no_grad()
    def extract(self, concrete_ir: Network) -> SinglePathNet:
        """The concrete network with the weights of the chosen paths (and the shared stem,
        fixed layers and head); skipped layers are absent."""
        def block_with_weights(site: BlockSite) -> nn.Module | None:
            block = concrete_block(site)
            if block is not None:
                source = self.blocks[site.stage][site.shape.position]
                if isinstance(source, MixedOp):
                    source = source.paths[option_key(site.option)]
                block.load_state_dict(source.state_dict())
            return block

        net = lower_to_network(concrete_ir, block_with_weights)
        for name in ("conv_stem", "bn1", "conv_head", "bn2", "classifier"):
            net.get_submodule(name).load_state_dict(self.get_submodule(name).state_dict())
        return net


def lower_to_multipath(space: Network, target: Any = None) -> MultiPathSupernet:
    """Build the multi-path supernet of ``space`` (with the expected-latency term of ``target``)."""
    def block(site: BlockSite) -> nn.Module:
        shape = site.shape
        if shape.layer.is_searched:
            return MixedOp(shape.in_hwc[2], shape.out_hwc[2], shape.stride, list(shape.layer.options), shape.index,
                           shape.name)
        return concrete_block(site) or nn.Identity()

    stages = build_blocks(space, block)
    latency = None
    fixed = 0.0
    calibrate = None
    if target is not None:
        from spnas_dsl.latency.graph import LatencyGraph

        graph = LatencyGraph.build(space, target)
        latency = {i: {o: graph.option_latency(i, o) for o in graph.node(i).candidates} for i in graph.searched()}
        fixed = graph.fixed_ms
        calibrate = graph.calibrate
    return MultiPathSupernet(space, stages, latency, fixed, calibrate)
