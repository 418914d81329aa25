"""`spnasc build`: artifacts, build.json, parity, int8, deploy/, and every bad input.

One small concrete network (derived from spaces/fashion_mnist.spnas) is built once per module
with all four backends, --int8 and held-out data; the tests read that build. The full-size
examples/spnasnet.spnas build is slow-marked.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from test_backends import TIMM_SPNASNET_100, one_torch_thread  # noqa: F401 (autouse fixture)

from spnas_dsl.backends import EXPORTERS
from spnas_dsl.backends.parity import FLOAT_TOLERANCE, random_batch
from spnas_dsl.backends.weights import sha256_file
from spnas_dsl.cli import main
from spnas_dsl.ir import Layer, Option
from spnas_dsl.parser import load
from spnas_dsl.printer import format_network

# One option per layer of spaces/fashion_mnist.spnas (with two skips): stride-2 k5 and k3 layers.
SMALL_CHOICES = [None, (5, 6), None, (3, 3), (5, 3), (3, 6), None, None]


def small_network():
    space = load(REPO / "spaces" / "fashion_mnist.spnas")
    layers = []
    for choice, (_, _, layer) in zip(SMALL_CHOICES, space.iter_layers()):
        if layer.is_concrete:
            layers.append(layer)
        else:
            option = Option() if choice is None else Option(kernel=choice[0], expansion=choice[1])
            assert option in layer.options
            layers.append(Layer.from_option(option))
    return space.replace_layers(layers).model_copy(update={"name": "small_fm", "comments": ()})


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "small_fm.spnas"
    path.write_text(format_network(small_network()), encoding="utf-8")
    return path


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def small_build(small_file, tmp_path_factory):
    """(out dir, build.json, stdout) of one build: all backends, int8, synthetic held-out data.

    Built once per test run: under pytest-xdist the workers share it (a file lock in the
    run's common temporary folder), since the build costs tens of seconds."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out = shared / "small_build"
    with open(shared / "small_build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "build.json").exists():
            others = [arg for name in EXPORTERS if name not in ("pytorch", "onnx", "tflite", "timm")
                      for arg in ("--to", name)]  # every registered exporter is built here
            code, stdout, stderr = run_cli("build", small_file, "--to", "pytorch", "--to", "onnx,tflite", "--to",
                                           "timm", *others, "--int8", "--data", "synthetic:256", "--eval-samples", "64",
                                           "--calib-samples", "32", "--out", out)
            assert code == 0, stderr
            (shared / "small_build.stdout").write_text(stdout)
    return out, json.loads((out / "build.json").read_text()), (shared / "small_build.stdout").read_text()


def artifact(manifest: dict, path: str) -> dict:
    return next(a for a in manifest["artifacts"] if a["path"] == path)


# -- the small build ------------------------------------------------------------------------------

def test_build_lists_every_file_with_size_and_hash(small_build):
    out, manifest, stdout = small_build
    paths = {a["path"] for a in manifest["artifacts"]}
    assert paths == {
        "small_fm.spnas", "small_fm.pt2", "small_fm.safetensors", "small_fm.onnx", "small_fm.tflite",
        "small_fm_int8.tflite", "deploy/run_on_pixel.sh", "deploy/README.md", "deploy/input_spec.json",
        "timm_arch.py", "timm_arch.json",
    }
    for a in manifest["artifacts"]:
        assert a["bytes"] == (out / a["path"]).stat().st_size
        assert a["sha256"] == sha256_file(out / a["path"])
    assert manifest["targets"] == ["pytorch", "onnx", "tflite", "timm"]
    assert load(out / "small_fm.spnas") == small_network()
    assert "note: no --weights" in stdout and "built small_fm" in stdout
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]
    assert "held-out" in stdout and "int8" in stdout


def test_every_registered_exporter_builds_with_parity(small_build):
    """Registry-wide (docs/compiler.md, "How to add an exporter"): every ``--to`` exporter ran, wrote a
    file, and every float artifact is within the parity tolerance of PyTorch's outputs."""
    _, manifest, _ = small_build
    assert set(manifest["targets"]) == set(EXPORTERS)
    assert set(EXPORTERS) <= {a["backend"] for a in manifest["artifacts"]}
    tolerance = manifest["parity"]["tolerance"]
    checked = [a for a in manifest["artifacts"] if a.get("parity_checked")]
    assert checked and all(p["relative"] <= tolerance for a in checked for p in a["parity"].values())


def test_float_artifacts_match_pytorch(small_build):
    _, manifest, _ = small_build
    floats = [a for a in manifest["artifacts"] if a.get("precision") == "float32"]
    assert {a["path"] for a in floats} == {"small_fm.pt2", "small_fm.onnx", "small_fm.tflite"}
    for a in floats:
        assert a["parity_checked"]
        for split in ("random", "heldout"):
            p = a["parity"][split]
            assert p["relative"] <= FLOAT_TOLERANCE, (a["path"], split, p)
            assert p["max_abs_diff"] == pytest.approx(p["relative"] * p["max_abs_reference"])
            assert p["top1_agreement"] == 1.0
        assert a["parity"]["heldout"]["samples"] == 64
    assert manifest["parity"]["random_batch"]["shape"] == [4, 1, 28, 28]
    assert manifest["parity"]["heldout"]["pytorch_accuracy"] == pytest.approx(
        artifact(manifest, "small_fm.tflite")["heldout_accuracy"], abs=2 / 64)
    assert artifact(manifest, "small_fm.onnx")["opset"] >= 18


def test_int8_tflite_works(small_build):
    from spnas_dsl.backends.tflite import TFLiteModel

    out, manifest, _ = small_build
    a = artifact(manifest, "small_fm_int8.tflite")
    assert a["precision"] == "int8" and a["parity_checked"] is False
    assert "training images of 'synthetic:256'" in a["calibration"]
    assert "heldout_accuracy" in a and a["size_ratio"] > 1.5
    assert a["parity"]["heldout"]["top1_agreement"] >= 0.5
    model = TFLiteModel(out / "small_fm_int8.tflite")
    assert model.input_dtype == np.int8 and model.input_shape == (1, 28, 28, 1)
    y = model.run_nchw(random_batch((1, 28, 28), 3, seed=9))
    assert y.shape == (3, 10) and np.all(np.isfinite(y)) and np.ptp(y) > 0


def test_pt2_loads_without_spnas(small_build, tmp_path):
    """torch.export.load in a fresh interpreter where importing spnas_dsl is impossible."""
    import torch

    from spnas_dsl.backends.weights import load_weights
    from spnas_dsl.compiler.network import lower_to_network

    out, _, _ = small_build
    x = random_batch((1, 28, 28), 3, seed=4)
    np.save(tmp_path / "x.npy", x)
    script = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "spnas_dsl":
            raise ImportError("spnas_dsl is blocked")
sys.meta_path.insert(0, Block())
import numpy as np, torch
program = torch.export.load({str(out / 'small_fm.pt2')!r})
y = program.module()(torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r})))
np.save({str(tmp_path / 'y.npy')!r}, y.detach().numpy())
assert not any(m.startswith("spnas_dsl") for m in sys.modules)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    model = lower_to_network(load(out / "small_fm.spnas"))
    load_weights(model, out / "small_fm.safetensors")
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=0, atol=1e-5)


