"""spnasc summary FILE: per-layer shapes and candidates, space size, params and MACs."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser(
        "summary",
        help="per-layer shapes, candidates, and the size of the space",
        description="Show every layer (index, stage, input HxWxC, candidates, output) and totals: the number "
        "of architectures, and the parameters and multiply-adds of the largest and smallest network.",
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=run)


def _hwc(t) -> str:
    return "x".join(str(v) for v in t)


def run(args) -> int:
    from spnas_dsl.parser import load
    from spnas_dsl.printer import format_layer
    from spnas_dsl.shapes import infer_shapes, summarize

    network = load(args.file)
    shapes = infer_shapes(network)
    totals = summarize(network, shapes)
    layers = [
        {
            "index": s.index,
            "stage": s.stage,
            "input": _hwc(s.in_hwc),
            "output": _hwc(s.out_hwc),
            "stride": s.stride,
            "candidates": [str(o) for o in s.layer.options],
            "searched": s.is_searched,
        }
        for s in shapes.layers
    ]
    if args.json:
        print(json.dumps({
            "name": network.name,
            "concrete": network.is_concrete,
            "input": str(network.input),
            "classes": network.classes,
            "width_multiplier": network.width_multiplier,
            "batchnorm": {"eps": network.bn_eps, "momentum": network.bn_momentum},
            "architectures": totals.architectures,
            "params_max": totals.params_max,
            "params_min": totals.params_min,
            "macs_max": totals.macs_max,
            "macs_min": totals.macs_min,
            "layers": layers,
        }, indent=2))
        return 0
    kind = "network" if network.is_concrete else "search space"
    from spnas_dsl.ir import BN_EPS, BN_MOMENTUM

    bn = ""  # shown when not the language's default, so that timm-style networks say so
    if (network.bn_eps, network.bn_momentum) != (BN_EPS, BN_MOMENTUM):
        bn = f", bn eps={network.bn_eps:g} momentum={network.bn_momentum:g}"
    print(f"{network.name}: {kind}, input {network.input}, {network.classes} classes, "
          f"width x{network.width_multiplier:g}{bn}")
    print(f"{'#':>3}  {'stage':<10} {'input':>12}  {'output':>12}  {'s':>1}  candidates")
    print(f"{'':>3}  {'stem':<10} {_hwc(shapes.input_hwc):>12}  {_hwc(shapes.stem_out):>12}  "
          f"{network.stem.stride}  conv k={network.stem.kernel}")
    for s in shapes.layers:
        print(f"{s.index:>3}  {s.stage:<10} {_hwc(s.in_hwc):>12}  {_hwc(s.out_hwc):>12}  {s.stride}  "
              f"{format_layer(s.layer)}")
    print(f"{'':>3}  {'head':<10} {_hwc(shapes.head_in):>12}  {shapes.classes:>12}  1  "
          f"conv c={shapes.head_channels}, avgpool, dropout {network.head.dropout:g}, fc")
    print()
    print(f"architectures: {totals.architectures:,}")
    if network.is_concrete:
        print(f"parameters:    {totals.params_max:,}")
        print(f"multiply-adds: {totals.macs_max:,}")
    else:
        print(f"parameters:    {totals.params_min:,} (smallest) .. {totals.params_max:,} (largest)")
        print(f"multiply-adds: {totals.macs_min:,} (smallest) .. {totals.macs_max:,} (largest)")
    return 0
