"""BatchNorm settings are part of the language (`bn eps=E momentum=M`): parsed, printed, used by
every backend, checked against the weights of `build --weights`; and timm's spnasnet_100 (its
block strings with timm's BatchNorm) computes exactly what examples/spnasnet_timm.spnas does."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_backends import TIMM_SPNASNET_100  # timm's spnasnet_100 arch_def, written once
from torch import nn

from spnas_dsl.backends.timm import timm_arch_def
from spnas_dsl.backends.weights import initialise, metadata_for, save_weights
from spnas_dsl.cli import main
from spnas_dsl.compiler.network import lower_to_network
from spnas_dsl.compiler.supernet import lower_to_supernet
from spnas_dsl.errors import SpnasError
from spnas_dsl.ir import BN_EPS, BN_MOMENTUM
from spnas_dsl.parser import load, parse_text
from spnas_dsl.printer import format_network

REPO = Path(__file__).resolve().parent.parent

TINY = """\
network tiny {
    input 16x16x3
    classes 5
    width 1.0
BN
    stem conv k=3 c=8 s=2
    stage a c=8 s=1 {
        mbconv k=3 e=1
    }
    stage b c=16 s=2 {
        mbconv k=<3,5> e=<3,6>
        mbconv k=3 e=3 | skip
    }
    head conv c=32 dropout=0.0
}
"""


def tiny(bn: str = "") -> str:
    return TINY.replace("BN\n", f"    {bn}\n" if bn else "")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- the language ----------------------------------------------------------------------------------

def test_default_is_the_papers_tensorflow_setting():
    net = parse_text(tiny())
    assert (net.bn_eps, net.bn_momentum) == (BN_EPS, BN_MOMENTUM) == (1e-3, 0.01)
    assert "bn " not in format_network(net)  # a file without `bn` keeps its text
    assert parse_text(tiny("bn eps=0.001 momentum=0.01")) == net  # the same network, stated


@pytest.mark.parametrize("decl,eps,momentum", [
    ("bn eps=1e-5 momentum=0.1", 1e-5, 0.1),
    ("bn momentum=0.1 eps=1e-5", 1e-5, 0.1),
    ("bn eps=1e-5", 1e-5, BN_MOMENTUM),
    ("bn momentum=0.5", BN_EPS, 0.5),
])
def test_declared_settings_parse_and_print(decl, eps, momentum):
    net = parse_text(tiny(decl))
    assert (net.bn_eps, net.bn_momentum) == (eps, momentum)
    text = format_network(net)
    assert f"    width 1.0\n    bn eps={eps!r} momentum={momentum!r}\n    stem" in text
    assert parse_text(text) == net and net != parse_text(tiny())


@pytest.mark.parametrize("decl,message", [
    ("bn", "'bn' needs eps= and/or momentum="),
    ("bn eps=0", "BatchNorm eps must be in (0, 1], got 0"),
    ("bn eps=-1e-5", "BatchNorm eps must be in (0, 1]"),
    ("bn momentum=1.5", "BatchNorm momentum must be in (0, 1]"),
    ("bn eps=<1,2>", "BatchNorm epsilon 'eps' takes one value here"),
    ("bn decay=0.99", "unknown parameter 'decay' for bn (known: eps, momentum)"),
    ("bn eps=1e999", "number out of range: 1e999"),
])
def test_bad_declarations_are_located(decl, message):
    with pytest.raises(SpnasError) as info:
        parse_text(tiny(decl), "t.spnas")
    assert message in str(info.value) and info.value.span.line == 5


def test_a_second_bn_is_an_error():
    with pytest.raises(SpnasError, match="duplicate 'bn' statement"):
        parse_text(tiny("bn eps=1e-5\n    bn eps=1e-3"))


def test_shipped_examples_say_what_they_are():
    paper, timm = load(REPO / "examples" / "spnasnet.spnas"), load(REPO / "examples" / "spnasnet_timm.spnas")
    assert (paper.bn_eps, paper.bn_momentum) == (1e-3, 0.01)
    assert (timm.bn_eps, timm.bn_momentum) == (1e-5, 0.1) and timm.name == "spnasnet_100"
    assert timm.replace_layers([l for _, _, l in paper.iter_layers()]).model_copy(
        update={"name": "spnasnet", "bn_eps": 1e-3, "bn_momentum": 0.01}) == paper  # only BN and name differ


def test_summary_shows_the_settings(capsys):
    import json

    assert main(["summary", "--json", str(REPO / "examples" / "spnasnet_timm.spnas")]) == 0
    assert json.loads(capsys.readouterr().out)["batchnorm"] == {"eps": 1e-05, "momentum": 0.1}
    assert main(["summary", str(REPO / "examples" / "spnasnet_timm.spnas")]) == 0
    assert capsys.readouterr().out.startswith(
        "spnasnet_100: network, input 224x224x3, 1000 classes, width x1, bn eps=1e-05 momentum=0.1\n")
    assert main(["summary", str(REPO / "examples" / "spnasnet.spnas")]) == 0
    assert capsys.readouterr().out.startswith("spnasnet: network, input 224x224x3, 1000 classes, width x1\n")


# -- every backend uses them -------------------------------------------------------------------------

def _norms(module: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_pytorch_network_and_supernet_use_the_declared_settings():
    space = parse_text(tiny("bn eps=0.25 momentum=0.5"))
    supernet = lower_to_supernet(space)
    assert _norms(supernet) and all((m.eps, m.momentum) == (0.25, 0.5) for m in _norms(supernet))
    concrete = space.replace_layers([l.from_option(l.options[0]) for _, _, l in space.iter_layers()])
    net = lower_to_network(concrete)
    assert len(_norms(net)) == 1 + 2 + 3 + 3 + 1 and all((m.eps, m.momentum) == (0.25, 0.5) for m in _norms(net))
    default = lower_to_network(concrete.model_copy(update={"bn_eps": BN_EPS, "bn_momentum": BN_MOMENTUM}))
    assert all((m.eps, m.momentum) == (1e-3, 0.01) for m in _norms(default))


def _concrete(bn: str):
    space = parse_text(tiny(bn))
    return space.replace_layers([l.from_option(l.options[-1]) for _, _, l in space.iter_layers()])


def test_keras_tflite_and_onnx_use_the_declared_epsilon(tmp_path):
    """eps 0.25 is far from the default: every backend must compute the eps-0.25 function
    (the build's parity check compares each with PyTorch), which differs from the default's."""
    net = _concrete("bn eps=0.25 momentum=0.5")
    src = tmp_path / "tiny.spnas"
    src.write_text(format_network(net))
    out = tmp_path / "out"
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert main(["build", str(src), "--to", "onnx,tflite,timm", "--out", str(out)]) == 0, err.getvalue()

    from spnas_dsl.backends.keras import build_keras_model
    from spnas_dsl.backends.onnx import onnxruntime_runner
    from spnas_dsl.backends.parity import random_batch
    from spnas_dsl.backends.tflite import TFLiteModel
    from spnas_dsl.backends.weights import load_weights

    keras_bns = [layer for layer in build_keras_model(net).layers if "BatchNormalization" in type(layer).__name__]
    assert keras_bns and all(layer.epsilon == 0.25 and layer.momentum == pytest.approx(0.5) for layer in keras_bns)

    model = lower_to_network(net)
    load_weights(model, out / "tiny.safetensors")  # the seeded weights of the build (--to timm writes them)
    x = random_batch((3, 16, 16), 2, seed=3)
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(x)).numpy()
        for m in _norms(model):
            m.eps = BN_EPS
        other = model(torch.from_numpy(x)).numpy()
    assert np.abs(ours - other).max() > 1e-2 * np.abs(ours).max()  # eps matters here
    for y in (onnxruntime_runner(out / "tiny.onnx")(x), TFLiteModel(out / "tiny.tflite").run_nchw(x)):
        assert np.abs(y - ours).max() <= 1e-4 * np.abs(ours).max()


def test_timm_snippet_declares_the_settings():
    from spnas_dsl.backends.timm import snippet, timm_config

    net = _concrete("bn eps=1e-5 momentum=0.1")
    assert (timm_config(net)["bn_eps"], timm_config(net)["bn_momentum"]) == (1e-5, 0.1)
    assert "norm_layer=partial(nn.BatchNorm2d, eps=1e-05, momentum=0.1)" in snippet(net)
    assert "norm_layer=partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)" in snippet(_concrete(""))


# -- timm's network, from timm's strings and timm's BatchNorm -----------------------------------------

_BLOCK = re.compile(r"^(?P<type>ds|ir)_r(?P<r>\d+)_k(?P<k>\d+)_s(?P<s>\d+)(?:_e(?P<e>\d+))?_c(?P<c>\d+)(?P<noskip>_noskip)?$")


class _TimmDs(nn.Module):
    """timm's DepthwiseSeparableConv (no SE, ReLU): conv_dw, bn1 (+act), conv_pw, bn2."""

    def __init__(self, cin, cout, k, s, noskip, norm):
        super().__init__()
        self.has_skip = s == 1 and cin == cout and not noskip
        self.conv_dw = nn.Conv2d(cin, cin, k, s, k // 2, groups=cin, bias=False)
        self.bn1 = norm(cin)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = norm(cout)

    def forward(self, x):
        y = self.bn2(self.conv_pw(torch.relu(self.bn1(self.conv_dw(x)))))
        return y + x if self.has_skip else y


class _TimmIr(nn.Module):
    """timm's InvertedResidual (no SE, ReLU): conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3."""

    def __init__(self, cin, cout, k, s, e, noskip, norm):
        super().__init__()
        mid = cin * e
        self.has_skip = s == 1 and cin == cout and not noskip
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = norm(mid)
        self.conv_dw = nn.Conv2d(mid, mid, k, s, k // 2, groups=mid, bias=False)
        self.bn2 = norm(mid)
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = norm(cout)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv_pw(x)))
        y = self.bn3(self.conv_pwl(torch.relu(self.bn2(self.conv_dw(y)))))
        return y + x if self.has_skip else y


class _TimmEfficientNet(nn.Module):
    """timm's EfficientNet built from block strings the way ``decode_arch_def`` documents them
    (``r`` repeats, stride on the first repeat only, ``noskip``), with timm's default
    ``norm_layer`` (``nn.BatchNorm2d`` with PyTorch's defaults: eps 1e-5, momentum 0.1)."""

    def __init__(self, arch_def, stem_size=32, num_features=1280, num_classes=1000, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, stem_size, 3, 2, 1, bias=False)
        self.bn1 = norm(stem_size)
        stages, cin = [], stem_size
        for strings in arch_def:
            blocks = []
            for string in strings:
                m = _BLOCK.match(string)
                assert m, string
                k, s, c, noskip = int(m["k"]), int(m["s"]), int(m["c"]), bool(m["noskip"])
                for i in range(int(m["r"])):
                    stride = s if i == 0 else 1
                    blocks.append(_TimmDs(cin, c, k, stride, noskip, norm) if m["type"] == "ds"
                                  else _TimmIr(cin, c, k, stride, int(m["e"]), noskip, norm))
                    cin = c
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = nn.Conv2d(cin, num_features, 1, bias=False)
        self.bn2 = norm(num_features)
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x):
        x = self.blocks(torch.relu(self.bn1(self.conv_stem(x))))
        x = torch.relu(self.bn2(self.conv_head(x))).mean((2, 3))
        return self.classifier(x)


