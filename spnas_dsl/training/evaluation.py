"""Held-out evaluation and BN re-estimation ("precise BN"), for every loop and every network.

    precise_bn(model, calibration_batches, images=1024)   # BN statistics measured for these weights
    scores = evaluate(model, held_out_batches, info)       # {"top1", "top5", "loss", "images"}
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from spnas_dsl.training.distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def evaluate(model: nn.Module, batches, info: DistInfo | None = None, *, ks: tuple[int, ...] = (1, 5),
             logits_of: Callable = lambda out: out) -> dict[str, float]:
    """Top-k accuracies (``top1``, ``top5``), mean cross-entropy (``loss``) and ``images``.

    ``batches`` yields ``(x, y)`` (e.g. :class:`spnas_dsl.data.Batches` of this rank's shard);
    under DDP the sums are taken over ranks. ``logits_of`` picks the logits out of the model's
    output (``lambda out: out.logits`` for a supernet). The model is evaluated in eval mode and
    left in the mode it was in.
    """
    was_training = model.training
    model.eval()
    correct = [0.0] * len(ks)
    ce_sum = total = 0.0
    for x, y in batches:
        logits = logits_of(model(x)).float()
        ce_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
        hits = top == y[:, None]
        for i, k in enumerate(ks):
            correct[i] += float(hits[:, :k].any(dim=1).sum())
        total += len(y)
    model.train(was_training)
    if info is not None:
        *correct, ce_sum, total = all_reduce_sum([*correct, ce_sum, total], info)
    out = {f"top{k}": c / max(total, 1) for k, c in zip(ks, correct)}
    return out | {"loss": ce_sum / max(total, 1), "images": int(total)}


@torch.no_grad()
def precise_bn(model: nn.Module, batches, images: int | None = None) -> int:
    """Replace every BN's running statistics by their average over ``images`` training images.

    BN's running statistics are an exponential average with momentum 0.01 (the paper's 0.99 in
    TF's convention): a horizon of ~100 steps, so in a short run they trail far behind weights
    that are still moving fast and the held-out accuracy in eval mode is badly off (e.g. 25 %
    instead of 83 % after one Fashion-MNIST epoch); a supernet's statistics mix every
    sub-network it trained. A forward pass over a few batches with only the BN layers in train
    mode and cumulative averaging (``momentum=None``) measures them for the current weights and
    decisions. Dropout stays off and the global RNG is not touched (evaluating does not change
    the run); weights, ``num_batches_tracked``, the BN momentum and every module's train/eval
    mode are left as they were. ``images=None``: every batch. Returns the number of images used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or (images is not None and images <= 0):
        return 0
    saved = [(bn.momentum, bn.num_batches_tracked.clone()) for bn in bns]
    modes = [(m, m.training) for m in model.modules()]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches below
    model.eval()
    for bn in bns:
        bn.train()
    seen = 0
    try:
        with torch.random.fork_rng(devices=[]):
            for x, _ in batches:
                if images is not None and seen >= images:
                    break
                model(x)
                seen += len(x)
    finally:
        for bn, (momentum, tracked) in zip(bns, saved):
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(tracked)
        for m, mode in modes:
            m.training = mode
    return seen


def sync_buffers(model: nn.Module, info: DistInfo) -> None:
    """Rank 0's BN statistics on every rank (before an evaluation under DDP without precise BN)."""
    if info.enabled:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
