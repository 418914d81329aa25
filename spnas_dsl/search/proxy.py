"""Which kernel decisions a search at a given image size can learn from the data.

A searched layer chooses between nested depthwise kernels (``k=<3,5>``: the inner 3x3 or the
whole 5x5). The decision is learned from what the outer ring of the larger kernel adds. With
'same' padding ``k // 2``, a ring at offset ``r`` from the centre touches a real pixel for
some output position only when the layer's input map is at least ``r + 1`` pixels wide; on
smaller maps every tap of the ring multiplies zero padding, so the two kernels compute the
same function and the decision is decided by the latency term alone (**uninformed**). On a
map smaller than the larger kernel but wider than the inner one, the ring sees the map only
near the borders (**partial**). A search trained at a proxy ``--image-size`` below the
declared input shrinks every map by the same factor, so the deep layers are the first to lose
their kernel decisions.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

from spnas_dsl.ir import Network
from spnas_dsl.shapes import infer_shapes


@dataclass(frozen=True)
class KernelDecisionInfo:
    """One kernel decision of one layer that the training size does not fully inform."""

    index: int
    name: str  # <stage>.<position>
    decision: str  # e.g. "k5" (the larger kernel of the pair)
    smaller: int  # the kernel it is compared with
    map_hw: tuple[int, int]  # the depthwise conv's input map at the training size
    declared_hw: tuple[int, int]  # the same map at the declared input size
    level: str  # "uninformed" or "partial"

    def describe(self) -> str:
        h, w = self.map_hw
        what = ("computes the same as" if self.level == "uninformed" else "sees the map only near the borders, beside")
        return (f"layer {self.index} ({self.name}) {self.decision}: on a {h}x{w} map a {self.decision[1:]}x"
                f"{self.decision[1:]} kernel {what} {self.smaller}x{self.smaller}")

    def to_dict(self) -> dict:
        return asdict(self)


def at_image_size(space: Network, image_size: int) -> Network:
    """``space`` with its input resized to ``image_size`` x ``image_size`` (channels kept)."""
    return space.model_copy(update={"input": space.input.model_copy(update={"height": image_size,
                                                                              "width": image_size})})


def kernel_decision_coverage(space: Network, image_size: int) -> list[KernelDecisionInfo]:
    """The kernel decisions of ``space`` that training at ``image_size`` cannot fully inform.

    Empty when every kernel decision sees real pixels through its whole ring for some output
    position (the map is at least as large as the kernel).
    """
    trained = {s.index: s for s in infer_shapes(at_image_size(space, image_size)).layers}
    out = []
    for declared in infer_shapes(space).layers:
        layer = declared.layer
        if not layer.is_searched or layer.kernel is None or len(layer.kernel.values) < 2:
            continue
        shape = trained[declared.index]
        h, w = shape.in_hwc[0], shape.in_hwc[1]
        kernels = sorted(layer.kernel.values)
        for small, large in itertools.pairwise(kernels):
            side = min(h, w)
            if side >= large:
                continue
            level = "uninformed" if side <= small // 2 + 1 else "partial"
            out.append(KernelDecisionInfo(declared.index, declared.name, f"k{large}", small, (h, w),
                                          (declared.in_hwc[0], declared.in_hwc[1]), level))
    return out


def coverage_message(space: Network, image_size: int, infos: list[KernelDecisionInfo]) -> str:
    """The warning a search prints before it starts (empty when every decision is informed)."""
    if not infos:
        return ""
    uninformed = [i for i in infos if i.level == "uninformed"]
    partial = [i for i in infos if i.level == "partial"]
    size = f"{image_size}x{image_size}"
    lines = [(f"warning: trained at {size} (declared input {space.input}), {len(infos)} kernel decision(s) of "
              f"'{space.name}' are not fully informed by the data:")]
    if uninformed:
        lines.append(f"  uninformed ({len(uninformed)}: chosen by the latency term alone):")
        lines += [f"    {i.describe()}" for i in uninformed]
    if partial:
        lines.append(f"  partial ({len(partial)}: the larger kernel's outer ring sees the map only near its borders):")
        lines += [f"    {i.describe()}" for i in partial]
    if image_size < space.input.height:
        lines.append(f"  a larger --image-size (up to the declared {space.input.height}) informs more of them")
    return "\n".join(lines)
