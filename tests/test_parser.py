"""The parser: text -> IR, and the located errors of the syntax and of the decoding step."""

from __future__ import annotations

import pytest

from spnas_dsl.errors import SpnasError, SpnasErrors, SpnasSyntaxError
from spnas_dsl.ir import SKIP, CandidateSet, Layer, Network, Option
from spnas_dsl.parser import load, parse_text

SMALL = """\
# a small space
network small {
    input 32x32x3
    classes 10
    width 1.0
    stem conv k=3 c=16 s=2
    stage a c=16 s=1 {
        mbconv k=3 e=1  # fixed
    }
    stage b c=24 s=2 {
        mbconv k=<3,5> e=<3,6>
        2x mbconv k=<3,5,7> e=<3,6> | skip
        skip
    }
    head conv c=64 dropout=0.2
}
"""


def error_of(text: str) -> SpnasError:
    with pytest.raises(SpnasError) as info:
        parse_text(text, "t.spnas")
    return info.value


def located(text: str) -> tuple[int, int, str]:
    """(line, column, message) of the first error of ``text``."""
    err = error_of(text)
    assert err.span is not None and err.span.file == "t.spnas"
    return err.span.line, err.span.column, err.message


# -- the IR of a good file ----------------------------------------------------------------


def test_small_space_ir():
    net = parse_text(SMALL)
    assert net.name == "small"
    assert (net.input.height, net.input.width, net.input.channels) == (32, 32, 3)
    assert net.classes == 10 and net.width_multiplier == 1.0
    assert (net.stem.kernel, net.stem.channels, net.stem.stride) == (3, 16, 2)
    assert [s.name for s in net.stages] == ["a", "b"]
    assert [(s.channels, s.stride) for s in net.stages] == [(16, 1), (24, 2)]
    assert (net.head.channels, net.head.dropout) == (64, 0.2)
    a, b = net.stages
    assert a.layers == (Layer(kernel=CandidateSet(values=(3,)), expansion=CandidateSet(values=(1,))),)
    first, rep1, rep2, last = b.layers  # `2x` expands into two equal layers
    assert first.kernel.values == (3, 5) and first.expansion.values == (3, 6) and not first.skip
    assert rep1 == rep2 and rep1.kernel.values == (3, 5, 7) and rep1.skip
    assert last.is_skip_only and last.options == [SKIP]
    assert not net.is_concrete


def test_layer_options_and_concreteness():
    net = parse_text(SMALL)
    layers = [layer for _, _, layer in net.iter_layers()]
    assert [len(layer.options) for layer in layers] == [1, 4, 7, 7, 1]
    assert layers[0].is_concrete and not layers[0].is_searched
    assert layers[2].options[0] == Option(kernel=3, expansion=3) and layers[2].options[-1] == SKIP
    assert [str(o) for o in layers[1].options] == ["k3e3", "k3e6", "k5e3", "k5e6"]


def test_candidate_sets_are_sorted_and_singletons_equal_plain_values():
    a = parse_text(SMALL.replace("k=<3,5> e=<3,6>\n", "k=<5,3> e=<6,3>\n"))
    assert a == parse_text(SMALL)
    b = parse_text(SMALL.replace("mbconv k=3 e=1", "mbconv k=<3> e=<1>"))
    assert b == parse_text(SMALL)


def test_defaults_width_stem_stride_dropout():
    text = SMALL.replace("    width 1.0\n", "").replace(" s=2\n    stage a", "\n    stage a")
    net = parse_text(text.replace("dropout=0.2", "").replace("input 32x32x3", "input 8x8x3"))
    assert net.width_multiplier == 1.0
    assert net.stem.stride == 1
    assert net.head.dropout == 0.0


def test_statement_order_in_the_header_is_free():
    lines = SMALL.splitlines(keepends=True)
    header = lines[2:6]  # input, classes, width, stem
    reordered = "".join(lines[:2] + header[::-1] + lines[6:])
    assert parse_text(reordered) == parse_text(SMALL)


def test_free_layout_one_line_and_odd_spacing():
    flat = " ".join(line.split("#")[0].strip() for line in SMALL.splitlines())
    assert "\n" not in flat
    assert parse_text(flat) == parse_text(SMALL)
    odd = SMALL.replace("    ", "\t \t").replace(" {", "\n{\n").replace(" | ", "\n|\n")
    assert parse_text(odd) == parse_text(SMALL)


def test_equality_ignores_spans_and_comments():
    a = parse_text(SMALL)
    b = parse_text("\n\n" + SMALL.replace("# fixed", "# another note"))
    assert a.stages[0].span.line != b.stages[0].span.line
    assert a == b and hash(a) == hash(b)


