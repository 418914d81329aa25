"""Cost of the single-path supernet against its largest concrete network, side by side.

    python -m benchmarks.supernet_cost [--quick] [--batch N] [--steps N] [--image-size S] [--threads T]

Builds the supernet of ``spaces/mnasnet.spnas`` (with the Pixel 1 latency term when the
latency graph is available) and ``lower_to_network`` of the all-largest (k5e6) network, then
times training steps (forward, loss, backward, SGD step) on the same fixed random batch,
alternating the two models step by step so that both see the same machine load. Prints the
parameter counts, the median wall and process-CPU time per step of each, and the ratios
(CPU time, all threads of this process, is the steadier figure on a shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from spnas_dsl.compiler.network import lower_to_network
from spnas_dsl.compiler.supernet import Supernet, lower_to_supernet
from spnas_dsl.ir import Layer, Network, Option
from spnas_dsl.parser import parse_text
from spnas_dsl.targets import load_target

SPACE = Path(__file__).resolve().parents[1] / "spaces" / "mnasnet.spnas"
LAMBDA = 0.02  # the paper's lambda; the latency term only adds its (small) graph cost


def largest_network(space: Network) -> Network:
    """Every searched layer at its largest kernel and expansion (k5e6 for mnasnet)."""
    layers = [Layer.from_option(Option(kernel=layer.kernel.max, expansion=layer.expansion.max), layer.span)
              if layer.is_searched else layer for _, _, layer in space.iter_layers()]
    return space.replace_layers(layers)


def count(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> tuple[float, float]:
        """(wall seconds, process CPU seconds: all threads, less sensitive to other jobs' load)."""
        start, cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        if isinstance(model, Supernet):
            loss = nn.functional.cross_entropy(out.logits, y)
            if out.latency_ms is not None:
                loss = loss + LAMBDA * torch.log(out.latency_ms)
        else:
            loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start, time.process_time() - cpu

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 32x32, batch 2, 2 steps")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 8; quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model (default 10; quick 2)")
    parser.add_argument("--image-size", type=int, default=None, help="input height = width (default 96; quick 32)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first (default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, 2 OpenMP threads can be "
                             "many times slower; 0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (2 if args.quick else 8)
    steps = args.steps or (2 if args.quick else 10)
    size = args.image_size or (32 if args.quick else 96)

    space = parse_text(SPACE.read_text(), filename=str(SPACE))
    torch.manual_seed(0)
    try:
        supernet = lower_to_supernet(space, target=load_target("pixel1"))
        latency = "with the pixel1 latency term"
    except ImportError:
        supernet = lower_to_supernet(space)
        latency = "without latency term (no latency graph)"
    concrete = lower_to_network(largest_network(space))
    supernet.train()
    concrete.train()
    x = torch.randn(batch, space.input.channels, size, size)
    y = torch.randint(0, space.classes, (batch,))
    models = {"supernet": supernet, "largest (all k5e6)": concrete}
    steps_of = {name: make_step(model, x, y) for name, model in models.items()}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for i in range(args.warmup + steps):
        for name, step in steps_of.items():  # interleaved: both models see the same load
            elapsed = step()
            if i >= args.warmup:
                times[name].append(elapsed)

    print(f"space {SPACE.name}: supernet {latency}")
    print(f"settings: input {size}x{size}x{space.input.channels}, batch {batch}, {steps} timed steps per model "
          f"after {args.warmup} warm-up, interleaved; SGD momentum 0.9; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s)")
    (s_all, s_train), (c_all, c_train) = count(supernet), count(concrete)
    names = list(models)
    print(f"{'':30}{names[0]:>14}{names[1]:>22}{'ratio':>9}")
    print(f"{'parameters (all)':30}{s_all:>14,}{c_all:>22,}{s_all / c_all:>9.4f}")
    print(f"{'parameters (trainable)':30}{s_train:>14,}{c_train:>22,}{s_train / c_train:>9.4f}")
    for col, label in ((0, "median train step, wall (ms)"), (1, "median train step, CPU (ms)")):
        s_ms, c_ms = (1e3 * statistics.median(t[col] for t in times[name]) for name in names)
        print(f"{label:30}{s_ms:>14.1f}{c_ms:>22.1f}{s_ms / c_ms:>9.2f}")
    spread = {name: (1e3 * min(t[0] for t in ts), 1e3 * max(t[0] for t in ts)) for name, ts in times.items()}
    print("wall step range (ms): " + ", ".join(f"{n} {lo:.1f}-{hi:.1f}" for n, (lo, hi) in spread.items()))


if __name__ == "__main__":
    main()
