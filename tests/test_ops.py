"""The op registry, entry by entry: every registered op is tested here for free.

For each entry and each of its examples: exactly this entry claims the option; its module's
parameter count and multiply-adds equal the analytic count; it has a latency signature (or
costs nothing); its Keras lowering computes what its PyTorch module computes; it has a timm
string or says why timm cannot express it; it nests in the superkernel or the lowering
rejects it with the entry's reason.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from spnas_dsl.backends.parity import compare, random_batch
from spnas_dsl.backends.weights import initialise
from spnas_dsl.compiler.nesting import check_nestable
from spnas_dsl.compiler.supernet import SuperMBConv
from spnas_dsl.errors import BuildError, LoweringError
from spnas_dsl.ir import CandidateSet, Layer, Option
from spnas_dsl.ops import OPS, Op, Site, op_for, register
from spnas_dsl.targets.signature import is_signature, parse_mbconv_signature

CASES = [pytest.param(op, option, site, id=f"{name}-{option}-{site.text()}")
         for name, op in OPS.items() for option, site in op.examples()]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of every convolution of ``module`` on ``x`` (counted from the layers run)."""
    total = 0

    def hook(conv, _inputs, out):
        nonlocal total
        k = conv.kernel_size[0] * conv.kernel_size[1]
        total += out.shape[2] * out.shape[3] * out.shape[1] * (conv.in_channels // conv.groups) * k

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        module.eval()(x)
    for h in handles:
        h.remove()
    return total


def test_every_example_is_claimed_by_its_own_entry_only():
    assert CASES
    for name, op in OPS.items():
        for option, site in op.examples():
            claimed = [other.name for other in OPS.values() if other.matches(option, site)]
            assert claimed == [name], (option, site)


def test_a_second_entry_of_the_same_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register(next(iter(OPS.values())))


@pytest.mark.parametrize(("op", "option", "site"), CASES)
def test_module_has_the_analytic_parameters_and_multiply_adds(op: Op, option: Option, site: Site):
    params, macs = op.cost(option, site)
    module = op.torch_module(option, site)
    if module is None:  # the identity: left out, free
        assert (params, macs) == (0, 0) and op.signature(option, site) is None
        return
    assert sum(p.numel() for p in module.parameters()) == params
    h, w, c = site.in_hwc
    x = torch.randn(1, c, h, w)
    assert conv_macs(module, x) == macs
    with torch.no_grad():
        assert tuple(module.eval()(x).shape[1:]) == (site.out_chs, *site.out_hwc[:2])


@pytest.mark.parametrize(("op", "option", "site"), CASES)
def test_signature(op: Op, option: Option, site: Site):
    sig = op.signature(option, site)
    if op.torch_module(option, site) is None:
        assert sig is None
        return
    assert is_signature(sig) and site.text() in sig
    parsed = parse_mbconv_signature(sig)
    if sig.startswith("mbconv:"):
        assert parsed == (site.in_hwc, site.out_chs, site.stride, option)


@pytest.mark.parametrize(("op", "option", "site"), CASES)
def test_keras_lowering_matches_the_torch_module(op: Op, option: Option, site: Site):
    pytest.importorskip("keras")
    from spnas_dsl.backends.keras import build_keras_mbconv

    module = op.torch_module(option, site)
    if module is None:
        with pytest.raises(BuildError, match="identity"):
            build_keras_mbconv(site.in_hwc, site.out_chs, option, site.stride)
        return
    h, w, c = site.in_hwc
    module = initialise(module, (c, h, w), seed=1)
    model = build_keras_mbconv(site.in_hwc, site.out_chs, option, site.stride, module.state_dict())
    x = random_batch((c, h, w), 1, seed=2)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).permute(0, 2, 3, 1).numpy()
    out = model(np.transpose(x, (0, 2, 3, 1)), training=False).numpy()
    assert compare(out.reshape(1, -1), ref.reshape(1, -1)).ok()


@pytest.mark.parametrize(("op", "option", "site"), CASES)
def test_timm_string_or_a_reason(op: Op, option: Option, site: Site):
    if op.timm_unsupported is not None:
        with pytest.raises(NotImplementedError):
            op.timm_string(option, site, 1)
        return
    text = op.timm_string(option, site, 2)
    if op.torch_module(option, site) is None:
        assert text is None
    else:
        assert re.fullmatch(rf"(ds|ir)_r2_k{option.kernel}_s{site.stride}(_e\d)?_c{site.out_chs}", text)


def _layer_of(option: Option) -> Layer:
    """A searched layer whose candidates include ``option`` (and a larger kernel)."""
    if option.is_skip:
        return Layer(kernel=CandidateSet(values=(3,)), expansion=CandidateSet(values=(6,)), skip=True, skip_project=option.project)
    groups = CandidateSet(values=(option.groups,)) if option.groups != 1 else None
    return Layer(kernel=CandidateSet(values=tuple(sorted({option.kernel, 7}))), expansion=CandidateSet(values=(option.expansion,)),
                 groups=groups, expand_always=option.expand_always)


@pytest.mark.parametrize(("op", "option", "site"), CASES)
def test_nests_in_the_superkernel_or_is_refused_with_the_entry_reason(op: Op, option: Option, site: Site):
    layer = _layer_of(option)
    if op.nests is not None:
        with pytest.raises(LoweringError) as info:
            check_nestable(layer, site)
        assert info.value.message == op.nests
        return
    check_nestable(layer, site)
    if option.is_skip:  # the identity is the skip decision of a superkernel: the residual alone
        block = SuperMBConv(site.in_chs, site.out_chs, site.stride, (3,), (6,), skip=True).eval()
        block.select(option)
        x = torch.randn(1, site.in_chs, *site.in_hwc[:2])
        with torch.no_grad():
            assert torch.equal(block(x), x)
        return
    from spnas_dsl.compiler.extract import _copy_slices

    torch.manual_seed(0)
    block = SuperMBConv(site.in_chs, site.out_chs, site.stride, layer.kernel.values, layer.expansion.values,
                        skip=False, expand_always=option.expand_always)
    block = initialise(block, (site.in_chs, *site.in_hwc[:2]), seed=3)
    block.select(option)
    module = op.torch_module(option, site).eval()
    with torch.no_grad():
        _copy_slices(block, module)
        x = torch.randn(2, site.in_chs, *site.in_hwc[:2])
        torch.testing.assert_close(block(x), module(x), rtol=1e-5, atol=1e-5)


def test_op_for_says_when_no_op_matches():
    saved = dict(OPS)
    OPS.clear()
    try:
        with pytest.raises(ValueError, match="no registered op"):
            op_for(Option(), Site((8, 8, 16), 16, 1))
    finally:
        OPS.update(saved)
