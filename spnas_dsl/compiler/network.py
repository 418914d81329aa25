"""Lowering a concrete IR to a plain PyTorch network (no masks, standard layers)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from spnas_dsl.builder import BlockSite, build_blocks
from spnas_dsl.compiler.blocks import SinglePathNet, set_batch_norm, torch_block
from spnas_dsl.ir import Network
from spnas_dsl.passes import require_concrete
from spnas_dsl.shapes import infer_shapes

__all__ = ["concrete_block", "lower_to_network", "require_concrete"]


def concrete_block(site: BlockSite) -> nn.Module | None:
    """The block factory of a concrete network: the op's module, ``None`` for an identity skip."""
    return torch_block(site.option, site.site)


def lower_to_network(network: Network,
                     block_factory: Callable[[BlockSite], nn.Module | None] = concrete_block) -> SinglePathNet:
    """Build the PyTorch module of a concrete network (every layer one candidate).

    Skipped layers are left out; the parameter count equals ``summarize(network)``.
    ``block_factory`` makes each block (default :func:`concrete_block`; ``extract`` passes one
    that also copies the supernet's weights).
    """
    require_concrete(network)
    shapes = infer_shapes(network)
    net = SinglePathNet(network, build_blocks(network, block_factory, shapes), shapes)
    return set_batch_norm(net, network.bn_eps, network.bn_momentum)
