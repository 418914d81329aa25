"""Single-Path NAS search: train one supernet's weights and decision thresholds together.

One readable file, top to bottom (after nanoGPT's ``train.py``). Run it through the CLI::

    spnasc search spaces/mnasnet.spnas --target pixel1 --optimizer sgd --image-size 32 --subset 5000 \
        --batch-size 64 --epochs 4 --latency-budget 80      # ~8 min on 2 CPU cores (docs/search.md)
    spnasc search spaces/mnasnet.spnas --lambda 0.02 ...                 # a fixed latency weight
    spnasc search --resume runs/mnasnet-pixel1-20250101-120000           # continue a killed run
    spnasc search ... --nproc 2                                          # 2 data-parallel processes
    torchrun --nproc_per_node=8 -m spnas_dsl search ... --data imagefolder:/data/imagenet

The recipe (paper Sec. 3-4 and the official code, scaled to the run's length):

1. Warm-up (the first ``warmup_epochs``, default 5/8 of the search as the official 6255 of
   10008 steps): loss = CE only (lambda = 0), every decision indicator goes through dropout
   (keep probability 0.6, i.e. ``p_drop = 0.4``) so the supernet does not learn as an ensemble.
2. Latency phase: loss = CE + lambda * log(R), R the relaxed latency in ms (paper Eq. 9-12,
   the fixed parts included), no indicator dropout. One optimizer moves the weights and the
   thresholds together; a decision flips when a threshold passes its weight-subset norm.
   ``lambda`` is fixed (``--lambda``) or steered to ``--latency-budget`` (see
   :class:`LambdaController`).
3. The network: ``--method paper`` reads it off the hard indicators (the thresholds' answer);
   with a budget, :func:`spnas_dsl.budget.fit_to_budget` then moves it into
   ``[budget_floor * budget, budget]`` both ways. ``--method evolution`` (the default with a
   budget) trains every step a random sub-network (the warm-up for the whole search), then scores
   networks of the band with the supernet's inherited weights (:mod:`spnas_dsl.selection`).
   The network is written as ``arch.spnas``.

Scale of lambda: as the official code, the log term is scaled by 1e3: the loss is
``CE + lambda * 1000 * ln(R_ms)``, so lambda values read as the paper's (0.020 gave its
network on ImageNet; the default here). ``--latency-budget`` avoids choosing lambda.

Thresholds: a threshold's gradient is the loss's times ``sigmoid'(norm - t)``, vanishing while
a decision is firmly on, so by default they take normalised steps (their own parameter group,
no momentum), are frozen in the warm-up and then move at most ``threshold_travel`` norm units
over the latency phase (:func:`set_threshold_lr`); ``--official-thresholds`` treats them as
weights. See docs/search.md, "Thresholds", for the measurements behind this.

Determinism and resume: batches are a function of (seed, epoch) (:class:`spnas_dsl.data.Batches`);
the checkpoint holds the model, optimizer, schedule, lambda controller, every RNG state, the
step and the history, saved atomically every epoch and every ``checkpoint_every`` steps, so a
resumed run computes exactly the steps the uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from spnas_dsl.budget import DEFAULT_FLOOR, BudgetFit, fit_to_budget, network_of
from spnas_dsl.errors import CheckpointError, SpnasError, UsageError
from spnas_dsl.io import atomic_write_text
from spnas_dsl.ir import Network
from spnas_dsl.targets.registry import DEFAULT_TARGET

CHECKPOINT = "checkpoint.pt"
BN_RECALIBRATION_BATCHES = 20
OFFICIAL_WARMUP_FRACTION = 6255 / 10008  # official code: 6255 warm-up steps of 10008
DEFAULT_LAMBDA = 0.02  # the paper's network (Fig. 5)
LATENCY_LOSS_SCALE = 1e3  # the official code's factor on lambda * ln(R_ms)
METHODS = ("evolution", "paper")


class SearchDiverged(SpnasError):
    """The loss became NaN or infinite: the search stops and keeps its last good checkpoint."""


# ---------------------------------------------------------------------------------------------
# Configuration: everything that decides the result (saved in every checkpoint and search.json).

@dataclass
class SearchConfig:
    space: str  # path of the .spnas search space
    target: str = DEFAULT_TARGET  # a name: resolved once, by run_search (load_target)
    data: str = "fashion-mnist"
    data_dir: str | None = None
    subset: int | None = None
    val_subset: int | None = None
    val_fraction: float | None = None
    image_size: int | None = None  # None: the space's declared input size
    epochs: int = 8
    warmup_epochs: float | None = None  # None: 5/8 of the epochs (the official ratio)
    lambda_: float | None = None  # None: DEFAULT_LAMBDA, or steered when latency_budget is set
    latency_budget: float | None = None  # ms on the target
    budget_percentile: float | None = None  # --latency-budget P%: the P-th percentile of the space's latencies
    batch_size: int = 128  # global (over all processes)
    lr: float | None = None  # None: 0.016 * batch / 256 (rmsprop), 0.1 * batch / 256 (sgd)
    optimizer: str = "rmsprop"
    weight_decay: float = 1e-5
    label_smoothing: float = 0.1
    dropout_keep: float = 0.6  # indicator keep probability during the warm-up
    # Thresholds: normalised steps (RMSProp, PyTorch form, no momentum), frozen in the warm-up, then
    # a constant lr = threshold_travel / latency-phase steps: the farthest a threshold can move (in
    # norm units). None: the official recipe (the weights' optimizer, lr and schedule).
    threshold_travel: float | None = 10.0
    seed: int = 0
    device: str | None = None  # None: cuda when available
    workers: int | None = None  # DataLoader workers for image folders (None: data.default_workers)
    log_every: int = 20  # steps between history records / progress lines
    checkpoint_every: int = 100  # steps between mid-epoch checkpoints
    control_every: int = 1  # steps between lambda-controller updates (with a budget)
    control_gain: float = 0.2
    # docs/search.md, "Methods". "paper": weights and thresholds trained together (warm-up, then the
    # latency phase), the network read off the thresholds (fitted into the budget band).
    # "evolution": every step trains a random sub-network (indicator dropout throughout, so every
    # path is trained alike), then a constrained evolutionary search of the budget band scores
    # networks with the inherited weights. None: evolution with a budget, paper without one.
    method: str | None = None
    budget_floor: float = DEFAULT_FLOOR  # the written network is at least floor * budget
    evaluations: int = 48  # networks the evolution scores
    selection_images: int = 2000  # at most this many held-out images score each candidate
    space_text: str = ""  # the space's source, so --resume does not depend on the file

    @property
    def search_method(self) -> str:
        """The method in force: ``method``, or evolution with a budget and paper without one."""
        if self.method is not None:
            return self.method
        return "evolution" if self.latency_budget is not None or self.budget_percentile is not None else "paper"

    @property
    def warmup(self) -> float:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return self.epochs if self.search_method == "evolution" else self.epochs * OFFICIAL_WARMUP_FRACTION

    @property
    def lambda_value(self) -> float:
        return DEFAULT_LAMBDA if self.lambda_ is None else self.lambda_

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def check(self) -> None:
        if self.epochs < 1:
            raise UsageError(f"--epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.warmup <= self.epochs:
            raise UsageError(f"--warmup-epochs must be between 0 and --epochs ({self.epochs}), got {self.warmup:g}")
        if self.lambda_ is not None and self.latency_budget is not None:
            raise UsageError("--lambda and --latency-budget are alternatives: the budget steers lambda itself")
        if self.lambda_ is not None and self.lambda_ < 0:
            raise UsageError(f"--lambda must be >= 0, got {self.lambda_}")
        if self.budget_percentile is not None and not 0 < self.budget_percentile < 100:
            raise UsageError(f"--latency-budget {self.budget_percentile:g}% must be a percentile between 0 and 100")
        if self.budget_percentile is not None and (self.latency_budget is not None or self.lambda_ is not None):
            raise UsageError("--latency-budget P% is an alternative to --latency-budget MS and --lambda")
        if self.latency_budget is not None and self.latency_budget <= 0:
            raise UsageError(f"--latency-budget must be a positive number of ms, got {self.latency_budget}")
        if self.image_size is not None and self.image_size < 8:
            raise UsageError(f"--image-size must be >= 8, got {self.image_size}")
        if self.method is not None and self.method not in METHODS:
            raise UsageError(f"unknown --method '{self.method}'; known: {', '.join(METHODS)}")
        if self.search_method == "evolution" and self.latency_budget is None and self.budget_percentile is None:
            raise UsageError("--method evolution searches a latency band: give --latency-budget MS or P% "
                             "(--method paper reads the network off the thresholds, with --lambda or a budget)")
        if not 0 < self.budget_floor <= 1:
            raise UsageError(f"--budget-floor must be in (0, 1], got {self.budget_floor}")
        if self.evaluations < 1:
            raise UsageError(f"--evaluations must be >= 1, got {self.evaluations}")
        if not 0 < self.dropout_keep <= 1:
            raise UsageError(f"indicator keep probability must be in (0, 1], got {self.dropout_keep}")


# ---------------------------------------------------------------------------------------------
# lambda: fixed, or steered to a latency budget.

class LambdaController:
    """The latency weight of the loss at each step.

    - Warm-up steps: 0.
    - Fixed (``--lambda L``): ``L`` afterwards.
    - Budget (``--latency-budget B``): ``lambda = lambda0 * exp(u)``. After every ``every``
      latency-phase steps, ``u += gain * clip(ln(H / B) / 0.05, -1, 1)``, ``H`` the latency of
      the current *hard* decisions: over budget lambda grows, under it lambda shrinks, by up to
      ``exp(gain)`` per update (full speed once 5 % off). ``u`` is kept in [-12, 2]: lambda
      between ``lambda0 * 6e-6`` and ``lambda0 * 7.4``. A fast, almost bang-bang controller:
      with the default threshold optimizer lambda acts on the decisions through the sign of
      each trade-off (``lambda * dR/R`` against ``dCE``), not through the size of the steps,
      so what matters is how soon lambda crosses those balance points.
    """

    U_MIN, U_MAX = -12.0, 2.0

    def __init__(self, lam: float, budget: float | None, gain: float = 0.2, every: int = 1):
        self.lam0 = lam
        self.budget = budget
        self.gain = gain
        self.every = max(1, every)
        self.u = 0.0

    def value(self, in_warmup: bool) -> float:
        if in_warmup:
            return 0.0
        return self.lam0 * math.exp(self.u) if self.budget is not None else self.lam0

    def update(self, step_in_phase: int, hard_ms: float) -> None:
        """Called after every latency-phase step with the hard latency of the decisions."""
        if self.budget is None or step_in_phase % self.every:
            return
        error = max(-1.0, min(1.0, math.log(max(hard_ms, 1e-9) / self.budget) / 0.05))
        self.u = min(self.U_MAX, max(self.U_MIN, self.u + self.gain * error))

    def state_dict(self) -> dict[str, float]:
        return {"u": self.u}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.u = float(state["u"])


# ---------------------------------------------------------------------------------------------
# What the history records about the supernet.

@torch.no_grad()
def superkernel_spread(supernet) -> list[dict[str, Any]]:
    """Per searched layer: the L2 norm of each kernel position (over all channels), of each
    kernel shell (the inner kernel and each outer ring) and of each channel group (paper Fig. 6)."""
    out = []
    for block in supernet.searched_blocks():
        dw = block.conv_dw
        w = dw.weight.detach().float().cpu()
        starts = (0,) + tuple(dw.group_ends[:-1])
        out.append({
            "index": block.index,
            "name": block.name,
            "positions": w[:, 0].pow(2).sum(0).sqrt().tolist(),
            "shells": {f"k{k}": float(torch.linalg.vector_norm(w * shell.cpu()))
                       for k, shell in zip(dw.kernels, dw.shells)},
            "groups": {f"e{e}": float(torch.linalg.vector_norm(w[lo:hi]))
                       for e, lo, hi in zip(dw.expansions, starts, dw.group_ends)},
        })
    return out


def _norms(report: list[dict]) -> dict[str, dict[str, list[float]]]:
    return {str(r["index"]): {n: [round(d["norm"], 5), round(d["threshold"], 5)] for n, d in r["decisions"].items()}
            for r in report}


# ---------------------------------------------------------------------------------------------
# The run.

@dataclass
class SearchResult:
    network: Network
    text: str  # arch.spnas
    latency_ms: float
    accuracy: float
    out_dir: Path
    lambda_final: float
    budget_fit: BudgetFit | None = None
    selection: Any = None  # selection.SelectionResult with --method evolution


def default_out_dir(space_path: str, target: str) -> Path:
    stem = Path(space_path).stem
    safe_target = "".join(c if c.isalnum() or c in "-_." else "_" for c in target.replace(".json", ""))
    return Path("runs") / f"{stem}-{Path(safe_target).name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def load_resume(out_dir: str | Path) -> tuple[SearchConfig, dict]:
    """The saved config and state of the run in ``out_dir`` (for ``--resume``)."""
    state = _load_state(Path(out_dir))
    return SearchConfig.from_dict(state["config"]), state


def _load_state(out: Path) -> dict:
    if not out.is_dir():
        raise CheckpointError(f"--resume: {out} is not a folder")
    from spnas_dsl.training.checkpoint import load_checkpoint

    state = load_checkpoint(out / CHECKPOINT)
    if "config" not in state or "step" not in state:
        raise CheckpointError(f"{out / CHECKPOINT} is not a search checkpoint")
    return state


def run_search(cfg: SearchConfig, out_dir: str | Path | None = None, resume: dict | None = None,
               quiet: bool = False, force: bool = False) -> SearchResult | None:
    """Run (or, with ``resume`` = a loaded checkpoint, continue) a search; rank 0 returns the result.

    A new search needs ``out_dir`` new or empty; ``force`` removes a previous run's files there
    (:mod:`spnas_dsl.training.rundir`)."""
    from spnas_dsl import training
    from spnas_dsl.compiler.supernet import lower_to_supernet
    from spnas_dsl.data import Batches, open_dataset
    from spnas_dsl.latency.graph import LatencyGraph
    from spnas_dsl.parser import parse_text
    from spnas_dsl.printer import format_network
    from spnas_dsl.shapes import summarize
    from spnas_dsl.targets import load_target
    from spnas_dsl.training import rundir
    from spnas_dsl.training.distributed import any_rank, broadcast_object

    cfg.check()
    if resume is None and out_dir is not None:
        rundir.check_out(out_dir, "search", force=force)  # refuse before any work, on every rank
    info = training.setup(cfg.device)
    try:
        # -- the space, its latency model, the data --------------------------------------------
        space = parse_text(cfg.space_text, cfg.space)
        if not any(layer.is_searched for _, _, layer in space.iter_layers()):
            raise UsageError(f"{cfg.space}: '{space.name}' is a concrete network, not a search space: nothing to search")
        target = load_target(cfg.target)
        graph = LatencyGraph.build(space, target)  # TargetError when the table cannot price the space
        min_ms, max_ms = graph.min_ms(), graph.max_ms()
        budget = cfg.latency_budget
        if cfg.budget_percentile is not None:  # resolved on this table (deterministic: resume gets the same)
            from spnas_dsl.budget import latency_percentile

            budget = latency_percentile(space, graph, cfg.budget_percentile)
        if budget is not None and budget < min_ms - 1e-9:
            raise UsageError(f"--latency-budget {budget:g} ms is below the fastest network of "
                             f"'{space.name}' on {target.name} ({min_ms:.2f} ms); the space spans {min_ms:.2f} .. {max_ms:.2f} ms")
        if cfg.image_size is None and space.input.height != space.input.width:
            raise UsageError(f"the space's input is {space.input} (not square): pass --image-size")
        image_size = cfg.image_size or space.input.height
        from spnas_dsl.proxy import coverage_message, kernel_decision_coverage

        coverage = kernel_decision_coverage(space, image_size)  # decisions the data cannot inform at this size
        if cfg.batch_size % info.world_size:
            raise UsageError(f"--batch-size {cfg.batch_size} is not divisible by the {info.world_size} processes")
        per_rank_batch = cfg.batch_size // info.world_size
        data = open_dataset(cfg.data, image_size, space.input.channels, data_dir=cfg.data_dir, subset=cfg.subset,
                            val_subset=cfg.val_subset, val_fraction=cfg.val_fraction, num_classes=space.classes,
                            seed=cfg.seed)

        # channels-last: depthwise convolutions are ~3x faster on CPU (oneDNN) in this layout
        memory_format = torch.channels_last if info.device.type == "cpu" else None

        def train_batches(epoch: int, start: int = 0) -> Batches:
            return Batches(data.train, per_rank_batch, shuffle=True, seed=cfg.seed, epoch=epoch, rank=info.rank,
                           world=info.world_size, drop_last=True, start_batch=start, num_workers=cfg.workers,
                           device=info.device, memory_format=memory_format)

        steps_per_epoch = len(train_batches(0))
        if steps_per_epoch == 0:
            raise UsageError(f"--batch-size {cfg.batch_size} is larger than the {len(data.train)} training images")
        total_steps = steps_per_epoch * cfg.epochs
        warmup_steps = round(cfg.warmup * steps_per_epoch)

        # -- the supernet, one optimizer over weights and thresholds ---------------------------
        training.seed_everything(cfg.seed)  # same on every rank: same init, same indicator dropout
        # A data set with fewer classes than the space declares (Fashion-MNIST for an ImageNet space)
        # trains a classifier sized for the data: a proxy like the image size; the head's latency
        # and the written network keep the declared classes.
        train_space = space if data.num_classes == space.classes else space.model_copy(
            update={"classes": data.num_classes})
        supernet = lower_to_supernet(train_space, latency_graph=graph).to(info.device)
        if memory_format is not None:
            supernet = supernet.to(memory_format=memory_format)
        model: torch.nn.Module = supernet
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(supernet, device_ids=[info.device.index] if info.device.type == "cuda" else None)
        official = cfg.threshold_travel is None
        recipe = training.Recipe(optimizer=cfg.optimizer, batch_size=cfg.batch_size, lr=cfg.lr,
                                 weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing,
                                 threshold_eps=None if official else 1e-8, threshold_momentum=None if official else 0.0)
        thresholds = {id(p) for p in supernet.threshold_parameters()}
        optimizer = training.build_optimizer(supernet, recipe, threshold_ids=thresholds)
        scheduler = training.build_scheduler(optimizer, recipe, steps_per_epoch, cfg.epochs)
        criterion = training.loss_function(recipe)
        controller = LambdaController(cfg.lambda_value, budget, cfg.control_gain, cfg.control_every)

        step = 0
        history: dict[str, list] = {"steps": [], "epochs": [], "init": {}}
        if resume is not None:
            try:
                supernet.load_state_dict(resume["model"])
                optimizer.load_state_dict(resume["optimizer"])
                scheduler.load_state_dict(resume["scheduler"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(f"the checkpoint does not match this search: {str(exc).splitlines()[0]}") from None
            controller.load_state_dict(resume["controller"])
            training.restore_rng_state(resume["rng"])
            step = int(resume["step"])
            history = resume["history"]
        else:
            history["init"] = {"spread": superkernel_spread(supernet), "report": supernet.decision_report()}

        # -- output folder (rank 0 writes) ------------------------------------------------------
        out = Path(out_dir) if out_dir is not None else default_out_dir(cfg.space, cfg.target)
        out = Path(broadcast_object(str(out), info))
        writer = None
        if info.is_main:
            rundir.claim(out, rundir.SEARCH_OUTPUTS, "search", force=force, resume=resume is not None)
            writer = tensorboard_writer(str(out / "tensorboard"), purge_step=step if resume is not None else None)

        def save(epoch_done: bool) -> None:
            nonlocal sums
            # The sums of the history record in progress go into the checkpoint (over all ranks, on
            # rank 0), so that a resumed run's next record covers the same steps as the uninterrupted one.
            total = training.all_reduce_sum(sums, info)
            sums = total if info.is_main else [0.0, 0.0, 0.0]
            if not info.is_main:
                return
            training.save_checkpoint(out / CHECKPOINT, {
                "model": supernet.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "controller": controller.state_dict(),
                "rng": training.capture_rng_state(), "step": step, "epoch_done": epoch_done,
                "history": history, "config": cfg.to_dict(), "record_sums": sums,
                "seconds": seconds_before + time.monotonic() - start_time,
            })

        def write_json(result: dict | None = None) -> None:
            if info.is_main:
                atomic_write_text(out / "search.json", json.dumps({
                    "config": cfg.to_dict() | {"space_text": None}, "space": space.name, "target": target.name,
                    "data": data.description, "image_size": image_size, "declared_input": str(space.input),
                    "steps_per_epoch": steps_per_epoch, "warmup_steps": warmup_steps, "total_steps": total_steps,
                    "latency_range_ms": [min_ms, max_ms], "recipe": recipe.to_dict(), "world_size": info.world_size,
                    "kernel_decisions_not_informed": [c.to_dict() for c in coverage],
                    "history": history, "result": result,
                }, indent=1))

        say = (lambda msg: print(msg, flush=True)) if info.is_main else (lambda msg: None)
        sizes = summarize(space)
        say(f"search: {cfg.space} ('{space.name}', {sizes.architectures:.4g} networks) on {target.name} "
            f"({min_ms:.2f} .. {max_ms:.2f} ms)")
        say(f"data: {data.description}")
        say(f"{cfg.epochs} epochs x {steps_per_epoch} steps (warm-up {warmup_steps} steps), batch {cfg.batch_size}"
            f"{f' ({per_rank_batch} per process x {info.world_size})' if info.enabled else ''}, {recipe.optimizer} "
            f"lr {recipe.base_lr:g}, " + (f"latency budget {budget:.4g} ms" if budget is not None
                                          else f"lambda {cfg.lambda_value:g}") + f", device {info.device}; output: {out}")
        if coverage:
            say(coverage_message(space, image_size, coverage))
        if resume is not None:
            say(f"resuming at step {step} of {total_steps}")

        # -- the loop -----------------------------------------------------------------------------
        progress = training.Progress(total_steps, initial=step, quiet=quiet, enabled=info.is_main,
                                     log_every=cfg.log_every)
        nan_step = int(os.environ.get("SPNAS_TEST_NAN_AT_STEP", "-1"))  # test hooks (steps count from 1)
        exit_step = int(os.environ.get("SPNAS_TEST_EXIT_AFTER_STEP", "-1"))
        last_good = step
        threshold_lr = None if official else cfg.threshold_travel / max(total_steps - warmup_steps, 1)
        set_threshold_lr(optimizer, threshold_lr, step < warmup_steps)
        model.train()
        sums = [0.0, 0.0, 0.0]  # CE sum, correct, images since the last record
        seconds_before = 0.0  # run time before a resume
        if resume is not None and info.is_main:
            sums = [float(v) for v in resume.get("record_sums", sums)]
        if resume is not None:
            seconds_before = float(resume.get("seconds", 0.0))
        start_time = time.monotonic()
        for epoch in range(step // steps_per_epoch, cfg.epochs):
            progress.set_epoch(epoch, cfg.epochs, "warm-up" if epoch * steps_per_epoch < warmup_steps else "")
            for x, y in train_batches(epoch, step - epoch * steps_per_epoch):
                in_warmup = step < warmup_steps
                if step == warmup_steps and step % steps_per_epoch:
                    progress.set_epoch(epoch, cfg.epochs)  # the latency phase starts mid-epoch
                supernet.set_indicator_dropout(1 - cfg.dropout_keep if in_warmup else 0.0)
                lam = controller.value(in_warmup)
                out_ = model(x)
                ce = criterion(out_.logits, y)
                loss = ce + lam * LATENCY_LOSS_SCALE * torch.log(out_.latency_ms) if lam > 0 else ce
                if step + 1 == nan_step:
                    loss = loss * float("nan")
                if any_rank(not bool(torch.isfinite(loss)), info):
                    raise SearchDiverged(
                        f"the loss became {float(loss.detach())} at step {step + 1} (epoch {epoch + 1}); stopped. The last good "
                        f"checkpoint (step {last_good}) is kept in {out}; try a lower --lr (now {recipe.base_lr:g})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                set_threshold_lr(optimizer, threshold_lr, step < warmup_steps)
                ce_value, relaxed = float(ce.detach()), float(out_.latency_ms.detach())
                sums[0] += ce_value * len(y)
                sums[1] += float((out_.logits.detach().argmax(1) == y).sum())
                sums[2] += len(y)
                if not in_warmup and controller.budget is not None and (step - warmup_steps) % controller.every == 0:
                    controller.update(step - warmup_steps, supernet.latency_ms())  # hard latency of the decisions
                progress.update(ce=ce_value, acc=sums[1] / max(sums[2], 1), lat=relaxed, lam=lam)
                if step % cfg.log_every == 0 or step == total_steps:
                    ce_sum, correct, seen = training.all_reduce_sum(sums, info)
                    sums = [0.0, 0.0, 0.0]
                    record = {
                        "step": step, "epoch": step / steps_per_epoch, "ce": ce_sum / max(seen, 1),
                        "acc": correct / max(seen, 1), "latency_relaxed": relaxed,
                        "latency_ms": supernet.latency_ms(), "lambda": lam,
                        "lr": scheduler.get_last_lr()[0], "warmup": in_warmup,
                        "decisions": {str(i): str(o) for i, o in supernet.decisions().items()},
                        "norms": _norms(supernet.decision_report()),
                    }
                    history["steps"].append(record)
                    if writer is not None:
                        for key in ("ce", "acc", "latency_relaxed", "latency_ms", "lambda", "lr"):
                            writer.add_scalar(f"search/{key}", record[key], step)
                if step % cfg.checkpoint_every == 0 and step % steps_per_epoch:
                    save(False)
                    last_good = step
                if step == exit_step:
                    progress.close()
                    os._exit(99)  # test hook: die like a killed process, right after this step
            # -- end of epoch: held-out accuracy of the supernet at its current decisions --------
            acc, val_ce = evaluate_supernet(supernet, data, cfg, info, per_rank_batch, epoch)
            decisions = supernet.decisions()
            hard = supernet.latency_ms()
            history["epochs"].append({
                "epoch": epoch + 1, "step": step, "val_acc": acc, "val_ce": val_ce, "latency_ms": hard,
                "lambda": controller.value(step <= warmup_steps), "lr": scheduler.get_last_lr()[0],
                "decisions": {str(i): str(o) for i, o in decisions.items()},
                "report": supernet.decision_report(), "spread": superkernel_spread(supernet),
                "seconds": seconds_before + time.monotonic() - start_time,
            })
            if writer is not None:
                writer.add_scalar("epoch/val_acc", acc, step)
                writer.add_scalar("epoch/val_ce", val_ce, step)
                writer.add_scalar("epoch/latency_ms", hard, step)
            progress.log(f"epoch {epoch + 1}/{cfg.epochs}: held-out acc {acc:.2%}, CE {val_ce:.3f}, "
                         f"latency {hard:.2f} ms, lambda {controller.value(step <= warmup_steps):.3g}: "
                         + " ".join(str(decisions[i]) for i in sorted(decisions)))
            save(True)
            last_good = step
            write_json()
        progress.close()

        # -- the result -----------------------------------------------------------------------------
        answer = supernet.decisions()  # the thresholds' answer (the paper's network)
        report = supernet.decision_report()
        accuracy = history["epochs"][-1]["val_acc"] if history["epochs"] else float("nan")
        fit: BudgetFit | None = None
        decisions = answer
        if budget is not None:
            fit = fit_to_budget(space, graph, answer, report, budget, cfg.budget_floor)
            decisions = fit.decisions
        selection = None
        if cfg.search_method == "evolution":
            from spnas_dsl.selection import select_in_band

            band = (fit.floor_ms, fit.budget) if fit is not None and fit.in_band else None
            selection = select_in_band(supernet, space, graph, data, info, per_rank_batch, decisions, band,
                                       floor=cfg.budget_floor, evaluations=cfg.evaluations,
                                       selection_images=cfg.selection_images, bn_batches=BN_RECALIBRATION_BATCHES,
                                       seed=cfg.seed, log=progress.log)
            decisions = selection.best.decisions
            accuracy = selection.best.accuracy
        elif decisions != answer:  # the fitted network's accuracy with the supernet's weights (no fine-tuning)
            supernet.select(decisions)
            accuracy, _ = evaluate_supernet(supernet, data, cfg, info, per_rank_batch, cfg.epochs)
        derived = network_of(space, decisions)
        derived = derived.model_copy(update={"comments": _body_comments(space)})
        latency = graph.predict(derived)
        lam_final = controller.value(False)
        header = _header(cfg, space, target, data.description, image_size, latency, min_ms, max_ms, accuracy,
                         lam_final, fit, selection, sizes.architectures, data.num_classes, coverage)
        text = format_network(derived, header=header)
        if parse_text(text, "arch.spnas") != derived:  # the written file must mean the derived network
            raise SpnasError("internal error: the derived network does not print back to itself")
        result = {"arch": text, "latency_ms": latency, "accuracy": accuracy, "lambda_final": lam_final,
                  "decisions": {str(i): str(o) for i, o in decisions.items()},
                  "method": cfg.search_method,
                  "thresholds_answer": {str(i): str(o) for i, o in answer.items()},
                  "budget_fit": None if fit is None else {
                      "in_band": fit.in_band, "band_ms": [fit.floor_ms, fit.budget], "latency_ms": fit.latency_ms,
                      "note": fit.note, "moves": [asdict(m) for m in fit.moves],
                      "decisions": {str(i): str(o) for i, o in fit.decisions.items()}},
                  "selection": None if selection is None else selection.to_dict(),
                  "seconds": seconds_before + time.monotonic() - start_time}
        if info.is_main:
            write_json(result)
            from spnas_dsl.search_plots import make_plots

            make_plots(json.loads((out / "search.json").read_text()), out)
            atomic_write_text(out / "arch.spnas", text)  # last: only a finished search has one
            writer.close()
        return SearchResult(derived, text, latency, accuracy, out, lam_final, fit, selection) if info.is_main else None
    finally:
        training.teardown()


def set_threshold_lr(optimizer, lr: float | None, warmup: bool) -> None:
    """The thresholds' learning rate for the next step (default threshold optimizer).

    In the warm-up, 0: its normalised steps would random-walk the thresholds on the noisy CE
    gradients (with the official settings they hardly move anyway), so the latency phase starts
    from the largest network, as the paper's does. Then the constant ``lr``. ``lr=None``
    (``--official-thresholds``): the weights' schedule, untouched. Call after
    ``scheduler.step()``, which resets every group's lr from the schedule.
    """
    if lr is None:
        return
    for group in optimizer.param_groups:
        if group.get("name") == "thresholds":
            group["lr"] = 0.0 if warmup else lr


def evaluate_supernet(supernet, data, cfg: SearchConfig, info, batch: int, epoch: int) -> tuple[float, float]:
    """(accuracy, CE) on the held-out split of the supernet at its current hard decisions.

    Evaluated on a copy whose BatchNorm statistics are recomputed for those decisions from
    ``BN_RECALIBRATION_BATCHES`` training batches (the running statistics of the supernet mix
    every sub-network it trained, with indicator dropout, and lag in short runs). The supernet
    itself is not changed, nor the random state, so evaluating does not alter the search.
    """
    import copy

    from spnas_dsl import training
    from spnas_dsl.data import Batches

    probe = copy.deepcopy(supernet)
    probe.set_indicator_dropout(0.0)
    fmt = torch.channels_last if info.device.type == "cpu" else None
    calib = Batches(data.train, batch, shuffle=True, seed=cfg.seed + 1, epoch=epoch, rank=info.rank,
                    world=info.world_size, drop_last=True, num_workers=cfg.workers, device=info.device,
                    memory_format=fmt)
    training.recalibrate_batchnorm(probe, calib, BN_RECALIBRATION_BATCHES)
    val = Batches(data.val, batch, rank=info.rank, world=info.world_size, num_workers=cfg.workers, device=info.device,
                  memory_format=fmt)
    acc, ce, _ = training.evaluate(probe, val, info, logits_of=lambda o: o.logits)
    return acc, ce


def tensorboard_writer(log_dir: str, purge_step: int | None = None):
    """A ``torch.utils.tensorboard.SummaryWriter`` that does not import TensorFlow.

    TensorBoard uses TensorFlow for file I/O when it is installed (it is, for the TFLite
    exporter): seconds of start-up and a GB of memory per process. Registering the
    ``tensorboard.compat.notf`` marker module makes it use its own pure-Python stub.
    """
    import sys
    import types

    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir, purge_step=purge_step)


def _body_comments(space: Network):
    """The space's comments inside the network body (its file header describes the space, not the result)."""
    first = space.span.line if space.span else 0
    return tuple(c for c in space.comments if c.line > first)


