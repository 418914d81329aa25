"""What stops a loop: divergence, and the test hooks a loop accepts (injected, never read from the environment).

    hooks = Hooks(after_step=lambda step: os._exit(99) if step == 9 else None)   # a test: die after step 9
    run_search(cfg, out_dir=out, hooks=hooks)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from spnas_dsl.errors import SpnasError


class Diverged(SpnasError):
    """The loss became NaN or infinite: the run stops and keeps its last good checkpoint."""


@dataclass(frozen=True)
class Hooks:
    """Called by the search and train loops; the CLI passes none. Steps count from 1."""

    loss: Callable[[int, torch.Tensor], torch.Tensor] | None = None  # (step, loss) -> the loss to use
    after_step: Callable[[int], None] | None = None  # after step N is done (and checkpointed)

    def on_loss(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.loss is None else self.loss(step, loss)

    def on_step_done(self, step: int) -> None:
        if self.after_step is not None:
            self.after_step(step)


NO_HOOKS = Hooks()


def diverged(value: float, step: int, epoch: int, last_good: int | None, out, lr: float) -> Diverged:
    """The error of a non-finite loss at ``step`` (counting from 1), naming the checkpoint kept."""
    kept = (f"The last good checkpoint (step {last_good}) is kept in {out}; " if last_good is not None
            else "No checkpoint was saved yet; ")
    return Diverged(f"the loss became {value} at step {step} (epoch {epoch}); stopped. {kept}"
                    f"try a lower --lr (now {lr:g})")
