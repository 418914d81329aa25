"""Small PyTorch block classes of a concrete network (timm's names and layout).

BatchNorm is built with the language's defaults, the TensorFlow/MnasNet settings of the
paper: momentum 0.99 in TF's convention (0.01 in PyTorch's) and epsilon 1e-3. A network that
declares ``bn eps=... momentum=...`` gets its own settings through :func:`set_batch_norm`,
which the lowering passes apply to the whole module.
"""

from __future__ import annotations

import torch
from torch import nn

from spnas_dsl.ir import BN_EPS, BN_MOMENTUM, Network, Option
from spnas_dsl.ops import Site, op_for
from spnas_dsl.shapes import NetworkShape, infer_shapes

__all__ = ["BN_EPS", "BN_MOMENTUM", "batch_norm", "head_layers", "set_batch_norm", "stem_and_head", "stem_layers",
           "torch_block"]


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def set_batch_norm(module: nn.Module, eps: float, momentum: float) -> nn.Module:
    """Give every BatchNorm of ``module`` the network's declared ``eps`` and ``momentum``."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps, m.momentum = eps, momentum
    return module


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


def torch_block(option: Option, site: Site) -> nn.Module | None:
    """The module of one option at ``site`` (its op's, ``spnas_dsl.ops``); ``None`` for an identity skip."""
    return op_for(option, site).torch_module(option, site)


def stem_layers(in_chs: int, out_chs: int, kernel: int, stride: int) -> dict[str, nn.Module]:
    """The stem, by module name: ``conv_stem`` (k x k, stride), ``bn1``, ``act1``."""
    return {"conv_stem": nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, bias=False),
            "bn1": batch_norm(out_chs), "act1": nn.ReLU(inplace=True)}


def head_layers(in_chs: int, channels: int, classes: int, dropout: float) -> dict[str, nn.Module]:
    """The head, by module name: 1x1 ``conv_head``, ``bn2``, ``act2``, ``global_pool``, ``flatten``,
    ``dropout``, ``classifier`` (with bias)."""
    return {"conv_head": nn.Conv2d(in_chs, channels, 1, bias=False), "bn2": batch_norm(channels),
            "act2": nn.ReLU(inplace=True), "global_pool": nn.AdaptiveAvgPool2d(1), "flatten": nn.Flatten(1),
            "dropout": nn.Dropout(dropout), "classifier": nn.Linear(channels, classes)}


def stem_and_head(network: Network, shapes: NetworkShape | None = None) -> tuple[dict, dict]:
    """The stem and head modules of ``network`` (:func:`stem_layers`, :func:`head_layers`)."""
    shapes = shapes or infer_shapes(network)
    stem = stem_layers(shapes.input_hwc[2], shapes.stem_out[2], network.stem.kernel, network.stem.stride)
    head = head_layers(shapes.head_in[2], shapes.head_channels, network.classes, network.head.dropout)
    return stem, head


class SinglePathNet(nn.Module):
    """A concrete network. Module names follow timm's EfficientNet family:
    ``conv_stem, bn1, blocks.<stage>.<block>, conv_head, bn2, classifier``, so a state dict
    of ``examples/spnasnet.spnas`` has the key layout of timm's ``spnasnet_100``."""

    def __init__(self, network: Network, blocks: list[list[nn.Module]], shapes: NetworkShape | None = None):
        super().__init__()
        stem, head = stem_and_head(network, shapes)
        for name, module in stem.items():
            self.add_module(name, module)
        self.blocks = nn.Sequential(*[nn.Sequential(*stage) for stage in blocks])
        for name, module in head.items():
            self.add_module(name, module)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        return self.act2(self.bn2(self.conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.global_pool(self.forward_features(x)))
        return self.classifier(self.dropout(x))
