"""Convert the Single-Path NAS authors' Pixel 1 runtime model into targets/pixel1.json.

Usage: python tools/convert_pixel1.py [REFERENCE_JSON] [OUTPUT]
(defaults: /work/shared/reference/pixel1_runtime_model.json, targets/pixel1.json)

The reference file maps layer index (0-21 of spaces/mnasnet.spnas) to {option: ms} with
options 0: k3e3, 1: k3e6, 2: k5e3, 3: k5e6. Searched layers 1..20 become entries keyed by
the layer signature computed from spaces/mnasnet.spnas, with ``position`` = the layer index.
Layers 0 and 21, the stem and the head are the paper's constant 19.5999 ms: one fixed group.
Figures are rounded to 4 decimals (the published values are 4-decimal numbers carrying
float noise below 1e-14 ms).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from spnas_dsl.ir import Option
from spnas_dsl.parser import load
from spnas_dsl.shapes import infer_shapes
from spnas_dsl.targets.registry import KNOWN_TARGETS
from spnas_dsl.targets.signature import head_signature, layer_signature, stem_signature
from spnas_dsl.targets.table import Entry, FixedGroup, LatencyTable, write_table

REPO = Path(__file__).resolve().parent.parent
SPEC = KNOWN_TARGETS["pixel1"]  # name, device, runtime, threads: the registry's
OPTIONS = {"0": Option(kernel=3, expansion=3), "1": Option(kernel=3, expansion=6),
           "2": Option(kernel=5, expansion=3), "3": Option(kernel=5, expansion=6)}
FIXED_MS = 19.5999
SOURCE = (
    "Stamoulis et al., 'Single-Path NAS: Designing Hardware-Efficient ConvNets in less than 4 Hours', "
    "ECML-PKDD 2019 (arXiv 1904.02877), Eq. 9-12 and Fig. 2; runtime model pixel1_runtime_model.json "
    "from github.com/dstamoulis/single-path-nas (commit 21c1f3e). Measured with TFLite (float) on one "
    "thread of a Google Pixel 1. Layer index = MBConv layer of spaces/mnasnet.spnas (0-21); options "
    "0: k3e3, 1: k3e6, 2: k5e3, 3: k5e6. Converted by tools/convert_pixel1.py."
)


def convert(reference: dict[str, dict[str, float]]) -> LatencyTable:
    """The pixel1 table from the authors' {layer: {option: ms}} dict."""
    space = load(REPO / "spaces" / "mnasnet.spnas")
    shapes = infer_shapes(space)
    entries = []
    for shape in shapes.layers[1:21]:
        for key, option in OPTIONS.items():
            ms = round(float(reference[str(shape.index)][key]), 4)
            entries.append(Entry(signature=layer_signature(shape, option), latency_ms=ms, position=shape.index))
    first, last = shapes.layers[0], shapes.layers[21]
    group = FixedGroup(
        signatures=[
            stem_signature(space, shapes),
            layer_signature(first, first.layer.options[0]),
            layer_signature(last, last.layer.options[0]),
            head_signature(shapes),
        ],
        latency_ms=FIXED_MS,
        note="the paper's constant for the fixed parts: stem, layers 0 and 21, head",
    )
    return LatencyTable(
        name=SPEC.name,
        description="the Single-Path NAS paper's Pixel 1 lookup table (read-only: cannot be profiled here)",
        device=SPEC.device,  # device, runtime, threads: the registry's (one source)
        runtime=SPEC.runtime,
        threads=SPEC.threads,
        source=SOURCE,
        date="2019-04",
        read_only=True,
        entries=entries,
        fixed_groups=[group],
    )


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path("/work/shared/reference/pixel1_runtime_model.json")
    out = Path(argv[1]) if len(argv) > 1 else REPO / "targets" / "pixel1.json"
    table = convert(json.loads(src.read_text(encoding="utf-8")))
    write_table(out, table)
    print(f"wrote {out}: {len(table.entries)} entries, {len(table.signatures)} signatures")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
