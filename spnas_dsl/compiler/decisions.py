"""Every searched layer's decisions of one supernet step, computed at once (paper Eq. 1-4).

``SuperKernel.decide`` defines the decisions of one layer and stays the reference (a block
called on its own, ``Supernet.decisions()``, ``decision_report()``). A training step takes
all of them, and on a CPU the few dozen tiny ops per layer (a norm, a slice, a comparison, a
mask for every decision, each with its autograd node) cost more than their arithmetic:
they were most of what the supernet paid over its largest child (benchmarks/supernet_cost.py).

:class:`StepDecisions` computes the same indicators with a fixed number of ops per
superkernel size, whatever the number of layers. The depthwise weights of the layers that
share a size ``K`` are concatenated along channels into one ``(channels, K*K)`` matrix ``W``:

1. kernel decisions: per-layer, per-position sums of squares of ``W`` (one ``index_add``),
   dotted with each layer's shells give every shell's squared norm; one straight-through
   node compares all of them with their stacked thresholds;
2. ``W_k = W * mask`` with each layer's nested shell multiplier (``shell_0 + reach @ shells``,
   Eq. 1-2), then per channel group sums of squares of ``W_k`` (another ``index_add``) give
   the expansion and skip norms (Eq. 3-4), and a second straight-through node decides them;
3. the channel multipliers of every layer (nested group products) in one gather.

Values are those of ``SuperKernel.decide`` (norms to float rounding: a sum of squares and a
square root instead of ``vector_norm``); gradients are the same functions of the weights and
thresholds: ``sigmoid(norm - threshold)``'s slope, reaching the weights through the norms and
the masks. Indicator dropout draws one ``torch.rand(n)`` for the ``n`` decisions of the
layers that drop, in the per-layer order of ``decide``: on a CPU the very numbers that ``n``
scalar draws give (tests/test_supernet_decisions.py); on an accelerator one draw of ``n`` is
not ``n`` draws of one, so the dropped indicators differ from ``decide``'s draw by draw (same
distribution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spnas_dsl.compiler.superkernel import SuperKernel, SuperMBConv
from spnas_dsl.latency.indicators import LayerIndicators

__all__ = ["StepDecisions", "straight_through_of_squares"]


class _StraightThroughOfSquares(torch.autograd.Function):
    """Elementwise ``1(sqrt(sq) > threshold)`` forward; the gradient of ``sigmoid(sqrt(sq) - threshold)``.

    Taking squared norms lets this one node take the square root too; like ``vector_norm``'s
    backward, a zero norm passes no gradient to its squares (instead of ``0 * inf``).
    """

    @staticmethod
    def forward(ctx, sq: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        norm = sq.sqrt()
        sig = torch.sigmoid(norm - threshold)
        slope = sig * (1 - sig)
        # d norm / d sq = 1 / (2 norm), 0 where the norm is 0
        ctx.save_for_backward(slope, torch.where(norm > 0, slope / (2 * norm), 0.0))
        return (norm > threshold).to(sq.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        slope, sq_slope = ctx.saved_tensors
        return grad * sq_slope, -(grad * slope)


def straight_through_of_squares(sq: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``straight_through_indicator(sqrt(sq), threshold)`` elementwise, as one autograd node."""
    return _StraightThroughOfSquares.apply(sq, threshold)


