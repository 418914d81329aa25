"""The PyTorch blocks of the ops (timm's names and layout), built by the registry's entries.

Imported only when an entry builds a module (``Op.torch_module``), so the registry itself
never imports torch. BatchNorm is built with the language's defaults, the TensorFlow/MnasNet
settings of the paper (momentum 0.01 in PyTorch's convention, epsilon 1e-3); the lowering
passes give a network's declared ``bn`` settings to the whole module
(``compiler.blocks.set_batch_norm``).
"""

from __future__ import annotations

import torch
from torch import nn

from spnas_dsl.ir import BN_EPS, BN_MOMENTUM


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvBnAct(nn.Module):
    """k x k conv (no bias) + BN + ReLU (the base of :class:`ProjectionSkip`)."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, bias=False)
        self.bn = batch_norm(out_chs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparableConv(nn.Module):
    """MBConv with expansion 1: k x k depthwise + BN + ReLU, 1x1 linear projection + BN."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int):
        super().__init__()
        self.has_residual = stride == 1 and in_chs == out_chs
        self.conv_dw = nn.Conv2d(in_chs, in_chs, kernel, stride, kernel // 2, groups=in_chs, bias=False)
        self.bn1 = batch_norm(in_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_pw = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn2 = batch_norm(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(y))
        return x + y if self.has_residual else y


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: (N, g, C/g, H, W) -> transpose -> (N, C, H, W).

    Written as reshape/transpose (not ``nn.ChannelShuffle``) so that every exporter sees
    plain tensor ops.
    """

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2)
        return x.reshape(n, c, h, w)


class InvertedResidual(nn.Module):
    """MBConv-k-e: 1x1 expand + BN + ReLU, k x k depthwise + BN + ReLU, 1x1 project + BN.

    ``groups > 1``: both 1x1 convs are grouped and a :class:`ChannelShuffle` (module
    ``shuffle``) follows the first ReLU (FBNet's ``kK_e1_g2``). Expansion 1 is allowed here: it
    keeps the 1x1 expansion conv (``expand=always``), unlike :class:`DepthwiseSeparableConv`.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int, expansion: int, groups: int = 1):
        super().__init__()
        mid = in_chs * expansion
        self.has_residual = stride == 1 and in_chs == out_chs
        self.conv_pw = nn.Conv2d(in_chs, mid, 1, groups=groups, bias=False)
        self.bn1 = batch_norm(mid)
        self.act1 = nn.ReLU(inplace=True)
        self.shuffle = ChannelShuffle(groups) if groups > 1 else nn.Identity()
        self.conv_dw = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self.bn2 = batch_norm(mid)
        self.act2 = nn.ReLU(inplace=True)
        self.conv_pwl = nn.Conv2d(mid, out_chs, 1, groups=groups, bias=False)
        self.bn3 = batch_norm(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(self.act1(self.bn1(self.conv_pw(x))))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.has_residual else y


class ProjectionSkip(ConvBnAct):
    """``skip project=conv`` where the shape changes: 1x1 conv (stride s) + BN + ReLU (FBNet's skip)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__(in_chs, out_chs, 1, stride)