def test_onnx_has_a_dynamic_batch(small_build):
    import onnx

    from spnas_dsl.backends.onnx import onnxruntime_runner

    out, _, _ = small_build
    onnx.checker.check_model(str(out / "small_fm.onnx"))
    y = onnxruntime_runner(out / "small_fm.onnx")(random_batch((1, 28, 28), 7, seed=1))
    assert y.shape == (7, 10)


def test_deploy_folder(small_build, tmp_path):
    out, _, _ = small_build
    script = out / "deploy" / "run_on_pixel.sh"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    readme = (out / "deploy" / "README.md").read_text()
    assert "benchmark_model" in readme and "bazel" in readme
    assert "@NETWORK@" not in readme and "@DEFAULT_MODEL@" not in script.read_text()

    spec = json.loads((out / "deploy" / "input_spec.json").read_text())
    f, q = spec["models"]["small_fm.tflite"], spec["models"]["small_fm_int8.tflite"]
    assert f["shape"] == [1, 28, 28, 1] and f["layout"] == "NHWC" and f["dtype"] == "float32"
    assert f["quantization"] is None
    assert q["dtype"] == "int8" and q["quantization"]["scale"] > 0 and "zero_point" in q["quantization"]
    assert q["output"]["quantization"]["scale"] > 0
    assert spec["normalization"]["mean"] == [0.5] and spec["normalization"]["std"] == [0.25]

    # Run the script against a fake adb (one phone): it must push both files and run
    # benchmark_model with one thread, the headline without the op profiler, then a profiled run.
    # (tests/test_deploy_script.py tries one and two phones, masks and units.)
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "adb.log"
    (fake / "adb").write_text(f"""#!/bin/sh
echo "$@" >> {log}
case "$1" in devices) printf 'List of devices attached\\nFAKE\\tdevice\\n';; esac
case "$*" in *possible) echo 0-3;; esac
""")
    (fake / "adb").chmod(0o755)
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF")
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", BENCHMARK_MODEL=str(binary))
    proc = subprocess.run([str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert any(c.startswith("-s FAKE push") and c.endswith("small_fm.tflite") for c in calls)
    headline, profiled = [c for c in calls if "--graph=" in c]
    assert "--num_threads=1" in headline and "--enable_op_profiling=false" in headline
    assert "--enable_op_profiling=true" in profiled
    assert "--graph=/data/local/tmp/spnas/small_fm.tflite" in headline

    missing = subprocess.run([str(script)], capture_output=True, text=True, check=False,
                             env=dict(env, BENCHMARK_MODEL=str(tmp_path / "none")))
    assert missing.returncode == 1 and "README.md" in missing.stderr


def test_timm_snippet(small_build):
    from spnas_dsl.backends.timm import timm_arch_def

    out, manifest, _ = small_build
    cfg = json.loads((out / "timm_arch.json").read_text())
    assert cfg["arch_def"] == timm_arch_def(small_network())
    assert cfg["arch_def"][1] == ["ir_r1_k5_s2_e6_c16"]  # the skipped layer is left out
    assert (cfg["stem_size"], cfg["num_features"], cfg["num_classes"], cfg["in_chans"]) == (16, 256, 10, 1)
    code = (out / "timm_arch.py").read_text()
    compile(code, "timm_arch.py", "exec")
    assert "ARCH_DEF = [" in code and "stride 1" in code  # the stem-stride note for this network
    assert artifact(manifest, "timm_arch.py")["verified"].startswith(("no", "yes"))


# -- bad inputs: one clear message, non-zero exit, nothing written ----------------------------------

def assert_nothing_written(out: Path):
    assert not out.exists()
    parent = out.parent
    if parent.exists():
        assert not [p for p in parent.iterdir() if p.name.endswith(".partial")]


def test_a_space_is_refused(tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("build", REPO / "spaces" / "fashion_mnist.spnas", "--to", "pytorch", "--out", out)
    assert code == 2
    assert "is a search space, not a concrete network: layer 1 (s16.0) has 4 candidates" in err
    assert "Traceback" not in err
    assert_nothing_written(out)


def test_unknown_backend(small_file, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("build", small_file, "--to", "pytorch,caffe", "--out", out)
    assert code == 2 and "unknown --to 'caffe'; known: onnx, pytorch, tflite, timm" in err
    assert_nothing_written(out)


@pytest.mark.parametrize("case", ["under-a-file", "is-a-file"])
def test_unwritable_out(small_file, tmp_path, case, capsys):
    """--out naming a file (or a path under one): a usage error, exit 2, as in search and train."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = blocker / "sub" if case == "under-a-file" else blocker
    with pytest.raises(SystemExit) as exc:
        main(["build", str(small_file), "--to", "timm", "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert f"argument --out: {out}: {blocker} is a file, not a folder" in err if case == "under-a-file" else \
        f"argument --out: {blocker} is a file, not a folder" in err
    assert blocker.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_usage_errors(small_file, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("build", small_file, "--to", "onnx", "--int8", "--out", out)
    assert code == 2 and "--int8 quantizes the TFLite model" in err
    code, _, err = run_cli("build", small_file, "--to", "tflite", "--calib-data", "synthetic", "--out", out)
    assert code == 2 and "--calib-data is the calibration set of --int8" in err
    assert_nothing_written(out)


def test_bad_weights(small_file, tmp_path):
    import torch
    from safetensors.torch import save_file

    from spnas_dsl.compiler.network import lower_to_network

    out = tmp_path / "build" / "out"
    sd = lower_to_network(small_network()).state_dict()
    cases = {
        "missing.safetensors": ("not found", None),
        "names.safetensors": ("1 missing: classifier.bias; 1 unexpected: classifier.b", {
            **{k: v for k, v in sd.items() if k != "classifier.bias"}, "classifier.b": sd["classifier.bias"]}),
        "shapes.safetensors": ("conv_stem.weight (file (16, 1, 5, 5), network (16, 1, 3, 3))", {
            **sd, "conv_stem.weight": torch.zeros(16, 1, 5, 5)}),
    }
    for name, (message, tensors) in cases.items():
        if tensors is not None:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / name)
        code, _, err = run_cli("build", small_file, "--to", "pytorch", "--weights", tmp_path / name, "--out", out)
        assert code == 1 and message in err, err
        assert_nothing_written(out)
        assert not (tmp_path / "build").exists()  # the parent made for --out is removed again
    torch.save(sd, tmp_path / "weights.pt")
    code, _, err = run_cli("build", small_file, "--to", "pytorch", "--weights", tmp_path / "weights.pt", "--out", out)
    assert code == 1 and "pickles are never loaded" in err
    assert_nothing_written(out)


def test_failed_parity_fails_the_build_and_writes_nothing(small_file, tmp_path, monkeypatch):
    """A float artifact off by more than 1e-4 of the output scale: exit 1, old files untouched."""
    from spnas_dsl import backends

    def export(ctx):
        path = ctx.staging / "broken.bin"
        path.write_bytes(b"x")
        ctx.add(path, "broken", "test", run=lambda x: ctx.model(__import__("torch").from_numpy(x)).detach().numpy()
                * (1 + 1e-3))

    monkeypatch.setitem(sys.modules, "spnas_test_broken", types.SimpleNamespace(export=export))
    monkeypatch.setitem(backends.EXPORTERS, "broken", backends.ExporterSpec("broken", "spnas_test_broken", "test"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    code, _, err = run_cli("build", small_file, "--to", "timm", "--to", "broken", "--out", out, "--force")
    assert code == 1 and "float parity check failed" in err and "broken.bin (random)" in err
    assert "limit 0.0001" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_default_out_and_rebuild_keeps_other_files(small_file, tmp_path, monkeypatch):
    """A second build into a folder that holds one needs --force; it then replaces the previous build's
    files (those not built again are removed) and keeps the user's."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("build", small_file, "--to", "timm,pytorch")
    assert code == 0, err
    out = tmp_path / "build" / "small_fm"
    assert (out / "timm_arch.py").exists() and (out / "small_fm.safetensors").exists()
    assert oct((out).stat().st_mode & 0o777) != oct(0o700)
    first = {a["path"] for a in json.loads((out / "build.json").read_text())["artifacts"]}
    (out / "mine.txt").write_text("keep")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, err = run_cli("build", small_file, "--to", "timm", "--json")
    assert code == 2 and "--out build/small_fm is not empty" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    code, _, err = run_cli("build", small_file, "--to", "timm", "--json", "--force")
    assert code == 0, err
    second = {a["path"] for a in json.loads((out / "build.json").read_text())["artifacts"]}
    assert first - second and all(not (out / p).exists() for p in first - second)  # the pytorch files
    assert "--force: removed the previous build's" in err
    assert (out / "mine.txt").read_text() == "keep"
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["weights"]["source"] is None and manifest["network"] == "small_fm"


def test_weights_are_used(small_build, small_file, tmp_path):
    """--weights: the build's outputs are those of the given state dict (here: the first build's)."""
    out, _, _ = small_build
    code, _, err = run_cli("build", small_file, "--to", "timm", "--weights", out / "small_fm.safetensors",
                           "--seed", "7", "--out", tmp_path / "again")
    assert code == 0, err
    manifest = json.loads((tmp_path / "again" / "build.json").read_text())
    assert manifest["weights"]["sha256"] == sha256_file(out / "small_fm.safetensors")
    assert "note: no --weights" not in " ".join(manifest["notes"])


# -- slow: the full-size network ----------------------------------------------------------------------

@pytest.mark.slow
def test_spnasnet_full_build(tmp_path):
    out = tmp_path / "spnasnet"
    code, _, err = run_cli("build", REPO / "examples" / "spnasnet.spnas", "--to", "pytorch", "--to", "onnx",
                                "--to", "tflite", "--to", "timm", "--out", out)
    assert code == 0, err
    manifest = json.loads((out / "build.json").read_text())
    for a in manifest["artifacts"]:
        if a.get("precision") == "float32":
            assert a["parity"]["random"]["relative"] < FLOAT_TOLERANCE, a
    tfl = artifact(manifest, "spnasnet.tflite")
    assert tfl["transposes"] == 0
    cfg = json.loads((out / "timm_arch.json").read_text())
    assert cfg["arch_def"] == [[s.replace("_noskip", "") for s in stage] for stage in TIMM_SPNASNET_100]
    assert manifest["parameters"] == 4_421_616
    assert "model.conv_stem =" not in (out / "timm_arch.py").read_text()  # stride-2 stem: timm's own


@pytest.mark.slow
def test_int8_without_data_calibrates_on_random_samples(small_file, tmp_path):
    out = tmp_path / "q"
    code, stdout, err = run_cli("build", small_file, "--to", "tflite", "--int8", "--calib-samples", "8", "--out", out)
    assert code == 0, err
    assert "calibrating on random N(0,1) samples" in stdout
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["calibration"] == "8 random N(0,1) samples"
    spec = json.loads((out / "deploy" / "input_spec.json").read_text())
    assert spec["normalization"] is None and "no --data" in spec["normalization_note"]


def test_nothing_moves_when_a_file_is_in_the_way(small_file, tmp_path, monkeypatch):
    """Rebuilding into a folder where a file blocks a sub-folder: error before any file moves."""
    from spnas_dsl import backends

    def export(ctx):
        path = ctx.staging / "deploy" / "x.txt"
        path.parent.mkdir()
        path.write_text("new")
        ctx.add(path, "fake", "test")

    monkeypatch.setitem(sys.modules, "spnas_test_fake", types.SimpleNamespace(export=export))
    monkeypatch.setitem(backends.EXPORTERS, "fake", backends.ExporterSpec("fake", "spnas_test_fake", "test"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "deploy").write_text("a file")
    code, _, err = run_cli("build", small_file, "--to", "timm,fake", "--out", out, "--force")
    assert code == 1 and f"{out / 'deploy'} is a file" in err
    assert sorted(p.name for p in out.iterdir()) == ["deploy"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
