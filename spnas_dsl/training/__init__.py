"""The training kit shared by ``spnasc search`` and ``spnasc train`` (both loops are built from it).

- :mod:`~spnas_dsl.training.recipe`: :class:`Recipe`, :func:`build_optimizer` (TF-style RMSProp or
  SGD; no weight decay on BN / biases / thresholds), :func:`build_scheduler` (per-step lr),
  :func:`loss_function` (label-smoothed CE).
- :mod:`~spnas_dsl.training.evaluation`: :func:`evaluate` (top-k and mean CE over a split),
  :func:`precise_bn` (BN statistics re-estimated for the current weights and decisions).
- :mod:`~spnas_dsl.training.checkpoint`: :func:`save_checkpoint` (atomic), :func:`load_checkpoint`
  (``weights_only=True``), :func:`read_run_checkpoint` (a run folder's, checked),
  :func:`load_state`, RNG state capture/restore, :func:`seed_everything`. Weights files
  (safetensors): :mod:`spnas_dsl.backends.weights`.
- :mod:`~spnas_dsl.training.rundir`: output folders (refuse, claim, ``--force``, default names).
- :mod:`~spnas_dsl.training.hooks`: :class:`Diverged`, the injected test :class:`Hooks`.
- :mod:`~spnas_dsl.training.distributed`: :func:`setup` (torchrun / ``--nproc`` detection,
  gloo or NCCL), :class:`DistInfo`, :func:`launch_local` (``--nproc N``), small collectives.
- :mod:`~spnas_dsl.training.progress`: :class:`Progress` (tqdm bar or plain lines),
  :func:`tensorboard_writer`.
"""

from spnas_dsl.training.checkpoint import (
    CHECKPOINT,
    capture_rng_state,
    load_checkpoint,
    load_state,
    read_run_checkpoint,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
)
from spnas_dsl.training.distributed import DistInfo, all_reduce_sum, any_rank, launch_local, setup, teardown
from spnas_dsl.training.evaluation import evaluate, precise_bn, sync_buffers
from spnas_dsl.training.hooks import NO_HOOKS, Diverged, Hooks
from spnas_dsl.training.progress import Progress, tensorboard_writer
from spnas_dsl.training.recipe import Recipe, build_optimizer, build_scheduler, loss_function

__all__ = [
    "CHECKPOINT",
    "NO_HOOKS",
    "DistInfo",
    "Diverged",
    "Hooks",
    "Progress",
    "Recipe",
    "all_reduce_sum",
    "any_rank",
    "build_optimizer",
    "build_scheduler",
    "capture_rng_state",
    "evaluate",
    "launch_local",
    "load_checkpoint",
    "load_state",
    "loss_function",
    "precise_bn",
    "read_run_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
    "setup",
    "sync_buffers",
    "teardown",
    "tensorboard_writer",
]