def test_timm_strings_with_timm_batchnorm_compute_exactly_what_spnasnet_timm_does():
    ours_ir = load(REPO / "examples" / "spnasnet_timm.spnas")
    # The project's timm backend writes timm's strings (timm adds `_noskip` where no residual exists anyway).
    assert timm_arch_def(ours_ir) == [[s.replace("_noskip", "") for s in st] for st in TIMM_SPNASNET_100]
    torch.manual_seed(0)
    ours = initialise(lower_to_network(ours_ir), (3, 224, 224), seed=1, batches=2, batch_size=2)
    theirs = _TimmEfficientNet(TIMM_SPNASNET_100)
    ours_sd = ours.state_dict()
    assert set(theirs.state_dict()) == set(ours_sd)  # timm's key names
    theirs.load_state_dict(ours_sd, strict=True)
    theirs.eval()
    assert {m.eps for m in _norms(theirs)} == {1e-5} and {m.eps for m in _norms(ours)} == {1e-5}
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = ours(x), theirs(x)
        assert torch.equal(a, b)  # bit for bit
        # The paper's file (eps 1e-3) with the same tensors computes another function: the issue this fixes.
        paper = lower_to_network(load(REPO / "examples" / "spnasnet.spnas"))
        paper.load_state_dict(ours_sd, strict=True)
        c = paper.eval()(x)
    assert (c - b).abs().max() > 1e-3 * b.abs().max()


