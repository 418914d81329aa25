"""``--to timm``: the network as timm block strings, for timm's ``EfficientNet`` class.

Lineage: timm's ``spnasnet_100`` (``timm/models/efficientnet.py``, ``_gen_spnasnet``) is the
Single-Path NAS Pixel 1 network written in the block-string language of timm's
``_efficientnet_builder.decode_arch_def``: ``ds_r1_k3_s1_c16`` is a depthwise-separable block
(our MBConv with expansion 1), ``ir_r3_k3_s2_e3_c24`` three inverted residuals (kernel 3,
expansion 3, 24 channels), the first with stride 2. One list per stage; a stage's stride is
on its first string only, timm giving every later block stride 1. We fold consecutive
identical layers into ``r<N>`` and leave skipped layers out (a skip is the identity).

timm adds the residual exactly where we do (stride 1 and equal channels) unless a string
says ``_noskip``, so the strings need no ``noskip``: timm's own ``spnasnet_100`` writes it
on the first and last stages, where channels change and there is no residual anyway.

The state dict (``<name>.safetensors``) has timm's key names, so it loads into the model the
snippet builds with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import json

from spnas_dsl.builder import BlockSite, build_blocks
from spnas_dsl.errors import BuildError
from spnas_dsl.ir import Network
from spnas_dsl.ops import op_for
from spnas_dsl.passes import require_concrete
from spnas_dsl.shapes import infer_shapes, total_stride


def timm_arch_def(network: Network) -> list[list[str]]:
    """The block strings of a concrete network, one list per stage (channels after the width
    multiplier): each op's ``timm_string`` (``spnas_dsl.ops``), identical consecutive blocks
    folded into ``r<N>``. A stage whose layers are all skipped keeps an empty list, so that
    ``blocks.<stage>`` indices stay those of our PyTorch module."""
    require_concrete(network)
    stages: list[list[list]] = [[] for _ in network.stages]  # per stage: [option, site, repeat]

    def block(site: BlockSite):
        op, option = site.op, site.option
        if op.timm_unsupported is not None:
            raise BuildError(f"timm's block strings cannot express {op.timm_unsupported}: layer {site.shape.index} "
                             f"({site.shape.name}) is {option}; export to pytorch, onnx or tflite instead",
                             site.shape.layer.span)
        if op.name == "identity":
            return None
        runs = stages[site.stage]
        # a run may start with the stage's stride-2 block: timm strides only its first block
        if runs and runs[-1][0] == option and runs[-1][1].out_chs == site.site.out_chs and site.site.stride == 1:
            runs[-1][2] += 1
        else:
            runs.append([option, site.site, 1])
        return site

    build_blocks(network, block)
    return [[op_for(o, s).timm_string(o, s, r) for o, s, r in runs] for runs in stages]


def timm_config(network: Network) -> dict:
    """Everything timm's ``EfficientNet(...)`` needs besides the block strings."""
    shapes = infer_shapes(network)
    return {
        "arch_def": timm_arch_def(network),
        "stem_size": shapes.stem_out[2],
        "stem_kernel_size": network.stem.kernel,
        "stem_stride": network.stem.stride,
        "num_features": shapes.head_channels,
        "num_classes": network.classes,
        "in_chans": network.input.channels,
        "drop_rate": network.head.dropout,
        "input_size": [network.input.channels, network.input.height, network.input.width],
        "output_stride": total_stride(network) * (2 if network.stem.stride == 1 else 1),
        "bn_eps": network.bn_eps,
        "bn_momentum": network.bn_momentum,
    }


# timm's EfficientNet builds BatchNorm with PyTorch's defaults unless told otherwise.
TIMM_BN_EPS = 1e-5
TIMM_BN_MOMENTUM = 0.1


def _bn_note(network: Network) -> str:
    eps, momentum = network.bn_eps, network.bn_momentum
    if (eps, momentum) == (TIMM_BN_EPS, TIMM_BN_MOMENTUM):
        return (f"BatchNorm: eps {eps:g}, momentum {momentum:g}, timm's defaults (as timm's spnasnet_100); "
                "norm_layer below says so explicitly.")
    return (f"BatchNorm: eps {eps:g}, momentum {momentum:g} (`bn` of the .spnas; timm's default BatchNorm2d "
            f"uses eps {TIMM_BN_EPS:g}, momentum {TIMM_BN_MOMENTUM:g}): pass "
            f"norm_layer=partial(nn.BatchNorm2d, eps={eps!r}, momentum={momentum!r}), as below.")


