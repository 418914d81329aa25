"""The MBConv family: inverted residual, depthwise-separable, e=1 with its expand conv, grouped.

Torch blocks are ``ops.torch_blocks.InvertedResidual`` / ``DepthwiseSeparableConv`` (imported
when a module is built); the Keras lowering goes through ``backends.keras``'s recorder.
"""

from __future__ import annotations

from typing import Any

from spnas_dsl.ir import Option
from spnas_dsl.ops._base import Op, Site


def _residual(recorder: Any, inp: Any, x: Any, site: Site) -> Any:
    if site.residual:
        return recorder.keras.layers.Add(name=recorder._name("add"))([inp, x])
    return x


class InvertedResidualOp(Op):
    """1x1 expand + BN + ReLU, k x k depthwise + BN + ReLU, 1x1 project + BN (+ residual)."""

    name = "inverted_residual"
    parameters = ("kernel", "expansion")

    def examples(self) -> list[tuple[Option, Site]]:
        return [(Option(kernel=3, expansion=6), Site((8, 8, 16), 16, 1)),
                (Option(kernel=5, expansion=3), Site((8, 8, 16), 24, 2))]

    def matches(self, option: Option, site: Site) -> bool:
        return not option.is_skip and option.expansion != 1 and option.groups == 1

    def cost(self, option: Option, site: Site) -> tuple[int, int]:
        (h, w, cin), (oh, ow, cout) = site.in_hwc, site.out_hwc
        k, g, mid = option.kernel, option.groups, cin * option.expansion
        params = cin * mid // g + 2 * mid          # 1x1 expand conv + BN
        macs = h * w * cin * mid // g
        params += k * k * mid + 2 * mid           # depthwise + BN
        macs += oh * ow * k * k * mid
        params += mid * cout // g + 2 * cout      # 1x1 projection + BN
        macs += oh * ow * mid * cout // g
        return params, macs

    def signature(self, option: Option, site: Site) -> str | None:
        return f"mbconv:{site.text()}:{option}"

    def torch_module(self, option: Option, site: Site):
        from spnas_dsl.ops.torch_blocks import InvertedResidual

        return InvertedResidual(site.in_chs, site.out_chs, option.kernel, site.stride, option.expansion,
                                option.groups)

    def keras(self, recorder: Any, x: Any, option: Option, site: Site) -> Any:
        r, g, inp = recorder, option.groups, x
        mid = site.in_chs * option.expansion
        x = r.relu(r.bn(r.grouped_pointwise(x, "conv_pw", mid, g), "bn1"), "act1")
        if g > 1:
            x = r.shuffle(x, "shuffle", g)
        x = r.relu(r.bn(r.depthwise(x, "conv_dw", option.kernel, site.stride), "bn2"), "act2")
        x = r.bn(r.grouped_pointwise(x, "conv_pwl", site.out_chs, g), "bn3")
        return _residual(r, inp, x, site)

    def timm_string(self, option: Option, site: Site, repeat: int) -> str | None:
        return f"ir_r{repeat}_k{option.kernel}_s{site.stride}_e{option.expansion}_c{site.out_chs}"


class ExpandedE1Op(InvertedResidualOp):
    """``mbconv ... e=1 expand=always``: an inverted residual that keeps its 1x1 conv at e=1
    (FBNet's ``k3_e1``); nests as the first channel group of ``e=<1,3,6> expand=always``."""

    name = "expanded_e1"

    def examples(self) -> list[tuple[Option, Site]]:
        return [(Option(kernel=3, expansion=1, expand_always=True), Site((8, 8, 16), 16, 1))]

    def matches(self, option: Option, site: Site) -> bool:
        return not option.is_skip and option.expansion == 1 and option.expand_always and option.groups == 1


class GroupedOp(InvertedResidualOp):
    """Grouped 1x1 convs with a channel shuffle after the first (FBNet's ``kK_e1_g2``)."""

    name = "grouped_inverted_residual"
    parameters = ("kernel", "expansion", "groups")
    nests = ("the supernet does not search grouped 1x1 convolutions (g=): a grouped conv is not a "
             "channel subset of the dense one; drop g= from searched layers")
    nest_span_field = "groups"
    timm_unsupported = "grouped 1x1 convolutions (g=)"

    def examples(self) -> list[tuple[Option, Site]]:
        return [(Option(kernel=3, expansion=1, expand_always=True, groups=2), Site((8, 8, 16), 16, 1)),
                (Option(kernel=5, expansion=3, groups=2), Site((8, 8, 16), 24, 2))]

    def matches(self, option: Option, site: Site) -> bool:
        return not option.is_skip and option.groups != 1

    def timm_string(self, option: Option, site: Site, repeat: int) -> str | None:
        raise NotImplementedError(self.timm_unsupported)


class DepthwiseSeparableOp(Op):
    """e=1 without ``expand=always``: k x k depthwise + BN + ReLU, 1x1 projection + BN (+ residual)."""

    name = "depthwise_separable"
    parameters = ("kernel",)

    def examples(self) -> list[tuple[Option, Site]]:
        return [(Option(kernel=3, expansion=1), Site((8, 8, 16), 16, 1)),
                (Option(kernel=5, expansion=1), Site((8, 8, 16), 24, 2))]

    def matches(self, option: Option, site: Site) -> bool:
        return not option.is_skip and option.groups == 1 and not option.has_expand_conv

    def cost(self, option: Option, site: Site) -> tuple[int, int]:
        (_, _, cin), (oh, ow, cout) = site.in_hwc, site.out_hwc
        k = option.kernel
        params = k * k * cin + 2 * cin + cin * cout + 2 * cout
        return params, oh * ow * k * k * cin + oh * ow * cin * cout

    def signature(self, option: Option, site: Site) -> str | None:
        return f"mbconv:{site.text()}:{option}"

    def torch_module(self, option: Option, site: Site):
        from spnas_dsl.ops.torch_blocks import DepthwiseSeparableConv

        return DepthwiseSeparableConv(site.in_chs, site.out_chs, option.kernel, site.stride)

    def keras(self, recorder: Any, x: Any, option: Option, site: Site) -> Any:
        r, inp = recorder, x
        x = r.relu(r.bn(r.depthwise(x, "conv_dw", option.kernel, site.stride), "bn1"), "act1")
        x = r.bn(r.conv(x, "conv_pw", site.out_chs, 1), "bn2")
        return _residual(r, inp, x, site)

    def timm_string(self, option: Option, site: Site, repeat: int) -> str | None:
        return f"ds_r{repeat}_k{option.kernel}_s{site.stride}_c{site.out_chs}"
