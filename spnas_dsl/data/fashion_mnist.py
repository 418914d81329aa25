"""Fashion-MNIST from its IDX files (``*-idx3-ubyte`` images, ``*-idx1-ubyte`` labels, gz or raw).

Spec: ``fashion-mnist``. Files are looked for in ``--data-dir`` or, by default,
``/usr/share/datasets/fashion-mnist/`` (Debian package ``dataset-fashion-mnist``).
Splits: the 60,000 official training images train; the held-out split is the official
10,000-image test set (or, with ``val_fraction``, a seeded part of the training images).
Images are 28x28 grey, kept in memory once as uint8 and resized per batch.
Normalisation: mean 0.2860, std 0.3530 (the training set's statistics), the same for
every channel when converted to RGB.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from spnas_dsl.data.datasets import DatasetSplits, TensorImageDataset
from spnas_dsl.data.registry import register_dataset
from spnas_dsl.data.splits import split_indices
from spnas_dsl.data.transforms import Normalization
from spnas_dsl.errors import DataError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
NORMALIZATION = Normalization((0.2860,), (0.3530,))
CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array.

    Format: 2 zero bytes, a type byte, the number of dimensions, one big-endian uint32 per
    dimension, then the data. Raises :class:`DataError` naming the file when it is
    unreadable, truncated, or not IDX.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path} is a corrupt IDX file (truncated header)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path} is a corrupt IDX file: header says {dims} ({expected} bytes) "
                        f"but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def find_file(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz`` (also the ``stem`` with a dot: ``train-images.idx3-ubyte``)."""
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_split(folder: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``(N, 1, 28, 28)`` and int64 labels of ``split`` ('train' or 'test')."""
    folder = Path(folder)
    paths = [find_file(folder, stem) for stem in FILES[split]]
    missing = [stem for stem, p in zip(FILES[split], paths) if p is None]
    if missing:
        raise DataError(f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}[.gz]): install it with "
                        "`apt-get install -y dataset-fashion-mnist` or pass --data-dir")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{paths[0]} is not an IDX image file (expected uint8 N x H x W, got {images.shape})")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{paths[1]} does not match {paths[0]}: {len(labels)} labels for {len(images)} images")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise DataError(f"{paths[1]} has label {int(labels.max())}; Fashion-MNIST has {len(CLASSES)} classes")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


@register_dataset("fashion-mnist")
def open_fashion_mnist(*, arg, image_size, channels, data_dir, num_classes, seed, val_fraction) -> DatasetSplits:
    folder = Path(data_dir or arg or os.environ.get("SPNAS_FASHION_MNIST", DEFAULT_DIR))
    if not folder.is_dir():
        raise DataError(f"Fashion-MNIST not found in {folder}: install it with "
                        "`apt-get install -y dataset-fashion-mnist` or pass --data-dir")
    images, labels = load_split(folder, "train")

    def make(idx_images, idx_labels, train):
        return TensorImageDataset(idx_images, idx_labels, num_classes=len(CLASSES), image_size=image_size,
                                  channels=channels, normalization=NORMALIZATION, train=train)

    if val_fraction:
        keep, held = split_indices(len(labels), val_fraction, seed)
        train = make(images[keep], labels[keep], True)
        val = make(images[held], labels[held], False)
        held_desc = f"held-out: {val_fraction:g} of the training images"
    else:
        test_images, test_labels = load_split(folder, "test")
        train = make(images, labels, True)
        val = make(test_images, test_labels, False)
        held_desc = "held-out: the official test set"
    return DatasetSplits(train, val, len(CLASSES), f"fashion-mnist ({folder}; {held_desc})")
