"""Checkpoints: atomic saves, safe loads (``torch.load(weights_only=True)``), RNG states.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (nothing that
needs unpickling arbitrary classes), written through a temporary file and an atomic
rename, so a run killed mid-save leaves the previous checkpoint intact::

    save_checkpoint(out / "checkpoint.pt", {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                            "scheduler": sched.state_dict(), "rng": capture_rng_state(),
                                            "step": step, "epoch": epoch, "config": config})
    state = load_checkpoint(out / "checkpoint.pt")          # CheckpointError when missing/corrupt
    model.load_state_dict(state["model"]); restore_rng_state(state["rng"])
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from spnas_dsl.errors import CheckpointError
from spnas_dsl.io import atomic_write_bytes


def capture_rng_state() -> dict:
    """The state of every random generator a training step may touch (Python, NumPy, torch, CUDA)."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Undo :func:`capture_rng_state` (CUDA states only when the device count matches)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value):
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Serialise ``state`` with ``torch.save`` and write it atomically to ``path``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``: tensors and plain containers only).

    Raises :class:`CheckpointError` when the file is missing, truncated or not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 (pickle / zip errors of a damaged file)
        # torch's own message for a refused object suggests weights_only=False: never do that
        # for a file we did not write, so name the file as damaged or foreign instead.
        raise CheckpointError(
            f"cannot load checkpoint {path}: the file is damaged or not an spnas checkpoint (it could not "
            f"be read as tensors and plain containers: {type(exc).__name__})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint (expected a dict, got {type(state).__name__})")
    return state


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a state dict as safetensors (atomic); ``metadata`` is a str -> str dict."""
    from safetensors.torch import save

    from spnas_dsl.io import canonical_safetensors

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write_bytes(path, canonical_safetensors(save(tensors, metadata=metadata)))  # byte-reproducible


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors state dict; :class:`CheckpointError` when missing or corrupt."""
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    try:
        return load(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 (safetensors' errors of a damaged file)
        raise CheckpointError(f"cannot read weights {path}: {exc}") from None
