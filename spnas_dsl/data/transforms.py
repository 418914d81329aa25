"""Batch image transforms on uint8 tensors: channel conversion, resize, crop/flip, normalise.

Everything works on whole batches ``(N, C, H, W)`` so that in-memory data sets
(Fashion-MNIST, synthetic) are transformed with a few tensor ops per batch instead of
per-sample PIL calls. Pixel values stay uint8 until :func:`normalize`.

Normalisation: ``x = (pixel / 255 - mean[c]) / std[c]``; each data set declares its own
``mean``/``std`` (see :class:`Normalization`), converted to the requested channel count the
same way as the pixels (grey -> RGB replicates, RGB -> grey takes the luminance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma weights (what PIL's convert("L") uses).
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and standard deviation of pixel values in [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_channels(self, channels: int) -> Normalization:
        """The same statistics for ``channels`` channels (replicate grey, luminance of RGB)."""
        if len(self.mean) == channels:
            return self
        if len(self.mean) == 1:
            return Normalization(self.mean * channels, self.std * channels)
        if len(self.mean) == 3 and channels == 1:
            mean = sum(w * m for w, m in zip(LUMA, self.mean))
            std = sum(w * s for w, s in zip(LUMA, self.std))
            return Normalization((mean,), (std,))
        raise ValueError(f"cannot convert {len(self.mean)}-channel statistics to {channels} channels")


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, channels, H, W)``: grey -> RGB replicates, RGB -> grey is luminance.

    Works on uint8 (rounded) and float tensors. Supported: 1 <-> 3 and identity.
    """
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    if c == 3 and channels == 1:
        weights = torch.tensor(LUMA, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
        grey = (images.float() * weights).sum(dim=1, keepdim=True)
        if images.dtype == torch.uint8:
            return grey.round().clamp_(0, 255).to(torch.uint8)
        return grey
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels (supported: 1 <-> 3)")


def resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a batch to ``size`` (square int or (H, W)) with bilinear interpolation.

    Anti-aliased when shrinking. uint8 in, uint8 out (rounded); float stays float.
    """
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == hw:
        return images
    shrink = hw[0] < images.shape[-2] or hw[1] < images.shape[-1]
    out = F.interpolate(images.float(), size=hw, mode="bilinear", align_corners=False, antialias=shrink)
    if images.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out


def to_float(images: torch.Tensor, norm: Normalization) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` -> float32, normalised with ``norm`` (pixel / 255 - mean) / std."""
    c = images.shape[1]
    norm = norm.to_channels(c)
    mean = torch.tensor(norm.mean, dtype=torch.float32, device=images.device).view(1, c, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float32, device=images.device).view(1, c, 1, 1)
    return (images.float().div_(255.0) - mean) / std


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int) -> torch.Tensor:
    """Batch augmentation: pad by ``padding`` (zeros), take a random crop of the original size,
    and flip left-right with probability 1/2, each image independently. Deterministic given
    ``generator`` (a CPU generator)."""
    n, _, h, w = images.shape
    if padding > 0:
        images = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).tolist()
    flip = (torch.rand(n, generator=generator) < 0.5).tolist()
    out = torch.empty((n, images.shape[1], h, w), dtype=images.dtype, device=images.device)
    for i in range(n):
        crop = images[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out
