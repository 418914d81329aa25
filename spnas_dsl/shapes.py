"""Analysis pass: shapes, parameter and multiply-add counts, the size of the space.

Everything here is computed from the IR alone (no torch), so ``check``/``summary`` stay
fast. Counting follows PyTorch/timm conventions: convolutions have no bias, each BN adds
2 trainable parameters per channel (gamma, beta), the classifier has a bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from spnas_dsl.ir import Layer, Network, Option
from spnas_dsl.ops import Site, op_for


def round_channels(channels: int, multiplier: float, divisor: int = 8) -> int:
    """MnasNet's channel rounding: scale, then round to a multiple of ``divisor`` (>= 90 %)."""
    if multiplier == 1.0:
        return channels
    scaled = channels * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return rounded


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a convolution with symmetric 'same' padding kernel//2."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def total_stride(network: Network) -> int:
    """Product of all strides (stem and stages)."""
    return math.prod([network.stem.stride] + [s.stride for s in network.stages])


@dataclass(frozen=True)
class LayerShape:
    """One layer of the network with its inferred shapes (after the width multiplier)."""

    index: int               # position among the MBConv layers (0-based)
    stage: str
    position: int            # index within the stage
    layer: Layer
    in_hwc: tuple[int, int, int]
    out_hwc: tuple[int, int, int]
    stride: int

    @property
    def is_searched(self) -> bool:
        return self.layer.is_searched

    @property
    def residual(self) -> bool:
        """Whether the block adds its input (stride 1, same channels)."""
        return self.stride == 1 and self.in_hwc[2] == self.out_hwc[2]

    @property
    def changes_shape(self) -> bool:
        """Whether the layer's output shape differs from its input (stride 2 or new channels)."""
        return not self.residual

    @property
    def name(self) -> str:
        return f"{self.stage}.{self.position}"


@dataclass(frozen=True)
class NetworkShape:
    """Shapes of every part: stem, each MBConv layer, head."""

    input_hwc: tuple[int, int, int]
    stem_out: tuple[int, int, int]
    layers: list[LayerShape] = field(default_factory=list)
    head_in: tuple[int, int, int] = (0, 0, 0)
    head_channels: int = 0
    classes: int = 0


def infer_shapes(network: Network) -> NetworkShape:
    """Propagate (H, W, C) through the network; channels are rounded by the width multiplier."""
    m = network.width_multiplier
    h, w = network.input.height, network.input.width
    stem = network.stem
    h, w = conv_out(h, stem.kernel, stem.stride), conv_out(w, stem.kernel, stem.stride)
    stem_out = (h, w, round_channels(stem.channels, m))
    current = stem_out
    layers = []
    index = 0
    for stage in network.stages:
        out_c = round_channels(stage.channels, m)
        for i, layer in enumerate(stage.layers):
            stride = stage.stride if i == 0 else 1
            kernel = layer.kernel.max if layer.kernel else 3  # padding keeps any odd kernel aligned
            oh, ow = conv_out(current[0], kernel, stride), conv_out(current[1], kernel, stride)
            out = (oh, ow, out_c)
            layers.append(LayerShape(index, stage.name, i, layer, current, out, stride))
            current = out
            index += 1
    return NetworkShape(
        input_hwc=(network.input.height, network.input.width, network.input.channels),
        stem_out=stem_out,
        layers=layers,
        head_in=current,
        head_channels=round_channels(network.head.channels, m),
        classes=network.classes,
    )


def is_identity(shape: LayerShape, option: Option) -> bool:
    """Whether ``option`` leaves the layer out: a skip that is not a projection where the shape changes."""
    return op_for(option, Site.of(shape)).name == "identity"


def option_cost(shape: LayerShape, option: Option) -> tuple[int, int]:
    """(parameters, multiply-adds) of one layer for one option (its op's count, ``spnas_dsl.ops``).

    An identity skip costs nothing; a projection skip (``skip project=conv`` where the shape
    changes) is a 1x1 conv + BN. Grouped 1x1 convs have ``1/groups`` of the dense weights; the
    channel shuffle has none.
    """
    return op_for(option, Site.of(shape)).cost(option, Site.of(shape))


def fixed_cost(network: Network, shapes: NetworkShape) -> tuple[int, int]:
    """(parameters, multiply-adds) of the stem and head (independent of the choices)."""
    stem = network.stem
    cin = shapes.input_hwc[2]
    sh, sw, sc = shapes.stem_out
    params = stem.kernel**2 * cin * sc + 2 * sc
    macs = sh * sw * stem.kernel**2 * cin * sc
    hh, hw, hc = shapes.head_in
    params += hc * shapes.head_channels + 2 * shapes.head_channels
    macs += hh * hw * hc * shapes.head_channels
    params += shapes.head_channels * shapes.classes + shapes.classes
    macs += shapes.head_channels * shapes.classes
    return params, macs


@dataclass(frozen=True)
class SpaceSummary:
    architectures: int
    params_min: int
    params_max: int
    macs_min: int
    macs_max: int


def summarize(network: Network, shapes: NetworkShape | None = None) -> SpaceSummary:
    """Size of the space and the extreme parameter / multiply-add counts.

    Layer choices are independent (a layer's input width is fixed by its stage), so the
    extremes are sums of per-layer extremes.
    """
    shapes = shapes or infer_shapes(network)
    params, macs = fixed_cost(network, shapes)
    p_min = p_max = params
    m_min = m_max = macs
    count = 1
    for shape in shapes.layers:
        costs = [option_cost(shape, o) for o in shape.layer.options]
        count *= len(costs)
        p_min += min(c[0] for c in costs)
        p_max += max(c[0] for c in costs)
        m_min += min(c[1] for c in costs)
        m_max += max(c[1] for c in costs)
    return SpaceSummary(count, p_min, p_max, m_min, m_max)