def test_comments_are_collected_with_their_lines():
    net = parse_text(SMALL)
    assert [(c.line, c.text, c.trailing) for c in net.comments] == [(1, " a small space", False), (8, " fixed", True)]


def test_spans_point_at_names():
    net = parse_text(SMALL, "f.spnas")
    assert (net.span.line, net.span.column) == (2, 9)
    assert (net.stages[1].span.line, net.stages[1].span.column) == (10, 11)
    layer = net.stages[1].layers[1]
    assert (layer.span.line, layer.span.column) == (12, 12)
    assert (layer.kernel.span.line, layer.kernel.span.column) == (12, 19)
    assert str(net.input.span) == "f.spnas:3:11"
    # blocks' spans end at their closing brace (the formatter puts comments there back in place)
    assert [s.span.end_line for s in net.stages] == [9, 14] and net.span.end_line == 16


def test_numbers_written_as_floats_are_accepted_when_whole():
    net = parse_text(SMALL.replace("classes 10", "classes 10.0").replace("k=<3,5,7>", "k=<3.0,5,7>"))
    assert net == parse_text(SMALL)


def test_keywords_may_be_used_as_names():
    text = SMALL.replace("network small", "network stage").replace("stage a ", "stage skip ")
    net = parse_text(text.replace("stage b ", "stage mbconv "))
    assert net.name == "stage" and [s.name for s in net.stages] == ["skip", "mbconv"]


def test_load_reads_files(spnas_file):
    path = spnas_file(SMALL)
    net = load(path)
    assert isinstance(net, Network) and net == parse_text(SMALL)
    assert net.span.file == str(path)


def test_shipped_files_load(shipped_file):
    net = load(shipped_file)
    assert net.stages and all(stage.layers for stage in net.stages)


# -- syntax errors ---------------------------------------------------------------------


def test_missing_closing_brace_points_at_end_of_file():
    text = SMALL[: SMALL.rindex("}")]  # drop the network's closing brace
    line, col, msg = located(text)
    assert (line, col) == (15, 31)  # just after `dropout=0.2`, the last text
    assert "unexpected end of file" in msg and "'}'" in msg


def test_missing_stage_brace_points_at_next_statement():
    text = SMALL.replace("    }\n    stage b", "    stage b")
    line, col, msg = located(text)
    assert (line, col) == (9, 5)  # stage a's layers go on; a stage cannot start inside a stage
    assert msg.startswith("unexpected 'stage', expected") and "'}'" in msg
    assert isinstance(error_of(text), SpnasSyntaxError)


def test_unexpected_character():
    line, col, msg = located(SMALL.replace("c=64", "c=64;"))
    assert (line, col) == (15, 19) and msg == "unexpected character ';'"


def test_unexpected_token_names_what_was_expected():
    line, col, msg = located(SMALL.replace("mbconv k=<3,5> e=<3,6>\n", "mbconv k=<3,5 e=<3,6>\n"))
    assert (line, col) == (11, 23)
    assert "expected" in msg and "'>'" in msg


@pytest.mark.parametrize(
    "text",
    ["", "   \n\t\n", "# only\n# comments\n", "\n  # indented comment\n\n"],
    ids=["empty", "blank", "comments", "indented-comment"],
)
def test_empty_and_comment_only_text(text):
    line, col, msg = located(text)
    assert (line, col) == (1, 1)
    assert msg.startswith("empty file")


# -- decoding errors (the Transformer) -----------------------------------------------------


