"""Export backends: a registry of exporters keyed by name, and ``build`` which runs them.

Each exporter is a module with ``export(ctx: BuildContext) -> None``: it writes its files into
``ctx.staging`` and records them with ``ctx.add(...)``, giving a function that runs the
artifact on an NCHW float32 batch when the artifact computes the network's outputs. The
context compares those outputs with PyTorch's (``parity.py``); ``build`` writes ``build.json``
and moves everything into the output folder only when every float artifact passes.

Modules are imported when their exporter is used, so naming the registry costs nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spnas_dsl.errors import BuildError, SpnasError, UsageError
from spnas_dsl.ir import Network

# The one input and the one output of every exported model, whatever the format.
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ExporterSpec:
    name: str
    module: str
    help: str


EXPORTERS: dict[str, ExporterSpec] = {}


def register_exporter(name: str, module: str, help: str) -> None:
    """Make ``spnasc build --to NAME`` run ``module.export(ctx)``."""
    EXPORTERS[name] = ExporterSpec(name, module, help)


register_exporter("pytorch", "spnas_dsl.backends.pytorch",
                  "torch.export ExportedProgram (.pt2) and the state dict (.safetensors)")
register_exporter("onnx", "spnas_dsl.backends.onnx",
                  "ONNX from torch.onnx.export(dynamo=True), checked and run with onnxruntime")
register_exporter("tflite", "spnas_dsl.backends.tflite",
                  "TFLite from a Keras model built from the IR (float; int8 with --int8) and deploy/")
register_exporter("timm", "spnas_dsl.backends.timm",
                  "timm block strings (arch_def) to paste into timm's EfficientNet, and the state dict")


def get_exporter(name: str):
    """The exporter module registered as ``name`` (a :class:`UsageError` names the known ones)."""
    spec = EXPORTERS.get(name)
    if spec is None:
        raise UsageError(f"unknown --to '{name}'; known: {', '.join(sorted(EXPORTERS))}")
    return importlib.import_module(spec.module)


@dataclass
class Artifact:
    """One file of a build. ``parity``: split name -> :class:`parity.Parity` as JSON."""

    path: str                       # relative to the output folder
    backend: str
    kind: str
    precision: str | None = None    # "float32" / "int8" for files that compute outputs
    checked: bool = False           # held to the float parity rule
    parity: dict[str, dict] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class HeldOut:
    """Held-out images (NCHW float32, normalised), their labels and the PyTorch logits."""

    images: Any
    labels: Any
    reference: Any
    description: str


@dataclass
class BuildContext:
    """What every exporter gets: the network, its PyTorch model, the parity data, the options."""

    network: Network
    text: str                        # canonical .spnas text of the network
    model: Any                       # the PyTorch module, eval mode
    staging: Path
    batch: Any                       # fixed random NCHW float32 batch
    reference: Any                   # PyTorch outputs on ``batch``
    heldout: HeldOut | None = None
    calibration: Any = None          # NCHW float32 samples for int8 calibration (None: random)
    calibration_source: str = ""
    normalization: dict | None = None  # {"mean": [...], "std": [...]} of the data, when known
    int8: bool = False
    tolerance: float = 1e-4
    artifacts: list[Artifact] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    log: Callable[[str], None] = print

    @property
    def stem(self) -> str:
        """File name stem of the artifacts: the network's name."""
        return self.network.name

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.log(f"note: {message}")

    def add(self, path: str | Path, backend: str, kind: str, *, run: Callable | None = None,
            precision: str | None = None, checked: bool | None = None, **info) -> Artifact:
        """Record a file written under ``staging``; with ``run`` (NCHW batch -> outputs) its
        outputs are compared with PyTorch's on the random batch and the held-out data."""
        from spnas_dsl.backends.parity import accuracy, compare

        rel = str(Path(path).relative_to(self.staging)) if Path(path).is_absolute() else str(path)
        artifact = Artifact(rel, backend, kind, precision=precision, info=dict(info))
        if run is not None:
            artifact.precision = precision or "float32"
            artifact.checked = artifact.precision == "float32" if checked is None else checked
            artifact.parity["random"] = compare(run(self.batch), self.reference).to_json()
            if self.heldout is not None:
                out = run(self.heldout.images)
                artifact.parity["heldout"] = compare(out, self.heldout.reference).to_json()
                artifact.info["heldout_accuracy"] = accuracy(out, self.heldout.labels)
        self.artifacts.append(artifact)
        return artifact

    def has(self, path: str) -> bool:
        return any(a.path == path for a in self.artifacts)

    def metadata(self, layout: str, input_shape: list) -> dict:
        """What every model file records about itself (ONNX ``metadata_props``, TFLite ``Model.metadata``):
        the network, the hash of its architecture text, the input and output and the normalisation,
        so that a file found alone says what it computes and how to feed it."""
        import hashlib

        return {
            "producer": "spnas",
            "network": self.network.name,
            "architecture_sha256": hashlib.sha256(self.text.encode("utf-8")).hexdigest(),
            "architecture": self.text,
            "input": {"name": INPUT_NAME, "layout": layout, "shape": input_shape, "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": [input_shape[0], self.network.classes],
                       "meaning": "logits (no softmax)"},
            "normalization": self.normalization,
            "normalization_note": None if self.normalization else (
                "unknown at build time (no --data): feed images normalised as the network was trained"),
            "batchnorm": {"eps": self.network.bn_eps, "momentum": self.network.bn_momentum},
        }

    def write_state_dict(self, backend: str) -> Path:
        """``<name>.safetensors`` (once per build, whichever backend asks first)."""
        from spnas_dsl.backends.weights import metadata_for, state_dict_bytes

        path = self.staging / f"{self.stem}.safetensors"
        if not self.has(path.name):
            path.write_bytes(state_dict_bytes(self.model, metadata_for(self.text)))
            self.add(path, backend, "state_dict", tensors=len(self.model.state_dict()))
        return path

    def failures(self) -> list[str]:
        """One line per float artifact whose outputs differ from PyTorch's beyond the tolerance."""
        out = []
        for a in self.artifacts:
            if not a.checked:
                continue
            for split, p in a.parity.items():
                if not (p["relative"] <= self.tolerance):
                    out.append(f"{a.path} ({split}): max abs diff {p['max_abs_diff']:.3g} = "
                               f"{p['relative']:.3g} of the output scale {p['max_abs_reference']:.3g} "
                               f"(limit {self.tolerance:g})")
        return out


