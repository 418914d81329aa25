"""The one stage walk: inferred shapes in, one block per layer from a factory, grouped by stage.

After timm's ``EfficientNetBuilder`` (in our words): the shapes pass (``shapes.infer_shapes``)
has already carried channels and strides across stages (stride on a stage's first layer), so
the builder only keeps the counters: the stage index and, per stage, how many blocks were made
so far (a block's module name is ``blocks.<stage>.<block>``). The factory says what a layer
becomes: a block, or ``None`` to leave the layer out (an identity skip in a concrete network;
the next block then takes its position). The PyTorch lowerings (network, supernet, extraction),
the Keras backend, the profiling models and the multi-path benchmark all walk through here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from spnas_dsl.ir import Network, Option
from spnas_dsl.ops import Op, Site, op_for
from spnas_dsl.shapes import LayerShape, NetworkShape, infer_shapes

T = TypeVar("T")


@dataclass(frozen=True)
class BlockSite:
    """One layer as the builder meets it: its shape, stage index and block position."""

    shape: LayerShape
    stage: int        # index of the layer's stage
    block: int        # position among the blocks made so far in the stage (``blocks.<stage>.<block>``)

    @property
    def site(self) -> Site:
        return Site.of(self.shape)

    @property
    def option(self) -> Option:
        """The layer's option (its first candidate: the only one in a concrete network)."""
        return self.shape.layer.options[0]

    @property
    def op(self) -> Op:
        """The registry entry of :attr:`option` here."""
        return op_for(self.option, self.site)

    @property
    def prefix(self) -> str:
        """The block's module path with a trailing dot: ``blocks.2.0.``."""
        return f"blocks.{self.stage}.{self.block}."


def build_blocks(network: Network, factory: Callable[[BlockSite], T | None],
                 shapes: NetworkShape | None = None) -> list[list[T]]:
    """Call ``factory`` once per layer in network order; the blocks it returns, one list per stage.

    A ``None`` from the factory leaves the layer out: it does not take a block position.
    """
    shapes = shapes or infer_shapes(network)
    stage_index = {s.name: i for i, s in enumerate(network.stages)}
    stages: list[list[T]] = [[] for _ in network.stages]
    for shape in shapes.layers:
        s = stage_index[shape.stage]
        block = factory(BlockSite(shape, s, len(stages[s])))
        if block is not None:
            stages[s].append(block)
    return stages
