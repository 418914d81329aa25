"""Checkpoints: atomic saves, safe loads (``torch.load(weights_only=True)``), RNG states.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (nothing that
needs unpickling arbitrary classes), written through a temporary file and an atomic
rename, so a run killed mid-save leaves the previous checkpoint intact::

    save_checkpoint(out / "checkpoint.pt", {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                            "scheduler": sched.state_dict(), "rng": capture_rng_state(),
                                            "step": step, "epoch": epoch, "config": config})
    state = load_checkpoint(out / "checkpoint.pt")          # CheckpointError when missing/corrupt
    load_state(model, state["model"], "checkpoint.pt"); restore_rng_state(state["rng"])
    state = read_run_checkpoint(run_dir, "train", needed=("model", "step"), kind="spnas-train")   # --resume

Weights files (safetensors) are read and written by :mod:`spnas_dsl.backends.weights`.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from spnas_dsl.errors import CheckpointError
from spnas_dsl.io import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"  # in every search and train run folder


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def read_run_checkpoint(run_dir: str | Path, command: str, needed: tuple[str, ...], kind: str | None = None) -> dict:
    """The checkpoint of a ``spnasc {command}`` run folder (``--resume DIR``, ``--init-from DIR``).

    :class:`CheckpointError` when ``run_dir`` is not a folder, the file is missing or damaged,
    its ``kind`` is another (when given and recorded), or it lacks one of the ``needed`` keys.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"cannot resume: {run_dir} is not a folder")
    path = run_dir / CHECKPOINT
    state = load_checkpoint(path)
    if kind is not None and state.get("kind", kind) != kind:  # early search checkpoints have no kind
        raise CheckpointError(f"{path} is not a 'spnasc {command}' checkpoint (kind {state.get('kind')!r})")
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a complete 'spnasc {command}' checkpoint (no {', '.join(missing)})")
    return state


def load_state(model: torch.nn.Module, state: dict, where: str) -> None:
    """``model.load_state_dict(state)`` (strict), a mismatch as a :class:`CheckpointError` naming ``where``."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where} does not hold a state dict of tensors")
    mine = model.state_dict()
    missing = sorted(set(mine) - set(state))
    unexpected = sorted(set(state) - set(mine))
    wrong = sorted(k for k in set(mine) & set(state) if mine[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(f"shape of {k} is {tuple(state[k].shape)}, the network has {tuple(mine[k].shape)}")
        raise CheckpointError(f"{where} does not fit this network: {'; '.join(parts)}")
    model.load_state_dict(state)