@dataclass
class BuildResult:
    out_dir: Path
    manifest: dict
    artifacts: list[Artifact]
    notes: list[str]


class CapturedOutput:
    text = ""


@contextlib.contextmanager
def quiet_output():
    """Capture everything written to stdout/stderr, by Python or by C++ (file descriptors 1
    and 2): TensorFlow, the TFLite converter and torch.onnx are chatty. The text is in
    ``.text`` after the block, for error messages."""
    captured = CapturedOutput()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    python_text = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(python_text), contextlib.redirect_stderr(python_text):
                yield captured
        finally:
            for stream in (sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.text = python_text.getvalue() + sink.read().decode("utf-8", "replace")


# -- output folder ----------------------------------------------------------------------------------

def prepare_output(out_dir: Path, force: bool = False) -> tuple[Path, list[Path]]:
    """Check that ``out_dir`` can be written and make a staging folder beside it.

    ``out_dir`` must be new or empty unless ``force`` (:func:`spnas_dsl.training.rundir.check_out`).
    Returns (staging folder, folders created on the way) so a failed build can remove both.
    """
    from spnas_dsl.training.rundir import check_out

    out_dir = Path(out_dir)
    check_out(out_dir, "build", force=force)  # a file, or a folder holding anything: a usage error
    created: list[Path] = []
    parent = out_dir.absolute().parent
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        if not parent.is_dir():
            raise NotADirectoryError(20, f"{parent} is not a directory")
        target = out_dir if out_dir.exists() else parent
        if not os.access(target, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name or 'build'}.", suffix=".partial", dir=parent))
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it 0700; it becomes --out
    except OSError as exc:
        _remove_created(created)
        reason = exc.strerror or str(exc)
        raise BuildError(f"cannot write to --out {out_dir}: {reason}") from None
    return staging, created


def _remove_created(created: list[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            pass


def previous_build_files(out_dir: Path) -> list[str]:
    """The files of the build in ``out_dir`` (those its ``build.json`` lists, and itself), for ``--force``.

    Only plain relative paths inside ``out_dir`` count; an unreadable ``build.json`` lists nothing
    (its folder's files are then kept, and replaced only where the new build writes the same names).
    """
    manifest = out_dir / "build.json"
    try:
        artifacts = json.loads(manifest.read_text(encoding="utf-8")).get("artifacts", [])
        paths = [a["path"] for a in artifacts if isinstance(a, dict) and isinstance(a.get("path"), str)]
    except (OSError, ValueError, AttributeError):
        return ["build.json"] if manifest.is_file() else []
    inside = [p for p in paths if not Path(p).is_absolute() and ".." not in Path(p).parts]
    return sorted(set(inside)) + ["build.json"]


def publish(staging: Path, out_dir: Path, log: Callable[[str], None] = print) -> None:
    """Move the staged files into ``out_dir``: one rename when it is new, else file by file
    (each ``os.replace`` atomic, ``build.json`` last). A previous build's files that the new
    build does not replace are removed (``--force``); other files in ``out_dir`` are kept."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    new = {str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()}
    stale = [name for name in previous_build_files(out_dir) if name not in new and (out_dir / name).is_file()]
    files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name == "build.json")
    for src in files:  # check every destination before moving anything
        dst = out_dir / src.relative_to(staging)
        if dst.is_dir():
            raise BuildError(f"cannot write {dst}: a directory is in the way")
        for parent in dst.relative_to(out_dir).parents:
            if (out_dir / parent).exists() and not (out_dir / parent).is_dir():
                raise BuildError(f"cannot write {dst}: {out_dir / parent} is a file")
    for name in stale:  # after the checks above: a refused build removes nothing
        (out_dir / name).unlink()
    for folder in sorted({(out_dir / n).parent for n in stale}, key=lambda p: len(p.parts), reverse=True):
        if folder != out_dir and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if stale:
        log(f"--force: removed the previous build's {', '.join(stale)} from {out_dir}")
    for src in files:
        dst = out_dir / src.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    shutil.rmtree(staging, ignore_errors=True)


# -- data -------------------------------------------------------------------------------------------

def _images(dataset, count: int, seed: int):
    """Up to ``count`` normalised images of ``dataset`` (a seeded choice) as numpy arrays."""
    import numpy as np

    from spnas_dsl.data import Batches, subset_indices

    idx = subset_indices(len(dataset), count, seed)
    part = dataset.subset(idx, train=False)
    xs, ys = [], []
    for x, y in Batches(part, batch_size=64):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def open_data(spec: str, network: Network, data_dir: str | None, seed: int):
    """``spnas_dsl.data.open_dataset`` at the network's input size, imported only when asked for."""
    try:
        from spnas_dsl.data import open_dataset
    except ImportError as exc:  # pragma: no cover - the data package ships with spnas
        raise BuildError(f"data set '{spec}' needs spnas_dsl.data, which cannot be imported: {exc}") from None
    size = network.input
    if size.height != size.width:
        raise UsageError(f"--data needs a square input; '{network.name}' takes {size}")
    return open_dataset(spec, size.height, size.channels, data_dir=data_dir, num_classes=network.classes, seed=seed)


# -- the build ----------------------------------------------------------------------------------------

def build(network: Network, targets: list[str], out_dir: str | Path | None = None, *,
          weights: str | Path | None = None, int8: bool = False, data: str | None = None,
          calib_data: str | None = None, data_dir: str | None = None, calib_samples: int = 200,
          eval_samples: int = 500, batch: int = 4, seed: int = 0, tolerance: float = 1e-4,
          log: Callable[[str], None] = print, force: bool = False) -> BuildResult:
    """Export a concrete ``network`` to every backend in ``targets``; see docs/build.md.

    Raises a :class:`SpnasError` (nothing written) for a space, bad weights, an unwritable
    output folder (or a non-empty one without ``force``) or a float artifact whose outputs differ from PyTorch's by more than
    ``tolerance`` relative to the output scale.
    """
    from spnas_dsl.compiler.network import require_concrete

    targets = list(dict.fromkeys(targets))
    if not targets:
        raise UsageError("nothing to build: give at least one --to (" + ", ".join(sorted(EXPORTERS)) + ")")
    for name in targets:
        if name not in EXPORTERS:
            get_exporter(name)  # raises with the known names
    if int8 and "tflite" not in targets:
        raise UsageError("--int8 quantizes the TFLite model: add --to tflite")
    if calib_data and not int8:
        raise UsageError("--calib-data is the calibration set of --int8; for held-out checks use --data")
    require_concrete(network)
    out_dir = Path(out_dir) if out_dir is not None else Path("build") / network.name
    staging, created = prepare_output(out_dir, force)
    try:
        result = _build(network, targets, out_dir, staging, weights=weights, int8=int8, data=data,
                        calib_data=calib_data, data_dir=data_dir, calib_samples=calib_samples,
                        eval_samples=eval_samples, batch=batch, seed=seed, tolerance=tolerance, log=log)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_created(created)
        if isinstance(exc, (SpnasError, KeyboardInterrupt, SystemExit)):
            raise
        raise BuildError(f"build failed: {type(exc).__name__}: {exc}") from exc
    return result


def _build(network, targets, out_dir, staging, *, weights, int8, data, calib_data, data_dir, calib_samples,
           eval_samples, batch, seed, tolerance, log) -> BuildResult:
    import numpy as np
    import torch

    from spnas_dsl.backends.parity import random_batch
    from spnas_dsl.backends.weights import check_bn_settings, initialise, load_weights, sha256_file
    from spnas_dsl.compiler.network import lower_to_network
    from spnas_dsl.printer import format_network

    started = time.perf_counter()
    text = format_network(network.model_copy(update={"comments": ()}))
    size = network.input
    chw = (size.channels, size.height, size.width)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = lower_to_network(network)
    weight_notes: list[str] = []
    if weights is not None:
        metadata = load_weights(model, weights)
        weight_notes = check_bn_settings(network, metadata, model, str(weights))
        model.eval()
        weights_info = {"source": str(weights), "sha256": sha256_file(weights)}
    else:
        initialise(model, chw, seed=seed)
        weights_info = {"source": None, "initialised": f"seeded (seed {seed}); BatchNorm statistics from "
                        "random N(0,1) batches"}

    x = random_batch(chw, batch, seed)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    ctx = BuildContext(network=network, text=text, model=model, staging=staging, batch=x, reference=reference,
                       int8=int8, tolerance=tolerance, log=log)
    for message in weight_notes:  # BatchNorm settings the weights were made for (see check_bn_settings)
        ctx.notes.append(message)
        log(message)
    if weights is None:
        ctx.note("no --weights: building with initialised weights (seeded, BatchNorm statistics from random "
                 "batches); the files are for checking and timing, not for predictions")

    eval_spec = data or calib_data
    splits = None
    if eval_spec:
        t = time.perf_counter()
        splits = open_data(eval_spec, network, data_dir, seed)
        images, labels = _images(splits.val, eval_samples, seed)
        with torch.no_grad():
            ref = np.concatenate([model(torch.from_numpy(images[i:i + 64])).numpy()
                                  for i in range(0, len(images), 64)])
        ctx.heldout = HeldOut(images, labels, ref, f"{len(images)} held-out images of '{eval_spec}'")
        norm = splits.val.normalization
        ctx.normalization = {"mean": list(norm.mean), "std": list(norm.std), "source": eval_spec}
        ctx.timings["data"] = time.perf_counter() - t
    if int8:
        spec = calib_data or data
        if spec:
            calib_splits = splits if spec == eval_spec else open_data(spec, network, data_dir, seed)
            ctx.calibration, _ = _images(calib_splits.train, calib_samples, seed + 1)
            ctx.calibration_source = f"{len(ctx.calibration)} training images of '{spec}'"
        else:
            rng = np.random.default_rng(seed + 1)
            ctx.calibration = rng.standard_normal((min(calib_samples, 100), *chw), dtype=np.float32)
            ctx.calibration_source = f"{len(ctx.calibration)} random N(0,1) samples"
            ctx.note("--int8 without --calib-data/--data: calibrating on random N(0,1) samples (the scale of "
                     "normalised images); pass --calib-data for a quantization that fits real images")

    arch = staging / f"{network.name}.spnas"
    arch.write_text(text, encoding="utf-8")
    ctx.add(arch, "spnas", "architecture")
    for name in targets:
        t = time.perf_counter()
        log(f"building {name} ...")
        get_exporter(name).export(ctx)
        ctx.timings[name] = round(time.perf_counter() - t, 2)

    failures = ctx.failures()
    if failures:
        raise BuildError("float parity check failed (outputs differ from PyTorch's):\n  " + "\n  ".join(failures))
    ctx.timings["total"] = round(time.perf_counter() - started, 2)
    manifest = _manifest(ctx, targets, weights_info)
    (staging / "build.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    publish(staging, out_dir, log)
    return BuildResult(Path(out_dir), manifest, ctx.artifacts, ctx.notes)


def _manifest(ctx: BuildContext, targets: list[str], weights_info: dict) -> dict:
    import platform

    import numpy as np

    from spnas_dsl.backends.weights import sha256_file
    from spnas_dsl.shapes import infer_shapes, summarize

    files = []
    for a in ctx.artifacts:
        path = ctx.staging / a.path
        entry = {"path": a.path, "backend": a.backend, "kind": a.kind, "bytes": path.stat().st_size,
                 "sha256": sha256_file(path)}
        if a.precision:
            entry["precision"] = a.precision
            entry["parity_checked"] = a.checked
            entry["parity"] = a.parity
        entry.update(a.info)
        files.append(entry)
    size = ctx.network.input
    totals = summarize(ctx.network, infer_shapes(ctx.network))
    heldout = None
    if ctx.heldout is not None:
        from spnas_dsl.backends.parity import accuracy

        heldout = {"description": ctx.heldout.description,
                   "pytorch_accuracy": accuracy(ctx.heldout.reference, ctx.heldout.labels)}
    return {
        "network": ctx.network.name,
        "architecture": ctx.text,
        "input": {"nchw": [1, size.channels, size.height, size.width], "dtype": "float32",
                  "normalization": ctx.normalization},
        "classes": ctx.network.classes,
        "parameters": totals.params_max,
        "multiply_adds": totals.macs_max,
        "targets": targets,
        "weights": weights_info,
        "parity": {
            "rule": "relative = max|out - pytorch| / max|pytorch|; float artifacts must have relative <= tolerance",
            "tolerance": ctx.tolerance,
            "random_batch": {"shape": list(np.shape(ctx.batch)), "distribution": "N(0,1)",
                             "max_abs_pytorch": float(np.max(np.abs(ctx.reference)))},
            "heldout": heldout,
        },
        "calibration": ctx.calibration_source or None,
        "artifacts": files,
        "notes": ctx.notes,
        "timings_s": ctx.timings,
        "versions": _versions(),
        "python": platform.python_version(),
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("spnas", "torch", "onnx", "onnxruntime", "onnxscript", "tensorflow-cpu", "keras", "ai-edge-litert"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
