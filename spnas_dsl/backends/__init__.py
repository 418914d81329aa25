"""Exporters: a concrete network as files for other runtimes, each checked against PyTorch.

- :mod:`~spnas_dsl.backends.registry`: the exporters ``spnasc build --to`` knows (``EXPORTERS``);
- :mod:`~spnas_dsl.backends.context`: what an exporter gets (``BuildContext``) and records (``Artifact``);
- :mod:`~spnas_dsl.backends.pipeline`: ``build``, which runs them, checks parity and writes ``build.json``;
- :mod:`~spnas_dsl.backends.output`: the output folder (staging, ``--force``, publishing);
- one module per exporter: ``pytorch``, ``onnx``, ``tflite`` (through ``keras``), ``timm``.
"""

from spnas_dsl.backends.context import INPUT_NAME, OUTPUT_NAME, Artifact, BuildContext, BuildResult, HeldOut
from spnas_dsl.backends.output import prepare_output, previous_build_files, publish
from spnas_dsl.backends.pipeline import build, open_data
from spnas_dsl.backends.quiet import quiet_output
from spnas_dsl.backends.registry import EXPORTERS, ExporterSpec, get_exporter, register_exporter

__all__ = [
    "EXPORTERS", "INPUT_NAME", "OUTPUT_NAME", "Artifact", "BuildContext", "BuildResult", "ExporterSpec", "HeldOut",
    "build", "get_exporter", "open_data", "prepare_output", "previous_build_files", "publish", "quiet_output",
    "register_exporter",
]
