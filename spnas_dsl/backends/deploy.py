"""``deploy/`` beside a TFLite build: a phone benchmark script, its README, the input spec.

``run_on_pixel.sh`` pushes a model and TFLite's ``benchmark_model`` with adb (asking for
``ANDROID_SERIAL`` when several phones are connected), pins the run to the phone's big cores
(mask by phone model: Pixel 1 ``c``, Pixel 2 ``f0``) and runs it with ``--num_threads=1``:
a headline timing without op profiling, then a separate profiled run; ``README.md`` explains
where the binary comes from, the units (microseconds) and XNNPACK; ``input_spec.json`` gives each model's input (NHWC shape, dtype, int8 quantization) and
the pixel normalisation. Templates live in ``templates/`` next to this module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _fill(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    return template


def input_spec(ctx, models) -> dict:
    """The ``input_spec.json`` object for ``models``: [(file name, TFLiteModel)]."""
    spec_models = {}
    for name, runner in models:
        entry = {
            "name": runner.input["name"],
            "shape": list(runner.input_shape),
            "layout": "NHWC",
            "dtype": np.dtype(runner.input_dtype).name,
            "quantization": None,
            "output": {"name": runner.output["name"], "shape": [int(v) for v in runner.output["shape"]], "meaning": "logits",
                       "dtype": np.dtype(runner.output["dtype"]).name, "quantization": None},
        }
        if runner.input_quantization:
            scale, zero = runner.input_quantization
            entry["quantization"] = {"scale": scale, "zero_point": zero,
                                     "formula": "q = clip(round(x / scale) + zero_point, -128, 127)"}
        if runner.output_quantization:
            scale, zero = runner.output_quantization
            entry["output"]["quantization"] = {"scale": scale, "zero_point": zero,
                                               "formula": "logits = (q - zero_point) * scale"}
        spec_models[name] = entry
    norm = dict(ctx.normalization) if ctx.normalization else None
    if norm:
        norm["formula"] = "x = (pixel / 255 - mean) / std, per channel, pixel in [0, 255]"
    return {
        "network": ctx.network.name,
        "models": spec_models,
        "normalization": norm,
        "normalization_note": None if norm else (
            "unknown at build time (no --data): feed images normalised as the network was trained "
            "(spnas_dsl.data: (pixel / 255 - mean) / std with the data set's statistics)"),
    }


def write_deploy(ctx, models) -> None:
    """Write ``deploy/`` under the build's staging folder and record its files."""
    folder = ctx.staging / "deploy"
    folder.mkdir(exist_ok=True)
    names = [name for name, _ in models]
    values = {"NETWORK": ctx.network.name, "DEFAULT_MODEL": names[0], "LAST_MODEL": names[-1],
              "MODELS": ", ".join(names)}
    script = folder / "run_on_pixel.sh"
    script.write_text(_fill((TEMPLATES / "run_on_pixel.sh").read_text(encoding="utf-8"), values), encoding="utf-8")
    os.chmod(script, 0o755)
    readme = folder / "README.md"
    readme.write_text(_fill((TEMPLATES / "README.md").read_text(encoding="utf-8"), values), encoding="utf-8")
    spec = folder / "input_spec.json"
    spec.write_text(json.dumps(input_spec(ctx, models), indent=2) + "\n", encoding="utf-8")
    for path, kind in ((script, "deploy_script"), (readme, "deploy_readme"), (spec, "input_spec")):
        ctx.add(path, "tflite", kind)
