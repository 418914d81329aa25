"""Batching: one pass over a split, as float32 normalised images and int64 labels.

The order of a shuffled epoch is a pure function of ``(seed, epoch)`` (and of ``rank`` and
``world`` under DDP, where rank ``r`` takes every ``world``-th index of that same permutation,
as ``torch.utils.data.DistributedSampler`` does), so a resumed run sees the same batches
(``start_batch`` skips the ones already done). Augmentation randomness is likewise a function
of ``(seed, epoch, batch)`` for in-memory sets and ``(seed, epoch, index)`` for image folders.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from spnas_dsl.data.transforms import to_float
from spnas_dsl.errors import DataError


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
