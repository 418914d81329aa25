"""The search's settings: everything that decides the result (saved in every checkpoint and search.json).

``SearchConfig`` is built by ``spnasc search`` (``cli/search.py``) from its options, or read back
from a checkpoint by ``--resume`` (:func:`spnas_dsl.search.loop.load_resume`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from spnas_dsl.errors import UsageError
from spnas_dsl.search.budget import DEFAULT_FLOOR
from spnas_dsl.search.methods import METHODS
from spnas_dsl.targets.registry import DEFAULT_TARGET

DEFAULT_LAMBDA = 0.02  # the paper's network (Fig. 5)
LATENCY_LOSS_SCALE = 1e3  # the official code's factor on lambda * ln(R_ms)
BN_RECALIBRATION_BATCHES = 20  # training batches that re-estimate BN before each held-out evaluation


@dataclass
class SearchConfig:
    space: str  # path of the .spnas search space
    target: str = DEFAULT_TARGET  # a name: resolved once, by prepare (load_target)
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
        return self.epochs * METHODS[self.search_method].warmup_fraction

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
        if METHODS[self.search_method].needs_band and self.latency_budget is None and self.budget_percentile is None:
            raise UsageError(f"--method {self.search_method} searches a latency band: give --latency-budget MS or P% "
                             "(--method paper reads the network off the thresholds, with --lambda or a budget)")
        if not 0 < self.budget_floor <= 1:
            raise UsageError(f"--budget-floor must be in (0, 1], got {self.budget_floor}")
        if self.evaluations < 1:
            raise UsageError(f"--evaluations must be >= 1, got {self.evaluations}")
        if not 0 < self.dropout_keep <= 1:
            raise UsageError(f"indicator keep probability must be in (0, 1], got {self.dropout_keep}")
