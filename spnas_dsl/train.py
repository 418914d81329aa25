"""``spnasc train``: train one concrete network, from scratch or from a search's supernet.

The loop, in order (see docs/train.md):

1. **Check everything before writing anything**: the arch is a concrete network
   (``require_concrete`` names the first layer with several candidates), the data set opens,
   ``--init-from`` / ``--resume`` checkpoints load safely and match. Only then is the output
   folder created, so a bad command leaves nothing behind.
2. **Model**: ``lower_to_network(arch)``, freshly initialised, or ``extract(supernet, arch)``
   with the weights of a search's supernet (``--init-from SEARCH_DIR``), or the state of a
   checkpoint (``--resume DIR``).
3. **Recipe** (``spnas_dsl.training.recipe``): MnasNet's by default (TF-style RMSProp, decay
   0.9, momentum 0.9, eps 1e-3; lr 0.016 * batch / 256, x0.97 every 2.4 epochs; label
   smoothing 0.1; weight decay 1e-5 except BN / biases), or SGD + cosine.
4. **Epochs**: shuffled batches from ``spnas_dsl.data.Batches`` (a pure function of the seed
   and epoch, so a resumed run sees the same batches), per-step lr schedule; after every
   epoch the BN statistics are re-estimated on ``bn_recalibrate`` training images ("precise
   BN", see :func:`recalibrate_bn`) and top-1/top-5 measured on the held-out split;
   TensorBoard scalars; an atomic checkpoint at every epoch end (and every
   ``checkpoint_minutes`` of wall time).
5. **Outputs** (rank 0, each written atomically): ``model.safetensors`` (the state dict, BN
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spnas_dsl import training
from spnas_dsl.compiler.network import lower_to_network, require_concrete
from spnas_dsl.data import Batches, DatasetSplits, open_dataset
from spnas_dsl.errors import CheckpointError, SpnasError, UsageError
from spnas_dsl.io import atomic_write_text
from spnas_dsl.ir import InputSize, Network
from spnas_dsl.parser import load, parse_text
from spnas_dsl.printer import format_network
from spnas_dsl.shapes import summarize
from spnas_dsl.training import rundir
from spnas_dsl.training.distributed import DistInfo, any_rank, broadcast_object

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
ARCH = "arch.spnas"
METRICS = "metrics.json"
TENSORBOARD = "tensorboard"
CHECKPOINT_KIND = "spnas-train"
CHECKPOINT_VERSION = 1


@dataclass
class TrainSettings:
    """What a run does. Saved in the checkpoint and in ``metrics.json``; ``--resume`` reuses it."""

    data: str = "synthetic"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 128            # global batch (all processes together)
    lr: float | None = None          # None: the recipe's scaled default
    optimizer: str = "rmsprop"       # rmsprop (MnasNet recipe) | sgd (+ cosine)
    warmup_epochs: float = 0.0       # linear lr warm-up
    image_size: int | None = None    # None: the arch's input size
    subset: int | None = None        # train on this many images (held-out split shrinks too)
    val_subset: int | None = None    # held-out images (None: all, or max(subset / 5, 1000) with a subset)
    seed: int = 0
    init_from: str | None = None     # a search's output folder
    device: str | None = None        # cpu | cuda | None (CUDA when available)
    quiet: bool = False
    checkpoint_minutes: float = 10.0  # also checkpoint mid-epoch this often (0: epoch ends only)
    bn_recalibrate: int = 1024       # re-estimate BN statistics on this many training images per epoch
    workers: int | None = None       # DataLoader processes for image folders (None: data.default_workers)

    def recipe(self) -> training.Recipe:
        return training.Recipe(optimizer=self.optimizer, batch_size=self.batch_size, lr=self.lr,
                               warmup_epochs=self.warmup_epochs)

    @classmethod
    def from_dict(cls, values: dict) -> TrainSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# Settings a resumed run may change (the rest must be what the checkpoint says).
RESUMABLE_CHANGES = ("epochs", "data_dir", "device", "quiet", "checkpoint_minutes", "workers")


@dataclass
class TrainResult:
    out_dir: Path
    top1: float
    top5: float
    metrics: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Reading trained runs back (for `build` and tests): safetensors only, nothing unpickled.

def load_trained(run_dir: str | Path) -> tuple[Network, nn.Module]:
    """The arch and the trained network of a finished ``spnasc train`` run folder."""
    run_dir = Path(run_dir)
    network = load(run_dir / ARCH)
    model = lower_to_network(network)
    load_state(model, training.load_weights(run_dir / WEIGHTS), str(run_dir / WEIGHTS))
    return network, model.eval()


def load_state(model: nn.Module, state: dict, where: str) -> None:
    """``model.load_state_dict(state)`` (strict), a mismatch as a :class:`CheckpointError`."""
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


# ---------------------------------------------------------------------------------------
# Preparing a run: every check happens here, before anything is written.

def trained_arch(network: Network, image_size: int | None) -> Network:
    """The arch as trained: its input resized to ``image_size`` x ``image_size`` when given."""
    if image_size is None or (network.input.height, network.input.width) == (image_size, image_size):
        return network
    size = InputSize(height=image_size, width=image_size, channels=network.input.channels)
    return network.model_copy(update={"input": size})


def default_image_size(network: Network) -> int:
    if network.input.height != network.input.width:
        raise UsageError(f"'{network.name}' has a non-square input {network.input}; pass --image-size S "
                         "(the data sets yield square images)")
    return network.input.height


def read_checkpoint(run_dir: Path) -> dict:
    """A ``spnasc train`` checkpoint from ``run_dir``, checked for the keys the loop needs."""
    if not run_dir.is_dir():
        raise CheckpointError(f"cannot resume: {run_dir} is not a folder")
    path = run_dir / CHECKPOINT
    state = training.load_checkpoint(path)
    if state.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path} is not a 'spnasc train' checkpoint (kind {state.get('kind')!r})")
    needed = ("arch", "settings", "model", "optimizer", "scheduler", "step", "history", "wall_time_s")
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"{path} is incomplete (no {', '.join(missing)})")
    return state


def merge_resume_settings(saved: TrainSettings, given: dict[str, Any], run_dir: Path) -> TrainSettings:
    """The saved settings, with the options the user passed again; changing the others is refused."""
    merged = asdict(saved)
    for key, value in given.items():
        if value is None or key not in merged:
            continue
        if key in RESUMABLE_CHANGES:
            merged[key] = value
        elif value != merged[key]:
            option = "--" + key.replace("_", "-")
            raise UsageError(f"cannot resume {run_dir} with {option} {value}: the run was started with "
                             f"{option} {merged[key]} (only --epochs, --data-dir, --device, --workers, --quiet may change)")
    return TrainSettings(**merged)


def init_from_search(search_dir: Path, arch: Network) -> nn.Module:
    """The concrete network ``arch`` with weights extracted from the supernet of a search.

    Loads ``SEARCH_DIR/checkpoint.pt`` safely (``weights_only``), rebuilds the supernet from the
    space recorded in it (the source text is saved with the search's config, so the space file
    need not exist any more), and slices the chosen options' weights out (``compiler.extract``).
    A :class:`LoweringError` names the layer when ``arch`` is not a network of that space.
    """
    from spnas_dsl.compiler.extract import check_choices, extract
    from spnas_dsl.compiler.supernet import lower_to_supernet
    from spnas_dsl.errors import LoweringError
    from spnas_dsl.search import CHECKPOINT as SEARCH_CHECKPOINT
    from spnas_dsl.search import load_resume

    if not search_dir.is_dir():
        raise CheckpointError(f"--init-from {search_dir}: not a folder (expected a 'spnasc search' output folder)")
    where = search_dir / SEARCH_CHECKPOINT
    config, state = load_resume(search_dir)  # CheckpointError: missing, corrupt, not a search checkpoint
    if not config.space_text or "model" not in state:
        raise CheckpointError(f"{where} records no search space or no supernet weights")
    try:
        space = parse_text(config.space_text, config.space or str(where))
    except SpnasError as exc:
        raise CheckpointError(f"{where}: the search space recorded in it is invalid: {exc}") from None
    try:
        check_choices(space, arch)  # before the (slower) weight loading: the arch must be in the space
    except LoweringError as exc:
        raise LoweringError(f"--init-from {search_dir}: {exc.message}", exc.span, exc.source) from None
    supernet = lower_to_supernet(space)
    load_state(supernet, state["model"], f"{where} (supernet weights)")
    return extract(supernet, arch)


@dataclass
class Prepared:
    """Everything a run needs, checked: the arch as trained, settings, data, model, state."""

    arch: Network
    settings: TrainSettings
    data: DatasetSplits
    model: nn.Module
    out_dir: Path
    resume_state: dict | None
    force: bool = False  # a new run may remove a previous run's files in out_dir


def prepare(arch_path: str | Path | None, settings: TrainSettings | None, *, out: str | Path | None = None,
            resume: str | Path | None = None, resume_overrides: dict[str, Any] | None = None,
            force: bool = False) -> Prepared:
    """Check the inputs and build the model; raise a :class:`SpnasError` on the first problem.

    ``resume``: a run folder; its checkpoint's settings are used (``resume_overrides`` are the
    options passed again: only those in ``RESUMABLE_CHANGES`` may differ). A new run's ``out``
    must be new or empty unless ``force`` (:func:`spnas_dsl.training.rundir.check_out`). Writes nothing.
    """
    state = None
    if resume is not None:
        run_dir = Path(resume)
        state = read_checkpoint(run_dir)
        try:
            saved_arch = parse_text(state["arch"], f"{run_dir / CHECKPOINT}:arch")
        except SpnasError as exc:
            raise CheckpointError(f"{run_dir / CHECKPOINT}: the arch recorded in it is invalid: {exc}") from None
        settings = merge_resume_settings(TrainSettings.from_dict(state["settings"]), resume_overrides or {}, run_dir)
        if arch_path is not None:
            given = load(arch_path)
            require_concrete(given)
            if trained_arch(given, settings.image_size) != saved_arch:
                raise UsageError(f"{arch_path} is not the network the run in {run_dir} trains "
                                 f"('{saved_arch.name}'); leave out the arch to resume it")
        network = saved_arch
        out_dir = run_dir
    else:
        if arch_path is None:
            raise UsageError("give an arch (.spnas file) to train, or --resume DIR")
        if settings is None:
            raise UsageError("no training settings given")
        source = load(arch_path)
        require_concrete(source)
        if settings.image_size is None:
            settings.image_size = default_image_size(source)
        network = trained_arch(source, settings.image_size)
        out_dir = Path(out) if out is not None else default_out_dir(network.name)
        rundir.check_out(out_dir, "train", force=force)
    if settings.image_size is None:
        settings.image_size = default_image_size(network)
    if settings.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {settings.epochs}")
    settings.recipe()  # validates optimizer / batch size

    data = open_dataset(settings.data, settings.image_size, network.input.channels, data_dir=settings.data_dir,
                        subset=settings.subset, val_subset=settings.val_subset, num_classes=network.classes,
                        seed=settings.seed)
    training.seed_everything(settings.seed)  # the same initial weights for the same seed
    if state is not None:
        model = lower_to_network(network)
        load_state(model, state["model"], f"{out_dir / CHECKPOINT}")
    elif settings.init_from:
        model = init_from_search(Path(settings.init_from), source)
    else:
        model = lower_to_network(network)
    return Prepared(network, settings, data, model, out_dir, state, force)


def default_out_dir(name: str) -> Path:
    return Path("runs") / f"train-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---------------------------------------------------------------------------------------
# The loop.

@torch.no_grad()
def evaluate_topk(model: nn.Module, batches, info: DistInfo, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies and mean cross-entropy over ``batches`` (summed over ranks under DDP)."""
    was_training = model.training
    model.eval()
    correct = [0.0] * len(ks)
    ce_sum = total = 0.0
    for x, y in batches:
        logits = model(x).float()
        ce_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
        hits = top == y[:, None]
        for i, k in enumerate(ks):
            correct[i] += float(hits[:, :k].any(dim=1).sum())
        total += len(y)
    model.train(was_training)
    *correct, ce_sum, total = training.all_reduce_sum([*correct, ce_sum, total], info)
    out = {f"top{k}": c / max(total, 1) for k, c in zip(ks, correct)}
    return out | {"loss": ce_sum / max(total, 1), "images": int(total)}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, images: int) -> int:
    """Precise BN: replace the running statistics by their average over ``images`` training images.

    BN's running statistics are an exponential average with momentum 0.01 (the paper's 0.99 in
    TF's convention): a horizon of ~100 steps, so in a short run they trail far behind weights
    that are still moving fast and the held-out accuracy in eval mode is badly off (e.g. 25 %
    instead of 83 % after one Fashion-MNIST epoch). A forward pass in train mode over a few
    batches, with cumulative averaging (``momentum=None``), measures them for the current
    weights. Weights, ``num_batches_tracked`` and the BN momentum are left as they were.
    Returns the number of images used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or images <= 0:
        return 0
    saved = [(bn.momentum, bn.num_batches_tracked.clone()) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    seen = 0
    try:
        for x, _ in batches:
            if seen >= images:
                break
            model(x)
            seen += len(x)
    finally:
        for bn, (momentum, tracked) in zip(bns, saved):
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(tracked)
        model.train(was_training)
    return seen


def sync_buffers(model: nn.Module, info: DistInfo) -> None:
    """Rank 0's BN statistics on every rank (before an evaluation under DDP)."""
    if info.enabled:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)


