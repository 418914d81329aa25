"""Data sets for search and training: a registry, in-memory and on-disk image sets, batching.

Entry point: :func:`open_dataset` (``"fashion-mnist"``, ``"imagefolder:PATH"``, ``"synthetic"``)
returns :class:`DatasetSplits` ``(train, val, num_classes, description)``. Every split yields
images at the requested size and channel count, normalised per the data set's statistics
(see :mod:`spnas_dsl.data.transforms`), through :class:`Batches`::

    splits = open_dataset("fashion-mnist", image_size=32, channels=3, subset=2000, seed=0)
    for x, y in Batches(splits.train, batch_size=64, shuffle=True, seed=0, epoch=3):
        ...   # x: float32 (64, 3, 32, 32), y: int64 (64,)

Modules: ``registry`` (names -> openers, ``open_dataset``), ``datasets`` (the split types),
``batches`` (``Batches``: order, sharding, resuming), ``splits`` (seeded subsets and held-out
parts), ``transforms``; one module per data set (``fashion_mnist``, ``imagefolder``, ``synthetic``).
"""

from spnas_dsl.data.batches import Batches, default_workers, epoch_permutation
from spnas_dsl.data.datasets import DatasetSplits, ImageDataset, TensorImageDataset
from spnas_dsl.data.registry import DATASETS, open_dataset, register_dataset
from spnas_dsl.data.splits import split_indices, subset_indices

__all__ = [
    "DATASETS", "Batches", "DatasetSplits", "ImageDataset", "TensorImageDataset", "default_workers",
    "epoch_permutation", "open_dataset", "register_dataset", "split_indices", "subset_indices",
]