@dataclass
class _Family:
    """The searched layers that share a superkernel size K ("members"), with the index lists that
    vectorise them (tensors of them are cached per device and dtype).

    Decision vectors: the kernel decisions layer-major (``k5, k7`` of the first member, then the
    next, ...); phase 2 holds every expansion decision layer-major, then every skip decision.
    Per-member matrices are padded to ``slots`` decisions (a member with fewer has its last
    slots always on and zero shells there, which leaves its nested products as they are).
    """

    members: list[int]  # positions in the supernet's searched-block list
    channels: list[int]  # depthwise channels of each member
    size: int  # K
    kernel_slots: int  # most kernel decisions of a member (J)
    group_slots: int  # most expansion decisions of a member (E)
    kernel_decisions: list[tuple[int, str]]  # (block position, decision name), in vector order
    phase2_decisions: list[tuple[int, str]]
    n_expansion: int  # expansion decisions at the head of phase 2
    outputs: list[tuple[list[int], list[int], int | None]]  # per member: its kernel, expansion, skip positions
    n_groups: int  # channel groups of all members
    first: torch.Tensor  # (L, K*K): each member's smallest kernel
    rest: torch.Tensor  # (L, J, K*K): each member's shells beyond it, zero-padded
    # index lists: layer_of_channel / group_of_channel / group_slot_of_channel (member, its group, its
    # (member, slot) in the (L, E + 1) group matrix); kernel_pad / group_pad (each decision's flat slot);
    # kernel_global / phase2_global (its place in the dropout draw order); phase2_group (the group it norms)
    lists: dict[str, list[int]]
    tensors: dict[tuple, dict[str, torch.Tensor]]

    def buffers(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """The shells and index tensors on ``like``'s device and dtype (built once per device and dtype)."""
        key = (like.device, like.dtype)
        if key not in self.tensors:
            found = {name: torch.tensor(values, dtype=torch.long, device=like.device)
                     for name, values in self.lists.items()}
            self.tensors[key] = {**found, "first": self.first.to(like), "rest": self.rest.to(like)}
        return self.tensors[key]


class StepDecisions:
    """The indicators of every searched layer of a supernet, computed together (see the module doc).

    Build once from the supernet's searched blocks (``Supernet.searched_blocks()``), call with
    the same blocks at each step. Keeps no reference to the blocks: their layout, and index
    tensors cached per device and dtype.
    """

    def __init__(self, blocks: list[SuperMBConv]):
        self.counts = [len(b.conv_dw.decision_names) for b in blocks]
        self.starts = [sum(self.counts[:i]) for i in range(len(blocks))]  # each layer's first decision
        by_size: dict[int, list[int]] = {}
        for i, block in enumerate(blocks):
            by_size.setdefault(block.conv_dw.weight.shape[-1], []).append(i)
        self.families = [self._family(blocks, members, size) for size, members in by_size.items()]

    def _family(self, blocks: list[SuperMBConv], members: list[int], size: int) -> _Family:
        dws: list[SuperKernel] = [blocks[i].conv_dw for i in members]
        J = max(len(dw.kernels) - 1 for dw in dws)
        E = max(len(dw.expansions) - 1 for dw in dws)
        P = size * size
        first, rest = torch.zeros(len(dws), P), torch.zeros(len(dws), J, P)
        kernels, expansions, skips = [], [], []  # (block, name, global position, padded position / group)
        lists: dict[str, list[int]] = {"layer_of_channel": [], "group_of_channel": [], "group_slot_of_channel": []}
        n_groups = 0
        for m, (i, dw) in enumerate(zip(members, dws)):
            shells = dw.shells.detach().to("cpu", torch.float32).reshape(len(dw.kernels), P)
            first[m], rest[m, :len(dw.kernels) - 1] = shells[0], shells[1:]
            for g, (lo, hi) in enumerate(zip((0,) + dw.group_ends[:-1], dw.group_ends)):
                lists["layer_of_channel"] += [m] * (hi - lo)
                lists["group_of_channel"] += [n_groups + g] * (hi - lo)
                lists["group_slot_of_channel"] += [m * (E + 1) + g] * (hi - lo)
            n_k = len(dw.kernels) - 1
            for j, name in enumerate(dw.decision_names):  # decide's order: k.., e.., skip
                where = self.starts[i] + j
                if j < n_k:
                    kernels.append((i, name, where, m * J + j))
                elif name != "skip":  # expansion e_g, g = j - n_k + 1: the norm of group g
                    expansions.append((i, name, where, m * E + j - n_k, n_groups + j - n_k + 1))
                else:  # the norm of group 0
                    skips.append((i, name, where, n_groups))
            n_groups += len(dw.group_ends)
        phase2 = expansions + [(i, name, where, -1, group) for i, name, where, group in skips]
        lists.update(kernel_global=[d[2] for d in kernels], kernel_pad=[d[3] for d in kernels],
                     phase2_global=[d[2] for d in phase2], group_pad=[d[3] for d in expansions],
                     phase2_group=[d[4] for d in phase2])
        outputs = []
        for i in members:
            skip_at = [p for p, d in enumerate(phase2) if d[0] == i and d[1] == "skip"]
            outputs.append(([p for p, d in enumerate(kernels) if d[0] == i],
                            [p for p, d in enumerate(expansions) if d[0] == i], skip_at[0] if skip_at else None))
        return _Family(members, [dw.weight.shape[0] for dw in dws], size, J, E, [d[:2] for d in kernels],
                       [d[:2] for d in phase2], len(expansions), outputs, n_groups, first, rest, lists, {})

    def __call__(self, blocks: list[SuperMBConv], dropout: bool | None = None) -> list[LayerIndicators]:
        """The indicators of ``blocks`` (those this was built from), in order: what each block's
        ``indicators(dropout)`` gives, with ``kernel_weight`` and ``channel_mask`` filled in.

        ``dropout``: drop indicators with each layer's ``p_drop`` (default: in the layer's training mode).
        """
        if len(blocks) != len(self.counts):
            raise ValueError(f"StepDecisions was built for {len(self.counts)} searched layers, got {len(blocks)}")
        keep = self._keep(blocks, dropout)
        out: list[LayerIndicators] = [None] * len(blocks)  # type: ignore[list-item]
        for family in self.families:
            _decide_family(family, blocks, keep, out)
        return out

    def _keep(self, blocks: list[SuperMBConv], dropout: bool | None) -> torch.Tensor | None:
        """1/0 per decision of the step, in ``decide``'s order (None: nothing drops). One draw for
        the decisions of the layers that drop, in that order: on a CPU, the numbers that as many
        scalar draws (``decide``'s) give."""
        drops = [dw.p_drop if (dw.training if dropout is None else dropout) else 0.0
                 for dw in (block.conv_dw for block in blocks)]
        if not any(p > 0 for p in drops):
            return None
        like = blocks[0].conv_dw.weight
        where = [s for p, n, s0 in zip(drops, self.counts, self.starts) if p > 0 for s in range(s0, s0 + n)]
        p = torch.tensor([p for p, n in zip(drops, self.counts) if p > 0 for _ in range(n)], device=like.device)
        drawn = (torch.rand(len(where), device=like.device) >= p).to(like.dtype)
        if len(where) == sum(self.counts):
            return drawn
        return like.new_ones(sum(self.counts)).index_copy(0, torch.tensor(where, device=like.device), drawn)


def _decide_family(f: _Family, blocks: list[SuperMBConv], keep: torch.Tensor | None,
                   out: list[LayerIndicators]) -> None:
    """The indicators of one family's members into ``out`` (three phases, see the module doc)."""
    dws = [blocks[i].conv_dw for i in f.members]
    P, L = f.size * f.size, len(f.members)
    W = torch.cat([dw.weight.view(-1, P) for dw in dws])  # (channels of the family, K*K)
    t = f.buffers(W)

    # 1. kernel shells (Eq. 1-2): squared shell norms of the raw weight, over all its channels
    kernel_on: torch.Tensor | None = None
    if f.kernel_decisions:
        per_position = W.new_zeros(L, P).index_add(0, t["layer_of_channel"], W * W)
        sq = torch.bmm(t["rest"], per_position.unsqueeze(-1)).view(-1)  # (L * J,)
        if len(f.kernel_decisions) != sq.numel():
            sq = sq[t["kernel_pad"]]
        thresholds = torch.stack([blocks[i].conv_dw.threshold(name) for i, name in f.kernel_decisions])
        kernel_on = straight_through_of_squares(sq, thresholds)
        if keep is not None:  # indicator dropout: a dropped subset is off for this step
            kernel_on = kernel_on * keep[t["kernel_global"]]
        flags = _padded(kernel_on, t["kernel_pad"], L, f.kernel_slots)
        reach = flags if f.kernel_slots == 1 else flags.cumprod(1)  # shell j is on when shells 1..j are
        mask = torch.baddbmm(t["first"].unsqueeze(1), reach.unsqueeze(1), t["rest"]).squeeze(1)  # (L, K*K)
        W_k = W * mask[t["layer_of_channel"]]
    else:
        W_k = W * t["first"][t["layer_of_channel"]]

    # 2. expansions and skip (Eq. 3-4): squared norms of the channel groups of w_k
    phase2: torch.Tensor | None = None
    if f.phase2_decisions:
        groups = W_k.new_zeros(f.n_groups).index_add(0, t["group_of_channel"], (W_k * W_k).sum(1))
        thresholds = torch.stack([blocks[i].conv_dw.threshold(name) for i, name in f.phase2_decisions])
        phase2 = straight_through_of_squares(groups[t["phase2_group"]], thresholds)
        if keep is not None:
            phase2 = phase2 * keep[t["phase2_global"]]

    # 3. channel multipliers: group g of a layer is on when groups 1..g are (nested, Eq. 3-4)
    channel_masks: list[torch.Tensor | None] = [None] * L
    if f.n_expansion:
        flags = _padded(phase2[:f.n_expansion], t["group_pad"], L, f.group_slots)
        reach = flags if f.group_slots == 1 else flags.cumprod(1)
        per_group = torch.cat([reach.new_ones(L, 1), reach], 1).view(-1)
        channel_masks = list(per_group[t["group_slot_of_channel"]].split(f.channels))

    kernel_list = kernel_on.unbind() if kernel_on is not None else ()
    phase2_list = phase2.unbind() if phase2 is not None else ()
    for m, (i, dw, weight) in enumerate(zip(f.members, dws, W_k.split(f.channels))):
        kernel_at, expansion_at, skip_at = f.outputs[m]
        out[i] = LayerIndicators(
            dw.kernels, dw.expansions, [kernel_list[p] for p in kernel_at], [phase2_list[p] for p in expansion_at],
            None if skip_at is None else phase2_list[skip_at], weight.view_as(dw.weight),
            expand_always=blocks[i].expand_always, channel_mask=channel_masks[m] if expansion_at else None)


def _padded(flags: torch.Tensor, positions: torch.Tensor, rows: int, slots: int) -> torch.Tensor:
    """``flags`` at their flat ``positions`` of a (rows, slots) matrix of ones."""
    if flags.numel() == rows * slots:  # every member has all its slots: the positions are 0, 1, ...
        return flags.view(rows, slots)
    return flags.new_ones(rows * slots).index_copy(0, positions, flags).view(rows, slots)
