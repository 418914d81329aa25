"""``--to onnx``: ``torch.onnx.export(..., dynamo=True)``, checked, run with onnxruntime.

The graph comes from ``torch.export`` (opset 18+; BatchNorm folded into the convolutions),
has one input ``input`` (float32 NCHW, dynamic batch) and one output ``logits``. It is
validated with ``onnx.checker`` and its onnxruntime outputs are compared with PyTorch's.
The model's ``metadata_props`` record the build's metadata (``spnas.network``,
``spnas.architecture_sha256``, ``spnas.input``, ``spnas.output``, ``spnas.normalization``...;
values that are not strings are JSON): onnxruntime shows them as
``session.get_modelmeta().custom_metadata_map``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from spnas_dsl.backends.context import INPUT_NAME, OUTPUT_NAME
from spnas_dsl.backends.quiet import quiet_output
from spnas_dsl.errors import BuildError


def export_onnx(model, example, path: str | Path) -> None:
    """Export ``model`` at ``example`` (NCHW tensor, batch dimension dynamic) to ``path``."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    failure = None
    with quiet_output() as chatter, warnings.catch_warnings():  # progress lines, torchvision notices
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation notice
        try:
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                                        external_data=False, verbose=False)
            program.save(str(path))
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds here; report them as a build failure
            failure = exc
    if isinstance(failure, ModuleNotFoundError):
        raise BuildError(f"torch.onnx.export(dynamo=True) needs the '{failure.name}' package "
                         "(pip install onnxscript)")
    if failure is not None:
        raise BuildError(f"ONNX export failed: {type(failure).__name__}: {failure}\n{chatter.text[-2000:]}")


def add_metadata(model, metadata: dict) -> None:
    """Write ``metadata`` into the ``metadata_props`` of ``model`` (a ModelProto) as ``spnas.<key>``
    (JSON unless a string)."""
    import onnx

    props = {f"spnas.{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
    onnx.helper.set_model_props(model, props)


def read_metadata(path: str | Path) -> dict:
    """The ``spnas.*`` metadata of an ONNX file as written by :func:`add_metadata` (keys without prefix)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    out = {}
    for prop in model.metadata_props:
        if prop.key.startswith("spnas."):
            try:
                out[prop.key[6:]] = json.loads(prop.value)
            except ValueError:
                out[prop.key[6:]] = prop.value
    return out


def check_onnx(model, name: str) -> dict:
    """Run ``onnx.checker`` (full check) on ``model`` (a ModelProto, file ``name``); returns opset and node count."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise BuildError(f"onnx.checker rejected {name}: {exc}") from None
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    return {"opset": opset, "nodes": len(model.graph.node)}


def onnxruntime_runner(path: str | Path, threads: int = 1):
    """A function NCHW numpy -> outputs numpy running ``path`` on onnxruntime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x):
        return session.run(None, {name: x})[0]

    return run


def export(ctx) -> None:
    import onnx
    import torch

    path = ctx.staging / f"{ctx.stem}.onnx"
    export_onnx(ctx.model, torch.from_numpy(ctx.batch), path)
    model = onnx.load(str(path), load_external_data=False)  # read once: metadata, checks, then saved
    size = ctx.network.input
    add_metadata(model, ctx.metadata("NCHW", ["batch", size.channels, size.height, size.width]))
    info = check_onnx(model, path.name)
    onnx.save(model, str(path))
    ctx.add(path, "onnx", "onnx", run=onnxruntime_runner(path), input=f"{INPUT_NAME}: float32 [batch, C, H, W]", **info)