def _header(cfg: SearchConfig, space: Network, target, data_desc: str, image_size: int, latency: float,
            min_ms: float, max_ms: float, accuracy: float, lam: float, fit: BudgetFit | None, selection,
            architectures: int, num_classes: int, coverage: list) -> list[str]:
    declared = f"{space.input.height}x{space.input.width}"
    proxy = (f"{image_size}x{image_size} (proxy: trained at this size, latency priced at the declared "
             f"{space.input})") if image_size != space.input.height or image_size != space.input.width else \
        f"{declared} (the declared input)"
    if fit is not None:
        asked = f" (the {cfg.budget_percentile:g}th percentile of the space)" if cfg.budget_percentile is not None else ""
        how = (f"lambda steered after the warm-up, final {lam:.4g}" if cfg.warmup < cfg.epochs else
               "no latency phase: the band is searched after training")
        steer = f"latency budget: {fit.budget:.4g} ms{asked} ({how})"
    else:
        steer = f"lambda: {lam:g} (loss = CE + lambda * 1000 * ln(latency_ms))"
    lines = [
        f"Found by spnasc search (Single-Path NAS) in '{space.name}' ({cfg.space}, {architectures:.4g} networks)",
        f"target: {target.name} ({target.spec.what})",
        f"predicted latency: {_ms(latency)} ms on {target.name} (space: {_ms(min_ms)} .. {_ms(max_ms)} ms)",
        steer,
    ]
    if fit is not None:
        lines.append(fit.describe())
    if selection is not None:
        lines.append(f"method: evolution ({len(selection.scored)} networks in the band scored by the supernet's "
                     f"held-out accuracy with inherited weights; the search started from one that scored "
                     f"{selection.answer.accuracy:.2%})")
    else:
        lines.append("method: paper (the thresholds' decisions)")
    lines += [
        f"seed: {cfg.seed}",
        f"data: {data_desc}" + (f" (classifier trained for its {num_classes} classes; the network keeps "
                                f"the declared {space.classes})" if num_classes != space.classes else ""),
        f"image size: {proxy}",
    ]
    if coverage:
        un = [f"{c.index}:{c.decision}" for c in coverage if c.level == "uninformed"]
        part = [f"{c.index}:{c.decision}" for c in coverage if c.level == "partial"]
        lines.append("kernel decisions not informed by the data at this size: "
                     + (f"uninformed {' '.join(un)}" if un else "") + ("; " if un and part else "")
                     + (f"partial {' '.join(part)}" if part else ""))
    lines += [
        (f"epochs: {cfg.epochs} ({cfg.warmup:g} warm-up with lambda 0 and indicator keep probability "
         f"{cfg.dropout_keep:g}), batch {cfg.batch_size}, {cfg.optimizer}"),
        f"held-out accuracy of the supernet: {accuracy:.2%} (at this network: inherited weights, no fine-tuning)",
    ]
    return lines


def _ms(value: float) -> str:
    """A latency with 2 decimals, or 4 significant digits below 10 ms (host tables are fractions of a ms)."""
    return f"{value:.2f}" if value >= 10 else f"{value:.4g}"
