"""``spnasc train``'s settings: what a run does (saved in its checkpoint and ``metrics.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from spnas_dsl import training
from spnas_dsl.errors import UsageError

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
