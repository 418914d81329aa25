"""Skips: the identity (the layer is left out) and ``skip project=conv`` where the shape changes."""

from __future__ import annotations

from typing import Any

from spnas_dsl.ir import Option
from spnas_dsl.ops._base import Op, Site


class IdentityOp(Op):
    """A skip where the shape is kept: no block, no cost, no table entry, absent from timm's strings."""

    name = "identity"

    def examples(self) -> list[tuple[Option, Site]]:
        return [(Option(), Site((8, 8, 16), 16, 1)), (Option(project=True), Site((8, 8, 16), 16, 1))]

    def matches(self, option: Option, site: Site) -> bool:
        return option.is_skip and not (option.project and site.changes_shape)

    def cost(self, option: Option, site: Site) -> tuple[int, int]:
        return 0, 0

    def signature(self, option: Option, site: Site) -> str | None:
        return None

    def torch_module(self, option: Option, site: Site):
        return None

    def keras(self, recorder: Any, x: Any, option: Option, site: Site) -> Any:
        return x

    def timm_string(self, option: Option, site: Site, repeat: int) -> str | None:
        return None


class ProjectionSkipOp(Op):
    """``skip project=conv`` where the layer changes the shape: 1x1 conv (stride s) + BN + ReLU."""

    name = "projection_skip"
    parameters = ("project",)
    nests = ("the supernet cannot search 'skip project=conv' where the shape changes: the 1x1 projection "
             "is a second path, not a weight subset of the block; drop the skip from this layer")
    timm_unsupported = "a projection skip (skip project=conv)"

    def examples(self) -> list[tuple[Option, Site]]:
        return [(Option(project=True), Site((8, 8, 16), 24, 2)), (Option(project=True), Site((8, 8, 16), 24, 1))]

    def matches(self, option: Option, site: Site) -> bool:
        return option.is_skip and option.project and site.changes_shape

    def cost(self, option: Option, site: Site) -> tuple[int, int]:
        (_, _, cin), (oh, ow, cout) = site.in_hwc, site.out_hwc
        return cin * cout + 2 * cout, oh * ow * cin * cout

    def signature(self, option: Option, site: Site) -> str | None:
        return f"proj:{site.text()}"

    def torch_module(self, option: Option, site: Site):
        from spnas_dsl.ops.torch_blocks import ProjectionSkip

        return ProjectionSkip(site.in_chs, site.out_chs, site.stride)

    def keras(self, recorder: Any, x: Any, option: Option, site: Site) -> Any:
        r = recorder
        x = r.conv(x, "conv", site.out_chs, 1, site.stride)
        return r.relu(r.bn(x, "bn"), "act")

    def timm_string(self, option: Option, site: Site, repeat: int) -> str | None:
        raise NotImplementedError(self.timm_unsupported)
