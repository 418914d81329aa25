"""Data sets for search and training: a registry, in-memory and on-disk image sets, batching.

Entry point: :func:`open_dataset` (``"fashion-mnist"``, ``"imagefolder:PATH"``, ``"synthetic"``)
returns :class:`DatasetSplits` ``(train, val, num_classes, description)``. Every split yields
images at the requested size and channel count, normalised per the data set's statistics
(see :mod:`spnas_dsl.data.transforms`), through :class:`Batches`::

    splits = open_dataset("fashion-mnist", image_size=32, channels=3, subset=2000, seed=0)
    for x, y in Batches(splits.train, batch_size=64, shuffle=True, seed=0, epoch=3):
        ...   # x: float32 (64, 3, 32, 32), y: int64 (64,)

The order of a shuffled epoch is a pure function of ``(seed, epoch)`` (and of ``rank`` and
``world`` under DDP, where rank ``r`` takes every ``world``-th index of that same permutation,
as ``torch.utils.data.DistributedSampler`` does), so a resumed run sees the same batches
(``start_batch`` skips the ones already done). Augmentation randomness is likewise a function
of ``(seed, epoch, batch)`` for in-memory sets and ``(seed, epoch, index)`` for image folders.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from spnas_dsl.data.transforms import Normalization, convert_channels, random_crop_flip, resize, to_float
from spnas_dsl.errors import DataError, UsageError

__all__ = [
    "DATASETS",
    "Batches",
    "DatasetSplits",
    "ImageDataset",
    "TensorImageDataset",
    "default_workers",
    "epoch_permutation",
    "open_dataset",
    "register_dataset",
    "split_indices",
    "subset_indices",
]


class ImageDataset(Protocol):
    """What :class:`Batches` needs from a split."""

    num_classes: int
    normalization: Normalization
    train: bool  # whether augmentation is on

    def __len__(self) -> int: ...

    def subset(self, indices: list[int] | torch.Tensor, train: bool | None = None) -> ImageDataset: ...


class TensorImageDataset:
    """An in-memory split: uint8 images ``(N, C, H, W)`` at their native size and int64 labels.

    Batches are resized to ``image_size`` and converted to ``channels`` on the fly (one
    ``interpolate`` per batch), so memory holds the images once at their stored resolution.
    ``augment_padding`` > 0 turns on random crop (of a zero-padded image) and flip when ``train``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, num_classes: int, image_size: int,
                 channels: int, normalization: Normalization, train: bool = False, augment_padding: int = 0):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 (N, C, H, W) tensor")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.num_classes = num_classes
        self.image_size = image_size
        self.channels = channels
        self.normalization = normalization.to_channels(channels)
        self.train = train
        self.augment_padding = augment_padding

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices, train: bool | None = None) -> TensorImageDataset:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return TensorImageDataset(
            self.images[idx], self.labels[idx], num_classes=self.num_classes, image_size=self.image_size,
            channels=self.channels, normalization=self.normalization,
            train=self.train if train is None else train, augment_padding=self.augment_padding,
        )

    def get_batch(self, indices: torch.Tensor, generator: torch.Generator | None = None):
        """uint8 ``(n, channels, image_size, image_size)`` images and int64 labels of ``indices``."""
        x = self.images[indices]
        if self.channels < x.shape[1]:
            x = convert_channels(x, self.channels)  # shrink channels before resizing: cheaper
        if self.train and self.augment_padding > 0 and generator is not None:
            x = random_crop_flip(x, generator, self.augment_padding)
        x = resize(x, self.image_size)
        x = convert_channels(x, self.channels)
        return x, self.labels[indices]

    def __getitem__(self, index: int):
        x, y = self.get_batch(torch.tensor([index]))
        return x[0], int(y[0])


@dataclass
class DatasetSplits:
    """The training split, the held-out split, the number of classes, and a one-line description."""

    train: ImageDataset
    val: ImageDataset
    num_classes: int
    description: str


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch ``epoch``: ``randperm(n)`` from a generator seeded ``seed + epoch``
    (the same permutation ``DistributedSampler(seed=seed).set_epoch(epoch)`` draws)."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    return torch.randperm(n, generator=g)


