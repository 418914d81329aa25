"""The exporters ``spnasc build --to`` knows: a registry keyed by format name.

Each exporter is a module with ``export(ctx: BuildContext) -> None`` (see
:mod:`spnas_dsl.backends.context`). Modules are imported when their exporter is used, so
naming the registry costs nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from spnas_dsl.errors import UsageError


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
