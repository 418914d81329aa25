"""Claim 1, search cost: the single-path supernet against one network and a multi-path supernet.

    python -m benchmarks.search_cost [--quick] [--image-size S] [--batch B] [--steps N]
                                     [--mem-batches B1 B2] [--budget-gib G] [--threads T] [--no-write]

The paper (Sec. 1, 4.3): one single-path supernet costs about as much to train as one network
of the space, and needs far less memory than a multi-path supernet (DARTS / FBNet /
ProxylessNAS), whose every candidate is a separate path: it fits a 4x larger batch.

Three models of the same space (default ``spaces/mnasnet.spnas``, with the Pixel 1 latency
term in both supernets):

- the single-path supernet (``compiler.supernet.lower_to_supernet``);
- its largest concrete network (every searched layer k5e6, ``lower_to_network``);
- the multi-path supernet of ``benchmarks/multipath.py`` (one path per (k, e) option with its
  own weights, an identity path for skip, softmax-weighted sum, FBNet's expected latency).

Time: training steps (forward, loss, backward, SGD momentum step) on one fixed random batch,
the three models interleaved step by step so that they see the same machine load; median
wall and process-CPU time per step (CPU time is the steadier figure on a shared machine).

Memory: each (model, batch) is measured in a fresh subprocess. After the model and the batch
are built, freed heap is returned to the OS (``malloc_trim``) and the RSS high-water mark is
reset (``/proc/self/clear_refs``; ``ru_maxrss`` where that is refused); two training steps
run; the peak minus the RSS before them, plus the weights, is the training peak: weights +
gradients + optimizer state + activations kept for backward (+ allocator slack). Two batch
sizes give a linear fit ``peak(b) = fixed + per_sample * b``, from which the largest batch
under a memory budget is extrapolated (the measured points are printed; no bigger batch runs).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks import _results as R
from spnas_dsl.targets.registry import DEFAULT_TARGET

SPACE = R.REPO / "spaces" / "mnasnet.spnas"
MODELS = ("single-path supernet", "largest network", "multi-path supernet")
KEYS = {"single-path supernet": "single", "largest network": "largest", "multi-path supernet": "multi"}
LAMBDA = 0.02


def load_space(path: Path = SPACE):
    from spnas_dsl.parser import parse_text

    return parse_text(path.read_text(), filename=str(path))


def build_model(which: str, space, target: str | None) -> nn.Module:
    """``single`` | ``largest`` | ``multi`` (seeded)."""
    from benchmarks.multipath import lower_to_multipath
    from benchmarks.supernet_cost import largest_network
    from spnas_dsl.compiler.network import lower_to_network
    from spnas_dsl.compiler.supernet import lower_to_supernet
    from spnas_dsl.targets import load_target

    torch.manual_seed(0)
    target = load_target(target) if target is not None else None  # the name resolved once, here
    if which == "single":
        return lower_to_supernet(space, target=target)
    if which == "largest":
        return lower_to_network(largest_network(space))
    if which == "multi":
        return lower_to_multipath(space, target=target)
    raise ValueError(which)


def count(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One training step (SGD momentum 0.9 over every parameter: weights and architecture
    parameters together, as both supernets are trained by one optimizer)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        if isinstance(out, torch.Tensor):
            loss = nn.functional.cross_entropy(out, y)
        else:  # SupernetOutput / MultiPathOutput: (logits, latency_ms)
            loss = nn.functional.cross_entropy(out.logits, y)
            if out.latency_ms is not None:
                loss = loss + LAMBDA * torch.log(out.latency_ms)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start, time.process_time() - cpu

    return step


def _status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def reset_peak() -> str:
    """Make the process's RSS high-water mark start from now: release freed heap to the OS
    (``malloc_trim``), then reset ``VmHWM`` (``/proc/self/clear_refs`` = 5, Linux >= 4.0).
    Returns how the peak is read: ``VmHWM`` or, where the reset is refused, ``ru_maxrss``."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def peak_mib(how: str) -> float:
    if how == "VmHWM":
        value = _status_mib("VmHWM")
        if value is not None:
            return value
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure_memory_here(which: str, batch: int, size: int, target: str | None, steps: int = 2) -> dict:
    """Run in a fresh process. Memory (MiB) of ``steps`` training steps above the built model:
    the RSS peak during the steps minus the RSS just before them (freed heap released first).
    ``train_peak_mib`` adds the weights back: weights + gradients + optimizer state +
    activations, what an accelerator would have to hold."""
    space = load_space()
    model = build_model(which, space, target).train()
    x = torch.randn(batch, space.input.channels, size, size)
    y = torch.randint(0, space.classes, (batch,))
    step = make_step(model, x, y)
    how = reset_peak()
    base = _status_mib("VmRSS") or peak_mib(how)
    for _ in range(steps):
        step()
    peak = peak_mib(how)
    weights = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    return {"model": which, "batch": batch, "image_size": size, "rss_before_mib": base, "peak_mib": peak,
            "peak_delta_mib": peak - base, "weights_mib": weights, "train_peak_mib": peak - base + weights,
            "method": how}


