"""Extraction: the derived concrete network with the supernet's weights computes the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spnas_dsl.compiler.blocks import SinglePathNet
from spnas_dsl.compiler.extract import extract
from spnas_dsl.compiler.network import lower_to_network
from spnas_dsl.compiler.supernet import lower_to_supernet
from spnas_dsl.errors import LoweringError
from spnas_dsl.ir import SKIP, Network, Option
from spnas_dsl.parser import parse_text
from spnas_dsl.printer import format_network
from spnas_dsl.shapes import infer_shapes, summarize

SPACES = Path(__file__).resolve().parents[1] / "spaces"

WIDE_SPACE = """\
network wide {
    input 16x16x3
    classes 5
    width 1.0
    stem conv k=3 c=8 s=1
    stage a c=8 s=1 {
        mbconv k=<3,5,7> e=<2,4,6> | skip
        mbconv k=<3,5,7> e=<2,4,6> | skip
    }
    stage b c=12 s=2 {
        mbconv k=<3,5,7> e=<2,4,6>
        skip
        mbconv k=<3,5> e=1 | skip
        mbconv k=3 e=1
    }
    head conv c=32 dropout=0.0
}
"""


@pytest.fixture(scope="module")
def fashion() -> Network:
    return parse_text((SPACES / "fashion_mnist.spnas").read_text(), filename="fashion_mnist.spnas")


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Random BN parameters and running statistics everywhere (eval mode then tests them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)


def assert_same_outputs(space: Network, choice: dict[int, Option], seed: int) -> SinglePathNet:
    torch.manual_seed(seed)
    supernet = lower_to_supernet(space)
    randomize(supernet, seed)
    supernet.select(choice)
    concrete = supernet.derive(space)
    net = extract(supernet, concrete)
    supernet.eval()
    net.eval()
    h, w, c = infer_shapes(space).input_hwc
    x = torch.randn(3, c, h, w)
    with torch.no_grad():
        torch.testing.assert_close(net(x), supernet(x).logits, rtol=1e-5, atol=1e-5)
    return net


FASHION_CHOICES = [
    {},  # the largest network (initial decisions)
    {1: Option(kernel=3, expansion=3), 2: SKIP, 3: Option(kernel=5, expansion=6),
     4: Option(kernel=5, expansion=3), 5: Option(kernel=3, expansion=6), 6: SKIP},
    {1: Option(kernel=5, expansion=3), 2: Option(kernel=3, expansion=6), 3: Option(kernel=3, expansion=3),
     4: SKIP, 5: Option(kernel=5, expansion=6), 6: Option(kernel=3, expansion=3)},
]


@pytest.mark.parametrize("case", range(len(FASHION_CHOICES)))
def test_extracted_network_equals_supernet(fashion, case):
    net = assert_same_outputs(fashion, FASHION_CHOICES[case], seed=case)
    concrete_params = sum(p.numel() for p in net.parameters())
    derived = lower_to_supernet(fashion)
    derived.select(FASHION_CHOICES[case])
    assert concrete_params == summarize(derived.derive()).params_max  # skipped layers are absent


def test_extracted_network_equals_supernet_nested_sets():
    space = parse_text(WIDE_SPACE)
    assert_same_outputs(space, {0: Option(kernel=5, expansion=4), 1: SKIP, 2: Option(kernel=7, expansion=2),
                                4: Option(kernel=5, expansion=1)}, seed=3)
    assert_same_outputs(space, {0: Option(kernel=3, expansion=6), 1: Option(kernel=7, expansion=4),
                                2: Option(kernel=3, expansion=4), 4: SKIP}, seed=4)


def test_extract_copies_the_chosen_slices(fashion):
    supernet = lower_to_supernet(fashion)
    randomize(supernet, 5)
    supernet.select({2: Option(kernel=3, expansion=3)})
    net = extract(supernet, supernet.derive())
    src, dst = supernet.blocks[1][1], net.blocks[1][1]
    mid = 16 * 3
    assert torch.equal(dst.conv_pw.weight, src.conv_pw.weight[:mid])
    assert torch.equal(dst.conv_dw.weight, src.conv_dw.weight[:mid, :, 1:4, 1:4])
    assert torch.equal(dst.conv_pwl.weight, src.conv_pwl.weight[:, :mid])
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(dst.bn1, name), getattr(src.bn1, name)[:mid])
        assert torch.equal(getattr(dst.bn2, name), getattr(src.bn2, name)[:mid])
        assert torch.equal(getattr(dst.bn3, name), getattr(src.bn3, name))
    assert int(dst.bn2.num_batches_tracked) == 7
    assert torch.equal(net.conv_stem.weight, supernet.conv_stem.weight)
    assert torch.equal(net.classifier.bias, supernet.classifier.bias)


def test_extract_from_reparsed_text(fashion):
    """The derived network written out and parsed back (as the search's output) extracts the same."""
    supernet = lower_to_supernet(fashion)
    supernet.select(FASHION_CHOICES[1])
    text = format_network(supernet.derive())
    net = extract(supernet, parse_text(text, filename="found.spnas"))
    assert type(net) is SinglePathNet
    assert len(net.blocks[1]) == 1 and len(net.blocks[3]) == 1  # skipped layers are absent


def test_extract_rejects_a_non_candidate(fashion):
    supernet = lower_to_supernet(fashion)
    supernet.select(FASHION_CHOICES[1])
    lines = format_network(supernet.derive()).splitlines()
    row = next(i for i, line in enumerate(lines) if "k=5 e=6" in line and "2x" not in line)
    lines[row] = lines[row].replace("k=5 e=6", "k=7 e=6", 1)
    bad = parse_text("\n".join(lines) + "\n", filename="bad.spnas")
    with pytest.raises(LoweringError, match="k7e6 is not a candidate") as info:
        extract(supernet, bad)
    assert (info.value.span.file, info.value.span.line) == ("bad.spnas", row + 1)


def test_extract_rejects_another_macro_architecture_or_a_space(fashion):
    supernet = lower_to_supernet(fashion)
    other = parse_text(format_network(supernet.derive()).replace("c=24", "c=32"), filename="other.spnas")
    with pytest.raises(LoweringError, match="macro-architecture") as info:
        extract(supernet, other)
    assert info.value.span.file == "other.spnas"
    with pytest.raises(LoweringError, match="search space"):
        extract(supernet, fashion)


def test_lower_to_network_of_extracted_ir_matches_layout(fashion):
    """Extraction fills exactly the modules ``lower_to_network`` builds (same state-dict keys)."""
    supernet = lower_to_supernet(fashion)
    supernet.select(FASHION_CHOICES[2])
    concrete = supernet.derive()
    assert extract(supernet, concrete).state_dict().keys() == lower_to_network(concrete).state_dict().keys()
