"""The front-end commands: `spnasc check`, `spnasc fmt`, `spnasc summary` (and --help)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from spnas_dsl.cli import main

GOOD = """\
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

# (name, content, line, column, message): one broken file each, with where the error must point.
BROKEN = [
    ("missing-brace", GOOD[: GOOD.rindex("}")], 13, 31, "unexpected end of file, expected"),
    ("unknown-op", GOOD.replace("mbconv k=3 e=1", "mbcnv k=3 e=1"), 7, 9, "unknown op 'mbcnv'"),
    ("unknown-param", GOOD.replace("k=3 e=1", "k=3 e=1 r=2"), 7, 24, "unknown parameter 'r' for mbconv"),
    ("kernel-4", GOOD.replace("k=<3,5> e=<3,6>\n", "k=<4> e=<3,6>\n"), 10, 16, "kernel size 4 is not one of"),
    (
        "skip-stride-2",
        GOOD.replace("mbconv k=<3,5> e=<3,6>\n", "mbconv k=<3,5> e=<3,6> | skip\n"),
        10, 9, "the first layer of stage 'b' changes the shape (stride 2) and cannot be skipped",
    ),
    (
        "skip-channels",
        GOOD.replace("mbconv k=3 e=1", "mbconv k=3 e=1 | skip"),
        7, 9, "the first layer of stage 'a' changes the shape (32 -> 16 channels) and cannot be skipped",
    ),
    ("stride-3", GOOD.replace("stage b c=24 s=2", "stage b c=24 s=3"), 9, 11, "stride must be 1 or 2, got 3"),
    ("width-0", GOOD.replace("width 1.0", "width 0"), 4, 11, "width multiplier must be > 0, got 0"),
    ("width-negative", GOOD.replace("width 1.0", "width -1.4"), 4, 11, "width multiplier must be > 0, got -1.4"),
    ("duplicate-stage", GOOD.replace("stage b", "stage a"), 9, 11, "duplicate stage name 'a'"),
    (
        "empty-stage",
        GOOD.replace("    head", "    stage c c=24 s=1 {\n    }\n    head"),
        13, 11, "stage 'c' is empty",
    ),
    (
        "input-too-small",
        GOOD.replace("224x224x3", "3x224x3"),
        2, 11, "input 3x224 is smaller than the network's total stride 4",
    ),
    (
        "non-utf8",  # a Latin-1 e-acute in a comment
        GOOD.encode().replace(b"classes 10", b"classes 10 # caf\xe9"),
        3, 21, "file is not valid UTF-8 (byte 0xe9)",
    ),
    ("comments-only", "# nothing\n# here\n", 1, 1, "empty file"),
]


