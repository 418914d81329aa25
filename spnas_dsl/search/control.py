"""Steering the search: the latency weight lambda (fixed or steered to a budget) and the thresholds' lr.

The network's landing in the budget band at the end is :func:`spnas_dsl.search.budget.fit_to_budget`.
"""

from __future__ import annotations

import math


class LambdaController:
    """The latency weight of the loss at each step.

    - Warm-up steps: 0.
    - Fixed (``--lambda L``): ``L`` afterwards.
    - Budget (``--latency-budget B``): ``lambda = lambda0 * exp(u)``. After every ``every``
      latency-phase steps, ``u += gain * clip(ln(H / B) / 0.05, -1, 1)``, ``H`` the latency of
      the current *hard* decisions: over budget lambda grows, under it lambda shrinks, by up to
      ``exp(gain)`` per update (full speed once 5 % off). ``u`` is kept in [-12, 2]: lambda
      between ``lambda0 * 6e-6`` and ``lambda0 * 7.4``. A fast, almost bang-bang controller:
      with the default threshold optimizer lambda acts on the decisions through the sign of
      each trade-off (``lambda * dR/R`` against ``dCE``), not through the size of the steps,
      so what matters is how soon lambda crosses those balance points.
    """

    U_MIN, U_MAX = -12.0, 2.0

    def __init__(self, lam: float, budget: float | None, gain: float = 0.2, every: int = 1):
        self.lam0 = lam
        self.budget = budget
        self.gain = gain
        self.every = max(1, every)
        self.u = 0.0

    def value(self, in_warmup: bool) -> float:
        if in_warmup:
            return 0.0
        return self.lam0 * math.exp(self.u) if self.budget is not None else self.lam0

    def update(self, step_in_phase: int, hard_ms: float) -> None:
        """Called after every latency-phase step with the hard latency of the decisions."""
        if self.budget is None or step_in_phase % self.every:
            return
        error = max(-1.0, min(1.0, math.log(max(hard_ms, 1e-9) / self.budget) / 0.05))
        self.u = min(self.U_MAX, max(self.U_MIN, self.u + self.gain * error))

    def state_dict(self) -> dict[str, float]:
        return {"u": self.u}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.u = float(state["u"])


def set_threshold_lr(optimizer, lr: float | None, warmup: bool) -> None:
    """The thresholds' learning rate for the next step (default threshold optimizer).

    In the warm-up, 0: its normalised steps would random-walk the thresholds on the noisy CE
    gradients (with the official settings they hardly move anyway), so the latency phase starts
    from the largest network, as the paper's does. Then the constant ``lr``. ``lr=None``
    (``--official-thresholds``): the weights' schedule, untouched. Call after
    ``scheduler.step()``, which resets every group's lr from the schedule.
    """
    if lr is None:
        return
    for group in optimizer.param_groups:
        if group.get("name") == "thresholds":
            group["lr"] = 0.0 if warmup else lr
