"""Synthetic, learnable images: one smooth random pattern per class, shifted, scaled and noisy.

Spec: ``synthetic`` or ``synthetic:N`` (N training images, default 4096; the held-out split
has N/4, at least 256). The number of classes is the network's (``num_classes``, default 10).
Everything is a pure function of ``seed``: class templates come from ``seed``, the training
images from ``seed + 1``, the held-out images from ``seed + 2``.

Each class template is a random ``4x4xC`` grid of values upsampled (bilinear) to the image
size; an image is its class template circularly shifted by up to 1/8 of the size in each
direction, with a random contrast in [0.7, 1.3] and Gaussian noise (sigma 0.15). A small
ConvNet tells the classes apart within an epoch or two. Images are generated at
``min(image_size, 64)`` pixels (resized per batch beyond that). Normalisation: mean 0.5, std 0.25.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spnas_dsl.data.datasets import DatasetSplits, TensorImageDataset
from spnas_dsl.data.registry import register_dataset
from spnas_dsl.data.splits import split_indices
from spnas_dsl.data.transforms import Normalization
from spnas_dsl.errors import DataError

NORMALIZATION = Normalization((0.5,), (0.25,))
DEFAULT_TRAIN = 4096
MAX_NATIVE = 64


def class_templates(num_classes: int, size: int, channels: int, seed: int) -> torch.Tensor:
    """``(num_classes, channels, size, size)`` float templates in [0, 1]."""
    g = torch.Generator()
    g.manual_seed(seed)
    grid = torch.rand(num_classes, channels, 4, 4, generator=g)
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)


def generate(templates: torch.Tensor, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` uint8 images ``(count, C, S, S)`` and their labels, balanced over the classes."""
    g = torch.Generator()
    g.manual_seed(seed)
    k, _, size, _ = templates.shape
    labels = torch.arange(count) % k
    labels = labels[torch.randperm(count, generator=g)]
    max_shift = max(size // 8, 1)
    shifts = torch.randint(-max_shift, max_shift + 1, (count, 2), generator=g).tolist()
    contrast = 0.7 + 0.6 * torch.rand(count, 1, 1, 1, generator=g)
    noise = 0.15 * torch.randn((count,) + tuple(templates.shape[1:]), generator=g)
    base = torch.stack([torch.roll(templates[int(c)], shifts=tuple(s), dims=(1, 2)) for c, s in zip(labels, shifts)])
    images = ((base - 0.5) * contrast + 0.5 + noise).clamp_(0, 1)
    return (images * 255).round_().to(torch.uint8), labels


@register_dataset("synthetic")
def open_synthetic(*, arg, image_size, channels, data_dir, num_classes, seed, val_fraction) -> DatasetSplits:
    try:
        count = int(arg) if arg else DEFAULT_TRAIN
    except ValueError:
        raise DataError(f"synthetic:N takes a number of images, got '{arg}'") from None
    if count < 1:
        raise DataError(f"synthetic:N needs N >= 1, got {count}")
    k = num_classes or 10
    native = min(image_size, MAX_NATIVE)
    templates = class_templates(k, native, channels, seed)

    def make(images, labels, train):
        return TensorImageDataset(images, labels, num_classes=k, image_size=image_size, channels=channels,
                                  normalization=NORMALIZATION, train=train)

    if val_fraction:
        images, labels = generate(templates, count, seed + 1)
        keep, held = split_indices(count, val_fraction, seed)
        train, val = make(images[keep], labels[keep], True), make(images[held], labels[held], False)
    else:
        train = make(*generate(templates, count, seed + 1), True)
        val = make(*generate(templates, max(count // 4, 256), seed + 2), False)
    return DatasetSplits(train, val, k, f"synthetic ({k} classes, seed {seed})")