def check(capsys, *argv) -> tuple[int, str, str]:
    status = main(["check", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def assert_located(err: str, path, line: int, col: int, message: str) -> None:
    """One `file:line:col: error: message` line, then (when there is a source line) the line and a caret."""
    lines = err.splitlines()
    assert lines[0].startswith(f"{path}:{line}:{col}: error: "), err
    assert message in lines[0], err
    assert "Traceback" not in err
    if len(lines) > 1:
        assert len(lines) == 3, err
        assert lines[2] == " " * (4 + col - 1) + "^", err


# -- check -------------------------------------------------------------------------------


def test_check_shipped_files(shipped_file, capsys):
    status, out, err = check(capsys, shipped_file)
    assert status == 0 and err == ""
    assert out.startswith(f"{shipped_file}: OK (")


def test_check_reports_kind_and_layers(repo, capsys):
    status, out, _ = check(capsys, repo / "spaces" / "mnasnet.spnas", repo / "examples" / "spnasnet.spnas")
    assert status == 0
    assert out.splitlines() == [
        f"{repo / 'spaces' / 'mnasnet.spnas'}: OK (search space 'mnasnet', 22 layers)",
        f"{repo / 'examples' / 'spnasnet.spnas'}: OK (network 'spnasnet', 22 layers)",
    ]


@pytest.mark.parametrize("name, content, line, col, message", BROKEN, ids=[b[0] for b in BROKEN])
def test_check_broken_file(spnas_file, capsys, name, content, line, col, message):
    path = spnas_file(content, f"{name}.spnas")
    status, out, err = check(capsys, path)
    assert status == 2 and out == ""
    assert_located(err, path, line, col, message)


def test_check_empty_file(spnas_file, capsys):
    path = spnas_file("", "empty.spnas")
    status, _, err = check(capsys, path)
    assert status == 2
    assert err == f"{path}:1:1: error: empty file: expected 'network NAME {{ ... }}'\n"


def test_check_directory(tmp_path, capsys):
    status, _, err = check(capsys, tmp_path)
    assert status == 2
    assert err == f"{tmp_path}:1:1: error: is a directory, not a .spnas file\n"


def test_check_missing_file(tmp_path, capsys):
    path = tmp_path / "absent.spnas"
    status, _, err = check(capsys, path)
    assert status == 2
    assert err == f"{path}:1:1: error: no such file\n"


def test_check_goes_on_after_a_bad_file(spnas_file, repo, capsys):
    bad = spnas_file(BROKEN[1][1], "bad.spnas")
    good = repo / "spaces" / "fashion_mnist.spnas"
    status, out, err = check(capsys, bad, good)
    assert status == 2
    assert out == f"{good}: OK (search space 'fashion_mnist', 8 layers)\n"
    assert err.startswith(f"{bad}:7:9: error: unknown op 'mbcnv'")


def test_check_in_a_subprocess_has_no_traceback(spnasc, spnas_file):
    bad = spnas_file(GOOD.replace("stage b c=24 s=2", "stage b c=24 s=3"), "stride.spnas")
    missing, folder = bad.parent / "missing.spnas", bad.parent
    proc = subprocess.run([str(spnasc), "check", str(bad), str(missing), str(folder)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"{bad}:9:11: error: stride must be 1 or 2, got 3",
        "        stage b c=24 s=3 {",
        "              ^",
        f"{missing}:1:1: error: no such file",
        f"{folder}:1:1: error: is a directory, not a .spnas file",
    ]


# -- fmt ---------------------------------------------------------------------------------


MESSY = """\
# leading comment
network net { input 224x224x3 classes 10 width 1.0 stem conv k=3 c=32 s=2
stage a c=16 s=1 {   mbconv   k=<3>   e=<1> }   # trailing comment
  stage b c=24 s=2 {
      mbconv k=<5,3> e=<6,3>
      mbconv k=<3,5> e=<3,6> | skip
      mbconv k=<3,5> e=<3,6> | skip
  }
  head conv c=64 dropout=0.2 }
# final comment
"""

MESSY_CANONICAL = """\
# leading comment
network net {
    input 224x224x3
    classes 10
    width 1.0
    stem conv k=3 c=32 s=2
    stage a c=16 s=1 {  # trailing comment
        mbconv k=3 e=1
    }
    stage b c=24 s=2 {
        mbconv k=<3,5> e=<3,6>
        2x mbconv k=<3,5> e=<3,6> | skip
    }
    head conv c=64 dropout=0.2
}
# final comment
"""


def test_fmt_prints_the_canonical_form(spnas_file, capsys):
    path = spnas_file(MESSY)
    assert main(["fmt", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == MESSY_CANONICAL and err == ""
    assert path.read_text() == MESSY  # printing leaves the file alone


def test_fmt_of_canonical_good_text_is_itself(spnas_file, capsys):
    assert main(["fmt", str(spnas_file(GOOD))]) == 0
    assert capsys.readouterr().out == GOOD


def test_fmt_check_shipped_files(shipped_file, capsys):
    assert main(["fmt", "--check", str(shipped_file)]) == 0
    assert capsys.readouterr() == ("", "")


def test_fmt_check(spnas_file, capsys):
    messy, canonical = spnas_file(MESSY, "messy.spnas"), spnas_file(MESSY_CANONICAL, "canonical.spnas")
    assert main(["fmt", "--check", str(messy)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"{messy}: not in canonical form (run 'spnasc fmt --write {messy}')\n"
    assert main(["fmt", "--check", str(canonical)]) == 0
    assert capsys.readouterr() == ("", "")
    assert main(["fmt", "--check", str(canonical), str(messy)]) == 1
    assert messy.read_text() == MESSY  # --check never writes


def test_fmt_write_rewrites_atomically_and_keeps_comments(spnas_file, capsys, monkeypatch):
    import spnas_dsl.io

    path = spnas_file(MESSY)
    inode = path.stat().st_ino
    writes = []
    real = spnas_dsl.io.atomic_write_text
    monkeypatch.setattr(spnas_dsl.io, "atomic_write_text", lambda p, t: (writes.append(str(p)), real(p, t)))
    assert main(["fmt", "--write", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err == f"{path}: reformatted\n"
    assert writes == [str(path)]
    assert path.read_text() == MESSY_CANONICAL
    assert path.stat().st_ino != inode  # a new file renamed over the old one, not rewritten in place
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left
    for note in ["# leading comment", "# trailing comment", "# final comment"]:
        assert note in path.read_text()
    # a canonical file is not touched again
    inode = path.stat().st_ino
    assert main(["fmt", "-w", str(path)]) == 0
    assert capsys.readouterr() == ("", "")
    assert path.stat().st_ino == inode and writes == [str(path)]
    assert main(["fmt", "--check", str(path)]) == 0


def test_fmt_write_keeps_the_file_mode(spnas_file, capsys):
    path = spnas_file(MESSY)
    os.chmod(path, 0o640)
    assert main(["fmt", "--write", str(path)]) == 0
    assert (path.stat().st_mode & 0o777) == 0o640


@pytest.mark.parametrize(
    "messy",
    [
        " ".join(GOOD.split()),  # everything on one line
        GOOD.replace("    ", "\t").replace(" ", "   ").replace("=<3,5>", "=<5,3>"),  # odd spacing, unsorted sets
        GOOD.replace("mbconv k=3 e=1", "mbconv k=<3> e=<1>"),  # singleton sets
        GOOD.replace("        2x mbconv k=<3,5> e=<3,6> | skip\n", "        mbconv k=<3,5> e=<3,6> | skip\n" * 2),
        GOOD.replace("        2x mbconv k=<3,5> e=<3,6> | skip\n", "        skip | mbconv e=<6,3> k=<5,3>\n" * 2),
        GOOD.replace("    input 224x224x3\n    classes 10\n", "    classes 10\n    input 224x224x3\n"),
        GOOD.replace("    width 1.0\n", ""),  # the default width is written out
    ],
    ids=["one-line", "odd-spacing", "singletons", "repeated-lines", "skip-first", "header-order", "no-width"],
)
def test_fmt_makes_bad_layouts_canonical(spnas_file, capsys, messy):
    path = spnas_file(messy)
    assert messy != GOOD
    assert main(["fmt", "--check", str(path)]) == 1
    assert main(["fmt", "--write", str(path)]) == 0
    assert path.read_text() == GOOD
    assert main(["fmt", "--check", str(path)]) == 0


def test_fmt_never_loses_comments(spnas_file, capsys):
    lines = GOOD.splitlines()
    # a comment on its own line before every line, and one at the end of every line
    text = "".join(f"# before {i}\n{line}  # after {i}\n" for i, line in enumerate(lines)) + "# the end\n"
    path = spnas_file(text)
    assert main(["fmt", "--write", str(path)]) == 0
    out = path.read_text().splitlines()
    # every comment is kept, in its place: the same order, trailing ones at the end of their line
    notes = [line.split("#")[1] for line in out if "#" in line]
    assert notes == [note for i in range(len(lines)) for note in (f" before {i}", f" after {i}")] + [" the end"]
    for i, line in enumerate(lines):
        assert f"{line}  # after {i}" in out, i  # closing braces included
        assert out[out.index(f"{line}  # after {i}") - 1].endswith(f"# before {i}")
    assert out[-1] == "# the end"
    assert main(["fmt", "--check", str(path)]) == 0  # and the result is stable


def test_fmt_on_a_broken_file(spnas_file, capsys):
    path = spnas_file(GOOD.replace("stage b", "stage a"))
    assert main(["fmt", "--write", str(path)]) == 2
    _, err = capsys.readouterr()
    assert_located(err, path, 9, 11, "duplicate stage name 'a'")
    assert path.read_text() == GOOD.replace("stage b", "stage a")


def test_fmt_check_and_write_exclude_each_other(spnas_file, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fmt", "--check", "--write", str(spnas_file(GOOD))])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# -- summary -------------------------------------------------------------------------------


def summary_json(capsys, path) -> dict:
    assert main(["summary", "--json", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def test_summary_json_spnasnet(repo, capsys):
    data = summary_json(capsys, repo / "examples" / "spnasnet.spnas")
    assert {"architectures", "params_max", "params_min", "macs_max", "macs_min", "layers"} <= data.keys()
    assert data["params_max"] == data["params_min"] == 4_421_616
    assert data["macs_max"] == data["macs_min"]
    assert data["architectures"] == 1 and data["concrete"] is True
    assert len(data["layers"]) == 22 and not any(layer["searched"] for layer in data["layers"])
    assert data["layers"][4] == {
        "index": 4, "stage": "s24", "input": "56x56x24", "output": "56x56x24", "stride": 1,
        "candidates": ["skip"], "searched": False,
    }


def test_summary_json_mnasnet(repo, capsys):
    data = summary_json(capsys, repo / "spaces" / "mnasnet.spnas")
    assert data["architectures"] == 31250000000000
    assert data["params_min"] < data["params_max"] and data["macs_min"] < data["macs_max"]
    layers = data["layers"]
    assert [layer["index"] for layer in layers] == list(range(22))
    assert sum(layer["searched"] for layer in layers) == 20
    sizes = {layer["stage"]: int(layer["output"].split("x")[0]) for layer in layers}
    assert list(sizes.values()) == [112, 56, 28, 14, 14, 7, 7]
    assert layers[1]["candidates"] == ["k3e3", "k3e6", "k5e3", "k5e6"]
    assert layers[2]["candidates"] == ["k3e3", "k3e6", "k5e3", "k5e6", "skip"]


def test_summary_table(repo, capsys):
    assert main(["summary", str(repo / "spaces" / "mnasnet.spnas")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mnasnet: search space, input 224x224x3, 1000 classes, width x1\n")
    assert "architectures: 31,250,000,000,000\n" in out
    assert main(["summary", str(repo / "examples" / "spnasnet.spnas")]) == 0
    assert "parameters:    4,421,616\n" in capsys.readouterr().out


def test_summary_width_multiplier(spnas_file, capsys):
    data = summary_json(capsys, spnas_file(GOOD.replace("width 1.0", "width 1.4")))
    assert data["width_multiplier"] == 1.4
    # 16 * 1.4 = 22.4 -> 24; 24 * 1.4 = 33.6 -> 32
    assert [layer["output"] for layer in data["layers"]] == ["112x112x24", "56x56x32", "56x56x32", "56x56x32"]


def test_summary_of_a_broken_file(spnas_file, capsys):
    path = spnas_file(GOOD.replace("width 1.0", "width 0"))
    assert main(["summary", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_located(err, path, 4, 11, "width multiplier must be > 0")


# -- no heavy imports, help --------------------------------------------------------------------


@pytest.mark.parametrize("command", ["check", "fmt", "summary", "check --for-search --target pixel1"])
def test_front_end_does_not_import_torch_or_tensorflow(repo, command):
    code = (
        "import sys; from spnas_dsl.cli import main; "
        f"status = main({command.split()!r} + ['spaces/mnasnet.spnas']); "
        "assert status == 0, status; "
        "assert 'torch' not in sys.modules and 'tensorflow' not in sys.modules, 'heavy import'"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, check=False, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: spnasc")
    for command in ["check", "fmt", "summary"]:
        assert command in out


@pytest.mark.parametrize("command", ["check", "fmt", "summary"])
def test_command_help(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: spnasc {command}")


def test_help_in_a_subprocess(spnasc):
    for argv in (["--help"], ["check", "--help"]):
        proc = subprocess.run([str(spnasc), *argv], check=False, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.startswith("usage: spnasc"), proc.stderr


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


# -- the parser cache ------------------------------------------------------------------------------

def test_a_planted_parser_cache_is_never_unpickled(spnasc, spnas_file, tmp_path):
    """Lark's cache file is a pickle: one planted in the user's cache folder must not run.

    The planted file is what Lark's loader reads (a hash line, then pickles) and carries a payload
    that creates a marker file when unpickled; `spnasc check` with that cache folder must leave no marker.
    """
    import pickle

    import lark

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    cache = tmp_path / "xdg" / "spnas"
    cache.mkdir(parents=True)
    for name in (f"lark-{lark.__version__}.cache", "lark.cache"):
        (cache / name).write_bytes(b"0" * 64 + b"\n" + pickle.dumps(Payload()) + pickle.dumps(Payload()))
    path = spnas_file(GOOD)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}
    proc = subprocess.run([str(spnasc), "check", str(path)], check=False, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    assert sorted(p.name for p in cache.iterdir()) == sorted(  # and nothing new is written there
        [f"lark-{lark.__version__}.cache", "lark.cache"])


# -- option values: the same mistake, the same usage error in every command ----------------------------

@pytest.mark.parametrize("argv, option", [
    (["search", "s.spnas", "--batch-size", "0"], "--batch-size"),
    (["train", "n.spnas", "--batch-size", "0"], "--batch-size"),
    (["search", "s.spnas", "--nproc", "0"], "--nproc"),
    (["train", "n.spnas", "--nproc", "0"], "--nproc"),
    (["build", "n.spnas", "--to", "onnx", "--threads", "0"], "--threads"),
    (["build", "n.spnas", "--to", "onnx", "--eval-samples", "0"], "--eval-samples"),
    (["profile", "n.spnas", "--target", "host-tflite", "--runs", "0"], "--runs"),
    (["lut", "build", "s.spnas", "--target", "host-tflite", "--processes", "0"], "--processes"),
    (["lut", "validate", "s.spnas", "--target", "host-tflite", "--samples", "0"], "--samples"),
])
def test_a_count_below_one_is_the_same_usage_error_everywhere(capsys, argv, option):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {option}: must be an integer >= 1, got '0'" in err, err


@pytest.mark.parametrize("command", [["search", "s.spnas"], ["train", "n.spnas"], ["build", "n.spnas", "--to", "onnx"]])
def test_out_naming_a_file_is_the_same_usage_error_everywhere(tmp_path, capsys, command):
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep")
    with pytest.raises(SystemExit) as exc:
        main([*command, "--out", str(blocker)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument --out: {blocker} is a file, not a folder" in err
    assert blocker.read_text() == "keep"


@pytest.mark.parametrize("command", [["search", "s.spnas"], ["train", "n.spnas"], ["build", "n.spnas", "--to", "onnx"],
                                     ["lut", "build", "s.spnas", "--target", "host-tflite"]])
@pytest.mark.parametrize("value", ["-1", str(2**64)])
def test_a_seed_out_of_range_is_a_usage_error(capsys, command, value):
    """torch cannot seed with 2**64 (a traceback before); a negative seed is refused alike."""
    with pytest.raises(SystemExit) as exc:
        main([*command, "--seed", value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument --seed: must be an integer from 0 to 4294967295, got '{value}'" in err


# -- check --for-search: the rules the search enforces when it lowers a space ---------------

NOT_NESTED = GOOD.replace("mbconv k=<3,5> e=<3,6>\n", "mbconv k=<3,5> e=<1,6>\n", 1)


def test_check_for_search_reports_the_nesting_rule_located(spnas_file, capsys):
    path = spnas_file(NOT_NESTED, "e16.spnas")
    status, out, err = check(capsys, path)
    assert status == 0 and "OK (search space" in out  # the language accepts it
    status, out, err = check(capsys, "--for-search", path)
    assert status == 2 and out == ""
    assert_located(err, path, 10, 24, "expansions <1,6> cannot be nested as equal channel groups")


def test_check_for_search_reports_every_layer_and_a_concrete_network(repo, capsys):
    status, _, err = check(capsys, "--for-search", repo / "spaces" / "fbnet_cifar100.spnas")
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert status == 2 and len(lines) == 7  # one per line of text (a `4x` line once)
    assert lines[0].startswith(f"{repo / 'spaces' / 'fbnet_cifar100.spnas'}:15:50: error: the supernet nests one")
    status, _, err = check(capsys, "--for-search", repo / "examples" / "spnasnet.spnas")
    assert status == 2 and "is a concrete network, not a search space: nothing to search" in err


def test_check_for_search_with_a_target_checks_its_coverage(repo, capsys):
    status, out, _ = check(capsys, "--for-search", "--target", "pixel1", repo / "spaces" / "mnasnet.spnas")
    assert status == 0 and out.endswith("ready to search on pixel1)\n")
    status, _, err = check(capsys, "--for-search", "--target", "pixel1", repo / "spaces" / "fashion_mnist.spnas")
    assert status != 0 and ": error: target 'pixel1'" in err and "has no latency for" in err
    status, _, err = check(capsys, "--target", "pixel1", repo / "spaces" / "mnasnet.spnas")
    assert status == 2 and "--for-search" in err
