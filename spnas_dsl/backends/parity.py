"""Comparing an exported model's outputs with PyTorch's.

The rule of a build: a float artifact passes when ``max |out - ref| / max |ref|`` is at most
``FLOAT_TOLERANCE`` (1e-4): differences are judged relative to the scale of the outputs.
Quantized (int8) artifacts are reported, never held to that rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FLOAT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Parity:
    """How far one artifact's outputs are from PyTorch's on one batch."""

    samples: int
    max_abs_diff: float
    max_abs_reference: float
    relative: float            # max_abs_diff / max_abs_reference
    top1_agreement: float      # fraction of samples with the same argmax

    def ok(self, tolerance: float = FLOAT_TOLERANCE) -> bool:
        return bool(np.isfinite(self.relative)) and self.relative <= tolerance

    def to_json(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"max abs diff {self.max_abs_diff:.3g} (relative {self.relative:.3g}) on {self.samples} samples"


def compare(output, reference) -> Parity:
    """The :class:`Parity` of ``output`` against ``reference`` (same shape, N x classes)."""
    out = np.asarray(output, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if out.shape != ref.shape:
        raise ValueError(f"output shape {out.shape} differs from the reference's {ref.shape}")
    diff = float(np.max(np.abs(out - ref))) if out.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    if not np.all(np.isfinite(out)):
        diff = float("inf")
    relative = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    agree = float(np.mean(out.argmax(-1) == ref.argmax(-1))) if out.ndim == 2 and len(out) else 1.0
    return Parity(int(out.shape[0]) if out.ndim else 1, diff, scale, relative, agree)


def accuracy(logits, labels) -> float:
    """Top-1 accuracy of N x classes ``logits`` against N integer ``labels``."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    return float(np.mean(logits.argmax(-1) == labels)) if len(labels) else float("nan")


def random_batch(input_chw: tuple[int, int, int], batch: int = 4, seed: int = 0) -> np.ndarray:
    """The fixed parity batch: N(0, 1) samples (the scale of normalised images), NCHW float32."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *input_chw), dtype=np.float32)