def summary_writer(log_dir: Path, purge_step: int | None = None):
    """A TensorBoard ``SummaryWriter`` that does not import TensorFlow.

    With TensorFlow installed (the tflite backend needs it), ``torch.utils.tensorboard`` would
    import it to write event files (tens of seconds, a GB of memory). TensorBoard's own
    ``tensorboard.compat.notf`` marker makes it use its built-in file writer instead.
    """
    import sys
    import types

    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


class Run:
    """One training run: the state that checkpoints save and the steps between them."""

    def __init__(self, prepared: Prepared, info: DistInfo):
        self.p = prepared
        self.s = prepared.settings
        self.info = info
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
        self.resumed_at: list[int] = []
        self.epoch_sums: list[float] | None = None  # train loss, correct, images of a partial epoch
        state = prepared.resume_state
        if state is not None:
            self.restore(state)

    # -- data ---------------------------------------------------------------------------
    def train_batches(self, epoch: int, start_batch: int = 0) -> Batches:
        return Batches(self.p.data.train, self.local_batch, shuffle=True, seed=self.s.seed, epoch=epoch,
                       rank=self.info.rank, world=self.info.world_size, drop_last=True, start_batch=start_batch,
                       num_workers=self.s.workers, device=self.info.device)

    def recalibration_batches(self, epoch: int) -> Batches:
        """The same training images on every rank (so the statistics agree without communication)."""
        return Batches(self.p.data.train, self.local_batch, shuffle=True, seed=self.s.seed + 7717, epoch=epoch,
                       num_workers=self.s.workers, device=self.info.device)

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Held-out top-1/top-5 and loss, after re-estimating the BN statistics (``bn_recalibrate``)."""
        if self.s.bn_recalibrate > 0:
            recalibrate_bn(self.model, self.recalibration_batches(epoch), self.s.bn_recalibrate)
        else:
            sync_buffers(self.model, self.info)
        return evaluate_topk(self.model, self.val_batches(), self.info)

    def val_batches(self) -> Batches:
        return Batches(self.p.data.val, self.local_batch, rank=self.info.rank, world=self.info.world_size,
                       num_workers=self.s.workers, device=self.info.device)

    # -- checkpoints -----------------------------------------------------------------------
    def state(self, wall_s: float) -> dict:
        return {
            "kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION,
            "arch": format_network(self.p.arch), "settings": asdict(self.s),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step,
            "steps_per_epoch": self.steps_per_epoch, "history": self.history,
            "rng": training.capture_rng_state(), "wall_time_s": wall_s, "resumed_at": self.resumed_at,
            # this epoch's running train figures (one process: under DDP they are per rank, not saved)
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
        self.scheduler.last_epoch = self.step  # the per-step schedule continues where it stopped
        self.history = list(state["history"])
        self.wall_before = float(state["wall_time_s"])
        self.resumed_at = list(state.get("resumed_at", [])) + [self.step]
        sums = state.get("epoch_sums")
        if sums is not None and not self.info.enabled:
            self.epoch_sums = [float(v) for v in sums]
        if "rng" in state and not self.info.enabled:
            training.restore_rng_state(state["rng"])  # exact continuation (dropout) on one process

    def save_checkpoint(self, wall_s: float) -> None:
        if self.info.is_main:
            training.save_checkpoint(self.p.out_dir / CHECKPOINT, self.state(wall_s))

    # -- training -------------------------------------------------------------------------
    def fit(self) -> dict:
        s, info = self.s, self.info
        if info.enabled:  # per-rank dropout noise; rank 0's RNG is restored exactly only on one process
            torch.manual_seed(s.seed + 1000 * info.rank + self.step)
        progress = training.Progress(self.total_steps, initial=self.step, quiet=s.quiet, enabled=info.is_main)
        if info.is_main:
            rundir.claim(self.p.out_dir, rundir.TRAIN_OUTPUTS, "train", force=self.p.force,
                         resume=self.p.resume_state is not None, log=progress.log)
        writer = self.tensorboard()
        progress.log(f"training '{self.p.arch.name}' on {self.p.data.description}")
        progress.log(f"{s.epochs} epochs x {self.steps_per_epoch} steps, global batch {s.batch_size}"
                     f"{f' ({info.world_size} processes)' if info.enabled else ''}, {s.optimizer} lr "
                     f"{self.recipe.base_lr:.4g} ({self.recipe.schedule}), device {info.device}; output {self.p.out_dir}")
        if self.resumed_at:
            progress.log(f"resumed at step {self.step} (epoch {self.step // self.steps_per_epoch + 1})")
        start = time.monotonic()
        last_save = start
        self.net.train()
        try:
            while self.step < self.total_steps:
                epoch, batch = divmod(self.step, self.steps_per_epoch)
                progress.set_epoch(epoch, s.epochs)
                loss_sum = correct = seen = 0.0
                restored = batch and self.epoch_sums is not None
                if restored:  # a resumed partial epoch: its figures continue from the checkpoint's
                    loss_sum, correct, seen = self.epoch_sums
                self.epoch_sums = None
                epoch_start = time.monotonic()
                for x, y in self.train_batches(epoch, start_batch=batch):
                    logits = self.net(x)
                    loss = self.criterion(logits, y)
                    value = loss.item()
                    if any_rank(not math.isfinite(value), info):
                        raise SpnasError(f"training diverged: the loss is {value} at step {self.step + 1}; "
                                         f"try a lower --lr (now {self.recipe.base_lr:.4g})")
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    self.scheduler.step()
                    self.step += 1
                    n = len(y)
                    loss_sum += value * n
                    correct += float((logits.detach().argmax(1) == y).sum())
                    seen += n
                    lr = self.optimizer.param_groups[0]["lr"]
                    progress.update(loss=value, acc=correct / seen, lr=lr)
                    if writer is not None and (self.step % 10 == 0 or self.step == self.total_steps):
                        writer.add_scalar("train/loss", value, self.step)
                        writer.add_scalar("train/lr", lr, self.step)
                    now = time.monotonic()
                    if (s.checkpoint_minutes > 0 and now - last_save > 60 * s.checkpoint_minutes
                            and self.step % self.steps_per_epoch):
                        self.epoch_sums = [loss_sum, correct, seen]
                        self.save_checkpoint(self.wall_before + now - start)
                        self.epoch_sums = None
                        last_save = now
                loss_sum, correct, seen = training.all_reduce_sum([loss_sum, correct, seen], info)
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
                self.save_checkpoint(self.wall_before + time.monotonic() - start)
                last_save = time.monotonic()
        finally:
            progress.close()
            if writer is not None:
                writer.close()
        return self.final_metrics(self.wall_before + time.monotonic() - start)

    def tensorboard(self):
        if not self.info.is_main:
            return None
        return summary_writer(self.p.out_dir / TENSORBOARD, purge_step=self.step or None)

    # -- outputs --------------------------------------------------------------------------
    def final_metrics(self, wall_s: float) -> dict:
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
            "wall_time_s": round(wall_s, 3),
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
        training.save_weights(out / WEIGHTS, self.model.state_dict(),
                              metadata={"format": "spnas-train", "name": self.p.arch.name, "arch": arch_text})
        atomic_write_text(out / ARCH, arch_text)
        atomic_write_text(out / METRICS, json.dumps(metrics, indent=2) + "\n")


def train(arch_path: str | Path | None, settings: TrainSettings | None = None, *, out: str | Path | None = None,
          resume: str | Path | None = None, resume_overrides: dict[str, Any] | None = None,
          force: bool = False) -> TrainResult:
    """Train ``arch_path`` (or continue ``resume``) and write the run folder; see the module doc.

    Joins the process group when launched by torchrun / ``--nproc``; every rank trains, rank 0
    writes. Raises :class:`SpnasError` for every user mistake, before anything is written.
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
        run = Run(prepared, info)
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
    return broadcast_object(str(default_out_dir(name)), info)
