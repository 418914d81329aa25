"""The decisions of one searched layer as (straight-through) 0/1 indicators.

Shared by the supernet (which produces them from weight norms and thresholds, paper
Eq. 1-4) and the latency graph (which prices them, paper Eq. 9-12).

Nesting: kernels k_0 < k_1 < ... are shells, expansions e_0 < e_1 < ... are channel
groups; ``kernel_on[i]`` says the shell of ``kernels[i+1]`` is on (only meaningful when the
shells below it are on), ``expansion_on[i]`` the same for channel group ``i+1``;
``active`` is 1 unless the whole layer is zero (the skip option).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spnas_dsl.ir import SKIP, Option


@dataclass
class LayerIndicators:
    kernels: tuple[int, ...]
    expansions: tuple[int, ...]
    kernel_on: list[torch.Tensor]
    expansion_on: list[torch.Tensor]
    active: torch.Tensor | None = None  # None: skip is not a candidate (always active)
    # The superkernel's weight with the chosen kernel shells (Eq. 1-2), computed once per step
    # by the supernet when it decides, so the convolution does not rebuild it; None elsewhere.
    kernel_weight: torch.Tensor | None = None
    expand_always: bool = False  # e=1 keeps its expansion conv (the option is k?e1x)
    # The (channels,) multiplier of the nested channel groups (Eq. 3-4), when the supernet computed
    # it with the indicators (compiler/decisions.py); None: computed from expansion_on where needed.
    channel_mask: torch.Tensor | None = None

    @staticmethod
    def _levels(on: list[torch.Tensor]) -> list[torch.Tensor | float]:
        """P(level i is the chosen one) = prod_{j<i} on_j * (1 - on_i), multilinear in the on's."""
        probs: list[torch.Tensor | float] = []
        reach: torch.Tensor | float = 1.0
        for flag in on:
            probs.append(reach * (1 - flag))
            reach = reach * flag
        probs.append(reach)
        return probs

    def option_weights(self) -> dict[Option, torch.Tensor | float]:
        """Weight of every option; exactly one is 1 (the others 0) when the indicators are hard.

        This multilinear form is exact at hard decisions (it picks the table entry of the
        chosen option) and differentiable through the indicators' sigmoid gradients. It
        generalises the paper's Eq. 11-12 to any nested sets (see docs/compiler.md).
        """
        active = 1.0 if self.active is None else self.active
        weights: dict[Option, torch.Tensor | float] = {}
        for k, pk in zip(self.kernels, self._levels(self.kernel_on)):
            for e, pe in zip(self.expansions, self._levels(self.expansion_on)):
                weights[Option(kernel=k, expansion=e, expand_always=self.expand_always)] = active * pk * pe
        if self.active is not None:
            weights[SKIP] = 1 - self.active
        return weights

    def chosen(self) -> Option:
        """The option the (hard) indicators select."""
        return max(self.option_weights().items(), key=lambda kv: float(torch.as_tensor(kv[1]).detach()))[0]
