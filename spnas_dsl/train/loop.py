"""``spnasc train``: train one concrete network, from scratch or from a search's supernet.

The run, in order (see docs/train.md; the shape is the one of ``spnasc search``,
:mod:`spnas_dsl.search.loop`):

1. **Set up, checking everything before writing anything** (:func:`spnas_dsl.train.prepare.prepare`):
   the arch is a concrete network, the data set opens, ``--init-from`` / ``--resume``
   checkpoints load safely and match. The model: ``lower_to_network(arch)``, freshly
   initialised, or ``extract(supernet, arch)`` with the weights of a search's supernet
   (``--init-from SEARCH_DIR``), or the state of a checkpoint (``--resume DIR``). Only then is
   the output folder claimed, so a bad command leaves nothing behind.
2. **Recipe** (``spnas_dsl.training.recipe``): MnasNet's by default (TF-style RMSProp, decay
   0.9, momentum 0.9, eps 1e-3; lr 0.016 * batch / 256, x0.97 every 2.4 epochs; label
   smoothing 0.1; weight decay 1e-5 except BN / biases), or SGD + cosine.
3. **The loop** (:meth:`Run.fit`): shuffled batches from ``spnas_dsl.data.Batches`` (a pure
   function of the seed and epoch, so a resumed run sees the same batches), per-step lr
   schedule; after every epoch the BN statistics are re-estimated on ``bn_recalibrate``
   training images ("precise BN", :func:`spnas_dsl.training.precise_bn`) and top-1/top-5
   measured on the held-out split; TensorBoard scalars; an atomic checkpoint at every epoch
   end (and every ``checkpoint_minutes`` of wall time).
4. **Outputs** (rank 0, each written atomically): ``model.safetensors`` (the state dict, BN
   buffers included, the canonical arch in its metadata), ``arch.spnas`` (canonical text),
   ``metrics.json`` (written last: its presence means the run finished).

Data parallel: under ``torchrun`` or ``--nproc N`` (``spnas_dsl.training.distributed``) the
model is wrapped in ``DistributedDataParallel``; ``--batch-size`` is the *global* batch
(split over the processes, so the lr scaling and the results do not depend on N).
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spnas_dsl import training
from spnas_dsl.backends.weights import save_weights
from spnas_dsl.data import Batches
from spnas_dsl.errors import CheckpointError, UsageError
from spnas_dsl.io import atomic_write_text
from spnas_dsl.parser import load
from spnas_dsl.printer import format_network
from spnas_dsl.shapes import summarize
from spnas_dsl.train.prepare import Prepared, prepare
from spnas_dsl.train.settings import (
    ARCH,
    CHECKPOINT_KIND,
    CHECKPOINT_VERSION,
    METRICS,
    TENSORBOARD,
    WEIGHTS,
    TrainResult,
)
from spnas_dsl.training import CHECKPOINT, NO_HOOKS, Hooks, rundir
from spnas_dsl.training.distributed import DistInfo, any_rank, broadcast_object
from spnas_dsl.training.hooks import diverged


class Run:
    """One training run: the state that checkpoints save and the steps between them."""

    def __init__(self, prepared: Prepared, info: DistInfo, hooks: Hooks = NO_HOOKS):
        self.p = prepared
        self.s = prepared.settings
        self.info = info
        self.hooks = hooks
        self.recipe = self.s.recipe()
        if self.s.batch_size % info.world_size:
            raise UsageError(f"--batch-size {self.s.batch_size} is not divisible by the {info.world_size} processes")
        self.local_batch = self.s.batch_size // info.world_size
        self.steps_per_epoch = len(self.train_batches(0))
        if self.steps_per_epoch == 0:
            raise UsageError(f"--batch-size {self.s.batch_size} is larger than the training split "
                             f"({len(prepared.data.train)} images); use a smaller batch")
        self.total_steps = self.steps_per_epoch * self.s.epochs
        self.model = prepared.model.to(info.device)
        self.net = self.model
        if info.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
        self.optimizer = training.build_optimizer(self.model, self.recipe)
        self.scheduler = training.build_scheduler(self.optimizer, self.recipe, self.steps_per_epoch, self.s.epochs)
        self.criterion = training.loss_function(self.recipe)
        self.step = 0
        self.history: list[dict] = []
        self.wall_before = 0.0  # seconds spent in earlier sessions of this run
        self.started = time.monotonic()
        self.resumed_at: list[int] = []
        self.last_saved: int | None = None  # the step of the last checkpoint written
        # This epoch's running train loss sum, correct, images (None between epochs). Saved in
        # mid-epoch checkpoints on one process (under DDP they are per rank: not saved).
        self.epoch_sums: list[float] | None = None
        if prepared.resume_state is not None:
            self.restore(prepared.resume_state)

    # -- data ---------------------------------------------------------------------------
    def train_batches(self, epoch: int, start_batch: int = 0) -> Batches:
        return Batches(self.p.data.train, self.local_batch, shuffle=True, seed=self.s.seed, epoch=epoch,
                       rank=self.info.rank, world=self.info.world_size, drop_last=True, start_batch=start_batch,
                       num_workers=self.s.workers, device=self.info.device)

    def recalibration_batches(self, epoch: int) -> Batches:
        """The same training images on every rank (so the statistics agree without communication)."""
        return Batches(self.p.data.train, self.local_batch, shuffle=True, seed=self.s.seed + 7717, epoch=epoch,
                       num_workers=self.s.workers, device=self.info.device)

    def val_batches(self) -> Batches:
        return Batches(self.p.data.val, self.local_batch, rank=self.info.rank, world=self.info.world_size,
                       num_workers=self.s.workers, device=self.info.device)

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Held-out top-1/top-5 and loss, after re-estimating the BN statistics (``bn_recalibrate``)."""
        if self.s.bn_recalibrate > 0:
            training.precise_bn(self.model, self.recalibration_batches(epoch), self.s.bn_recalibrate)
        else:
            training.sync_buffers(self.model, self.info)
        return training.evaluate(self.model, self.val_batches(), self.info)

    def wall_s(self) -> float:
        return self.wall_before + time.monotonic() - self.started

    # -- checkpoints -----------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION,
            "arch": format_network(self.p.arch), "settings": asdict(self.s),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step,
            "steps_per_epoch": self.steps_per_epoch, "history": self.history,
            "rng": training.capture_rng_state(), "wall_time_s": self.wall_s(), "resumed_at": self.resumed_at,
            "epoch_sums": None if self.info.enabled else self.epoch_sums,
        }

    def restore(self, state: dict) -> None:
        where = str(self.p.out_dir / CHECKPOINT)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{where}: the optimizer state does not fit this network: {exc}") from None
        if state.get("steps_per_epoch", self.steps_per_epoch) != self.steps_per_epoch:
            raise CheckpointError(f"{where}: the run had {state['steps_per_epoch']} steps per epoch, now "
                                  f"{self.steps_per_epoch} (data or batch size changed)")
        self.step = int(state["step"])
        self.last_saved = self.step
        self.scheduler.last_epoch = self.step  # the per-step schedule continues where it stopped
        self.history = list(state["history"])
        self.wall_before = float(state["wall_time_s"])
        self.resumed_at = list(state.get("resumed_at", [])) + [self.step]
        sums = state.get("epoch_sums")
        if sums is not None and not self.info.enabled:
            self.epoch_sums = [float(v) for v in sums]
        if "rng" in state and not self.info.enabled:
            training.restore_rng_state(state["rng"])  # exact continuation (dropout) on one process

    def save_checkpoint(self) -> None:
        if self.info.is_main:
            training.save_checkpoint(self.p.out_dir / CHECKPOINT, self.state())
        self.last_saved = self.step

    # -- the run ----------------------------------------------------------------------------
    def fit(self) -> dict:
        """Claim the output folder, train to the last epoch, return the final metrics."""
        s, info = self.s, self.info
        if info.enabled:  # per-rank dropout noise; rank 0's RNG is restored exactly only on one process
            torch.manual_seed(s.seed + 1000 * info.rank + self.step)
        progress = training.Progress(self.total_steps, initial=self.step, quiet=s.quiet, enabled=info.is_main)
        writer = None
        if info.is_main:
            rundir.claim(self.p.out_dir, rundir.TRAIN_OUTPUTS, "train", force=self.p.force,
                         resume=self.p.resume_state is not None, log=progress.log)
            writer = training.tensorboard_writer(self.p.out_dir / TENSORBOARD, purge_step=self.step or None)
        progress.log(f"training '{self.p.arch.name}' on {self.p.data.description}")
        progress.log(f"{s.epochs} epochs x {self.steps_per_epoch} steps, global batch {s.batch_size}"
                     f"{f' ({info.world_size} processes)' if info.enabled else ''}, {s.optimizer} lr "
                     f"{self.recipe.base_lr:.4g} ({self.recipe.schedule}), device {info.device}; output {self.p.out_dir}")
        if self.resumed_at:
            progress.log(f"resumed at step {self.step} (epoch {self.step // self.steps_per_epoch + 1})")
        self.started = time.monotonic()
        self.net.train()
        try:
            while self.step < self.total_steps:
                self.train_epoch(progress, writer)
        finally:
            progress.close()
            if writer is not None:
                writer.close()
        return self.final_metrics()

    def train_epoch(self, progress: training.Progress, writer) -> None:
        """The rest of the current epoch, its held-out evaluation and its checkpoint."""
        s, info = self.s, self.info
        epoch, batch = divmod(self.step, self.steps_per_epoch)
        progress.set_epoch(epoch, s.epochs)
        restored = bool(batch) and self.epoch_sums is not None  # a resumed partial epoch's figures continue
        if not restored:
            self.epoch_sums = [0.0, 0.0, 0.0]
        sums = self.epoch_sums
        epoch_start = last_save = time.monotonic()
        for x, y in self.train_batches(epoch, start_batch=batch):
            logits = self.net(x)
            loss = self.hooks.on_loss(self.step + 1, self.criterion(logits, y))
            value = loss.item()
            if any_rank(not math.isfinite(value), info):
                raise diverged(value, self.step + 1, epoch + 1, self.last_saved, self.p.out_dir, self.recipe.base_lr)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            sums[0] += value * len(y)
            sums[1] += float((logits.detach().argmax(1) == y).sum())
            sums[2] += len(y)
            lr = self.optimizer.param_groups[0]["lr"]
            progress.update(loss=value, acc=sums[1] / sums[2], lr=lr)
            if writer is not None and (self.step % 10 == 0 or self.step == self.total_steps):
                writer.add_scalar("train/loss", value, self.step)
                writer.add_scalar("train/lr", lr, self.step)
            now = time.monotonic()
            if s.checkpoint_minutes > 0 and now - last_save > 60 * s.checkpoint_minutes and self.step % self.steps_per_epoch:
                self.save_checkpoint()
                last_save = now
            self.hooks.on_step_done(self.step)
        loss_sum, correct, seen = training.all_reduce_sum(sums, info)
        self.epoch_sums = None
        val = self.evaluate(epoch)
        entry = {
            "epoch": epoch + 1, "step": self.step,
            "train_loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1),
            "val_top1": val["top1"], "val_top5": val["top5"], "val_loss": val["loss"],
            "lr": self.optimizer.param_groups[0]["lr"], "epoch_time_s": time.monotonic() - epoch_start,
        }
        if batch and not restored:  # a resumed partial epoch: the train figures cover its last part only
            entry["resumed_at_batch"] = batch
        self.history.append(entry)
        progress.log(f"epoch {epoch + 1}/{s.epochs}: train loss {entry['train_loss']:.4f} "
                     f"top-1 {entry['train_top1']:.2%} | held-out top-1 {val['top1']:.2%} "
                     f"top-5 {val['top5']:.2%} loss {val['loss']:.4f} ({entry['epoch_time_s']:.0f}s)")
        if writer is not None:
            for key in ("val_top1", "val_top5", "val_loss", "train_loss", "train_top1"):
                writer.add_scalar(key.replace("_", "/", 1), entry[key], epoch + 1)
            writer.flush()
        self.save_checkpoint()

    # -- outputs --------------------------------------------------------------------------
    def final_metrics(self) -> dict:
        if self.history and self.history[-1]["step"] == self.step:
            last = self.history[-1]
            val = {"top1": last["val_top1"], "top5": last["val_top5"], "loss": last["val_loss"]}
        else:  # no epoch finished in this process's history (cannot happen after fit): evaluate
            val = self.evaluate(max(self.step // self.steps_per_epoch - 1, 0))
        summary = summarize(self.p.arch)
        return {
            "name": self.p.arch.name,
            "top1": val["top1"], "top5": val["top5"], "val_loss": val["loss"],
            "held_out_images": len(self.p.data.val), "training_images": len(self.p.data.train),
            "data": self.p.data.description,
            "epochs": self.s.epochs, "steps": self.step,
            "parameters": summary.params_max, "multiply_adds": summary.macs_max,
            "wall_time_s": round(self.wall_s(), 3),
            "history": self.history,
            "settings": asdict(self.s) | {"image_size": self.s.image_size},
            "recipe": self.recipe.to_dict(),
            "world_size": self.info.world_size, "device": str(self.info.device),
            "resumed_at_steps": self.resumed_at,
            "torch": torch.__version__, "python": platform.python_version(),
        }

    def write_outputs(self, metrics: dict) -> None:
        """The three result files, each atomic; ``metrics.json`` last (it marks a finished run)."""
        if not self.info.is_main:
            return
        out = self.p.out_dir
        arch_text = format_network(self.p.arch)
        save_weights(self.model, out / WEIGHTS, {"format": "spnas-train", "name": self.p.arch.name, "arch": arch_text})
        atomic_write_text(out / ARCH, arch_text)
        atomic_write_text(out / METRICS, json.dumps(metrics, indent=2) + "\n")


def train(arch_path: str | Path | None, settings=None, *, out: str | Path | None = None,
          resume: str | Path | None = None, resume_overrides: dict[str, Any] | None = None,
          force: bool = False, hooks: Hooks = NO_HOOKS) -> TrainResult:
    """Train ``arch_path`` (or continue ``resume``) and write the run folder; see the module doc.

    Joins the process group when launched by torchrun / ``--nproc``; every rank trains, rank 0
    writes. Raises :class:`SpnasError` for every user mistake, before anything is written.
    ``hooks``: test hooks (:class:`spnas_dsl.training.Hooks`).
    """
    device = (resume_overrides or {}).get("device") if resume is not None else (settings.device if settings else None)
    info = training.setup(device)
    try:
        prepared = prepare(arch_path, settings, out=_same_out(out, arch_path, resume, info), resume=resume,
                           resume_overrides=resume_overrides, force=force)
        if prepared.resume_state is not None and prepared.resume_state["step"] >= (
                prepared.resume_state.get("steps_per_epoch", 0) * prepared.settings.epochs) and (
                prepared.out_dir / METRICS).exists():
            raise UsageError(f"the run in {prepared.out_dir} is complete ({prepared.settings.epochs} epochs); "
                             f"pass --epochs N (more than {prepared.settings.epochs}) to train it longer")
        run = Run(prepared, info, hooks)
        metrics = run.fit()
        run.write_outputs(metrics)
        return TrainResult(prepared.out_dir, metrics["top1"], metrics["top5"], metrics)
    finally:
        training.teardown()


def _same_out(out, arch_path, resume, info: DistInfo):
    """The output folder every rank agrees on (rank 0 names the default one)."""
    if out is not None or resume is not None or not info.enabled:
        return out
    name = load(arch_path).name if arch_path is not None else "run"
    return broadcast_object(str(rundir.default_out_dir("train", name)), info)