def test_the_timm_backend_strings_and_settings_rebuild_the_same_network():
    """What `build --to timm` writes (arch_def, bn_eps, bn_momentum), read with timm's semantics,
    is the network spnas built, for a network with timm's settings and one with others."""
    from functools import partial

    from spnas_dsl.backends.timm import timm_config

    for path in ("spnasnet_timm.spnas", "spnasnet.spnas"):
        ir = load(REPO / "examples" / path)
        cfg = timm_config(ir)
        torch.manual_seed(0)
        ours = initialise(lower_to_network(ir), (3, 224, 224), seed=4, batches=1, batch_size=2)
        theirs = _TimmEfficientNet(cfg["arch_def"], cfg["stem_size"], cfg["num_features"], cfg["num_classes"],
                                   norm=partial(nn.BatchNorm2d, eps=cfg["bn_eps"], momentum=cfg["bn_momentum"]))
        theirs.load_state_dict(ours.state_dict(), strict=True)
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            assert torch.equal(ours(x), theirs.eval()(x)), path


# -- build --weights checks the settings the weights were made for ------------------------------------

def _run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def test_build_weights_refuses_weights_saved_with_another_epsilon(tmp_path):
    timm_like = _concrete("bn eps=1e-5 momentum=0.1")
    model = initialise(lower_to_network(timm_like), (3, 16, 16), seed=0)
    weights = tmp_path / "w.safetensors"
    save_weights(model, weights, metadata_for(format_network(timm_like)))  # as `build` writes them
    src = tmp_path / "paper.spnas"
    src.write_text(format_network(_concrete("")))
    code, out, err = _run("build", src, "--to", "timm", "--weights", weights, "--out", tmp_path / "o1")
    assert code == 1 and "Traceback" not in err and not (tmp_path / "o1").exists()
    assert (f"error: weights in {weights} were saved for 'tiny' with bn eps=1e-05 momentum=0.1, but 'tiny' "
            "declares bn eps=0.001 momentum=0.01") in err
    src.write_text(format_network(timm_like))  # the matching declaration builds, with no warning
    code, out, err = _run("build", src, "--to", "timm", "--weights", weights, "--out", tmp_path / "o2")
    assert code == 0, err
    assert "warning" not in out + err


