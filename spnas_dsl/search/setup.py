"""Setting a search up: everything checked and built before the loop starts (nothing written yet).

:func:`prepare` turns a :class:`SearchConfig` into a :class:`Setup`: the space and its latency
graph on the target, the budget, the data, the supernet, one optimizer over its weights and
thresholds, the lambda controller, and (``--resume``) the checkpoint's state restored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spnas_dsl import training
from spnas_dsl.errors import CheckpointError, SpnasErrors, UsageError
from spnas_dsl.ir import Network
from spnas_dsl.search.config import BN_RECALIBRATION_BATCHES, SearchConfig
from spnas_dsl.search.control import LambdaController
from spnas_dsl.training.distributed import DistInfo


@dataclass
class Setup:
    """A search ready to run: what the loop reads and what its checkpoints save."""

    cfg: SearchConfig
    info: DistInfo
    space: Network
    target: Any  # targets.Target
    graph: Any  # latency.graph.LatencyGraph
    budget: float | None  # ms (--latency-budget, or its percentile resolved on the table)
    image_size: int
    coverage: list  # proxy.KernelDecisionInfo: kernel decisions the data cannot inform at this size
    data: Any  # data.DatasetSplits
    per_rank_batch: int
    supernet: Any  # compiler.supernet.Supernet
    model: torch.nn.Module  # the supernet, DDP-wrapped under torchrun / --nproc
    recipe: training.Recipe
    optimizer: torch.optim.Optimizer
    scheduler: Any
    controller: LambdaController
    steps_per_epoch: int = 0
    step: int = 0
    history: dict[str, Any] = field(default_factory=lambda: {"steps": [], "epochs": [], "init": {}})
    out: Path = Path()
    record_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # CE sum, correct, images
    seconds_before: float = 0.0  # run time before a resume
    started: float = 0.0  # time.monotonic() when this session's loop started

    def seconds(self) -> float:
        """Run time so far, over every session of the run."""
        return self.seconds_before + time.monotonic() - self.started

    @property
    def memory_format(self):
        """channels-last on CPU: depthwise convolutions are ~3x faster there (oneDNN) in this layout."""
        return torch.channels_last if self.info.device.type == "cpu" else None

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs

    @property
    def warmup_steps(self) -> int:
        return round(self.cfg.warmup * self.steps_per_epoch)

    @property
    def threshold_lr(self) -> float | None:
        """The thresholds' constant lr after the warm-up (None: ``--official-thresholds``)."""
        if self.cfg.threshold_travel is None:
            return None
        return self.cfg.threshold_travel / max(self.total_steps - self.warmup_steps, 1)

    def batches(self, split, *, seed: int, epoch: int = 0, start: int = 0, shuffle: bool = True):
        from spnas_dsl.data import Batches

        info = self.info
        return Batches(split, self.per_rank_batch, shuffle=shuffle, seed=seed, epoch=epoch, rank=info.rank,
                       world=info.world_size, drop_last=shuffle, start_batch=start, num_workers=self.cfg.workers,
                       device=info.device, memory_format=self.memory_format)

    def train_batches(self, epoch: int, start: int = 0):
        return self.batches(self.data.train, seed=self.cfg.seed, epoch=epoch, start=start)

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Held-out scores of the supernet at its current hard decisions (:class:`SupernetScorer`:
        a copy, BN re-estimated on ``BN_RECALIBRATION_BATCHES`` training batches for these
        decisions; the supernet and the random state are not changed)."""
        from spnas_dsl.search.selection import SupernetScorer

        calibration = self.batches(self.data.train, seed=self.cfg.seed + 1, epoch=epoch)
        held_out = self.batches(self.data.val, seed=0, shuffle=False)
        scorer = SupernetScorer(self.supernet, self.info, calibration, held_out,
                                calibration_images=BN_RECALIBRATION_BATCHES * self.per_rank_batch)
        return scorer.scores()


def prepare(cfg: SearchConfig, info: DistInfo, resume: dict | None) -> Setup:
    """Check the space, target, budget and data, build the supernet and its optimizer, restore ``resume``."""
    from spnas_dsl.compiler.preflight import search_errors
    from spnas_dsl.compiler.supernet import lower_to_supernet
    from spnas_dsl.data import open_dataset
    from spnas_dsl.latency.graph import LatencyGraph
    from spnas_dsl.parser import parse_text
    from spnas_dsl.search.proxy import kernel_decision_coverage
    from spnas_dsl.search.report import superkernel_spread
    from spnas_dsl.targets import load_target

    space = parse_text(cfg.space_text, cfg.space)
    errors = search_errors(space)  # the rules `check --for-search` reports, before any data is opened
    for error in errors:
        error.source = error.source or cfg.space_text  # the caret under the located line
    if errors:
        raise errors[0] if len(errors) == 1 else SpnasErrors(errors)
    target = load_target(cfg.target)
    graph = LatencyGraph.build(space, target)  # TargetError when the table cannot price the space
    min_ms, max_ms = graph.min_ms(), graph.max_ms()
    budget = cfg.latency_budget
    if cfg.budget_percentile is not None:  # resolved on this table (deterministic: resume gets the same)
        from spnas_dsl.search.budget import latency_percentile

        budget = latency_percentile(space, graph, cfg.budget_percentile)
    if budget is not None and budget < min_ms - 1e-9:
        raise UsageError(f"--latency-budget {budget:g} ms is below the fastest network of "
                         f"'{space.name}' on {target.name} ({min_ms:.2f} ms); the space spans {min_ms:.2f} .. {max_ms:.2f} ms")
    if cfg.image_size is None and space.input.height != space.input.width:
        raise UsageError(f"the space's input is {space.input} (not square): pass --image-size")
    image_size = cfg.image_size or space.input.height
    coverage = kernel_decision_coverage(space, image_size)
    if cfg.batch_size % info.world_size:
        raise UsageError(f"--batch-size {cfg.batch_size} is not divisible by the {info.world_size} processes")
    data = open_dataset(cfg.data, image_size, space.input.channels, data_dir=cfg.data_dir, subset=cfg.subset,
                        val_subset=cfg.val_subset, val_fraction=cfg.val_fraction, num_classes=space.classes,
                        seed=cfg.seed)

    # -- the supernet, one optimizer over weights and thresholds -------------------------------
    training.seed_everything(cfg.seed)  # same on every rank: same init, same indicator dropout
    # A data set with fewer classes than the space declares (Fashion-MNIST for an ImageNet space)
    # trains a classifier sized for the data: a proxy like the image size; the head's latency
    # and the written network keep the declared classes.
    train_space = space if data.num_classes == space.classes else space.model_copy(
        update={"classes": data.num_classes})
    supernet = lower_to_supernet(train_space, latency_graph=graph).to(info.device)
    if info.device.type == "cpu":
        supernet = supernet.to(memory_format=torch.channels_last)
    model: torch.nn.Module = supernet
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(supernet, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    official = cfg.threshold_travel is None
    recipe = training.Recipe(optimizer=cfg.optimizer, batch_size=cfg.batch_size, lr=cfg.lr,
                             weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing,
                             threshold_eps=None if official else 1e-8, threshold_momentum=None if official else 0.0)
    optimizer = training.build_optimizer(supernet, recipe, threshold_ids={id(p) for p in supernet.threshold_parameters()})
    s = Setup(cfg, info, space, target, graph, budget, image_size, coverage, data, cfg.batch_size // info.world_size,
              supernet, model, recipe, optimizer, None,
              LambdaController(cfg.lambda_value, budget, cfg.control_gain, cfg.control_every))
    s.steps_per_epoch = len(s.train_batches(0))
    if s.steps_per_epoch == 0:
        raise UsageError(f"--batch-size {cfg.batch_size} is larger than the {len(data.train)} training images")
    s.scheduler = training.build_scheduler(optimizer, recipe, s.steps_per_epoch, cfg.epochs)
    if resume is None:
        s.history["init"] = {"spread": superkernel_spread(supernet), "report": supernet.decision_report()}
        return s
    try:
        supernet.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        s.scheduler.load_state_dict(resume["scheduler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"the checkpoint does not match this search: {str(exc).splitlines()[0]}") from None
    s.controller.load_state_dict(resume["controller"])
    training.restore_rng_state(resume["rng"])
    s.step = int(resume["step"])
    s.history = resume["history"]
    if info.is_main:
        s.record_sums = [float(v) for v in resume.get("record_sums", s.record_sums)]
    s.seconds_before = float(resume.get("seconds", 0.0))
    return s


def checkpoint_state(s: Setup, epoch_done: bool, seconds: float) -> dict:
    """What ``checkpoint.pt`` holds: with it a resumed search computes the uninterrupted run's steps."""
    return {
        "kind": "spnas-search", "model": s.supernet.state_dict(), "optimizer": s.optimizer.state_dict(),
        "scheduler": s.scheduler.state_dict(), "controller": s.controller.state_dict(),
        "rng": training.capture_rng_state(), "step": s.step, "epoch_done": epoch_done,
        "history": s.history, "config": s.cfg.to_dict(), "record_sums": s.record_sums, "seconds": seconds,
    }
