"""Runtimes that execute a model file on this machine's CPU: LiteRT (TFLite) and onnxruntime.

A runtime opens a model file into a :class:`Session` whose ``invoke()`` runs one inference
on a fixed random input (set once, outside the timed region). Both are imported lazily, so
importing this module costs nothing; worker processes of :mod:`spnas_dsl.profiling.timing`
import only the runtime they use (never TensorFlow).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spnas_dsl.errors import TargetError


@dataclass
class Session:
    """One loaded model: ``invoke()`` runs one inference (the only thing that is timed)."""

    invoke: Callable[[], object]
    input_shape: tuple[int, ...]
    runtime: str
    threads: int


@contextlib.contextmanager
def _silenced_stderr():
    """Send file descriptor 2 to /dev/null (LiteRT prints 'INFO: Created ... XNNPACK delegate')."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _tflite_session(path: str, threads: int, seed: int = 0) -> Session:
    from ai_edge_litert.interpreter import Interpreter

    # XNNPACK is on by default in ai_edge_litert (about 3x faster than the reference kernels).
    with _silenced_stderr():
        interpreter = Interpreter(model_path=path, num_threads=threads)
        interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    shape = tuple(int(v) for v in detail["shape"])
    data = np.random.default_rng(seed).standard_normal(shape).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], data)
    return Session(invoke=interpreter.invoke, input_shape=shape, runtime="tflite", threads=threads)


def _onnx_session(path: str, threads: int, seed: int = 0) -> Session:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = tuple(int(v) if isinstance(v, int) else 1 for v in inp.shape)
    feed = {inp.name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}
    names = [o.name for o in session.get_outputs()]
    return Session(invoke=lambda: session.run(names, feed), input_shape=shape, runtime="onnxruntime", threads=threads)


_OPENERS: dict[str, Callable[[str, int, int], Session]] = {
    "tflite": _tflite_session,
    "onnxruntime": _onnx_session,
}

# The model file each runtime reads.
SUFFIXES = {"tflite": ".tflite", "onnxruntime": ".onnx"}


def open_session(runtime: str, path: str | Path, threads: int = 1, seed: int = 0) -> Session:
    """Load ``path`` with ``runtime`` using ``threads`` CPU threads; raise TargetError if it cannot."""
    if runtime not in _OPENERS:
        raise TargetError(f"unknown runtime '{runtime}'; known: {', '.join(sorted(_OPENERS))}")
    if threads < 1:
        raise TargetError(f"thread count must be at least 1, got {threads}")
    try:
        return _OPENERS[runtime](str(path), threads, seed)
    except (ValueError, RuntimeError) as exc:
        raise TargetError(f"{runtime} cannot load '{path}': {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # onnxruntime raises its own exception classes
        if type(exc).__module__.startswith("onnxruntime"):
            raise TargetError(f"{runtime} cannot load '{path}': {str(exc).splitlines()[0]}") from None
        raise


def runtime_version(runtime: str) -> str:
    """Version string of the runtime's package, e.g. ``ai-edge-litert 2.3.0``."""
    from importlib.metadata import PackageNotFoundError, version

    package = {"tflite": "ai-edge-litert", "onnxruntime": "onnxruntime"}[runtime]
    try:
        return f"{package} {version(package)}"
    except PackageNotFoundError:
        return f"{package} (not installed)"


def cpu_model() -> str:
    """This machine's CPU model name and logical core count, e.g. ``Intel(R) Xeon(R) ... (2 cores)``."""
    import platform

    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({os.cpu_count()} cores)"
