"""The optimisation recipe: optimizer, parameter groups, learning-rate schedule, loss.

Defaults follow the official Single-Path NAS / MnasNet TPU code:
RMSProp in TensorFlow's form (decay 0.9, momentum 0.9, epsilon 1e-3 *inside* the square
root, mean-square accumulator initialised to 1), learning rate ``0.016 * batch / 256``,
exponential decay x0.97 every 2.4 epochs (staircase), label smoothing 0.1, weight decay
1e-5 (L2 added to the gradient) on convolution and linear weights only: not on
BatchNorm parameters, biases, nor scalar parameters such as the NAS thresholds.
The alternative is SGD (Nesterov momentum 0.9) with a cosine schedule, lr ``0.1 * batch / 256``.

Reusable by any training loop::

    recipe = Recipe(optimizer="rmsprop", batch_size=256)
    opt = build_optimizer(model, recipe)
    sched = build_scheduler(opt, recipe, steps_per_epoch=len(loader), epochs=10)
    ... loss.backward(); opt.step(); sched.step()   # the schedule advances per step
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from spnas_dsl.errors import UsageError

OPTIMIZERS = ("rmsprop", "sgd")
SCHEDULES = ("exponential", "cosine", "constant")


@dataclass
class Recipe:
    """Hyper-parameters of the optimisation (``lr=None``: scaled from ``batch_size``)."""

    optimizer: str = "rmsprop"
    batch_size: int = 256
    lr: float | None = None
    weight_decay: float = 1e-5
    momentum: float = 0.9
    rms_decay: float = 0.9
    eps: float = 1e-3
    schedule: str | None = None  # None: exponential for rmsprop, cosine for sgd
    lr_decay: float = 0.97
    decay_epochs: float = 2.4
    warmup_epochs: float = 0.0  # linear lr warm-up (the official search has none)
    label_smoothing: float = 0.1
    # NAS thresholds (build_optimizer's ``threshold_ids``): their own group, see build_optimizer
    threshold_lr_scale: float = 1.0
    threshold_eps: float | None = None  # None: the weights' eps, TF form
    threshold_momentum: float | None = None  # None: the weights' momentum

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown optimizer '{self.optimizer}'; known: {', '.join(OPTIMIZERS)}")
        if self.schedule is None:
            self.schedule = "exponential" if self.optimizer == "rmsprop" else "cosine"
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown lr schedule '{self.schedule}'; known: {', '.join(SCHEDULES)}")
        if self.batch_size < 1:
            raise UsageError(f"batch size must be positive, got {self.batch_size}")

    @property
    def base_lr(self) -> float:
        """The peak learning rate: ``lr`` or the linear-scaling default for the global batch."""
        if self.lr is not None:
            return self.lr
        per_256 = 0.016 if self.optimizer == "rmsprop" else 0.1
        return per_256 * self.batch_size / 256

    def to_dict(self) -> dict:
        return asdict(self) | {"base_lr": self.base_lr}


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """BatchNorm parameters, biases and scalars (thresholds) get no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias") or "threshold" in name.rsplit(".", 1)[-1]


def param_groups(model: nn.Module, weight_decay: float, extra_no_decay: set[int] | None = None,
                 threshold_ids: set[int] | None = None) -> list[dict]:
    """Parameter groups: ``decay`` (conv / linear weights), ``no_decay`` (BN, biases, scalars) and,
    when ``threshold_ids`` are given, ``thresholds`` (no decay either).

    ``extra_no_decay``: ids of more parameters to exclude from decay. Each group carries a
    ``name`` for logging. Empty groups are left out.
    """
    extra = (extra_no_decay or set()) | (threshold_ids or set())
    thresholds = threshold_ids or set()
    decay, no_decay, special = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in thresholds:
            special.append(p)
        elif is_no_decay(name, p) or id(p) in extra:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        {"params": special, "weight_decay": 0.0, "name": "thresholds"},
    ]
    return [g for g in groups if g["params"]]


