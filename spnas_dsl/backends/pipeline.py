"""The build pipeline (``spnasc build``): lower the network, run every exporter asked for,
check float parity, write ``build.json`` and publish; see docs/build.md."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from spnas_dsl.backends.context import BuildContext, BuildResult, HeldOut
from spnas_dsl.backends.output import prepare_output, publish, remove_created
from spnas_dsl.backends.registry import EXPORTERS, get_exporter
from spnas_dsl.errors import BuildError, SpnasError, UsageError
from spnas_dsl.ir import Network


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


def build(network: Network, formats: list[str], out_dir: str | Path | None = None, *,
          weights: str | Path | None = None, int8: bool = False, data: str | None = None,
          calib_data: str | None = None, data_dir: str | None = None, calib_samples: int = 200,
          eval_samples: int = 500, batch: int = 4, seed: int = 0, tolerance: float = 1e-4,
          log: Callable[[str], None] = print, force: bool = False) -> BuildResult:
    """Export a concrete ``network`` to every exporter (``--to`` format) in ``formats``; see docs/build.md.

    Raises a :class:`SpnasError` (nothing written) for a space, bad weights, an unwritable
    output folder (or a non-empty one without ``force``) or a float artifact whose outputs differ from PyTorch's by more than
    ``tolerance`` relative to the output scale.
    """
    from spnas_dsl.compiler.network import require_concrete

    formats = list(dict.fromkeys(formats))
    if not formats:
        raise UsageError("nothing to build: give at least one --to (" + ", ".join(sorted(EXPORTERS)) + ")")
    for name in formats:
        if name not in EXPORTERS:
            get_exporter(name)  # raises with the known names
    if int8 and "tflite" not in formats:
        raise UsageError("--int8 quantizes the TFLite model: add --to tflite")
    if calib_data and not int8:
        raise UsageError("--calib-data is the calibration set of --int8; for held-out checks use --data")
    require_concrete(network)
    out_dir = Path(out_dir) if out_dir is not None else Path("build") / network.name
    staging, created = prepare_output(out_dir, force)
    try:
        result = _build(network, formats, out_dir, staging, weights=weights, int8=int8, data=data,
                        calib_data=calib_data, data_dir=data_dir, calib_samples=calib_samples,
                        eval_samples=eval_samples, batch=batch, seed=seed, tolerance=tolerance, log=log)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        remove_created(created)
        if isinstance(exc, (SpnasError, KeyboardInterrupt, SystemExit)):
            raise
        raise BuildError(f"build failed: {type(exc).__name__}: {exc}") from exc
    return result


def _build(network, formats, out_dir, staging, *, weights, int8, data, calib_data, data_dir, calib_samples,
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
    for name in formats:
        t = time.perf_counter()
        log(f"building {name} ...")
        get_exporter(name).export(ctx)
        ctx.timings[name] = round(time.perf_counter() - t, 2)

    failures = ctx.failures()
    if failures:
        raise BuildError("float parity check failed (outputs differ from PyTorch's):\n  " + "\n  ".join(failures))
    ctx.timings["total"] = round(time.perf_counter() - started, 2)
    manifest = _manifest(ctx, formats, weights_info)
    (staging / "build.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    publish(staging, out_dir, log)
    return BuildResult(Path(out_dir), manifest, ctx.artifacts, ctx.notes)


def _manifest(ctx: BuildContext, formats: list[str], weights_info: dict) -> dict:
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
        "targets": formats,  # the exporters run (key kept: build.json readers use it)
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
