"""Layer signatures: the canonical string that names one option of one layer in a table.

A signature says everything that decides a layer's runtime on a device and nothing else:

- MBConv option:  ``mbconv:i56x56x24:o24:s1:k3e6``  (input HxWxC, output channels, stride,
  and the option's text: ``k3e6``, ``k3e1x`` for e=1 with its expansion conv, ``k3e1xg2``
  grouped); fixed MBConv layers use the same form.
- projection skip: ``proj:i32x32x16:o24:s1`` (``skip project=conv`` where the shape changes)
- stem:           ``conv:i224x224x3:o32:s2:k3``
- head:           ``head:i7x7x320:o1280:c1000``  (input, 1x1 conv channels, classes)

An identity skip costs 0 and has no signature (``None``). Shapes are those of
:func:`spnas_dsl.shapes.infer_shapes`, i.e. after the width multiplier.
"""

from __future__ import annotations

import re

from spnas_dsl.ir import Network, Option
from spnas_dsl.ops import Site, op_for
from spnas_dsl.shapes import LayerShape, NetworkShape

# Any ``op:field:field...`` string: tables may hold ops this version does not build.
SIGNATURE_RE = re.compile(r"^[a-z][a-z0-9_]*(:[A-Za-z0-9._-]+)+$")
_MBCONV_RE = re.compile(r"^mbconv:i(\d+)x(\d+)x(\d+):o(\d+):s(\d+):k(\d+)e(\d+)(x?)(?:g(\d+))?$")


def _hwc(hwc: tuple[int, int, int]) -> str:
    return "x".join(str(v) for v in hwc)


def mbconv_signature(in_hwc: tuple[int, int, int], out_channels: int, stride: int, option: Option) -> str | None:
    """Signature of one option on an input of ``in_hwc`` (its op's, ``spnas_dsl.ops``); ``None``
    for an identity skip."""
    site = Site(tuple(in_hwc), out_channels, stride)
    return op_for(option, site).signature(option, site)


def layer_signature(shape: LayerShape, option: Option) -> str | None:
    """Signature of ``option`` at the layer described by ``shape``; ``None`` for a skip."""
    return mbconv_signature(shape.in_hwc, shape.out_hwc[2], shape.stride, option)


def stem_signature(network: Network, shapes: NetworkShape) -> str:
    """Signature of the stem convolution, e.g. ``conv:i224x224x3:o32:s2:k3``."""
    stem = network.stem
    return f"conv:i{_hwc(shapes.input_hwc)}:o{shapes.stem_out[2]}:s{stem.stride}:k{stem.kernel}"


def head_signature(shapes: NetworkShape) -> str:
    """Signature of the head (1x1 conv, pool, classifier), e.g. ``head:i7x7x320:o1280:c1000``."""
    return f"head:i{_hwc(shapes.head_in)}:o{shapes.head_channels}:c{shapes.classes}"


def is_signature(text: str) -> bool:
    """Whether ``text`` has the general ``op:field[:field...]`` form of a signature."""
    return bool(SIGNATURE_RE.match(text))


def parse_mbconv_signature(text: str) -> tuple[tuple[int, int, int], int, int, Option] | None:
    """(in_hwc, out_channels, stride, option) of an MBConv signature, or ``None`` if it is not one."""
    m = _MBCONV_RE.match(text)
    if not m:
        return None
    h, w, c, o, s, k, e, x, g = m.groups()
    option = Option(kernel=int(k), expansion=int(e), expand_always=bool(x), groups=int(g or 1))
    return (int(h), int(w), int(c)), int(o), int(s), option