class Batches:
    """The batches of one pass over ``dataset``: float32 normalised images and int64 labels.

    - ``shuffle``: order from :func:`epoch_permutation` ``(seed, epoch)``; otherwise in order.
    - ``rank``/``world``: this process's shard (every ``world``-th index, like DistributedSampler;
      when shuffling, the permutation is padded by wrapping so every rank has the same count).
    - ``drop_last``: leave out an incomplete last batch (training; keeps BN statistics sane).
    - ``start_batch``: skip the first batches (resuming mid-epoch).
    - ``num_workers``: DataLoader worker processes for per-sample (on-disk) data sets; None:
      :func:`default_workers` (from the cores this process may use).
    - ``memory_format``: e.g. ``torch.channels_last`` (much faster depthwise convolutions on CPU).
    """

    def __init__(self, dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                 rank: int = 0, world: int = 1, drop_last: bool = False, start_batch: int = 0,
                 num_workers: int | None = 0, device: str | torch.device = "cpu",
                 memory_format: torch.memory_format | None = None):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed, self.epoch = seed, epoch
        self.drop_last = drop_last
        self.start_batch = start_batch
        self.num_workers = default_workers(world) if num_workers is None else num_workers
        self.device = torch.device(device)
        self.memory_format = memory_format
        n = len(dataset)
        order = epoch_permutation(n, seed, epoch) if shuffle else torch.arange(n)
        if world > 1 and shuffle and n % world:
            order = torch.cat([order, order[: world - n % world]])  # pad: equal shard sizes
        self.indices = order[rank::world]
        self.rank = rank

    def __len__(self) -> int:
        n = len(self.indices)
        full = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return max(full - self.start_batch, 0)

    def _format(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.memory_format is None else x.contiguous(memory_format=self.memory_format)

    def _batch_indices(self) -> Iterator[tuple[int, torch.Tensor]]:
        total = self.start_batch + len(self)
        for b in range(self.start_batch, total):
            yield b, self.indices[b * self.batch_size : (b + 1) * self.batch_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        norm = self.dataset.normalization
        if hasattr(self.dataset, "get_batch"):
            for b, idx in self._batch_indices():
                g = torch.Generator()
                g.manual_seed(hash((self.seed, self.epoch, b)) & 0x7FFF_FFFF)
                x, y = self.dataset.get_batch(idx, g)
                yield self._format(to_float(x.to(self.device), norm)), y.to(self.device)
            return
        # Per-sample data sets (image folders): decode in DataLoader workers.
        from torch.utils.data import DataLoader

        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.seed, self.epoch)
        flat = self.indices[self.start_batch * self.batch_size :].tolist()
        if self.drop_last:
            flat = flat[: len(self) * self.batch_size]
        reporting = hasattr(self.dataset, "load")  # skips unreadable files and names them (image folders)
        loader = DataLoader(_Loading(self.dataset) if reporting else self.dataset, batch_size=self.batch_size,
                            sampler=flat, num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=False)
        new: dict[str, str] = {}
        try:
            for item in loader:
                x, y = item[0], item[1]
                if reporting:
                    self._note_unreadable(item[2], new)
                yield (self._format(to_float(x.to(self.device, non_blocking=True), norm)),
                       y.to(self.device, non_blocking=True))
        except DataError as exc:  # re-raised from a worker with its traceback in the message
            lines = [ln for ln in str(exc).splitlines() if "DataError: " in ln]
            raise DataError(lines[-1].split("DataError: ", 1)[1] if lines else exc.message) from None
        if new and self.rank == 0:
            import sys

            seen = self.dataset.unreadable
            first = next(iter(new.items()))
            print(f"data: skipped {len(new)} unreadable image{'s' if len(new) > 1 else ''} in this pass "
                  f"({len(seen)} of {len(self.dataset)} so far; the run stops past "
                  f"{_unreadable_limit(len(self.dataset))}), e.g. {first[0]}: {first[1]}", file=sys.stderr, flush=True)

    def _note_unreadable(self, problems: list[str], new: dict[str, str]) -> None:
        """Record the unreadable files of one batch; past the limit, stop with all their names."""
        seen = self.dataset.unreadable
        for text in problems:
            for line in filter(None, text.split("\n")):
                path, _, reason = line.partition("\t")
                if path not in seen:
                    seen[path] = new[path] = reason
        limit = _unreadable_limit(len(self.dataset))
        if len(seen) > limit:
            names = list(seen)
            raise DataError(f"{len(seen)} images of this split cannot be decoded (more than {limit}, 1 % of its "
                            f"{len(self.dataset)} images, at least 10): {', '.join(names[:5])}"
                            + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                            + f"; first: {names[0]}: {seen[names[0]]}. Repair or remove them")


class _Loading:
    """A per-sample data set seen through its ``load`` (image, label, problems): what DataLoader
    workers return, so that the main process learns which files were unreadable."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset.load(index)


def _unreadable_limit(n: int) -> int:
    from spnas_dsl.data.imagefolder import unreadable_limit

    return unreadable_limit(n)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_workers(processes: int = 1) -> int:
    """DataLoader workers per process for on-disk data: up to 4, leaving one core per training process.

    More workers than cores makes torch print warnings before every message and only adds
    switching; 2 cores give 1 worker, 1 core decodes in the main process (0).
    """
    return max(0, min(4, available_cores() // max(processes, 1) - 1))


def subset_indices(n: int, count: int, seed: int) -> torch.Tensor:
    """``count`` distinct indices of ``range(n)``, a seeded random choice, sorted."""
    if count >= n:
        return torch.arange(n)
    g = torch.Generator()
    g.manual_seed(seed + 7919)
    return torch.randperm(n, generator=g)[:count].sort().values


def split_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of ``range(n)`` into (kept, held-out) with ``round(n * fraction)`` held out."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"the held-out fraction must be in (0, 1), got {fraction}")
    g = torch.Generator()
    g.manual_seed(seed + 104729)
    perm = torch.randperm(n, generator=g)
    held = max(1, round(n * fraction))
    return perm[held:].sort().values, perm[:held].sort().values


# ---------------------------------------------------------------------------------------
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
