"""What one op entry knows, and where a block sits (no torch, no keras at import time)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from spnas_dsl.ir import Layer, Option

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


@dataclass(frozen=True)
class Site:
    """Where a block sits: its input (H, W, C), its output channels and its stride.

    A ``shapes.LayerShape`` carries the same three facts (``Site.of(shape)``). Output height and
    width follow from 'same' padding with an odd kernel: ``(size - 1) // stride + 1``.
    """

    in_hwc: tuple[int, int, int]
    out_chs: int
    stride: int

    @classmethod
    def of(cls, shape: Any) -> Site:
        return cls(tuple(shape.in_hwc), shape.out_hwc[2], shape.stride)

    @property
    def in_chs(self) -> int:
        return self.in_hwc[2]

    @property
    def out_hwc(self) -> tuple[int, int, int]:
        h, w, _ = self.in_hwc
        return ((h - 1) // self.stride + 1, (w - 1) // self.stride + 1, self.out_chs)

    @property
    def residual(self) -> bool:
        """Whether a block here adds its input (stride 1, same channels)."""
        return self.stride == 1 and self.in_chs == self.out_chs

    @property
    def changes_shape(self) -> bool:
        return not self.residual

    def text(self) -> str:
        """``i56x56x24:o24:s1``: the site part of a latency signature."""
        return f"i{'x'.join(str(v) for v in self.in_hwc)}:o{self.out_chs}:s{self.stride}"


class Op:
    """One block kind of the language. Subclasses fill in every part; the registry-wide tests
    (tests/test_ops.py) check each entry's parts against each other.

    - ``name``: the registry key (``op_for(option, site).name``: the op kind of an IR option);
    - ``parameters``: the :class:`~spnas_dsl.ir.Option` fields it reads (its candidate parameters);
    - ``examples``: (option, site) pairs it covers, for the registry-wide tests;
    - ``nests``: ``None`` when the single-path superkernel (``compiler.supernet.SuperMBConv``)
      holds it as a weight subset, else the reason it cannot be searched there;
    - ``timm_unsupported``: ``None``, or why timm's block strings cannot express it.
    """

    name: ClassVar[str]
    parameters: ClassVar[tuple[str, ...]] = ()
    nests: ClassVar[str | None] = None
    nest_span_field: ClassVar[str | None] = None  # the Layer field an error about nesting points at
    timm_unsupported: ClassVar[str | None] = None

    def examples(self) -> list[tuple[Option, Site]]:
        raise NotImplementedError

    def matches(self, option: Option, site: Site) -> bool:
        """Whether ``option`` at ``site`` is this op."""
        raise NotImplementedError

    def cost(self, option: Option, site: Site) -> tuple[int, int]:
        """(parameters, multiply-adds): convs without bias, 2 per BN channel (gamma, beta)."""
        raise NotImplementedError

    def signature(self, option: Option, site: Site) -> str | None:
        """The latency-table key (``None``: costs nothing, no table entry)."""
        raise NotImplementedError

    def torch_module(self, option: Option, site: Site) -> nn.Module | None:
        """The PyTorch block (``ops.torch_blocks``); ``None``: the layer is left out (identity)."""
        raise NotImplementedError

    def keras(self, recorder: Any, x: Any, option: Option, site: Site) -> Any:
        """The Keras lowering through ``backends.keras``'s recorder (same names as the torch block)."""
        raise NotImplementedError

    def timm_string(self, option: Option, site: Site, repeat: int) -> str | None:
        """timm's block string for ``repeat`` such blocks; ``None``: left out (identity)."""
        raise NotImplementedError

    def nest_span(self, layer: Layer):
        """The span a nesting error about this op points at."""
        field = getattr(layer, self.nest_span_field, None) if self.nest_span_field else None
        return getattr(field, "span", None) or layer.span
