"""The model files that get timed: one per signature (a part alone) and one per whole network.

Parts are built by the export backends exactly as they appear in a network
(``backends/tflite.py``: ``build_stem_tflite``, ``build_layer_tflite``, ``build_head_tflite``;
for onnxruntime the PyTorch blocks of ``compiler/blocks.py`` through ``backends/onnx.py``),
with initial (not trained) weights: a float model's running time does not depend on its
weight values. Files are cached in ``<cache>/profiling/models/<runtime>/`` under a hash of
what they contain (runtime, TensorFlow/torch version, the signature or the network's
canonical text), so a killed build resumes without converting again.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from spnas_dsl.errors import SpnasError, TargetError
from spnas_dsl.io import atomic_write_bytes
from spnas_dsl.ir import Network, Option
from spnas_dsl.ops import Site
from spnas_dsl.passes import with_options
from spnas_dsl.shapes import LayerShape, infer_shapes
from spnas_dsl.targets.signature import head_signature, layer_signature, stem_signature

BUILDER_VERSION = "1"


def work_dir() -> Path:
    """``<spnas cache>/profiling``: models, raw measurements (beside the targets' tables)."""
    from spnas_dsl.targets import cache_dir

    return cache_dir().parent / "profiling"


@dataclass(frozen=True)
class Part:
    """One signature of a space: the stem, the head, or one option of an MBConv layer."""

    signature: str
    kind: str                      # stem | mbconv | head
    positions: tuple[int, ...]     # MBConv layer indices where it occurs (empty for stem/head)
    shape: LayerShape | None = None
    option: Option | None = None


def space_parts(space: Network) -> list[Part]:
    """Every distinct signature of ``space`` (each candidate of each layer, stem, head), in order."""
    shapes = infer_shapes(space)
    parts: dict[str, Part] = {}
    sig = stem_signature(space, shapes)
    parts[sig] = Part(sig, "stem", ())
    for shape in shapes.layers:
        for option in shape.layer.options:
            sig = layer_signature(shape, option)
            if sig is None:
                continue
            if sig in parts:
                old = parts[sig]
                parts[sig] = Part(sig, "mbconv", old.positions + (shape.index,), old.shape, old.option)
            else:
                parts[sig] = Part(sig, "mbconv", (shape.index,), shape, option)
    sig = head_signature(shapes)
    parts[sig] = Part(sig, "head", ())
    return list(parts.values())


def network_parts(network: Network) -> list[str]:
    """The signatures a concrete network is made of (stem, each non-skipped layer, head)."""
    return [part.signature for part in concrete_parts(network)]


# ---------------------------------------------------------------------------- concrete networks
def choices(network: Network) -> list[Option]:
    """The option of every layer of a concrete network."""
    return [s.layer.options[0] for s in infer_shapes(network).layers]


def network_id(network: Network, space_name: str | None = None) -> str:
    """A name that rebuilds the network from its space: ``SPACE:opt,opt,...`` (``k3e6``/``skip``)."""
    return f"{space_name or network.name}:" + ",".join(str(o) for o in choices(network))


def _bare(network: Network) -> Network:
    """A profiled network without the space's comments (they describe the space)."""
    return network.model_copy(update={"comments": ()})


def from_network_id(space: Network, text: str) -> Network:
    """Inverse of :func:`network_id` for a network of ``space``; a mismatch is a TargetError."""
    name, _, rest = text.partition(":")
    if name != space.name or not rest:
        raise TargetError(f"network '{text}' is not a network of space '{space.name}'")
    from spnas_dsl.latency.graph import as_option

    try:
        return _bare(with_options(space, [as_option(t) for t in rest.split(",")]))
    except SpnasError as exc:
        raise TargetError(f"network '{text}' does not fit space '{space.name}': {exc.message}") from None


def random_networks(space: Network, count: int, seed: int, exclude: Iterable[str] = ()) -> list[Network]:
    """``count`` distinct random networks of ``space`` (uniform choice per layer), none in ``exclude``."""
    shapes = infer_shapes(space).layers
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[Network] = []
    total = 1
    for s in shapes:
        total *= len(s.layer.options)
    limit = min(count, total - len(seen))
    tries = 0
    while len(out) < limit and tries < 100 * count + 1000:
        tries += 1
        net = _bare(with_options(space, [rng.choice(s.layer.options) for s in shapes]))
        key = network_id(net)
        if key not in seen:
            seen.add(key)
            out.append(net)
    return out


# ---------------------------------------------------------------------------- model files
def _versions(runtime: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    names = {"tflite": ("tensorflow-cpu", "tensorflow", "keras"), "onnxruntime": ("torch", "onnx")}[runtime]
    out = []
    for n in names:
        try:
            out.append(f"{n}={version(n)}")
        except PackageNotFoundError:
            continue
    return ";".join(out)


def model_path(runtime: str, key: str) -> Path:
    """Cache path of the model file of ``key`` (a signature or a network's canonical text)."""
    from spnas_dsl.profiling.runtimes import SUFFIXES

    digest = hashlib.sha256(f"{BUILDER_VERSION}|{runtime}|{_versions(runtime)}|{key}".encode()).hexdigest()[:24]
    return work_dir() / "models" / runtime / f"{digest}{SUFFIXES[runtime]}"


def _network_key(network: Network) -> str:
    from spnas_dsl.printer import format_network

    return format_network(network.model_copy(update={"name": "net", "comments": ()}))


def _part_bytes(runtime: str, space: Network, part: Part) -> bytes:
    if runtime == "tflite":
        from spnas_dsl.backends import tflite

        if part.kind == "stem":
            return tflite.build_stem_tflite(space)
        if part.kind == "head":
            return tflite.build_head_tflite(space)
        return tflite.build_layer_tflite(part.shape, part.option)
    return _onnx_bytes(_torch_part(space, part), _part_input(space, part))


def _network_bytes(runtime: str, network: Network) -> bytes:
    if runtime == "tflite":
        from spnas_dsl.backends import tflite

        return tflite.network_tflite(network)
    from spnas_dsl.compiler.network import lower_to_network

    shapes = infer_shapes(network)
    return _onnx_bytes(lower_to_network(network), shapes.input_hwc)


def _part_input(space: Network, part: Part) -> tuple[int, int, int]:
    shapes = infer_shapes(space)
    if part.kind == "stem":
        return shapes.input_hwc
    if part.kind == "head":
        return shapes.head_in
    return part.shape.in_hwc


def _torch_part(space: Network, part: Part):
    from collections import OrderedDict

    from torch import nn

    from spnas_dsl.compiler.blocks import stem_and_head, torch_block

    if part.kind == "mbconv":
        return torch_block(part.option, Site.of(part.shape))
    stem, head = stem_and_head(space)
    return nn.Sequential(OrderedDict(stem if part.kind == "stem" else head))


def _onnx_bytes(module, input_hwc: tuple[int, int, int]) -> bytes:
    import tempfile

    import torch

    from spnas_dsl.backends.onnx import export_onnx

    module.eval()
    h, w, c = input_hwc
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(module, torch.zeros(1, c, h, w), path)
        return path.read_bytes()


@dataclass(frozen=True)
class ModelJob:
    """A model file to have on disk: ``key`` names it, ``make`` produces its bytes."""

    key: str
    path: Path
    make: Callable[[], bytes]


def part_job(runtime: str, space: Network, part: Part) -> ModelJob:
    return ModelJob(part.signature, model_path(runtime, part.signature), lambda: _part_bytes(runtime, space, part))


def network_job(runtime: str, network: Network, key: str, stitch: bool | None = None) -> ModelJob:
    """The model of a whole concrete network. TFLite: stitched from its cached part models
    (:func:`stitch_tflite`) unless ``stitch=False`` (then converted whole, as ``spnasc build``)."""
    stitch = runtime == "tflite" if stitch is None else stitch
    if stitch:
        if runtime != "tflite":
            raise ValueError("only TFLite models are stitched")
        return ModelJob(key, model_path(runtime, "stitched|" + _network_key(network)),
                        lambda: _stitched_bytes(network))
    return ModelJob(key, model_path(runtime, _network_key(network)), lambda: _network_bytes(runtime, network))


def concrete_parts(network: Network) -> list[Part]:
    """The parts of a concrete network in order (stem, each non-skipped layer, head)."""
    shapes = infer_shapes(network)
    parts = [Part(stem_signature(network, shapes), "stem", ())]
    for shape in shapes.layers:
        option = shape.layer.options[0]
        sig = layer_signature(shape, option)
        if sig is not None:  # identity skips have no part
            parts.append(Part(sig, "mbconv", (shape.index,), shape, option))
    return parts + [Part(head_signature(shapes), "head", ())]


def _stitched_bytes(network: Network) -> bytes:
    jobs = [part_job("tflite", network, p) for p in concrete_parts(network)]
    paths = ensure_models(jobs)
    return stitch_tflite([paths[j.key].read_bytes() for j in jobs])


def ensure_models(jobs: list[ModelJob], progress: Callable[[int], None] | None = None) -> dict[str, Path]:
    """Build every model file that is not cached yet (atomic writes); key -> path."""
    out = {}
    for job in jobs:
        if not job.path.is_file() or job.path.stat().st_size == 0:
            job.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(job.path, job.make())
            _clear_keras()
        out[job.key] = job.path
        if progress:
            progress(1)
    return out


def _clear_keras() -> None:
    """Free the Keras graph state that accumulates over many conversions in one process."""
    import sys

    if "keras" in sys.modules:
        try:
            sys.modules["keras"].backend.clear_session()
        except Exception:  # noqa: BLE001, S110 - best effort only
            pass


# ---------------------------------------------------------------------------- whole networks from parts
def stitch_tflite(parts: list[bytes]) -> bytes:
    """One TFLite model that runs ``parts`` (single-input, single-output float models) in a chain.

    The operators, tensors and weights of each part are appended to the first part's graph,
    the input of each part being the output of the one before. The result has exactly the
    operators the converter gives for the whole network (``tests`` compare the op lists):
    nothing fuses across a part boundary (a part ends with a convolution + BN, or an add),
    so a whole network is assembled in milliseconds from the cached part models instead of
    a TFLiteConverter run of seconds to minutes.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as S

    if not parts:
        raise ValueError("nothing to stitch")
    out = S.ModelT.InitFromPackedBuf(bytes(parts[0]), 0)
    sub = out.subgraphs[0]
    if len(sub.inputs) != 1 or len(sub.outputs) != 1:
        raise ValueError("only single-input, single-output parts can be stitched")

    def code_key(c) -> tuple:
        return (c.builtinCode, c.deprecatedBuiltinCode, c.customCode, c.version)

    codes = {code_key(c): i for i, c in enumerate(out.operatorCodes)}
    for raw in parts[1:]:
        m = S.ModelT.InitFromPackedBuf(bytes(raw), 0)
        s = m.subgraphs[0]
        if len(s.inputs) != 1 or len(s.outputs) != 1:
            raise ValueError("only single-input, single-output parts can be stitched")
        prev = sub.tensors[sub.outputs[0]]
        here = s.tensors[s.inputs[0]]
        if list(prev.shape) != list(here.shape) or prev.type != here.type:
            raise ValueError(f"cannot chain a {list(prev.shape)} output into a {list(here.shape)} input")
        code_map = []
        for c in m.operatorCodes:
            key = code_key(c)
            if key not in codes:
                codes[key] = len(out.operatorCodes)
                out.operatorCodes.append(c)
            code_map.append(codes[key])
        buffer_map: dict[int, int] = {0: 0}
        tensor_map: dict[int, int] = {s.inputs[0]: sub.outputs[0], -1: -1}
        for i, t in enumerate(s.tensors):
            if i == s.inputs[0]:
                continue
            if t.buffer not in buffer_map:
                buffer_map[t.buffer] = len(out.buffers)
                out.buffers.append(m.buffers[t.buffer])
            t.buffer = buffer_map[t.buffer]
            tensor_map[i] = len(sub.tensors)
            sub.tensors.append(t)
        for op in s.operators:
            op.opcodeIndex = code_map[op.opcodeIndex]
            op.inputs = [tensor_map[i] for i in op.inputs]
            op.outputs = [tensor_map[i] for i in op.outputs]
            if op.intermediates is not None and len(op.intermediates):
                op.intermediates = [tensor_map[i] for i in op.intermediates]
            sub.operators.append(op)
        sub.outputs = [tensor_map[s.outputs[0]]]
    out.signatureDefs = []
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(out.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