def measure_memory(which: str, batch: int, size: int, target: str | None, threads: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.search_cost", "--measure-memory", which, "--batch", str(batch),
           "--image-size", str(size), "--threads", str(threads), "--target", target or "none"]
    proc = subprocess.run(cmd, cwd=R.REPO, env=R.child_env(threads), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"model": which, "batch": batch, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(fixed, per_sample) of a least-squares line through (batch, MiB) points."""
    if len(points) < 2:
        b, m = points[0]
        return 0.0, m / b
    xs, ys = zip(*points)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((a - mx) * (b - my) for a, b in points) / sum((a - mx) ** 2 for a in xs)
    return my - slope * mx, slope


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    R.common_options(parser)
    parser.add_argument("--image-size", type=int, default=None, help="input height = width (default 128; quick 64)")
    parser.add_argument("--batch", type=int, default=None, help="timed batch (default 16; quick 4)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model (default 10; quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first (default 1)")
    parser.add_argument("--mem-batches", type=int, nargs="+", default=None,
                        help="batch sizes of the memory fit (default 8 32; quick 4 16)")
    parser.add_argument("--budget-gib", type=float, default=16.0,
                        help="memory budget of the largest-batch extrapolation (default 16 GiB: an accelerator's)")
    parser.add_argument("--target", default=DEFAULT_TARGET, help="latency table of both supernets ('none': no term)")
    parser.add_argument("--measure-memory", choices=["single", "largest", "multi"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    R.set_threads(args.threads)
    target = None if args.target == "none" else args.target
    size = args.image_size or (64 if args.quick else 128)
    if args.measure_memory:
        print(json.dumps(measure_memory_here(args.measure_memory, args.batch or 4, size, target)))
        return
    batch = args.batch or (4 if args.quick else 16)
    steps = args.steps or (3 if args.quick else 10)
    mem_batches = args.mem_batches or ([4, 16] if args.quick else [8, 32])
    started = time.perf_counter()

    space = load_space()
    models = {name: build_model(KEYS[name], space, target).train() for name in MODELS}
    x = torch.randn(batch, space.input.channels, size, size)
    y = torch.randint(0, space.classes, (batch,))
    steps_of = {name: make_step(m, x, y) for name, m in models.items()}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in MODELS}
    for i in range(args.warmup + steps):
        for name, step in steps_of.items():
            t = step()
            if i >= args.warmup:
                times[name].append(t)
    counts = {name: count(m) for name, m in models.items()}
    del models, steps_of

    memory: dict[str, list[dict]] = {name: [] for name in MODELS}
    for b in mem_batches:
        for name in MODELS:
            memory[name].append(measure_memory(KEYS[name], b, size, target, args.threads))

    # ------------------------------------------------------------------ the table
    wall = {n: 1e3 * statistics.median(t[0] for t in times[n]) for n in MODELS}
    cpu = {n: 1e3 * statistics.median(t[1] for t in times[n]) for n in MODELS}
    ref = "largest network"
    rows = []
    rows.append(["parameters (trainable)"] + [f"{counts[n][1]:,}" for n in MODELS]
                + [f"{counts['single-path supernet'][1] / counts[ref][1]:.3f}",
                   f"{counts['multi-path supernet'][1] / counts[ref][1]:.2f}"])
    rows.append(["train step, CPU (ms, median)"] + [f"{cpu[n]:.0f}" for n in MODELS]
                + [f"{cpu['single-path supernet'] / cpu[ref]:.2f}", f"{cpu['multi-path supernet'] / cpu[ref]:.2f}"])
    rows.append(["train step, wall (ms, median)"] + [f"{wall[n]:.0f}" for n in MODELS]
                + [f"{wall['single-path supernet'] / wall[ref]:.2f}", f"{wall['multi-path supernet'] / wall[ref]:.2f}"])
    fits = {}
    for b_i, b in enumerate(mem_batches):
        vals = {n: memory[n][b_i].get("train_peak_mib") for n in MODELS}
        if any(v is None for v in vals.values()):
            errs = "; ".join(f"{n}: {memory[n][b_i].get('error')}" for n in MODELS if vals[n] is None)
            rows.append([f"training peak at batch {b} (MiB)", errs, "", "", "", ""])
            continue
        rows.append([f"training peak at batch {b} (MiB)"] + [f"{vals[n]:,.0f}" for n in MODELS]
                    + [f"{vals['single-path supernet'] / vals[ref]:.2f}",
                       f"{vals['multi-path supernet'] / vals[ref]:.2f}"])
    for n in MODELS:
        pts = [(m["batch"], m["train_peak_mib"]) for m in memory[n] if "train_peak_mib" in m]
        if len(pts) >= 2:
            fits[n] = fit_line(pts)
    budget_mib = args.budget_gib * 1024
    if len(fits) == len(MODELS):
        rows.append(["per-sample training memory (MiB, fit)"] + [f"{fits[n][1]:.1f}" for n in MODELS]
                    + [f"{fits['single-path supernet'][1] / fits[ref][1]:.2f}",
                       f"{fits['multi-path supernet'][1] / fits[ref][1]:.2f}"])
        largest_batch = {n: max(0, int((budget_mib - fits[n][0]) // fits[n][1])) if fits[n][1] > 0 else 0
                         for n in MODELS}
        rows.append([f"largest batch in {args.budget_gib:g} GiB (extrapolated)"]
                    + [f"{largest_batch[n]:,}" for n in MODELS]
                    + [f"{largest_batch['single-path supernet'] / max(largest_batch[ref], 1):.2f}",
                       f"{largest_batch['multi-path supernet'] / max(largest_batch[ref], 1):.2f}"])
        batch_ratio = largest_batch["single-path supernet"] / max(largest_batch["multi-path supernet"], 1)
    else:
        batch_ratio = None
    table = R.md_table(["", *MODELS, "single / largest", "multi / largest"], rows)

    single_vs_multi_time = cpu["multi-path supernet"] / cpu["single-path supernet"]
    paper = R.md_table(
        ["claim", "paper", "ours"],
        [["single-path supernet step vs a step of one network", ("\u2248 1x (\"about as much as training one "
          "network\")"), f"{cpu['single-path supernet'] / cpu[ref]:.2f}x CPU time per step"],
         ["batch that fits: single-path vs multi-path", "4x",
          f"{batch_ratio:.1f}x (extrapolated, {args.budget_gib:g} GiB)" if batch_ratio else "n/a"],
         ["multi-path step vs single-path step", "(not given)", f"{single_vs_multi_time:.2f}x CPU time"],
         ["trainable parameters, multi- vs single-path", "(not given)",
          f"{counts['multi-path supernet'][1] / counts['single-path supernet'][1]:.2f}x"]],
        "lll")
    latency = f"both supernets with the {target} latency term (lambda {LAMBDA})" if target else "no latency term"
    mem_points = "; ".join(
        f"{n}: " + ", ".join(f"b{m['batch']} {m.get('rss_before_mib', float('nan')):.0f}->{m.get('peak_mib', float('nan')):.0f}"
                             for m in memory[n]) for n in MODELS)
    methods = sorted({m.get("method", "?") for ms in memory.values() for m in ms})
    body = R.section_header(
        "Claim 1: search cost (single-path vs one network vs multi-path)",
        R.command_line("benchmarks.search_cost", argv), args.threads,
        [(f"space `{SPACE.relative_to(R.REPO)}` (the paper's space, 20 searched layers), input {size}x{size}x"
         f"{space.input.channels}, {latency}"),
         f"time: batch {batch}, {steps} timed steps per model after {args.warmup} warm-up, interleaved, SGD momentum",
         (f"memory: a fresh process per (model, batch); 'training peak' = RSS high-water mark during 2 training steps "
         f"({'/'.join(methods)}, reset after building the model) minus the RSS before them, plus the weights: "
         f"weights + gradients + optimizer state + activations; batches {', '.join(map(str, mem_batches))}; "
         f"RSS before -> peak (MiB): {mem_points}"),
         f"total wall time {time.perf_counter() - started:.0f} s"])
    body += "\n" + table + "\n\n" + paper + "\n\n" + NOTES
    R.publish("search_cost", body, args.no_write)


NOTES = """**What differs from the paper, and why.** The paper trains on TPUs at 224x224 with batch
1024; here it is a CPU at a smaller input and batch, so absolute times mean nothing and only
the ratios carry over. Its "4x batch" figure is for the multi-path supernets it compares with
(DARTS/FBNet/ProxylessNAS, which differ in detail); ours is one clean multi-path baseline of
the *same* space (every (k, e) option a separate path with its own weights, plus an identity
path for skip, DARTS-style softmax over architecture parameters, all paths run every step).
ProxylessNAS samples paths to save memory; FBNet uses Gumbel-softmax; neither changes the
cost of computing every path. Peak memory is the process RSS high-water mark (malloc slack
included), measured per model in its own process; the largest batch is a linear
extrapolation from two measured batches, not a run at that batch. The single-path supernet
pays a little more than the largest network per step (the channel masks on the `in*6`
activations, the norms, indicators and latency term) and holds the same weights plus one
threshold per decision. Why less than the paper's 4x: in this space the four (k, e) paths of a
layer together have 3x the expanded channels of its largest option (3+6+3+6 vs 6 times the
input width), while the stem, the fixed layers, the head and every block's input and output
are not multiplied, and the single-path supernet itself keeps somewhat more
activation memory than the largest network (the masked copies of the `in*6` activations kept
for backward); so the multi-path supernet needs roughly 2x, not 4x, the single-path
supernet's memory per sample here."""


if __name__ == "__main__":
    main()