def notes(network: Network) -> list[str]:
    cfg = timm_config(network)
    out = [
        ("Channels are final (after the width multiplier): build with round_chs_fn=identity, or timm "
         "rounds them to multiples of 8."),
        _bn_note(network),
        "No _noskip needed: timm adds a residual exactly when stride is 1 and channels match, as spnas does.",
        "Written for timm 0.9 or later (EfficientNet(norm_layer=..., round_chs_fn=...)).",
    ]
    if cfg["stem_stride"] != 2:
        out.append(f"timm's EfficientNet stem always has stride 2; this network's has stride {cfg['stem_stride']}: "
                   "the snippet replaces model.conv_stem with a stride-1 convolution (same weight shape).")
    if cfg["stem_kernel_size"] != 3:
        out.append("stem_kernel_size needs a recent timm (0.9+).")
    return out


def snippet(network: Network) -> str:
    """A Python file a timm user can run or paste: arch_def, sizes, the model, the weights."""
    cfg = timm_config(network)
    stages = ",\n".join(f"    {json.dumps(stage)}" for stage in cfg["arch_def"])
    comments = "\n".join(f"# - {n}" for n in notes(network))
    stem_kernel = f"\n    stem_kernel_size={cfg['stem_kernel_size']}," if cfg["stem_kernel_size"] != 3 else ""
    if cfg["output_stride"] > 32:  # timm turns strides beyond output_stride (default 32) into dilation
        stem_kernel += f"\n    output_stride={cfg['output_stride']},"
    stem_fix = ""
    if cfg["stem_stride"] != 2:
        k = cfg["stem_kernel_size"]
        stem_fix = (f"\n# timm's stem has stride 2; this network's has stride {cfg['stem_stride']}:\n"
                    f"model.conv_stem = nn.Conv2d({cfg['in_chans']}, {cfg['stem_size']}, {k}, "
                    f"{cfg['stem_stride']}, {k // 2}, bias=False)\n")
    return f'''"""{network.name} as a timm EfficientNet (written by `spnasc build --to timm`).

The Single-Path NAS network in timm's block-string language (timm's own `spnasnet_100` is
examples/spnasnet_timm.spnas). Load the state dict `{network.name}.safetensors` of the same build.
"""
{comments}
from functools import partial

import torch.nn as nn
from timm.models.efficientnet import EfficientNet, decode_arch_def

ARCH_DEF = [
{stages},
]
STEM_SIZE = {cfg["stem_size"]}
NUM_FEATURES = {cfg["num_features"]}  # head 1x1 conv channels
NUM_CLASSES = {cfg["num_classes"]}
IN_CHANS = {cfg["in_chans"]}
INPUT_SIZE = {tuple(cfg["input_size"])}  # C, H, W

model = EfficientNet(
    block_args=decode_arch_def(ARCH_DEF),
    num_classes=NUM_CLASSES,
    num_features=NUM_FEATURES,
    in_chans=IN_CHANS,
    stem_size=STEM_SIZE,{stem_kernel}
    round_chs_fn=lambda channels: channels,  # channels above are final
    norm_layer=partial(nn.BatchNorm2d, eps={network.bn_eps!r}, momentum={network.bn_momentum!r}),
    drop_rate={cfg["drop_rate"]!r},
)
{stem_fix}
if __name__ == "__main__":
    import sys

    from safetensors.torch import load_file

    if len(sys.argv) > 1:
        model.load_state_dict(load_file(sys.argv[1]), strict=True)
    print(model.eval())
'''


def timm_model(network: Network):
    """Build the timm model of the snippet (needs timm installed; None when it is not)."""
    try:
        import timm  # noqa: F401
    except ImportError:
        return None
    namespace: dict = {"__name__": "spnas_timm_snippet"}
    exec(compile(snippet(network), f"<timm snippet of {network.name}>", "exec"), namespace)  # noqa: S102
    return namespace["model"]


def export(ctx) -> None:
    cfg = timm_config(ctx.network)
    py_path = ctx.staging / "timm_arch.py"
    py_path.write_text(snippet(ctx.network), encoding="utf-8")
    json_path = ctx.staging / "timm_arch.json"
    json_path.write_text(json.dumps({**cfg, "notes": notes(ctx.network)}, indent=2) + "\n", encoding="utf-8")
    weights = ctx.write_state_dict("timm")
    model = timm_model(ctx.network)
    if model is None:
        ctx.add(py_path, "timm", "timm_snippet", verified="no: timm is not installed here")
    else:
        import torch

        from spnas_dsl.backends.weights import read_safetensors

        tensors, _ = read_safetensors(weights)
        model.load_state_dict(tensors, strict=True)
        model.eval()

        def run(x):
            with torch.no_grad():
                return model(torch.from_numpy(x)).numpy()

        ctx.add(py_path, "timm", "timm_snippet", run=run, verified="yes: timm model built and compared")
    ctx.add(json_path, "timm", "timm_arch")
