"""Image folders in the ImageNet layout: ``PATH/train/<class>/*.jpg`` and ``PATH/val/<class>/*.jpg``.

Spec: ``imagefolder:PATH``. Classes are the sub-folder names of ``train/``, sorted (their
index is the label). The held-out split is ``val/`` (same class folders; a class missing
there is fine) or, when there is no ``val/`` or ``val_fraction`` is given, a seeded part
of ``train/`` (default 10 %). When ``PATH`` has no ``train/`` folder its own sub-folders
are the classes.

Decoding is per image with PIL, in DataLoader workers. Training images: the shorter side
is resized to ``image_size / 0.875``, then a random ``image_size`` crop and a random
left-right flip (randomness seeded by ``(seed, epoch, index)``, so resuming is exact).
Held-out images: the same resize, then a centre crop.

Unreadable images (truncated or corrupt files) are skipped: the next readable image of the
split takes the place of each (so batches keep their size and order stays a function of the
seed), :class:`~spnas_dsl.data.Batches` counts them and prints one summary line per pass that
met new ones, and stops with a :class:`DataError` naming them once more than
:func:`unreadable_limit` images of a split are unreadable (1 %, at least 10). Grey images become RGB by
replicating, RGB becomes grey by luminance (PIL's ``convert('L')``), as the network's
declared channels ask. Normalisation: the ImageNet statistics, mean (0.485, 0.456, 0.406),
std (0.229, 0.224, 0.225) (their luminance for one channel).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from spnas_dsl.data.datasets import DatasetSplits
from spnas_dsl.data.registry import register_dataset
from spnas_dsl.data.splits import split_indices
from spnas_dsl.data.transforms import Normalization
from spnas_dsl.errors import DataError

IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
CROP_FRACTION = 0.875
UNREADABLE_FRACTION = 0.01  # past this share of a split (and at least UNREADABLE_MIN images), stop
UNREADABLE_MIN = 10


class _Unreadable(Exception):
    """An image file PIL cannot decode (the message is PIL's reason)."""


def unreadable_limit(n: int) -> int:
    """How many unreadable images a split of ``n`` images may hold before a run stops."""
    return max(UNREADABLE_MIN, int(n * UNREADABLE_FRACTION))


def scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(file, label)]) of one split folder; ``classes`` fixes the label order."""
    dirs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = dirs
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for name in dirs:
        if name not in index:
            raise DataError(f"{folder / name}: class folder not among the training classes")
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        samples += [(str(p), index[name]) for p in files]
    return classes, samples


class ImageFolderDataset:
    """One split of an image folder: decodes, resizes and crops one image per ``__getitem__``."""

    def __init__(self, samples: list[tuple[str, int]], *, num_classes: int, image_size: int, channels: int,
                 train: bool):
        self.samples = samples
        self.num_classes = num_classes
        self.image_size = image_size
        self.channels = channels
        self.normalization = IMAGENET.to_channels(channels)
        self.train = train
        self.seed = 0
        self.epoch = 0
        self.unreadable: dict[str, str] = {}  # path -> reason, as met by Batches (main process)

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices, train: bool | None = None) -> ImageFolderDataset:
        idx = torch.as_tensor(indices, dtype=torch.int64).tolist()
        return ImageFolderDataset([self.samples[i] for i in idx], num_classes=self.num_classes,
                                  image_size=self.image_size, channels=self.channels,
                                  train=self.train if train is None else train)

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Augmentation of image ``i`` in this epoch is seeded by ``(seed, epoch, i)``."""
        self.seed, self.epoch = seed, epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label, _ = self.load(index)
        return image, label

    def load(self, index: int) -> tuple[torch.Tensor, int, str]:
        """(image, label, problems) of sample ``index``; an unreadable file is replaced by the next
        readable sample and named in ``problems`` (``path<TAB>reason`` lines; empty when none)."""
        problems = []
        n = len(self.samples)
        for k in range(min(n, unreadable_limit(n) + 1)):
            j = (index + k) % n
            path, label = self.samples[j]
            try:
                return self._decode(j), label, "\n".join(problems)
            except _Unreadable as exc:
                problems.append(f"{path}\t{str(exc).replace(' ' + repr(path), '')}")  # PIL repeats the path
        first, reason = problems[0].split("\t", 1)
        raise DataError(f"cannot decode image {first}: {reason}" + (
            f" (nor the next {len(problems) - 1} images of the split)" if len(problems) > 1 else ""))

    def _decode(self, index: int) -> torch.Tensor:
        from PIL import Image

        path, _ = self.samples[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB" if self.channels == 3 else "L")
        except Exception as exc:  # noqa: BLE001 (PIL raises many types for a bad file)
            raise _Unreadable(str(exc) or type(exc).__name__) from None
        size = self.image_size
        short = max(size, round(size / CROP_FRACTION))
        w, h = img.size
        scale = short / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        if self.train:
            rng = random.Random(hash((self.seed, self.epoch, index)))
            left, top = rng.randint(0, w - size), rng.randint(0, h - size)
            flip = rng.random() < 0.5
        else:
            left, top, flip = (w - size) // 2, (h - size) // 2, False
        img = img.crop((left, top, left + size, top + size))
        if flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(img, dtype=np.uint8)
        array = array[:, :, None] if array.ndim == 2 else array
        return torch.from_numpy(array.transpose(2, 0, 1).copy())


@register_dataset("imagefolder")
def open_imagefolder(*, arg, image_size, channels, data_dir, num_classes, seed, val_fraction) -> DatasetSplits:
    if not arg:
        raise DataError("imagefolder needs a folder: --data imagefolder:PATH")
    if channels not in (1, 3):
        raise DataError(f"imagefolder supports 1 or 3 channels, the network declares {channels}")
    root = Path(arg).expanduser()
    if data_dir and not root.is_absolute():
        root = Path(data_dir) / root
    if not root.is_dir():
        raise DataError(f"image folder {root} not found")
    train_dir = root / "train" if (root / "train").is_dir() else root
    val_dir = root / "val" if (root / "val").is_dir() and train_dir != root else None
    classes, train_samples = scan(train_dir)
    if not classes or not train_samples:
        raise DataError(f"{train_dir} has no class folders with images ({', '.join(sorted(EXTENSIONS))})")

    def make(samples, train):
        return ImageFolderDataset(samples, num_classes=len(classes), image_size=image_size, channels=channels,
                                  train=train)

    if val_dir is not None and not val_fraction:
        _, val_samples = scan(val_dir, classes)
        train, val = make(train_samples, True), make(val_samples, False)
        held = f"held-out: {val_dir}"
    else:
        fraction = val_fraction or 0.1
        keep, out = split_indices(len(train_samples), fraction, seed)
        train = make([train_samples[i] for i in keep.tolist()], True)
        val = make([train_samples[i] for i in out.tolist()], False)
        held = f"held-out: {fraction:g} of {train_dir}"
    return DatasetSplits(train, val, len(classes), f"imagefolder {root} ({len(classes)} classes; {held})")
