"""``--to pytorch``: a ``torch.export`` ExportedProgram (``.pt2``) and the state dict.

The ``.pt2`` holds the graph (ATen ops) and the weights; it loads with ``torch.export.load``
alone, without spnas installed, and runs as ``program.module()(x)`` on an NCHW float32
batch of any size (the batch dimension is dynamic). The ``.safetensors`` state dict has
timm's key layout (``conv_stem.weight``, ``blocks.1.0.conv_pw.weight``, ...).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from spnas_dsl.errors import BuildError

MAX_BATCH = 4096


def export_program(model, example, path: str | Path):
    """Export ``model`` at ``example`` (NCHW tensor) with a dynamic batch and save it to ``path``."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings():  # torch's own pytree deprecation notice while pickling specs
        warnings.simplefilter("ignore", FutureWarning)
        try:
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds here; report them as a build failure
            raise BuildError(f"torch.export failed: {type(exc).__name__}: {exc}") from None
        torch.export.save(program, str(path))
    return program


def load_program_runner(path: str | Path):
    """A function NCHW numpy -> outputs numpy that runs the saved program (as a user would)."""
    import torch

    with warnings.catch_warnings():  # torch's own pytree deprecation notice while unpickling specs
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.export.load(str(path)).module()

    def run(x):
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def export(ctx) -> None:
    import torch

    path = ctx.staging / f"{ctx.stem}.pt2"
    export_program(ctx.model, torch.from_numpy(ctx.batch), path)
    ctx.add(path, "pytorch", "exported_program", run=load_program_runner(path),
            load="torch.export.load(path).module()(x)  # x: float32 NCHW, any batch size")
    ctx.write_state_dict("pytorch")
