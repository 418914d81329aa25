"""The single-path supernet: exactness per option, decisions, gradients, latency, derive."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from spnas_dsl.compiler.blocks import torch_block
from spnas_dsl.compiler.supernet import SuperKernel, SuperMBConv, Supernet, lower_to_supernet
from spnas_dsl.errors import LoweringError
from spnas_dsl.ir import SKIP, Network, Option
from spnas_dsl.latency.indicators import LayerIndicators
from spnas_dsl.ops import Site
from spnas_dsl.parser import parse_text
from spnas_dsl.printer import format_network
from spnas_dsl.shapes import infer_shapes
from spnas_dsl.targets import load_target

SPACES = Path(__file__).resolve().parents[1] / "spaces"

WIDE_SPACE = """\
network wide {
    input 16x16x3
    classes 5
    width 1.0
    stem conv k=3 c=8 s=1
    stage a c=8 s=1 {
        mbconv k=<3,5,7> e=<2,4,6> | skip
    }
    stage b c=12 s=2 {
        mbconv k=<3,5,7> e=<2,4,6>
        skip
        mbconv k=3 e=1
    }
    head conv c=32 dropout=0.0
}
"""


def mbconv(in_chs: int, out_chs: int, kernel: int, stride: int, expansion: int):
    """The MBConv block of (kernel, expansion): depthwise-separable at e=1 (``ops`` registry)."""
    return torch_block(Option(kernel=kernel, expansion=expansion), Site((1, 1, in_chs), out_chs, stride))


class FakeGraph:
    """Prices each option of each searched layer from a table (multilinear, as the real graph)."""

    def __init__(self, space: Network, fixed: float = 2.5):
        self.fixed = fixed
        # Prices that are exact in binary floating point, distinct per option and layer.
        self.table = {
            s.index: {o: (0.0 if o.is_skip else 0.25 * o.kernel * o.expansion + 0.5 * s.index)
                      for o in s.layer.options}
            for s in infer_shapes(space).layers if s.is_searched
        }

    def lookup(self, decisions: dict[int, Option]) -> float:
        return self.fixed + sum(self.table[i][o] for i, o in sorted(decisions.items()))

    def relaxed_latency(self, indicators: dict[int, LayerIndicators]) -> torch.Tensor:
        total = torch.tensor(self.fixed, dtype=torch.float64)
        for index, ind in sorted(indicators.items()):
            for option, weight in ind.option_weights().items():
                total = total + weight * self.table[index][option]
        return total


def load(path: str) -> Network:
    return parse_text((SPACES / path).read_text(), filename=path)


@pytest.fixture(scope="module")
def fashion() -> Network:
    return load("fashion_mnist.spnas")


def randomize_bn(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN parameters and running statistics (so eval mode tests something)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


def sliced_block(block: SuperMBConv, in_chs: int, out_chs: int, stride: int, option: Option) -> nn.Module:
    """A standalone block of ``option`` with the weights sliced out of ``block`` by hand."""
    k, e = option.kernel, option.expansion
    mid = in_chs * e
    ref = mbconv(in_chs, out_chs, k, stride, e)
    kmax = block.conv_dw.weight.shape[-1]
    lo = (kmax - k) // 2
    with torch.no_grad():
        ref.conv_pw.weight.copy_(block.conv_pw.weight[:mid])
        ref.conv_dw.weight.copy_(block.conv_dw.weight[:mid, :, lo:lo + k, lo:lo + k])
        ref.conv_pwl.weight.copy_(block.conv_pwl.weight[:, :mid])
        for name, n in (("bn1", mid), ("bn2", mid), ("bn3", out_chs)):
            src, dst = getattr(block, name), getattr(ref, name)
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(dst, attr).copy_(getattr(src, attr)[:n])
            dst.num_batches_tracked.copy_(src.num_batches_tracked)
    return ref


def block_at(supernet: Supernet, index: int) -> SuperMBConv:
    return next(b for b in supernet.searched_blocks() if b.index == index)


def check_option_equivalence(space: Network, index: int, option: Option, train: bool) -> None:
    torch.manual_seed(index)
    supernet = lower_to_supernet(space)
    block = block_at(supernet, index)
    shape = infer_shapes(space).layers[index]
    in_chs, out_chs = shape.in_hwc[2], shape.out_hwc[2]
    randomize_bn(block, seed=index)
    block.select(option)
    with torch.no_grad():
        assert block.indicators(dropout=False).chosen() == option
    x = torch.randn(4, in_chs, shape.in_hwc[0], shape.in_hwc[1])
    block.train(train)
    got = block(x)
    if option.is_skip:
        torch.testing.assert_close(got, x, rtol=0, atol=0)
        return
    ref = sliced_block(block, in_chs, out_chs, shape.stride, option).train(train)
    torch.testing.assert_close(got, ref(x), rtol=1e-5, atol=1e-5)


FASHION_OPTIONS = [Option(kernel=k, expansion=e) for k in (3, 5) for e in (3, 6)] + [SKIP]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("option", FASHION_OPTIONS, ids=str)
def test_fashion_layer_equals_standalone_block(fashion, option, train):
    """Layer 2 (s16.1: stride 1, residual, skippable) at each option == the sliced concrete block."""
    check_option_equivalence(fashion, 2, option, train)


@pytest.mark.parametrize("option", FASHION_OPTIONS[:4], ids=str)
def test_fashion_stride2_layer_equals_standalone_block(fashion, option):
    """Layer 1 (s16.0: stride 2, 8 -> 16 channels, no skip) in train mode."""
    check_option_equivalence(fashion, 1, option, train=True)


WIDE_OPTIONS = [Option(kernel=k, expansion=e) for k in (3, 5, 7) for e in (2, 4, 6)]


@pytest.mark.parametrize("option", WIDE_OPTIONS + [SKIP], ids=str)
def test_nested_shells_and_groups_equal_standalone_block(option):
    """k=<3,5,7> e=<2,4,6> | skip: nested shells and three channel groups, in train and eval mode."""
    space = parse_text(WIDE_SPACE)
    for train in (False, True):
        check_option_equivalence(space, 0, option, train)
    if not option.is_skip:
        check_option_equivalence(space, 1, option, train=True)  # stride 2, 8 -> 12 channels


def test_non_nestable_expansions_raise_located_error():
    text = WIDE_SPACE.replace("mbconv k=<3,5,7> e=<2,4,6> | skip", "mbconv k=<3,5> e=<3,5> | skip")
    with pytest.raises(LoweringError) as info:
        lower_to_supernet(parse_text(text, filename="bad.spnas"))
    err = info.value
    assert "expansions <3,5> cannot be nested as equal channel groups" in err.message
    assert (err.span.file, err.span.line) == ("bad.spnas", 7)
    assert err.span.column == text.splitlines()[6].index("e=<3,5>") + 1  # the e=<...> choice, 1-based


def test_expansion_one_cannot_share_a_superkernel():
    text = WIDE_SPACE.replace("e=<2,4,6> | skip", "e=<1,2> | skip")
    with pytest.raises(LoweringError, match="expansion 1 has no expand conv") as info:
        lower_to_supernet(parse_text(text))
    assert info.value.span.line == 7


def test_searched_kernel_with_expansion_one_uses_depthwise_separable_layout():
    text = WIDE_SPACE.replace("mbconv k=3 e=1", "mbconv k=<3,5> e=1 | skip")
    supernet = lower_to_supernet(parse_text(text))
    block = supernet.blocks[1][2]
    assert isinstance(block, SuperMBConv) and not block.has_expand
    assert [n for n, _ in block.named_children()] == ["conv_dw", "bn1", "act1", "conv_pw", "bn2"]
    x = torch.randn(2, 12, 8, 8)
    block.eval()
    block.select(Option(kernel=3, expansion=1))
    ref = mbconv(12, 12, 3, 1, 1).eval()
    ref.load_state_dict({**block.state_dict(), "conv_dw.weight": block.conv_dw.weight[:, :, 1:4, 1:4]},
                        strict=False)
    torch.testing.assert_close(block(x), ref(x), rtol=1e-5, atol=1e-5)
    block.select(SKIP)
    assert torch.equal(block(x), x)


def test_module_names_and_layer_positions():
    space = parse_text(WIDE_SPACE)
    supernet = lower_to_supernet(space)
    children = [name for name, _ in supernet.named_children()]
    assert children == ["conv_stem", "bn1", "act1", "blocks", "conv_head", "bn2", "act2", "global_pool",
                        "flatten", "dropout", "classifier"]
    a0, b0, b1, b2 = supernet.blocks[0][0], supernet.blocks[1][0], supernet.blocks[1][1], supernet.blocks[1][2]
    assert isinstance(a0, SuperMBConv) and (a0.index, a0.name) == (0, "a.0")
    assert isinstance(b0, SuperMBConv) and (b0.index, b0.name) == (1, "b.0")
    assert isinstance(b1, nn.Identity)  # skip-only layer keeps its position
    assert type(b2).__name__ == "DepthwiseSeparableConv"  # fixed layer: the concrete block
    dw = a0.conv_dw
    assert isinstance(dw, SuperKernel) and dw.weight.shape == (8 * 6, 1, 7, 7)
    assert a0.conv_pw.weight.shape == (8 * 6, 8, 1, 1)
    names = {n for n, _ in supernet.named_parameters() if "threshold" in n}
    assert names == {f"blocks.0.0.conv_dw.threshold_{d}" for d in ("k5", "k7", "e4", "e6", "skip")} | {
        f"blocks.1.0.conv_dw.threshold_{d}" for d in ("k5", "k7", "e4", "e6")}
    assert all(p.item() == 0.0 for p in supernet.threshold_parameters())
    ids = {id(p) for p in supernet.threshold_parameters()}
    assert len(ids) == 9 and ids.isdisjoint(id(p) for p in supernet.weight_parameters())
    assert len(ids) + len(supernet.weight_parameters()) == len(list(supernet.parameters()))


def test_initial_decisions_are_the_largest_network(fashion):
    supernet = lower_to_supernet(fashion)
    largest = Option(kernel=5, expansion=6)
    assert supernet.decisions() == {i: largest for i in range(1, 7)}
    report = supernet.decision_report()
    assert [r["index"] for r in report] == list(range(1, 7))
    assert report[1]["name"] == "s16.1" and report[1]["option"] == "k5e6"
    assert set(report[1]["decisions"]) == {"k5", "e6", "skip"}
    for r in report:
        for d in r["decisions"].values():
            assert d["threshold"] == 0.0 and d["norm"] > 0 and d["on"]


def test_forward_without_target_returns_no_latency(fashion):
    out = lower_to_supernet(fashion)(torch.randn(2, 1, 28, 28))
    assert out.logits.shape == (2, 10) and out.latency_ms is None


def test_hard_latency_equals_table_lookup(fashion):
    graph = FakeGraph(fashion)
    supernet = lower_to_supernet(fashion, latency_graph=graph)
    choice = {1: Option(kernel=3, expansion=6), 2: SKIP, 3: Option(kernel=5, expansion=3),
              4: Option(kernel=3, expansion=3), 5: Option(kernel=5, expansion=6), 6: SKIP}
    supernet.select(choice)
    assert supernet.decisions() == choice
    out = supernet(torch.randn(2, 1, 28, 28))
    assert out.latency_ms.item() == graph.lookup(choice)
    assert supernet.latency_ms() == graph.lookup(choice)
    fresh = lower_to_supernet(fashion, latency_graph=graph)
    assert fresh.latency_ms() == graph.lookup(fresh.decisions())


def test_gradients_reach_every_threshold_through_ce_and_latency(fashion):
    torch.manual_seed(0)
    supernet = lower_to_supernet(fashion, latency_graph=FakeGraph(fashion)).train()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    thresholds = {n: p for n, p in supernet.named_parameters() if "threshold_" in n}

    out = supernet(x)
    nn.functional.cross_entropy(out.logits, y).backward()
    no_grad = [n for n, p in thresholds.items() if p.grad is None or float(p.grad) == 0.0]
    assert not no_grad, f"CE does not reach {no_grad}"

    supernet.zero_grad()
    out = supernet(x)
    out.latency_ms.backward()
    no_grad = [n for n, p in thresholds.items() if p.grad is None or float(p.grad) == 0.0]
    assert not no_grad, f"latency does not reach {no_grad}"
    # Raising a threshold turns a subset off: the latency falls on every threshold.
    assert all(float(p.grad) < 0 for p in thresholds.values())
    depthwise = block_at(supernet, 2).conv_dw.weight
    assert depthwise.grad is not None and depthwise.grad.abs().sum() > 0  # norms depend on the weights


def test_large_lambda_lowers_the_latency(fashion):
    torch.manual_seed(0)
    graph = FakeGraph(fashion)
    supernet = lower_to_supernet(fashion, latency_graph=graph).train()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    optimizer = torch.optim.Adam([
        {"params": supernet.weight_parameters(), "lr": 1e-3},
        {"params": supernet.threshold_parameters(), "lr": 1.0},
    ])
    start = supernet.latency_ms()
    for _ in range(6):
        optimizer.zero_grad()
        out = supernet(x)
        loss = nn.functional.cross_entropy(out.logits, y) + 100.0 * torch.log(out.latency_ms)
        loss.backward()
        optimizer.step()
    end = supernet.latency_ms()
    assert end < start
    assert end == graph.lookup(supernet.decisions())


@torch.no_grad()
def test_indicator_dropout(fashion):
    supernet = lower_to_supernet(fashion)
    with pytest.raises(ValueError):
        supernet.set_indicator_dropout(1.0)
    supernet.set_indicator_dropout(0.5)
    torch.manual_seed(0)
    block = block_at(supernet, 2)
    block.train()
    seen = set()
    for _ in range(40):
        ind = block.indicators()
        seen.add((float(ind.kernel_on[0]), float(ind.expansion_on[0]), float(ind.active)))
    assert (1.0, 1.0, 1.0) in seen and (0.0, 0.0, 0.0) in seen and len(seen) > 3
    # A dropped `active` makes the layer a skip.
    x = torch.randn(2, 16, 14, 14)
    dropped = LayerIndicators(ind.kernels, ind.expansions, [torch.tensor(1.0)], [torch.tensor(1.0)],
                              torch.tensor(0.0))
    assert torch.equal(block(x, dropped), x)
    # Eval mode and the decisions ignore dropout.
    block.eval()
    assert all(float(block.indicators().active) == 1.0 for _ in range(10))
    block.train()
    assert all(supernet.decisions()[2] == Option(kernel=5, expansion=6) for _ in range(10))
    supernet.set_indicator_dropout(0.0)
    assert all(float(block.indicators().active) == 1.0 for _ in range(10))


def test_decisions_derive_round_trip(fashion):
    supernet = lower_to_supernet(fashion)
    choice = {1: Option(kernel=3, expansion=3), 2: SKIP, 3: Option(kernel=5, expansion=6),
              4: Option(kernel=5, expansion=3), 5: Option(kernel=3, expansion=6), 6: Option(kernel=3, expansion=3)}
    supernet.select(choice)
    derived = supernet.derive(fashion)
    assert derived.is_concrete and not fashion.is_concrete
    shapes = infer_shapes(derived).layers
    assert {s.index: s.layer.options[0] for s in shapes if s.index in choice} == choice
    assert [s.layer for s in shapes if s.index not in choice] == [
        s.layer for s in infer_shapes(fashion).layers if s.index not in choice]
    assert parse_text(format_network(derived)) == derived
    assert supernet.derive() == derived


def test_derive_rejects_another_macro_architecture(fashion):
    other = parse_text(format_network(fashion).replace("c=24", "c=32"))
    with pytest.raises(LoweringError, match="macro-architecture"):
        lower_to_supernet(fashion).derive(other)


@pytest.mark.skipif(importlib.util.find_spec("spnas_dsl.latency.graph") is None,
                    reason="spnas_dsl.latency.graph is not there yet")
def test_pixel1_target_on_mnasnet():
    """The real latency graph: all-largest start at 131.46 ms (reference check figure)."""
    supernet = lower_to_supernet(load("mnasnet.spnas"), target=load_target("pixel1"))
    assert supernet.latency_ms() == pytest.approx(131.46, abs=0.01)
    indicators = {b.index: b.indicators() for b in supernet.searched_blocks()}
    supernet.latency_graph.relaxed_latency(indicators).backward()
    assert all(p.grad is not None and float(p.grad) != 0.0 for p in supernet.threshold_parameters())
    supernet.select({i: Option(kernel=3, expansion=3) for i in range(1, 21)})
    assert supernet.latency_ms() == pytest.approx(65.69, abs=0.01)
    supernet.select({3: SKIP, 8: Option(kernel=5, expansion=3), 14: Option(kernel=3, expansion=6)})
    assert supernet.latency_ms() == pytest.approx(supernet.latency_graph.predict(supernet.derive()), rel=1e-6)
