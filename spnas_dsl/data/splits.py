"""Seeded choices of images: a subset of a split, and a held-out part of the training images."""

from __future__ import annotations

import torch

from spnas_dsl.errors import DataError


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