def test_build_weights_warns_about_weights_that_record_no_settings(tmp_path):
    from safetensors.torch import save_file

    model = initialise(lower_to_network(_concrete("")), (3, 16, 16), seed=0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["bn1.running_var"][:3] = 1e-6  # dead channels, as trained nets have: eps matters there
    weights = tmp_path / "timm.safetensors"
    save_file(state, str(weights), metadata={"format": "pt"})  # what a timm checkpoint holds
    src = tmp_path / "paper.spnas"
    src.write_text(format_network(_concrete("")))
    code, out, err = _run("build", src, "--to", "timm", "--weights", weights, "--out", tmp_path / "o")
    assert code == 0, err
    assert (f"warning: {weights} records no BatchNorm settings (not written by spnas; timm's checkpoints are "
            "like this), so they are used with 'tiny''s bn eps=0.001 momentum=0.01. timm trains with eps 1e-05: "
            "for timm's weights declare `bn eps=1e-05 momentum=0.1`") in out
    assert "3 of " in out and "running variance below 0.001 (smallest 1e-06)" in out
    import json

    assert any(n.startswith("warning:") for n in json.loads((tmp_path / "o" / "build.json").read_text())["notes"])
    src.write_text(format_network(_concrete("bn eps=1e-5 momentum=0.1")))  # timm's settings: a note only
    code, out, err = _run("build", src, "--to", "timm", "--weights", weights, "--out", tmp_path / "o3")
    assert code == 0 and "warning" not in out and "declares bn eps=1e-05 momentum=0.1, timm's settings" in out