@pytest.mark.parametrize(
    "old, new, line, col, message",
    [
        ("mbconv k=3 e=1", "mbcnv k=3 e=1", 8, 9, "unknown op 'mbcnv' in a stage (known: mbconv, skip)"),
        ("mbconv k=3 e=1", "mbconv k=3 e=1 q=2", 8, 24, "unknown parameter 'q' for mbconv (known: e, expand, g, k)"),
        ("mbconv k=3 e=1", "mbconv k=3 k=5 e=1", 8, 20, "duplicate parameter 'k'"),
        ("mbconv k=3 e=1", "mbconv k=3", 8, 9, "missing parameter 'e=' (expansion)"),
        ("mbconv k=3 e=1", "mbconv k=<> e=1", 8, 16, "empty candidate set for 'k'"),
        ("mbconv k=3 e=1", "mbconv k=<3,3> e=1", 8, 16, "duplicate value in candidate set for 'k'"),
        ("mbconv k=3 e=1", "mbconv k=3.5 e=1", 8, 16, "kernel size values must be integers"),
        ("mbconv k=3 e=1", "mbconv k=big e=1", 8, 16, "must be a number or a candidate set"),
        ("mbconv k=3 e=1", "mbconv k=3 e=1 | mbconv k=5 e=1", 8, 26, "only one 'mbconv' per layer"),
        ("        skip\n", "        skip | skip\n", 13, 16, "'skip' is listed twice"),
        ("        skip\n", "        skip x=1\n", 13, 14, "unknown parameter 'x' for skip (known: project)"),
        ("2x mbconv", "0x mbconv", 12, 9, "a repeat count must be at least 1"),
        ("stem conv k=3", "stem conv3 k=3", 6, 10, "unknown op 'conv3' for the stem (known: conv)"),
        ("stem conv k=3", "stem conv k=<3,5>", 6, 15, "takes one value here, not a candidate set"),
        ("stem conv k=3 c=16", "stem conv k=3", 6, 10, "missing parameter 'c=' (output channels)"),
        ("stem conv k=3", "stem conv k=3 e=2", 6, 19, "unknown parameter 'e' for stem conv (known: c, k, s)"),
        ("stage b c=24 s=2", "stage b c=24 s=2.5", 10, 11, "stride must be an integer, got 2.5"),
        ("stage b c=24 s=2", "stage b c=24 s=2 k=3", 10, 22, "unknown parameter 'k' for stage 'b' (known: c, s)"),
        ("stage b c=24 s=2", "stage b s=2", 10, 11, "missing parameter 'c=' (output channels)"),
        ("head conv c=64", "head fc c=64", 15, 10, "unknown op 'fc' for the head (known: conv)"),
        ("head conv c=64", "head conv c=wide", 15, 15, "output channels 'c' must be a number, got 'wide'"),
        ("classes 10", "classes 10.5", 4, 13, "number of classes must be an integer, got 10.5"),
        ("classes 10", "classes 10\n    classes 11", 5, 5, "duplicate 'classes' statement"),
        ("width 1.0", "width 1.0\n    width 2", 6, 5, "duplicate 'width' statement"),
        ("classes 10", "classes 10\n    stem conv k=3 c=8", 7, 5, "duplicate 'stem' statement"),
        ("classes 10", "classes 10\n    head conv c=8", 16, 5, "duplicate 'head' statement"),
        ("    classes 10\n", "", 2, 9, "network 'small' has no 'classes' statement"),
        ("    stem conv k=3 c=16 s=2\n", "", 2, 9, "network 'small' has no 'stem' statement"),
    ],
)
def test_decoding_errors_are_located(old, new, line, col, message):
    assert old in SMALL
    err_line, err_col, msg = located(SMALL.replace(old, new, 1))
    assert message in msg
    assert (err_line, err_col) == (line, col), msg


def test_several_errors_are_reported_together_in_order():
    text = SMALL.replace("mbconv k=3 e=1", "mbcnv k=3 e=1").replace("dropout=0.2", "dropout=0.2 p=1")
    err = error_of(text)
    assert isinstance(err, SpnasErrors)
    assert [(e.span.line, e.span.column) for e in err.errors] == [(8, 9), (15, 32)]
    assert err.render().count("error:") == 2


# -- load: files that are not text --------------------------------------------------------


def test_load_missing_file(tmp_path):
    with pytest.raises(SpnasSyntaxError) as info:
        load(tmp_path / "nope.spnas")
    assert info.value.message == "no such file"
    assert (info.value.span.line, info.value.span.column) == (1, 1)


def test_load_directory(tmp_path):
    with pytest.raises(SpnasSyntaxError) as info:
        load(tmp_path)
    assert "is a directory" in info.value.message


@pytest.mark.parametrize(
    "raw, line, col",
    [
        (b"network n {\n    input 224x224x3 # caf\xe9\n}\n", 2, 26),
        (b"\xff", 1, 1),
        # columns count characters, not bytes: the two-byte e-acute before the bad byte is one column
        ("network n {\n  # café ".encode() + b"\x80\n}\n", 2, 10),
    ],
    ids=["latin-1", "first-byte", "after-multibyte"],
)
def test_load_non_utf8_points_at_the_bad_byte(spnas_file, raw, line, col):
    path = spnas_file(raw)
    with pytest.raises(SpnasSyntaxError) as info:
        load(path)
    err = info.value
    assert err.message.startswith("file is not valid UTF-8 (byte 0x")
    assert (err.span.line, err.span.column) == (line, col)
    caret = err.render().splitlines()[-1]
    assert caret.index("^") == 4 + col - 1
