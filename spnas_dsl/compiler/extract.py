"""Extraction: the concrete network of chosen options, with the supernet's trained weights.

``extract(supernet, concrete_ir)`` lowers the concrete IR with ``lower_to_network`` and copies
weights into it: the stem, head and fixed blocks as they are; for a searched layer the slices
of its chosen option (the first ``mid = in * e`` channels of the expand conv and its BN, the
centre k x k crop of the superkernel on those channels, BN2 on them, the projection's
columns for them, BN3 whole); skipped layers are absent. Because the supernet masks exactly
these subsets (see ``supernet.py``), the extracted network computes what the supernet
computes at the same decisions.
"""

from __future__ import annotations

import torch
from torch import nn

from spnas_dsl.builder import BlockSite
from spnas_dsl.compiler.blocks import SinglePathNet
from spnas_dsl.compiler.network import concrete_block, lower_to_network
from spnas_dsl.compiler.superkernel import SuperMBConv
from spnas_dsl.compiler.supernet import Supernet
from spnas_dsl.errors import LoweringError
from spnas_dsl.ir import Network
from spnas_dsl.passes import require_concrete, require_same_macro
from spnas_dsl.printer import format_layer
from spnas_dsl.shapes import infer_shapes

_STEM_AND_HEAD = ("conv_stem", "bn1", "conv_head", "bn2", "classifier")


def _copy_slices(source: SuperMBConv, target: nn.Module) -> None:
    """Copy into ``target`` (a concrete block) the leading slice of each same-named tensor of
    ``source``; the depthwise weight is cropped around its centre to the target's kernel."""
    weights = source.state_dict()
    for name, dst in target.state_dict().items():
        src = weights[name]
        if name == "conv_dw.weight":
            lo = (src.shape[-1] - dst.shape[-1]) // 2
            src = src[: dst.shape[0], :, lo:lo + dst.shape[-2], lo:lo + dst.shape[-1]]
        else:  # channels of the chosen expansion are the first ones of every tensor
            src = src[tuple(slice(0, n) for n in dst.shape)]
        dst.copy_(src)


def check_choices(space: Network, concrete: Network) -> None:
    """Raise :class:`LoweringError` unless ``concrete`` is a concrete network of ``space``."""
    require_same_macro(space, concrete)
    require_concrete(concrete)
    for theirs, mine in zip(infer_shapes(space).layers, infer_shapes(concrete).layers):
        option = mine.layer.options[0]
        if option not in theirs.layer.options:
            raise LoweringError(
                f"layer {mine.index} ({mine.name}): {option} is not a candidate of space "
                f"'{space.name}' ({format_layer(theirs.layer)})",
                mine.layer.span,
            )


@torch.no_grad()
def extract(supernet: Supernet, concrete_ir: Network) -> SinglePathNet:
    """The concrete network ``concrete_ir`` (one candidate of the supernet's space per layer)
    with the supernet's weights sliced out; BN running statistics are copied too."""
    check_choices(supernet.space, concrete_ir)

    def block_with_weights(site: BlockSite) -> nn.Module | None:
        block = concrete_block(site)
        if block is not None:
            source = supernet.blocks[site.stage][site.shape.position]
            if isinstance(source, SuperMBConv):
                _copy_slices(source, block)
            else:  # a fixed layer: the same block class on both sides
                block.load_state_dict(source.state_dict())
        return block

    net = lower_to_network(concrete_ir, block_with_weights)
    for name in _STEM_AND_HEAD:
        net.get_submodule(name).load_state_dict(supernet.get_submodule(name).state_dict())
    return net