class MultiRuleOptimizer(torch.optim.Optimizer):
    """One optimizer whose parameter groups may follow different update rules (one ``step``).

    Each group's ``rule``: ``"rmsprop_tf"`` (:class:`RMSpropTF`'s TF form), ``"rmsprop"``
    (accumulator from 0, ``eps`` outside the root: steps of about ``lr`` whatever the gradient's
    size) or ``"sgd"`` (PyTorch's SGD, Nesterov momentum). Used for a supernet, whose decision
    thresholds need normalised steps whatever the weights' optimizer (see docs/search.md).
    """

    def __init__(self, params, lr: float, rule: str = "rmsprop_tf", alpha: float = 0.9, eps: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "rule": rule, "alpha": alpha, "eps": eps, "momentum": momentum,
                                  "weight_decay": weight_decay})

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:  # groups saved by RMSpropTF before it was one of these
            group.setdefault("rule", self.defaults["rule"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            rule, lr, momentum = group["rule"], group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad if not group["weight_decay"] else p.grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if rule == "sgd":
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = grad.clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(grad)
                    p.sub_(grad.add(state["momentum_buffer"], alpha=momentum), alpha=lr)  # Nesterov
                    continue
                if not state:
                    state["square_avg"] = torch.ones_like(p) if rule == "rmsprop_tf" else torch.zeros_like(p)
                    state["momentum_buffer"] = torch.zeros_like(p)
                ms, buf = state["square_avg"], state["momentum_buffer"]
                ms.mul_(group["alpha"]).addcmul_(grad, grad, value=1 - group["alpha"])
                denom = ms.add(group["eps"]).sqrt_() if rule == "rmsprop_tf" else ms.sqrt().add_(group["eps"])
                buf.mul_(momentum).addcdiv_(grad, denom, value=lr)
                p.sub_(buf)
        return loss


class RMSpropTF(MultiRuleOptimizer):
    """RMSProp as TensorFlow 1 (``tf.train.RMSPropOptimizer``) computes it:

        ms  = decay * ms + (1 - decay) * g^2          (ms starts at 1, not 0)
        mom = momentum * mom + lr * g / sqrt(ms + eps)
        w  -= mom

    ``weight_decay`` adds ``wd * w`` to the gradient (the official code's L2 loss term).
    PyTorch's ``RMSprop`` differs (ms from 0, eps outside the root), which makes the first
    steps several times larger; the official recipe's hyper-parameters assume this form.
    The update is :class:`MultiRuleOptimizer`'s ``"rmsprop_tf"`` rule for every group.
    """

    def __init__(self, params, lr: float, alpha: float = 0.9, eps: float = 1e-3, momentum: float = 0.9,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, rule="rmsprop_tf", alpha=alpha, eps=eps, momentum=momentum,
                         weight_decay=weight_decay)


def build_optimizer(model: nn.Module, recipe: Recipe, extra_no_decay: set[int] | None = None,
                    threshold_ids: set[int] | None = None) -> torch.optim.Optimizer:
    """The recipe's optimizer over every trainable parameter of ``model`` (one optimizer for all).

    Without ``threshold_ids``: :class:`RMSpropTF` or ``torch.optim.SGD`` (Nesterov).
    ``threshold_ids`` (a NAS supernet's decision thresholds) get their own group in a
    :class:`MultiRuleOptimizer`: no weight decay, lr x ``recipe.threshold_lr_scale``, momentum
    ``recipe.threshold_momentum`` (when set) and, when ``recipe.threshold_eps`` is set, the
    ``"rmsprop"`` rule with that epsilon (else the weights' rule).
    """
    groups = param_groups(model, recipe.weight_decay, extra_no_decay, threshold_ids)
    if not threshold_ids:
        if recipe.optimizer == "rmsprop":
            return RMSpropTF(groups, lr=recipe.base_lr, alpha=recipe.rms_decay, eps=recipe.eps,
                             momentum=recipe.momentum)
        return torch.optim.SGD(groups, lr=recipe.base_lr, momentum=recipe.momentum, nesterov=True)
    rule = "rmsprop_tf" if recipe.optimizer == "rmsprop" else "sgd"
    for g in groups:
        if g["name"] == "thresholds":
            g["lr"] = recipe.base_lr * recipe.threshold_lr_scale
            if recipe.threshold_momentum is not None:
                g["momentum"] = recipe.threshold_momentum
            if recipe.threshold_eps is not None:
                g["rule"], g["eps"] = "rmsprop", recipe.threshold_eps
    return MultiRuleOptimizer(groups, lr=recipe.base_lr, rule=rule, alpha=recipe.rms_decay, eps=recipe.eps,
                              momentum=recipe.momentum)


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the base lr at (0-based) ``step``."""
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if recipe.schedule == "exponential":
        decay_steps = max(1, round(recipe.decay_epochs * steps_per_epoch))
        return recipe.lr_decay ** ((step - warmup) // decay_steps)  # staircase, as TF's exponential_decay
    if recipe.schedule == "cosine":
        span = max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule (call ``scheduler.step()`` after every optimizer step)."""
    total = max(1, steps_per_epoch * epochs)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(recipe, step, max(1, steps_per_epoch), total)
    )


def loss_function(recipe: Recipe) -> nn.CrossEntropyLoss:
    """Cross-entropy with the recipe's label smoothing."""
    return nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
