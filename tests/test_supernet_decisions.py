"""compiler/decisions.py: the step's indicators computed at once equal each layer's ``decide``.

Values (hard 0/1 indicators, masked kernels, channel multipliers), gradients of the weights
and thresholds through every output, and indicator dropout's draws.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spnas_dsl.compiler.decisions import straight_through_of_squares
from spnas_dsl.compiler.superkernel import straight_through_indicator
from spnas_dsl.compiler.supernet import Supernet, lower_to_supernet
from spnas_dsl.parser import parse_text

SPACES = Path(__file__).resolve().parents[1] / "spaces"

# Nested shells and groups of different lengths in one superkernel size (7: k=<3,5,7> and k=<3,7>,
# e=<2,4,6> and e=<2,4>), a single kernel (size 3), a depthwise-separable layer, with and without skip.
MIXED_SPACE = """\
network mixed {
    input 16x16x3
    classes 5
    width 1.0
    stem conv k=3 c=8 s=1
    stage a c=8 s=1 {
        mbconv k=<3,5,7> e=<2,4,6> | skip
        mbconv k=<3,7> e=<2,4> | skip
        mbconv k=3 e=<3,6> | skip
        mbconv k=<3,5> e=1 | skip
    }
    stage b c=12 s=2 {
        mbconv k=<3,5,7> e=<2,4,6>
        mbconv k=<3,5> e=<3,6> | skip
        mbconv k=<3,5> e=6 | skip
    }
    head conv c=32 dropout=0.0
}
"""


def spaces() -> dict[str, str]:
    return {"mixed": MIXED_SPACE, "mnasnet": (SPACES / "mnasnet.spnas").read_text(),
            "fbnet_searchable": (SPACES / "fbnet_cifar100_searchable.spnas").read_text()}


def scrambled(text: str, seed: int) -> Supernet:
    """A supernet with random weights and thresholds around the norms, so that decisions differ."""
    torch.manual_seed(seed)
    supernet = lower_to_supernet(parse_text(text)).train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in supernet.searched_blocks():
            dw = block.conv_dw
            dw.weight.mul_(torch.rand(dw.weight.shape[0], 1, 1, 1, generator=g) * 2)  # uneven groups
            _, norms = dw.decide(dropout=False)
            for name, norm in norms.items():  # a threshold clearly below or above its norm (skip: mostly below)
                side = 1.0 if torch.rand((), generator=g) < (0.2 if name == "skip" else 0.5) else -1.0
                dw.threshold(name).fill_(float(norm) * (1 + side * (0.05 + 0.5 * float(torch.rand((), generator=g)))))
    return supernet


def outputs(supernet: Supernet, vectorised: bool, dropout: bool | None = None) -> list:
    """Each layer's indicators, kernel weight and channel multiplier, one way or the other."""
    blocks = list(supernet.searched_blocks())
    inds = supernet.step_decisions(blocks, dropout) if vectorised else [b.indicators(dropout) for b in blocks]
    return [(b, ind, b.conv_dw.channel_mask(ind)) for b, ind in zip(blocks, inds)]


def flags(ind) -> list:
    """The hard indicators of a layer: kernel, expansion, active (None where skip is no candidate)."""
    return ([t.item() for t in ind.kernel_on], [t.item() for t in ind.expansion_on],
            None if ind.active is None else ind.active.item())


def loss_of(outs: list, seed: int) -> torch.Tensor:
    """A random linear function of every output (so every gradient path is checked)."""
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(())
    for _, ind, mask in outs:
        for t in [*ind.kernel_on, *ind.expansion_on, *([] if ind.active is None else [ind.active])]:
            total = total + torch.randn((), generator=g) * t
        total = total + (torch.randn(ind.kernel_weight.shape, generator=g) * ind.kernel_weight).sum()
        if mask is not None:
            total = total + (torch.randn(mask.shape, generator=g) * mask).sum()
    return total


@pytest.mark.parametrize("name", list(spaces()))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_decisions_equal_each_layers_decide(name, seed):
    supernet = scrambled(spaces()[name], seed)
    grads = []
    for vectorised in (False, True):
        supernet.zero_grad(set_to_none=True)
        outs = outputs(supernet, vectorised)
        loss_of(outs, seed).backward()
        grads.append({n: p.grad for n, p in supernet.named_parameters() if "conv_dw" in n})
        if vectorised:
            reference = outputs(supernet, False)
            for (block, ind, mask), (_, ref, ref_mask) in zip(outs, reference):
                assert flags(ind) == flags(ref)
                assert ind.chosen() == ref.chosen() and ind.expand_always == block.expand_always
                assert torch.equal(ind.kernel_weight, ref.kernel_weight)  # w * (0/1 mask): exact
                assert (mask is None) == (ref_mask is None) and (mask is None or torch.equal(mask, ref_mask))
    chosen = {str(ind.chosen()) for _, ind, _ in outs}
    assert len(chosen) > 2, f"the scrambled thresholds pick too few options: {chosen}"
    reference, got = grads
    assert reference.keys() == got.keys()
    for n in reference:
        assert (reference[n] is None) == (got[n] is None), n
        if reference[n] is not None:
            torch.testing.assert_close(got[n], reference[n], rtol=1e-4, atol=1e-6, msg=n)
    assert any(float(g) != 0 for n, g in got.items() if "threshold" in n)


def test_step_decisions_draw_dropout_as_each_layer():
    """Same seed, same dropped indicators: one draw of n numbers is n scalar draws (CPU)."""
    supernet = scrambled(MIXED_SPACE, 0)
    supernet.set_indicator_dropout(0.4)
    block = next(iter(supernet.searched_blocks()))
    block.conv_dw.p_drop = 0.0  # a layer that does not drop takes no draw
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        got = outputs(supernet, True)
        after_got = torch.rand(())
        torch.manual_seed(seed)
        ref = outputs(supernet, False)
        assert torch.equal(torch.rand(()), after_got)  # the same number of draws
        for (_, ind, mask), (_, r, r_mask) in zip(got, ref):
            assert flags(ind) == flags(r)
            assert torch.equal(ind.kernel_weight, r.kernel_weight)
            assert mask is None or torch.equal(mask, r_mask)
            seen.add(str(flags(ind)))
    assert len(seen) > 4
    # eval mode (and dropout=False) draws nothing
    supernet.eval()
    torch.manual_seed(0)
    outputs(supernet, True)
    outputs(supernet, True, dropout=False)
    state = torch.rand(())
    torch.manual_seed(0)
    assert torch.equal(torch.rand(()), state)


def test_straight_through_of_squares_is_the_indicator_of_the_norm():
    norms = torch.tensor([0.0, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    thresholds = torch.tensor([-1.0, 0.7, 0.2, 2.5, 1e9], dtype=torch.float64)
    sq = (norms ** 2).requires_grad_()
    t = thresholds.clone().requires_grad_()
    got = straight_through_of_squares(sq, t)
    g = torch.tensor([0.3, -1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    (got * g).sum().backward()
    for i in range(len(norms)):
        n = norms[i].clone().requires_grad_()
        ti = thresholds[i].clone().requires_grad_()
        ref = straight_through_indicator(n, ti)
        assert got[i].item() == ref.item()
        (ref * g[i]).backward()
        chain = n.grad / (2 * norms[i]) if norms[i] > 0 else torch.zeros((), dtype=torch.float64)  # d n / d sq
        torch.testing.assert_close(sq.grad[i], chain)
        torch.testing.assert_close(t.grad[i], ti.grad)
    assert float(sq.grad[0]) == 0.0 and float(t.grad[0]) != 0.0  # a zero norm: no gradient to its squares
