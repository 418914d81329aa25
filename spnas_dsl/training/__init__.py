"""Training-loop pieces shared by ``spnasc search`` and ``spnasc train``.

- :mod:`~spnas_dsl.training.recipe`: :class:`Recipe`, :func:`build_optimizer` (TF-style RMSProp or
  SGD; no weight decay on BN / biases / thresholds), :func:`build_scheduler` (per-step lr),
  :func:`loss_function` (label-smoothed CE).
- :mod:`~spnas_dsl.training.checkpoint`: :func:`save_checkpoint` (atomic),
  :func:`load_checkpoint` (``weights_only=True``), RNG state capture/restore, safetensors weights.
- :mod:`~spnas_dsl.training.distributed`: :func:`setup` (torchrun / ``--nproc`` detection,
  gloo or NCCL), :class:`DistInfo`, :func:`launch_local` (``--nproc N``), small collectives.
- :mod:`~spnas_dsl.training.progress`: :class:`Progress` (tqdm bar or plain lines).
- :func:`seed_everything`, :func:`evaluate` (accuracy and mean CE over a split),
  :func:`recalibrate_batchnorm` (fresh BN statistics before evaluating a sub-network).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from spnas_dsl.training.checkpoint import (  # noqa: F401 (re-exported)
    capture_rng_state,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
    save_weights,
)
from spnas_dsl.training.distributed import DistInfo, all_reduce_sum, launch_local, setup, teardown  # noqa: F401
from spnas_dsl.training.progress import Progress  # noqa: F401
from spnas_dsl.training.recipe import Recipe, build_optimizer, build_scheduler, loss_function  # noqa: F401


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, info: DistInfo | None = None,
             logits_of=lambda out: out) -> tuple[float, float, int]:
    """(accuracy, mean cross-entropy, images) of ``model`` in eval mode over ``batches``.

    ``batches`` yields ``(x, y)`` (e.g. :class:`spnas_dsl.data.Batches` of this rank's shard);
    under DDP the counts are summed over ranks. ``logits_of`` picks the logits out of the
    model's output (e.g. ``lambda out: out.logits`` for a supernet). The model's train/eval
    mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    correct = total = 0.0
    ce_sum = 0.0
    for x, y in batches:
        logits = logits_of(model(x))
        ce_sum += float(torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
        correct += float((logits.argmax(dim=1) == y).sum())
        total += len(y)
    model.train(was_training)
    if info is not None:
        correct, total, ce_sum = all_reduce_sum([correct, total, ce_sum], info)
    if total == 0:
        return 0.0, float("nan"), 0
    return correct / total, ce_sum / total, int(total)


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, batches, max_batches: int = 20) -> int:
    """Recompute every BatchNorm's running statistics from ``batches`` (a cumulative average).

    Needed before evaluating a network whose BN statistics were not accumulated for it (a
    supernet at its current decisions, or a short run where momentum 0.01 has not caught up).
    Only BN layers run in training mode (dropout stays off, no gradients, the global RNG is not
    touched). Returns the number of batches used; leaves ``model`` in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    model.eval()
    for m in norms:
        m.train()
    used = 0
    with torch.random.fork_rng(devices=[]):
        for x, _ in batches:
            if used >= max_batches:
                break
            model(x)
            used += 1
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()
    return used
