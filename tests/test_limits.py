"""Numbers and sizes: every out-of-range number and every oversized file or network is one
located error (file:line:col and a caret), fast, never a traceback, a hang or an OOM."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from spnas_dsl.cli import main
from spnas_dsl.errors import SpnasError
from spnas_dsl.ir import MAX_CHANNELS, MAX_CLASSES, MAX_FILE_BYTES, MAX_LAYERS
from spnas_dsl.parser import load, parse_text

BASE = """\
network net {
    input 64x64x3
    classes 10
    width 1.0
    stem conv k=3 c=16 s=2
    stage a c=16 s=1 {
        2x mbconv k=3 e=1
    }
    stage b c=24 s=2 {
        mbconv k=<3,5> e=<3,6>
    }
    head conv c=64 dropout=0.2
}
"""

# (what the value replaces in BASE, the text before the value on its line): every numeric
# place of the language, repeat counts included.
PLACES = [
    ("classes 10", "classes "),
    ("width 1.0", "width "),
    ("stem conv k=3", "stem conv k="),
    ("stem conv k=3 c=16", "stem conv k=3 c="),
    ("c=16 s=2", "c=16 s="),
    ("stage a c=16", "stage a c="),
    ("2x mbconv", ""),
    ("mbconv k=3 e=1", "mbconv k=3 e="),
    ("2x mbconv k=3", "2x mbconv k="),
    ("mbconv k=<3,5>", "mbconv k=<3,"),
    ("head conv c=64", "head conv c="),
    ("dropout=0.2", "dropout="),
]
HUGE = ["1e999", "9" * 309, "9" * 5000, str(2**63), "-1e999"]


def _put(place: str, prefix: str, value: str) -> tuple[str, int, int]:
    """BASE with ``value`` at ``place``, and the line and column where the value starts."""
    if place == "2x mbconv":
        text = BASE.replace("2x mbconv", f"{value}x mbconv")
    elif place == "mbconv k=<3,5>":
        text = BASE.replace("k=<3,5>", f"k=<3,{value}>")
    else:
        text = BASE.replace(place, prefix + value, 1)
    index = text.index(prefix + value) + len(prefix)
    line = text.count("\n", 0, index) + 1
    return text, line, index - text.rfind("\n", 0, index)


@pytest.mark.parametrize("value", HUGE, ids=["1e999", "309-digits", "5000-digits", "2**63", "-1e999"])
@pytest.mark.parametrize("place,prefix", PLACES, ids=[p[0] for p in PLACES])
def test_out_of_range_numbers_are_located_errors(place, prefix, value):
    if place == "2x mbconv" and not value.isdigit():
        pytest.skip("a repeat count is written as digits only (anything else is a syntax error)")
    text, line, column = _put(place, prefix, value)
    with pytest.raises(SpnasError) as info:
        parse_text(text, "t.spnas")
    err = info.value
    assert (err.span.line, err.span.column) == (line, column), err.render()
    assert "out of range" in err.message or "over the limit" in err.message
    assert "^" in err.render()


@pytest.mark.parametrize("command", ["check", "fmt", "summary"])
def test_every_front_end_command_reports_a_huge_number(spnas_file, capsys, command):
    path = spnas_file(BASE.replace("classes 10", "classes " + "9" * 5000))
    assert main([command, str(path)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"{path}:3:13: error: number out of range: 9999999999...999999 (5000 characters)")
    assert out == "" and "Traceback" not in err
    excerpt = err.splitlines()[1:]
    assert excerpt == ["    " + ("    classes " + "9" * 88) + "...", "    " + " " * 12 + "^"]  # not 5,000 digits


def test_a_caret_far_into_a_long_line_stays_under_it():
    text = BASE.replace("classes 10", "classes 10" + " " * 300 + "wat")
    with pytest.raises(SpnasError) as info:
        parse_text(text, "t.spnas")
    line, caret = info.value.render().splitlines()[1:]
    assert len(line) < 120 and line.startswith("    ...") and line[caret.index("^")] == "w"


def test_no_traceback_in_a_subprocess(spnasc, spnas_file):
    path = spnas_file(BASE.replace("2x mbconv", f"{2**63}x mbconv"))
    proc = subprocess.run([str(spnasc), "latency", str(path), "--target", "pixel1"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"{path}:7:9: error: repeat count 9223372036854775808 is over the limit")


@pytest.mark.parametrize("width,message", [
    ("1e308", "number out of range: 1e308"),
    ("17", "width multiplier 17 is over the limit of 16"),
    ("16", "stage channels 2000 x width 16 = 32000"),  # fine itself, but one stage gets too wide
])
def test_width_limits(width, message):
    text = BASE.replace("width 1.0", f"width {width}").replace("stage b c=24", "stage b c=2000")
    with pytest.raises(SpnasError) as info:
        parse_text(text, "t.spnas")
    assert message in str(info.value)


def test_fmt_of_width_1e308_writes_nothing(spnas_file, capsys):
    path = spnas_file(BASE.replace("width 1.0", "width 1e308"))
    before = path.read_text()
    assert main(["fmt", "--write", str(path)]) == 2
    assert path.read_text() == before


def test_fmt_never_writes_text_that_does_not_read_back(spnas_file, capsys, monkeypatch):
    """A printer bug (here: one that writes `width inf`, as fmt once did) leaves the file alone."""
    from spnas_dsl import printer

    real = printer.format_network
    monkeypatch.setattr(printer, "format_network", lambda net, header=None: real(net).replace("1.0", "inf"))
    path = spnas_file(BASE.replace("    width 1.0\n", "  width 1.0\n"))  # not canonical: fmt would rewrite
    before = path.read_text()
    assert main(["fmt", "--write", str(path)]) == 1
    assert path.read_text() == before
    _, err = capsys.readouterr()
    assert err.startswith(f"{path}: error: the canonical text does not read back (unexpected 'inf', expected a number)")
    assert main(["fmt", str(path)]) == 1  # nor printed
    assert capsys.readouterr().out == ""
    # And one that prints a different network is caught the same way.
    monkeypatch.setattr(printer, "format_network", lambda net, header=None: real(net).replace("c=64", "c=65"))
    assert main(["fmt", "--write", str(path)]) == 1
    assert "reads back as a different network" in capsys.readouterr().err
    assert path.read_text() == before


# -- sizes ----------------------------------------------------------------------------------


def _fast_error(path, seconds: float = 1.0) -> SpnasError:
    start = time.perf_counter()
    with pytest.raises(SpnasError) as info:
        load(path)
    assert time.perf_counter() - start < seconds
    return info.value


def test_a_huge_repeat_count_fails_fast(spnas_file):
    err = _fast_error(spnas_file(BASE.replace("2x mbconv", "99999999x mbconv")))
    assert (err.span.line, err.span.column) == (7, 9)
    assert err.message == f"repeat count 99999999 is over the limit of {MAX_LAYERS} layers per network"


def test_too_many_layers_fails_at_the_line_that_crosses_the_limit(spnas_file):
    many = "".join("        mbconv k=3 e=1\n" for _ in range(MAX_LAYERS - 3))
    text = BASE.replace("        2x mbconv k=3 e=1\n", many + "        2x mbconv k=3 e=1\n")
    assert len(list(load(spnas_file(text)).iter_layers())) == MAX_LAYERS  # the limit itself is fine...
    text = text.replace("mbconv k=<3,5> e=<3,6>", "2x mbconv k=<3,5> e=<3,6>")
    err = _fast_error(spnas_file(text))  # ...one more is not
    assert err.message == f"too many layers: more than {MAX_LAYERS} in the network"
    assert err.span.line == 7 + MAX_LAYERS - 3 + 3


def test_a_50_mb_file_fails_fast_without_being_read(spnas_file):
    path = spnas_file("")
    with open(path, "w") as f:
        f.write(BASE[:-2])
        f.write("    stage c c=24 s=1 {\n" + "        skip\n" * (50 * 1024 * 1024 // 13) + "    }\n}\n")
    err = _fast_error(path)
    assert (err.span.line, err.span.column) == (1, 1)
    assert err.message.startswith("file too large:") and err.message.endswith(f"the limit is {MAX_FILE_BYTES}")
    with pytest.raises(SpnasError, match="file too large"):
        parse_text("#" * (MAX_FILE_BYTES + 1))


def test_devices_and_fifos_are_not_read(tmp_path):
    import os

    err = _fast_error(Path("/dev/zero"))  # endless: refused before anything is read
    assert err.message == "not a regular file"
    fifo = tmp_path / "pipe.spnas"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    assert _fast_error(fifo).message == "not a regular file"


@pytest.mark.parametrize("old,new,message", [
    ("stage a c=16", f"stage a c={MAX_CHANNELS + 1}", f"stage channels {MAX_CHANNELS + 1} are over the limit"),
    ("head conv c=64", "head conv c=100000", "head channels 100000 are over the limit"),
    ("input 64x64x3", "input 64x99999x3", "input size 64x99999x3 is over the limit"),
    ("input 64x64x3", "input 64x64x99999999999999999999999999999999999", "input size out of range"),
    ("classes 10", f"classes {MAX_CLASSES + 1}", f"number of classes {MAX_CLASSES + 1} is over the limit"),
    ("stem conv k=3", "stem conv k=99", "stem kernel size 99 is over the limit of 15"),
])
def test_size_limits_are_located(old, new, message):
    text = BASE.replace(old, new)
    with pytest.raises(SpnasError) as info:
        parse_text(text, "t.spnas")
    assert message in str(info.value)
    assert info.value.span.line == text[: text.index(new)].count("\n") + 1


def test_mutated_numbers_never_escape_as_tracebacks(repo):
    """Every number of the shipped files replaced, one at a time, by hostile values: each mutant
    is a network (that formats, reads back and summarises) or a SpnasError, nothing else."""
    import random
    import re

    from spnas_dsl.printer import format_network
    from spnas_dsl.shapes import infer_shapes, summarize

    hostile = ["1e999", "9" * 309, "9" * 5000, str(2**63), "1e308", "-0", "0", "-7", "1e-320", "65537",
               "3.5", "99999999", "1e15", "0.0000001"]
    rng = random.Random(14)
    sources = [(repo / p).read_text() for p in ("spaces/mnasnet.spnas", "examples/spnasnet.spnas")]
    mutants = 0
    for text in sources:
        numbers = re.finditer(r"(?<![A-Za-z_0-9.])\d+(?:\.\d+)?(?:e-?\d+)?", text)
        spots = [m for m in numbers if "#" not in text[text.rfind("\n", 0, m.start()) + 1:m.start()]]  # not in comments
        for m in rng.sample(spots, min(len(spots), 60)):
            value = rng.choice(hostile)
            mutant = text[:m.start()] + value + text[m.end():]
            mutants += 1
            try:
                net = parse_text(mutant, "m.spnas")
            except SpnasError as exc:
                assert exc.span is not None and "^" in exc.render()
                continue
            assert parse_text(format_network(net)) == net
            summarize(net, infer_shapes(net))
    assert mutants >= 100
