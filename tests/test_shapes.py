"""Shapes, channel rounding, parameter and multiply-add counts, the size of a space."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spnas_dsl.ir import Option
from spnas_dsl.parser import load, parse_text
from spnas_dsl.shapes import conv_out, infer_shapes, option_cost, round_channels, summarize, total_stride

TINY = """\
network tiny {
    input 8x8x3
    classes 10
    stem conv k=3 c=8 s=1
    stage a c=8 s=1 {
        mbconv k=<3,5> e=<1,6> | skip
    }
    head conv c=16
}
"""


@pytest.fixture(scope="module")
def mnasnet(repo):
    return load(repo / "spaces" / "mnasnet.spnas")


@pytest.fixture(scope="module")
def spnasnet(repo):
    return load(repo / "examples" / "spnasnet.spnas")


# -- channel rounding (MnasNet's round_filters) ------------------------------------------


@pytest.mark.parametrize(
    "multiplier, channels, expected",
    [
        # x0.5: halve, then round to a multiple of 8 (never below 8, never below 90 %)
        (0.5, 32, 16), (0.5, 16, 8), (0.5, 24, 16), (0.5, 40, 24), (0.5, 80, 40),
        (0.5, 96, 48), (0.5, 192, 96), (0.5, 320, 160), (0.5, 1280, 640),
        # x1.4: 44.8 -> 48, 22.4 -> 24, 33.6 -> 32, 134.4 -> 136, 268.8 -> 272
        (1.4, 32, 48), (1.4, 16, 24), (1.4, 24, 32), (1.4, 40, 56), (1.4, 96, 136),
        (1.4, 192, 272), (1.4, 320, 448), (1.4, 1280, 1792),
        # x0.35: 11.2 rounds down to 8, which is below 90 % of 11.2, so one more step: 16
        (0.35, 32, 16), (0.35, 24, 8), (0.35, 16, 8),
        (1.0, 7, 7),  # x1.0 keeps any width, even one that is not a multiple of 8
    ],
)
def test_round_channels(multiplier, channels, expected):
    assert round_channels(channels, multiplier) == expected


@given(st.integers(1, 4096), st.floats(0.05, 4.0))
@settings(max_examples=200, deadline=None)
def test_round_channels_properties(channels, multiplier):
    rounded = round_channels(channels, multiplier)
    if multiplier != 1.0:
        assert rounded % 8 == 0 and rounded >= 8
        assert rounded >= 0.9 * channels * multiplier


def test_width_multiplier_scales_every_width(repo):
    text = (repo / "spaces" / "mnasnet.spnas").read_text().replace("width 1.0", "width 0.5")
    shapes = infer_shapes(parse_text(text))
    assert shapes.stem_out == (112, 112, 16)
    per_stage = {s.stage: s.out_hwc[2] for s in shapes.layers}
    assert per_stage == {"first": 8, "s24": 16, "s40": 24, "s80": 40, "s96": 48, "s192": 96, "last": 160}
    assert shapes.head_channels == 640


# -- shapes ----------------------------------------------------------------------------


def test_conv_out_and_total_stride(mnasnet):
    assert conv_out(224, 3, 2) == 112 and conv_out(112, 5, 1) == 112 and conv_out(7, 3, 2) == 4
    assert total_stride(mnasnet) == 32


def test_mnasnet_shapes_per_layer(mnasnet):
    shapes = infer_shapes(mnasnet)
    assert shapes.input_hwc == (224, 224, 3) and shapes.stem_out == (112, 112, 32)
    assert [s.index for s in shapes.layers] == list(range(22))
    assert [s.name for s in shapes.layers[:3]] == ["first.0", "s24.0", "s24.1"]
    # the spatial size after each stage: 112, 56, 28, 14, 14, 7, 7
    last_of_stage = {s.stage: s.out_hwc for s in shapes.layers}
    assert last_of_stage == {
        "first": (112, 112, 16), "s24": (56, 56, 24), "s40": (28, 28, 40), "s80": (14, 14, 80),
        "s96": (14, 14, 96), "s192": (7, 7, 192), "last": (7, 7, 320),
    }
    assert [s.stride for s in shapes.layers] == [1, 2, 1, 1, 1] + [2, 1, 1, 1] * 2 + [1, 1, 1, 1, 2, 1, 1, 1, 1]
    assert [s.is_searched for s in shapes.layers] == [False] + [True] * 20 + [False]
    # a block adds its input when it keeps the shape: every layer but the first of each stage
    assert [s.residual for s in shapes.layers] == [False] + [False, True, True, True] * 5 + [False]
    assert shapes.head_in == (7, 7, 320) and shapes.head_channels == 1280 and shapes.classes == 1000


def test_layers_chain(mnasnet):
    shapes = infer_shapes(mnasnet)
    previous = shapes.stem_out
    for layer in shapes.layers:
        assert layer.in_hwc == previous
        previous = layer.out_hwc


# -- costs -------------------------------------------------------------------------------


def test_costs_by_hand():
    net = parse_text(TINY)
    shapes = infer_shapes(net)
    (layer,) = shapes.layers
    # e=1 (depthwise-separable): dw 3x3 on 8 ch + BN, project 8 -> 8 + BN
    assert option_cost(layer, Option(kernel=3, expansion=1)) == (9 * 8 + 16 + 8 * 8 + 16, 64 * 9 * 8 + 64 * 8 * 8)
    # e=6: expand 8 -> 48 + BN, dw 5x5 on 48 + BN, project 48 -> 8 + BN
    params = 8 * 48 + 96 + 25 * 48 + 96 + 48 * 8 + 16
    macs = 64 * 8 * 48 + 64 * 25 * 48 + 64 * 48 * 8
    assert option_cost(layer, Option(kernel=5, expansion=6)) == (params, macs) == (2176, 125952)
    assert option_cost(layer, Option()) == (0, 0)  # a skip costs nothing
    # stem 3x3x3x8 + BN, head 8 -> 16 + BN, classifier 16 -> 10 with bias
    fixed_params = 3 * 3 * 3 * 8 + 16 + 8 * 16 + 32 + 16 * 10 + 10
    fixed_macs = 64 * 27 * 8 + 64 * 8 * 16 + 16 * 10
    summary = summarize(net, shapes)
    assert summary.architectures == 5
    assert (summary.params_min, summary.params_max) == (fixed_params, fixed_params + 2176)
    assert (summary.macs_min, summary.macs_max) == (fixed_macs, fixed_macs + 125952)


def test_spnasnet_parameters(spnasnet):
    summary = summarize(spnasnet)
    # timm's spnasnet_100 has 4,421,616 parameters
    assert summary.architectures == 1
    assert summary.params_min == summary.params_max == 4_421_616
    assert summary.macs_min == summary.macs_max


def test_spnasnet_is_fig5_layer_by_layer(spnasnet):
    options = [str(layer.options[0]) for _, _, layer in spnasnet.iter_layers()]
    assert spnasnet.is_concrete
    assert options == (
        ["k3e1"] + ["k3e3"] * 3 + ["skip"]
        + ["k5e6"] + ["k3e3"] * 3
        + ["k5e6"] + ["k3e3"] * 3
        + ["k5e6"] + ["k5e3"] * 3
        + ["k5e6"] * 4
        + ["k3e6"]
    )


def test_mnasnet_space_size(mnasnet):
    summary = summarize(mnasnet)
    assert summary.architectures == (4 * 5**3) ** 5 == 31_250_000_000_000
    assert summary.params_min < summary.params_max and summary.macs_min < summary.macs_max


def test_spnasnet_is_inside_the_mnasnet_bounds(mnasnet, spnasnet):
    space, net = summarize(mnasnet), summarize(spnasnet)
    assert space.params_min <= net.params_max <= space.params_max
    assert space.macs_min <= net.macs_max <= space.macs_max


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_summary_of_generated_networks(valid_networks, data):
    net = data.draw(valid_networks)
    shapes = infer_shapes(net)
    summary = summarize(net, shapes)
    layers = [layer for _, _, layer in net.iter_layers()]
    assert len(shapes.layers) == len(layers)
    assert summary.architectures == math.prod(len(layer.options) for layer in layers)
    assert summary.params_min <= summary.params_max and summary.macs_min <= summary.macs_max
    # any one network of the space lies within the bounds; the first options form one
    first = net.replace_layers([type(layer).from_option(layer.options[0]) for layer in layers])
    one = summarize(first)
    assert one.architectures == 1 and one.params_min == one.params_max
    assert summary.params_min <= one.params_max <= summary.params_max
    assert summary.macs_min <= one.macs_max <= summary.macs_max
    # the spatial size is divided by the total stride, rounded up
    h, w, _ = shapes.head_in
    stride = total_stride(net)
    assert (h, w) == (-(-net.input.height // stride), -(-net.input.width // stride))
