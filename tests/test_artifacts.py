"""Exported models say what they are and are reproducible: the same output name (`logits`) and
input name (`input`) in ONNX and TFLite, the build's metadata inside both files (read back with
onnxruntime and the TFLite flatbuffer), and a seeded build writes the same bytes whatever the
thread count (every sha256 in build.json)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = """\
network tiny {
    input 16x16x1
    classes 5
    width 1.0
    bn eps=1e-05 momentum=0.1
    stem conv k=3 c=8 s=2
    stage a c=8 s=1 {
        mbconv k=3 e=1
    }
    stage b c=16 s=2 {
        mbconv k=5 e=6
        mbconv k=3 e=3
    }
    head conv c=32 dropout=0.0
}
"""


def _build(src: Path, out: Path, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(
        [sys.executable, "-m", "spnas_dsl", "build", str(src), "--to", "onnx,tflite,timm", "--int8",
         "--data", "synthetic:64", "--eval-samples", "16", "--calib-samples", "8", "--threads", str(threads),
         "--out", str(out)], capture_output=True, text=True, env=env, cwd=REPO, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "build.json").read_text())


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Two builds of the same network and seed, one on 1 thread and one on 2 (separate processes)."""
    base = tmp_path_factory.mktemp("artifacts")
    src = base / "tiny.spnas"
    src.write_text(TINY)
    return [(base / f"o{t}", _build(src, base / f"o{t}", t)) for t in (1, 2)]


def test_seeded_builds_are_bit_reproducible(builds):
    (_, first), (_, second) = builds
    hashes = [{a["path"]: a["sha256"] for a in b["artifacts"]} for b in (first, second)]
    assert {"tiny.safetensors", "tiny.onnx", "tiny.tflite", "tiny_int8.tflite"} <= set(hashes[0])
    assert hashes[0] == hashes[1]


def test_onnx_names_and_metadata(builds):
    import onnxruntime as ort

    out, manifest = builds[0]
    session = ort.InferenceSession(str(out / "tiny.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    meta = session.get_modelmeta().custom_metadata_map
    arch = (out / "tiny.spnas").read_text()
    assert meta["spnas.network"] == "tiny" and meta["spnas.producer"] == "spnas"
    assert meta["spnas.architecture_sha256"] == hashlib.sha256(arch.encode()).hexdigest()
    assert meta["spnas.architecture"] == arch == manifest["architecture"]
    assert json.loads(meta["spnas.input"]) == {"name": "input", "layout": "NCHW", "shape": ["batch", 1, 16, 16],
                                               "dtype": "float32"}
    assert json.loads(meta["spnas.output"])["name"] == "logits"
    assert json.loads(meta["spnas.normalization"]) == manifest["input"]["normalization"]
    assert json.loads(meta["spnas.batchnorm"]) == {"eps": 1e-05, "momentum": 0.1}


@pytest.mark.parametrize("name,dtype", [("tiny.tflite", "float32"), ("tiny_int8.tflite", "int8")])
def test_tflite_names_and_metadata(builds, name, dtype):
    from ai_edge_litert.interpreter import Interpreter

    from spnas_dsl.backends.tflite import TFLiteModel, read_metadata

    out, manifest = builds[0]
    interpreter = Interpreter(model_path=str(out / name))
    assert interpreter.get_signature_list() == {"serving_default": {"inputs": ["input"], "outputs": ["logits"]}}
    assert [d["name"] for d in interpreter.get_input_details()] == ["input"]
    assert [d["name"] for d in interpreter.get_output_details()] == ["logits"]
    meta = read_metadata(out / name)
    arch = (out / "tiny.spnas").read_text()
    assert meta["network"] == "tiny" and meta["architecture_sha256"] == hashlib.sha256(arch.encode()).hexdigest()
    assert meta["input"] == {"name": "input", "layout": "NHWC", "shape": [1, 16, 16, 1], "dtype": dtype}
    assert meta["output"]["name"] == "logits" and meta["normalization"] == manifest["input"]["normalization"]
    assert meta["normalization"]["mean"] and meta["normalization"]["std"]
    # Renaming and the metadata entry leave the model's function alone (the build's parity says so
    # for the float file; here: it still runs and gives finite logits of the right shape).
    y = TFLiteModel(out / name).run(np.zeros((2, 16, 16, 1), np.float32))
    assert y.shape == (2, 5) and np.isfinite(y).all()
    spec = json.loads((out / "deploy" / "input_spec.json").read_text())["models"][name]
    assert spec["name"] == "input" and spec["output"]["name"] == "logits"


def test_canonical_safetensors_keeps_the_tensors(tmp_path):
    import torch
    from safetensors.torch import load_file, save

    from spnas_dsl.backends.weights import canonical_safetensors, read_safetensors

    tensors = {"b": torch.arange(5, dtype=torch.float32), "a": torch.ones(3, 2, dtype=torch.float64)}
    metadata = {"zeta": "1", "alpha": "2", "format": "pt"}
    raw = canonical_safetensors(save(tensors, metadata=metadata))
    assert raw == canonical_safetensors(save(dict(reversed(tensors.items())), metadata=dict(reversed(metadata.items()))))
    assert int.from_bytes(raw[:8], "little") % 8 == 0
    (tmp_path / "w.safetensors").write_bytes(raw)
    loaded, meta = read_safetensors(tmp_path / "w.safetensors")
    assert meta == metadata and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert all(torch.equal(load_file(str(tmp_path / "w.safetensors"))[k], tensors[k]) for k in tensors)


def test_trained_weights_are_written_canonically(tmp_path):
    """spnasc train's weights file (backends.weights.save_weights, as build's) has a sorted header: the
    same weights and metadata give the same bytes in every process."""
    import json
    import struct

    import torch

    from spnas_dsl.backends.weights import save_weights

    model = torch.nn.Module()
    model.register_buffer("b", torch.ones(3))
    model.register_buffer("a", torch.zeros(2))
    save_weights(model, tmp_path / "w.safetensors", metadata={"zeta": "1", "arch": "x", "mid": "2"})
    content = (tmp_path / "w.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", content[:8])
    header = content[8:8 + size].decode().rstrip()
    assert header == json.dumps(json.loads(header), sort_keys=True, separators=(",", ":"))
    assert size % 8 == 0
