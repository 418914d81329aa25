"""spnasc profile FILE --target NAME: time one network (a concrete .spnas or a built model file)."""

from __future__ import annotations

import json
import math
import sys

from spnas_dsl.cli.options import nonnegative_int, positive_int


def register(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="time one network on a target (this CPU, or a phone over adb)",
        description="Time a concrete network (.spnas, built with initial weights) or a built model (.tflite for "
        "host-tflite and android:SERIAL, .onnx for host-onnxruntime): warm-up runs, then the median of many "
        "runs, with p10/p90. On this CPU, LiteRT runs with one thread unless --threads is given. If the "
        "target has a lookup table that prices the network, its prediction is shown too.",
    )
    p.add_argument("file", metavar="FILE", help="a concrete .spnas network, or a .tflite / .onnx model")
    p.add_argument("--target", required=True, help="host-tflite, host-onnxruntime or android:SERIAL")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads of the runtime (default: the target's, 1)")
    p.add_argument("--runs", type=positive_int, default=200, help="timed runs in all (default 200)")
    p.add_argument("--warmup", type=nonnegative_int, default=10, help="untimed runs before each batch of runs (default 10)")
    p.add_argument("--processes", type=positive_int, default=1,
                   help="fresh worker processes, one after the other, each timing runs/processes runs (default 1)")
    p.add_argument("--benchmark-binary", metavar="PATH", help="android: TFLite's benchmark_model built for the phone "
                   "(or $SPNAS_BENCHMARK_MODEL)")
    p.add_argument("--realtime", action="store_true",
                   help="time with real-time priority (SCHED_FIFO) pinned to one CPU (needs root or CAP_SYS_NICE)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from spnas_dsl.errors import UsageError
    from spnas_dsl.profiling import models as M
    from spnas_dsl.profiling.lut import make_measurer
    from spnas_dsl.profiling.runtimes import SUFFIXES
    from spnas_dsl.profiling.timing import TimingConfig

    rounds = 5 if args.runs >= 25 else 1
    per_visit = max(1, math.ceil(args.runs / (rounds * args.processes)))
    config = TimingConfig(warmup=args.warmup, runs=per_visit, visit_ms=0.0, rounds=rounds, min_seconds=0.0,
                          processes=args.processes, statistic="median", across="median",
                          realtime=args.realtime)
    measurer = make_measurer(args.target, args.threads, config, args.benchmark_binary)
    path = Path(args.file)
    network = None
    if path.suffix == ".spnas":
        from spnas_dsl.parser import load

        network = load(path)
        _require_concrete(network)
        if not args.json:
            print(f"building {network.name} for {measurer.runtime} ...", file=sys.stderr)
        key = M.network_id(network)
        model = M.ensure_models([M.network_job(measurer.runtime, network, key, stitch=False)])[key]
    else:
        want = SUFFIXES[measurer.runtime]
        if path.suffix != want:
            raise UsageError(f"target '{args.target}' runs {want} models; got '{path.name}' "
                             f"(give a concrete .spnas network or a {want} file)")
        if not path.is_file():
            raise UsageError(f"no such file: {path}")
        model = path
    timing = measurer.measure({"model": model})["model"]
    predicted = _prediction(network, args.target) if network is not None else None
    out = {
        "file": str(path), "network": network.name if network else None, "target": args.target,
        "device": measurer.device, "runtime": measurer.runtime_text, "threads": measurer.threads,
        "median_ms": timing.median_ms, "p10_ms": timing.p10_ms, "p90_ms": timing.p90_ms, "min_ms": timing.min_ms,
        "spread_pct": timing.spread_pct, "runs": timing.runs, "process_ms": timing.process_ms,
        "timing": config.describe() if measurer.kind == "host" else "benchmark_model (avg of its runs)",
        "predicted_ms": predicted,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    name = network.name if network else path.name
    print(f"{name} on {args.target} ({measurer.device}; {measurer.runtime_text}; {measurer.threads} thread(s))")
    print(f"  median {timing.median_ms:.4g} ms   p10 {timing.p10_ms:.4g} ms   p90 {timing.p90_ms:.4g} ms   "
          f"min {timing.min_ms:.4g} ms   ({timing.runs} runs)")
    if len(timing.process_ms) > 1:
        print("  per process: " + ", ".join(f"{v:.4g}" for v in timing.process_ms) + " ms")
    if predicted is not None:
        vs_median = 100.0 * (predicted - timing.median_ms) / timing.median_ms
        vs_p10 = 100.0 * (predicted - timing.p10_ms) / timing.p10_ms
        print(f"  table prediction: {predicted:.4g} ms ({vs_median:+.1f} % vs the median, {vs_p10:+.1f} % vs p10; "
              "tables built with the default --statistic p10 aim at p10 on a busy machine)")
    return 0


def _prediction(network, target: str) -> float | None:
    """The target table's prediction for ``network``, or None when there is no table or it lacks a part."""
    from spnas_dsl.errors import SpnasError
    from spnas_dsl.latency.graph import LatencyGraph
    from spnas_dsl.targets import load_target

    try:
        return LatencyGraph.build(network, load_target(target)).predict(network)
    except SpnasError:
        return None


def _require_concrete(network) -> None:
    """A located error naming the first searched layer (without importing torch)."""
    from spnas_dsl.errors import UsageError
    from spnas_dsl.printer import format_layer
    from spnas_dsl.shapes import infer_shapes

    for shape in infer_shapes(network).layers:
        if not shape.layer.is_concrete:
            raise UsageError(
                f"'{network.name}' is a search space, not a concrete network: layer {shape.index} ({shape.name}) "
                f"has {len(shape.layer.options)} candidates ({format_layer(shape.layer)}); profile one network "
                f"of it, or time the whole space with `spnasc lut build`", shape.layer.span)
