"""Lowering a concrete IR to a plain PyTorch network (no masks, standard layers)."""

from __future__ import annotations

from spnas_dsl.compiler.blocks import SinglePathNet, block_for, set_batch_norm
from spnas_dsl.errors import LoweringError
from spnas_dsl.ir import Network
from spnas_dsl.printer import format_layer
from spnas_dsl.shapes import infer_shapes


def require_concrete(network: Network) -> None:
    """Raise a located error naming the first layer that still has several candidates."""
    for shape in infer_shapes(network).layers:
        if not shape.layer.is_concrete:
            raise LoweringError(
                f"'{network.name}' is a search space, not a concrete network: layer {shape.index} "
                f"({shape.name}) has {len(shape.layer.options)} candidates ({format_layer(shape.layer)})",
                shape.layer.span,
            )


def lower_to_network(network: Network) -> SinglePathNet:
    """Build the PyTorch module of a concrete network (every layer one candidate).

    Skipped layers are left out; the parameter count equals ``summarize(network)``.
    """
    require_concrete(network)
    shapes = infer_shapes(network)
    stages: list[list] = [[] for _ in network.stages]
    stage_index = {s.name: i for i, s in enumerate(network.stages)}
    for shape in shapes.layers:
        block = block_for(shape.layer.options[0], shape.in_hwc[2], shape.out_hwc[2], shape.stride)
        if block is None:  # an identity skip: the layer is left out
            continue
        stages[stage_index[shape.stage]].append(block)
    net = SinglePathNet(
        stem=(shapes.input_hwc[2], shapes.stem_out[2], network.stem.kernel, network.stem.stride),
        blocks=stages,
        head=(shapes.head_in[2], shapes.head_channels),
        classes=network.classes,
        dropout=network.head.dropout,
    )
    return set_batch_norm(net, network.bn_eps, network.bn_momentum)
