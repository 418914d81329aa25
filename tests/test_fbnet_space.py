"""The FBNet constructs: expand=always, grouped 1x1 convs with a shuffle, the projection skip.

Each is parsed, validated (located errors), printed, counted by `summary`, lowered to PyTorch
with the analytic parameter count, exported with parity, and either nested by the supernet or
rejected with a located error.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from spnas_dsl.compiler.blocks import ChannelShuffle, InvertedResidual, ProjectionSkip
from spnas_dsl.compiler.network import lower_to_network
from spnas_dsl.compiler.supernet import lower_to_supernet
from spnas_dsl.errors import BuildError, LoweringError, SpnasErrors
from spnas_dsl.ir import Layer, Option
from spnas_dsl.parser import load, parse_text
from spnas_dsl.printer import format_network
from spnas_dsl.shapes import infer_shapes, summarize
from spnas_dsl.targets import load_target

ROOT = Path(__file__).resolve().parent.parent
FBNET = ROOT / "spaces" / "fbnet_cifar100.spnas"
SEARCHABLE = ROOT / "spaces" / "fbnet_cifar100_searchable.spnas"
OPS = "mbconv k=<3,5> e=<1,3,6> expand=always | mbconv k=<3,5> e=1 g=2 expand=always | skip project=conv"

SMALL = """\
network small {
    input 16x16x3
    classes 7
    width 1.0
    stem conv k=3 c=8 s=1
    stage a c=8 s=1 {
        LAYER_A
    }
    stage b c=16 s=2 {
        LAYER_B
        mbconv k=3 e=3
    }
    head conv c=32 dropout=0.0
}
"""


def small(a: str, b: str) -> str:
    return SMALL.replace("LAYER_A", a).replace("LAYER_B", b)


def errors_of(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(SpnasErrors) as info:
        parse_text(text, "f.spnas")
    return [(e.span.line, e.span.column, e.message) for e in info.value.errors]


def test_fbnet_space_has_22_layers_of_9_ops():
    space = load(FBNET)
    shapes = infer_shapes(space).layers
    assert len(shapes) == 22
    assert all(len(s.layer.options) == 9 for s in shapes)
    assert summarize(space).architectures == 9**22
    names = sorted(str(o) for o in shapes[0].layer.options)
    assert names == sorted(["k3e1x", "k3e3", "k3e6", "k5e1x", "k5e3", "k5e6", "k3e1xg2", "k5e1xg2", "skip_proj"])
    # the shape changes exactly where the README says: 16->24, s2, s2, 64->112, s2, 184->352
    assert [s.index for s in shapes if s.changes_shape] == [1, 5, 9, 13, 17, 21]


def test_searchable_subspace_keeps_what_nests():
    space = load(SEARCHABLE)
    counts = [len(s.layer.options) for s in infer_shapes(space).layers]
    assert counts == [6 if i in (1, 5, 9, 13, 17, 21) else 7 for i in range(22)]
    full = {i: set(s.layer.options) for i, s in enumerate(infer_shapes(load(FBNET)).layers)}
    for s in infer_shapes(space).layers:  # every option is one of the full space (identity skip = skip_proj there)
        assert {o for o in s.layer.options if not o.is_skip} <= full[s.index]


def test_new_constructs_round_trip_through_fmt():
    text = small(OPS, "mbconv k=<3,5> e=<1,3,6> expand=always | mbconv k=3 e=1 g=2 expand=always | skip project=conv")
    net = parse_text(text)
    again = parse_text(format_network(net))
    assert again == net
    assert format_network(again) == format_network(net)
    assert "skip project=conv" in format_network(net) and "g=2 expand=always" in format_network(net)


def test_depthwise_separable_e1_stays_distinct_from_expand_always():
    dw = parse_text(small("mbconv k=3 e=1", "mbconv k=3 e=3"))
    full = parse_text(small("mbconv k=3 e=1 expand=always", "mbconv k=3 e=3"))
    assert dw != full
    assert summarize(full).params_min - summarize(dw).params_min == 8 * 8 + 2 * 8  # the 1x1 expansion conv + BN
    assert type(lower_to_network(full).blocks[0][0]) is InvertedResidual
    assert str(infer_shapes(full).layers[0].layer.options[0]) == "k3e1x"


@pytest.mark.parametrize(
    "a, b, line, col, message",
    [
        ("mbconv k=3 e=1 g=2", "mbconv k=3 e=3", 7, 24, "groups 2 needs the 1x1 expansion conv"),
        ("mbconv k=3 e=3 g=3", "mbconv k=3 e=3", 7, 24, "groups 3 is not one of {1,2,4}"),
        ("mbconv k=3 e=3", "mbconv k=3 e=3 expand=sometimes", 10, 24, "'expand=' takes one of auto, always"),
        ("mbconv k=3 e=3 | skip project=yes", "mbconv k=3 e=3", 7, 31, "'project=' takes one of conv, got 'yes'"),
        ("mbconv k=3 e=3", "mbconv k=3 e=3 | skip", 10, 9, "changes the shape (stride 2) and cannot be skipped"),
        ("mbconv k=3 e=3", "mbconv k=3 e=3 | mbconv k=5 e=6", 10, 26, "only one 'mbconv' per layer with the same g="),
        ("mbconv k=3 e=<1,3> expand=always | mbconv k=3 e=3", "mbconv k=3 e=3", 7, 44, "repeats option k3e3"),
    ],
)
def test_located_errors_of_the_new_constructs(a, b, line, col, message):
    found = errors_of(small(a, b))
    assert any((ln, c) == (line, col) and message in m for ln, c, m in found), found


def test_groups_must_divide_the_channels():
    text = small("mbconv k=3 e=3", "mbconv k=3 e=3").replace("c=16 s=2", "c=18 s=2")
    found = errors_of(text.replace("mbconv k=3 e=3\n    }\n    head", "mbconv k=3 e=3 g=4\n    }\n    head"))
    assert any("groups 4 must divide the layer's channels (18 -> 18)" in m for _, _, m in found), found


def test_projection_skip_is_a_block_only_where_the_shape_changes():
    net = parse_text(small("skip project=conv", "skip project=conv"))
    model = lower_to_network(net)
    assert len(model.blocks[0]) == 0  # stage a keeps the shape: identity, left out
    assert isinstance(model.blocks[1][0], ProjectionSkip) and model.blocks[1][0].conv.stride == (2, 2)
    assert sum(p.numel() for p in model.parameters()) == summarize(net).params_min


def test_grouped_block_has_a_shuffle_and_half_the_pointwise_weights():
    net = parse_text(small("mbconv k=5 e=1 g=2 expand=always", "mbconv k=3 e=3"))
    block = lower_to_network(net).blocks[0][0]
    assert isinstance(block.shuffle, ChannelShuffle)
    assert block.conv_pw.weight.shape == (8, 4, 1, 1) and block.conv_pwl.weight.shape == (8, 4, 1, 1)
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert ChannelShuffle(2)(x).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_every_op_lowers_with_the_analytic_parameter_count():
    space = load(FBNET)
    shapes = infer_shapes(space).layers
    rng = random.Random(13)
    picks = [[s.layer.options[(i + j) % 9] for i, s in enumerate(shapes)] for j in range(9)]  # each op at each layer
    picks += [[rng.choice(s.layer.options) for s in shapes] for _ in range(3)]
    for options in picks:
        net = space.replace_layers([Layer.from_option(o) for o in options])
        model = lower_to_network(net).eval()
        assert sum(p.numel() for p in model.parameters()) == summarize(net).params_min
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_shipped_mnasnet_files_keep_their_meaning():
    from spnas_dsl.latency.graph import LatencyGraph

    net = load(ROOT / "examples" / "spnasnet.spnas")
    assert summarize(net).params_min == 4_421_616
    assert round(LatencyGraph.build(net, load_target("pixel1")).predict(), 2) == 80.44
    space = summarize(load(ROOT / "spaces" / "mnasnet.spnas"))
    assert (space.params_min, space.params_max) == (2_457_384, 4_833_768)


def test_supernet_rejects_what_does_not_nest_with_a_location():
    with pytest.raises(LoweringError) as info:
        lower_to_supernet(load(FBNET))
    assert (info.value.span.line, info.value.span.column) == (15, 50)
    grouped = parse_text(small("mbconv k=<3,5> e=1 g=2 expand=always", "mbconv k=3 e=3"), "g.spnas")
    with pytest.raises(LoweringError, match="grouped 1x1") as info:
        lower_to_supernet(grouped)
    assert (info.value.span.line, info.value.span.column) == (7, 28)
    projected = parse_text(small("mbconv k=3 e=3", "mbconv k=<3,5> e=3 | skip project=conv"), "p.spnas")
    with pytest.raises(LoweringError, match="skip project=conv"):
        lower_to_supernet(projected)
    identity_there = parse_text(small("mbconv k=<3,5> e=3 | skip project=conv", "mbconv k=3 e=3"))
    lower_to_supernet(identity_there)  # where the shape is kept the projection skip is the identity: fine


def test_supernet_nests_expansion_1_with_its_expansion_conv():
    from spnas_dsl.compiler.extract import extract

    torch.manual_seed(0)
    supernet = lower_to_supernet(load(SEARCHABLE)).eval()
    for option in (Option(kernel=3, expansion=1, expand_always=True), Option(kernel=5, expansion=3)):
        supernet.select({b.index: option for b in supernet.searched_blocks()})
        concrete = supernet.derive()
        assert str(infer_shapes(concrete).layers[0].layer.options[0]) == str(option)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(extract(supernet, concrete).eval()(x), supernet(x).logits, atol=1e-5)


def test_timm_strings_refuse_grouped_convs_with_a_location():
    from spnas_dsl.backends.timm import timm_arch_def

    net = parse_text(small("mbconv k=3 e=1 expand=always", "mbconv k=3 e=1 g=2 expand=always"), "t.spnas")
    with pytest.raises(BuildError, match="grouped 1x1") as info:
        timm_arch_def(net)
    assert info.value.span.line == 10
    ok = parse_text(small("mbconv k=3 e=1 expand=always", "mbconv k=3 e=1"))
    assert timm_arch_def(ok)[:2] == [["ir_r1_k3_s1_e1_c8"], ["ds_r1_k3_s2_c16", "ir_r1_k3_s1_e3_c16"]]


@pytest.mark.slow
def test_onnx_and_tflite_match_pytorch_on_every_new_op(tmp_path):
    from spnas_dsl.cli import main

    text = small("mbconv k=5 e=1 g=2 expand=always", "skip project=conv").replace(
        "mbconv k=3 e=3\n    }", "mbconv k=3 e=1 expand=always\n        mbconv k=3 e=3 g=2\n    }")
    arch = tmp_path / "mix.spnas"
    arch.write_text(text)
    assert main(["build", str(arch), "--to", "onnx", "--to", "tflite", "--out", str(tmp_path / "b")]) == 0
    import json

    report = json.loads((tmp_path / "b" / "build.json").read_text())
    checked = {a["backend"]: a["parity"]["random"]["relative"] for a in report["artifacts"] if a.get("parity")}
    assert set(checked) >= {"onnx", "tflite"}
    assert all(v <= report["parity"]["tolerance"] for v in checked.values()), checked
