"""The superkernel of one searched layer (paper Eq. 1-4): ``SuperKernel`` and ``SuperMBConv``.

See ``compiler/supernet.py`` (the lowering) and docs/compiler.md for the equations, the
straight-through indicators and where each mask is applied so that a hard decision computes
exactly the concrete block.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from spnas_dsl.ir import Option
from spnas_dsl.latency.indicators import LayerIndicators
from spnas_dsl.ops.torch_blocks import batch_norm

__all__ = ["SuperKernel", "SuperMBConv", "scaled_batch_norm", "straight_through_indicator"]


class _StraightThrough(torch.autograd.Function):
    """``1(norm > threshold)`` forward; the gradient of ``sigmoid(norm - threshold)`` backward.

    One autograd node instead of the five of ``hard + (sig - sig.detach())``. One layer's
    decisions (``SuperKernel.decide``); a supernet step takes all of them at once with
    ``compiler/decisions.py``'s elementwise form of this formula.
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
        if indicators.channel_mask is not None:  # computed with the step's indicators
            return indicators.channel_mask
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
