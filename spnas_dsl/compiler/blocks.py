"""A concrete network's PyTorch module: the stem, the head, ``SinglePathNet`` (timm's names).

The blocks themselves are the ops' (``spnas_dsl.ops.torch_blocks``, re-exported here);
``torch_block`` builds one option's through the op registry. BatchNorm is built with the
language's defaults; a network that declares ``bn eps=... momentum=...`` gets its own settings
through :func:`set_batch_norm`, which the lowering passes apply to the whole module.
"""

from __future__ import annotations

import torch
from torch import nn

from spnas_dsl.ir import BN_EPS, BN_MOMENTUM, Network, Option
from spnas_dsl.ops import Site, op_for
from spnas_dsl.ops.torch_blocks import (
    ChannelShuffle,
    ConvBnAct,
    DepthwiseSeparableConv,
    InvertedResidual,
    ProjectionSkip,
    batch_norm,
)
from spnas_dsl.shapes import NetworkShape, infer_shapes

__all__ = ["BN_EPS", "BN_MOMENTUM", "ChannelShuffle", "ConvBnAct", "DepthwiseSeparableConv", "InvertedResidual",
           "ProjectionSkip", "SinglePathNet", "batch_norm", "head_layers", "set_batch_norm", "stem_and_head",
           "stem_layers", "torch_block"]


def set_batch_norm(module: nn.Module, eps: float, momentum: float) -> nn.Module:
    """Give every BatchNorm of ``module`` the network's declared ``eps`` and ``momentum``."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps, m.momentum = eps, momentum
    return module


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
