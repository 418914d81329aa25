"""The data set types: what a split is (:class:`ImageDataset`), the in-memory split
(:class:`TensorImageDataset`) and a data set's training and held-out splits (:class:`DatasetSplits`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from spnas_dsl.data.transforms import Normalization, convert_channels, random_crop_flip, resize


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
