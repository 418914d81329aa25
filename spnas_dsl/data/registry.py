"""The data sets a user can name: a registry of openers, and :func:`open_dataset`.

A spec is ``name`` or ``name:ARG`` (``fashion-mnist``, ``imagefolder:PATH``, ``synthetic``); the
built-in openers register themselves when their modules are imported.
"""

from __future__ import annotations

from collections.abc import Callable

from spnas_dsl.data.datasets import DatasetSplits
from spnas_dsl.data.splits import subset_indices
from spnas_dsl.errors import DataError, UsageError

# Registry: name -> opener(arg, image_size, channels, data_dir, num_classes, seed, val_fraction)
# returning DatasetSplits over the whole data set (open_dataset applies the subsets).

Opener = Callable[..., DatasetSplits]
DATASETS: dict[str, Opener] = {}


def register_dataset(name: str) -> Callable[[Opener], Opener]:
    """Register a data set opener under ``name`` (a spec is ``name`` or ``name:ARG``)."""

    def deco(fn: Opener) -> Opener:
        DATASETS[name] = fn
        return fn

    return deco


def _load_builtin() -> None:
    from spnas_dsl.data import fashion_mnist, imagefolder, synthetic  # noqa: F401 (registers)


def open_dataset(spec: str, image_size: int, channels: int, *, data_dir: str | None = None,
                 subset: int | None = None, val_subset: int | None = None, val_fraction: float | None = None,
                 num_classes: int | None = None, seed: int = 0) -> DatasetSplits:
    """Open a data set by spec and return its training and held-out splits.

    - ``spec``: ``fashion-mnist`` | ``imagefolder:PATH`` | ``synthetic`` (see the modules).
    - ``image_size``, ``channels``: what every batch is resized / converted to.
    - ``data_dir``: where the files are (Fashion-MNIST; default its Debian package folder).
    - ``subset``: use only this many training images (a seeded random choice); the held-out
      split is then limited to ``val_subset`` images (default ``max(subset // 5, 1000)``).
    - ``val_fraction``: hold out this fraction of the *training* images instead of using the
      data set's own held-out split (Fashion-MNIST's test set, an image folder's ``val/``).
    - ``num_classes``: the class count the model has; used by ``synthetic`` (which makes that
      many classes); for the others, a data set with more classes than this is an error.
    - ``seed``: seeds the subset / split choice and the synthetic generator.

    Raises :class:`DataError` for an unknown spec, missing or malformed files.
    """
    _load_builtin()
    name, _, arg = spec.partition(":")
    if name not in DATASETS:
        known = ", ".join(f"{n}:PATH" if n == "imagefolder" else n for n in sorted(DATASETS))
        raise DataError(f"unknown data set '{spec}'; known: {known}")
    if image_size < 1:
        raise DataError(f"image size must be positive, got {image_size}")
    splits = DATASETS[name](arg=arg or None, image_size=image_size, channels=channels, data_dir=data_dir,
                            num_classes=num_classes, seed=seed, val_fraction=val_fraction)
    if num_classes is not None and splits.num_classes > num_classes:
        raise DataError(f"data set '{spec}' has {splits.num_classes} classes but the network has only "
                        f"{num_classes}")
    train, val = splits.train, splits.val
    # A subset larger than the split is a mistake the user should hear about (not a silent "all").
    for option, count, split, what in (("--subset", subset, train, "training"),
                                       ("--val-subset", val_subset, val, "held-out")):
        if count is not None and not 1 <= count <= len(split):
            raise UsageError(f"{option} {count}: the {what} split of '{spec}' has {len(split)} images"
                             + ("" if count >= 1 else "; give a positive number"))
    if subset is not None:
        train = train.subset(subset_indices(len(train), subset, seed))
        val_subset = val_subset if val_subset is not None else min(max(subset // 5, 1000), len(val))
    if val_subset is not None:
        val = val.subset(subset_indices(len(val), val_subset, seed + 1))
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"data set '{spec}' has an empty split ({len(train)} training, {len(val)} held-out images)")
    desc = f"{splits.description}; {len(train)} training / {len(val)} held-out images at {image_size}x{image_size}x{channels}"
    return DatasetSplits(train, val, splits.num_classes, desc)
