"""The semantic rules: every broken rule is a located error, all reported together."""

from __future__ import annotations

import pytest

from spnas_dsl.errors import SpnasErrors, SpnasValidationError
from spnas_dsl.ir import SKIP, CandidateSet, Head, InputSize, Layer, Network, Option, Stage, Stem
from spnas_dsl.parser import parse_text
from spnas_dsl.validate import validate

BASE = """\
network net {
    input 224x224x3
    classes 10
    width 1.0
    stem conv k=3 c=32 s=2
    stage a c=16 s=1 {
        mbconv k=3 e=1
    }
    stage b c=24 s=2 {
        mbconv k=<3,5> e=<3,6>
        2x mbconv k=<3,5> e=<3,6> | skip
    }
    head conv c=64 dropout=0.2
}
"""


def errors_of(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(SpnasErrors) as info:
        parse_text(text, "v.spnas")
    assert all(isinstance(e, SpnasValidationError) for e in info.value.errors)
    return [(e.span.line, e.span.column, e.message) for e in info.value.errors]


def test_base_is_valid():
    assert parse_text(BASE).stages[1].layers[2].skip


@pytest.mark.parametrize(
    "old, new, line, col, message",
    [
        ("k=<3,5> e=<3,6>\n", "k=<4> e=<3,6>\n", 10, 16, "kernel size 4 is not one of {3,5,7}"),
        ("k=<3,5> e=<3,6>\n", "k=<3,9> e=<3,6>\n", 10, 16, "kernel size 9 is not one of {3,5,7}"),
        ("k=<3,5> e=<3,6>\n", "k=<3,5> e=<0,3>\n", 10, 24, "expansion 0 is not one of {1,2,3,4,5,6}"),
        ("mbconv k=3 e=1", "mbconv k=3 e=8", 7, 20, "expansion 8 is not one of {1,2,3,4,5,6}"),
        (
            "mbconv k=<3,5> e=<3,6>\n",
            "mbconv k=<3,5> e=<3,6> | skip\n",
            10, 9, "the first layer of stage 'b' changes the shape (stride 2) and cannot be skipped",
        ),
        (
            "mbconv k=3 e=1",
            "mbconv k=3 e=1 | skip",
            7, 9, "the first layer of stage 'a' changes the shape (32 -> 16 channels) and cannot be skipped",
        ),
        ("mbconv k=3 e=1", "skip", 7, 9, "the first layer of stage 'a' changes the shape"),
        ("stage b c=24 s=2", "stage b c=24 s=3", 9, 11, "stride must be 1 or 2, got 3"),
        ("stage b c=24 s=2", "stage b c=24 s=0", 9, 11, "stride must be 1 or 2, got 0"),
        ("stem conv k=3 c=32 s=2", "stem conv k=3 c=32 s=4", 5, 10, "stride must be 1 or 2, got 4"),
        ("stem conv k=3", "stem conv k=4", 5, 10, "stem kernel size must be odd and positive, got 4"),
        ("stem conv k=3 c=32", "stem conv k=3 c=0", 5, 10, "stem channels must be at least 1, got 0"),
        ("stage b c=24", "stage b c=0", 9, 11, "stage channels must be at least 1, got 0"),
        ("head conv c=64", "head conv c=0", 13, 10, "head channels must be at least 1, got 0"),
        ("dropout=0.2", "dropout=1", 13, 10, "dropout must be in [0, 1), got 1"),
        ("dropout=0.2", "dropout=-0.1", 13, 10, "dropout must be in [0, 1), got -0.1"),
        ("width 1.0", "width 0", 4, 11, "width multiplier must be > 0, got 0"),
        ("width 1.0", "width -0.5", 4, 11, "width multiplier must be > 0, got -0.5"),
        ("classes 10", "classes 0", 3, 13, "number of classes must be at least 1, got 0"),
        ("input 224x224x3", "input 224x224x0", 2, 11, "input size must be positive in every dimension, got 224x224x0"),
        ("stage b c=24", "stage a c=24", 9, 11, "duplicate stage name 'a' (first defined at v.spnas:6:11)"),
        (
            "        2x mbconv k=<3,5> e=<3,6> | skip\n    }\n",
            "        2x mbconv k=<3,5> e=<3,6> | skip\n    }\n    stage c c=24 s=1 {\n    }\n",
            13, 11, "stage 'c' is empty: give it at least one layer",
        ),
        ("input 224x224x3", "input 2x224x3", 2, 11, "input 2x224 is smaller than the network's total stride 4"),
        ("input 224x224x3", "input 224x3x3", 2, 11, "input 224x3 is smaller than the network's total stride 4"),
    ],
)
def test_semantic_errors_are_located(old, new, line, col, message):
    assert old in BASE
    errors = errors_of(BASE.replace(old, new, 1))
    assert len(errors) == 1, errors
    assert errors[0][2].startswith(message)
    assert errors[0][:2] == (line, col)


def test_skip_on_a_first_layer_that_keeps_the_shape_is_allowed():
    # stride 1 and the same channels as the previous stage (here: the stem's 32)
    net = parse_text(BASE.replace("stage a c=16 s=1 {\n        mbconv k=3 e=1", "stage a c=32 s=1 {\n        skip"))
    assert net.stages[0].layers[0].is_skip_only
    # a first layer after a stage of the same width
    text = BASE.replace("    head", "    stage c c=24 s=1 {\n        mbconv k=3 e=6 | skip\n    }\n    head")
    assert parse_text(text).stages[2].layers[0].skip


def test_skip_legality_uses_the_written_channels_not_the_rounded_ones():
    # at width 0.5, 16 and 12 both round to 8 channels, yet 16 -> 12 still changes the shape as written
    text = BASE.replace("width 1.0", "width 0.5").replace("stem conv k=3 c=32", "stem conv k=3 c=16")
    text = text.replace(
        "stage a c=16 s=1 {\n        mbconv k=3 e=1",
        "stage a c=12 s=1 {\n        mbconv k=3 e=1 | skip",
    )
    [(line, col, message)] = errors_of(text)
    assert (line, col) == (7, 9) and "(16 -> 12 channels)" in message


def test_every_kernel_and_expansion_of_the_language_is_accepted():
    net = parse_text(BASE.replace("k=<3,5> e=<3,6>\n", "k=<3,5,7> e=<1,2,3,4,5,6>\n"))
    assert len(net.stages[1].layers[0].options) == 18


def test_input_equal_to_total_stride_is_allowed():
    assert parse_text(BASE.replace("input 224x224x3", "input 4x4x3")).input.height == 4


def test_total_stride_check_waits_for_other_errors():
    # a bad stride makes the total meaningless: only the stride is reported
    errors = errors_of(BASE.replace("input 224x224x3", "input 2x2x3").replace("s=2 {", "s=3 {"))
    assert [m for _, _, m in errors] == ["stride must be 1 or 2, got 3"]


def test_all_errors_are_reported_sorted_by_position():
    text = BASE.replace("dropout=0.2", "dropout=2").replace("k=<3,5> e=<3,6>\n", "k=<4> e=<3,6>\n")
    text = text.replace("width 1.0", "width 0")
    errors = errors_of(text)
    assert [(line, col) for line, col, _ in errors] == [(4, 11), (10, 16), (13, 10)]


def test_rendered_error_is_one_line_then_source_and_caret():
    with pytest.raises(SpnasErrors) as info:
        parse_text(BASE.replace("s=2 {", "s=3 {"), "v.spnas")
    first, source, caret = info.value.render().splitlines()
    assert first == "v.spnas:9:11: error: stride must be 1 or 2, got 3"
    assert source == "        stage b c=24 s=3 {"
    assert caret == " " * 14 + "^"


# -- validate() on IR built directly (what passes and the search produce) -----------------


def mbconv(k=(3,), e=(6,), skip=False) -> Layer:
    return Layer(kernel=CandidateSet(values=k), expansion=CandidateSet(values=e), skip=skip)


def network(**update) -> Network:
    net = Network(
        name="n",
        input=InputSize(height=32, width=32, channels=3),
        classes=10,
        stem=Stem(kernel=3, channels=16, stride=2),
        stages=(Stage(name="a", channels=16, stride=1, layers=(mbconv(skip=True), mbconv())),),
        head=Head(channels=32),
    )
    return net.model_copy(update=update)


def test_validate_returns_a_valid_network_unchanged():
    net = network()
    assert validate(net) is net


def test_validate_without_spans_still_reports_every_error():
    bad = network(
        width_multiplier=-1.0,
        stages=(Stage(name="a", channels=24, stride=2, layers=(mbconv(k=(4,), skip=True),)),),
    )
    with pytest.raises(SpnasErrors) as info:
        validate(bad)
    messages = sorted(e.message for e in info.value.errors)
    assert messages == [
        "kernel size 4 is not one of {3,5,7}",
        ("the first layer of stage 'a' changes the shape (stride 2) and cannot be skipped (an identity); "
        "write 'skip project=conv' for a 1x1 projection there"),
        "width multiplier must be > 0, got -1",
    ]
    assert all(line.startswith("error: ") for line in info.value.render().splitlines())


def test_validate_checks_the_total_stride():
    net = network(input=InputSize(height=1, width=32, channels=3))
    with pytest.raises(SpnasErrors, match="smaller than the network's total stride 2"):
        validate(net)


# -- passes.with_options: the one way to make a concrete network, verified ------------------


def test_with_options_sets_layers_keeps_the_rest_and_runs_the_verifier(monkeypatch):
    from spnas_dsl import passes

    space = network(stages=(Stage(name="a", channels=16, stride=1,
                                  layers=(mbconv(k=(3, 5), skip=True), mbconv(k=(3, 5)))),))
    verified = []
    monkeypatch.setattr(passes, "validate", lambda net: verified.append(net) or net)
    net = passes.with_options(space, {0: SKIP})
    assert verified == [net]
    assert net.stages[0].layers[0] == Layer(skip=True) and net.stages[0].layers[1] == space.stages[0].layers[1]
    both = passes.with_options(space, [Option(kernel=5, expansion=6), Option(kernel=3, expansion=6)])
    assert both.is_concrete and [str(layer.options[0]) for _, _, layer in both.iter_layers()] == ["k5e6", "k3e6"]


def test_with_options_refuses_a_non_candidate_located_and_a_wrong_count():
    from spnas_dsl.passes import with_options

    space = parse_text("network n {\n  input 32x32x3\n  classes 10\n  stem conv k=3 c=16 s=2\n"
                       "  stage a c=16 s=1 {\n    mbconv k=<3,5> e=6 | skip\n  }\n  head conv c=32\n}\n", "n.spnas")
    with pytest.raises(SpnasValidationError, match=r"k7e6 is not a candidate of layer 0 \(a.0\)") as info:
        with_options(space, {0: Option(kernel=7, expansion=6)})
    assert (info.value.span.file, info.value.span.line) == ("n.spnas", 6)
    with pytest.raises(SpnasValidationError, match="2 options for the 1 layers"):
        with_options(space, [SKIP, SKIP])
    with pytest.raises(SpnasValidationError, match="no layer 3"):
        with_options(space, {3: SKIP})
