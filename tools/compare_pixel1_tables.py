"""Compare the two Pixel 1 tables (``pixel1``: Single-Path NAS; ``pixel1-proxylessnas``) on the same networks.

    .venv/bin/python tools/compare_pixel1_tables.py [--samples 100] [--seed 0]

Networks of spaces/mnasnet.spnas: spnasnet (examples/spnasnet.spnas), the largest and the
smallest network (by the pixel1 table), and N random ones. Prints Markdown (docs/targets.md
shows it): each named network's predictions and their ratio, then over the random networks
the ratio's median and range, Pearson and Spearman correlation, and how often the two tables
order a pair of networks differently.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from spnas_dsl.latency.graph import LatencyGraph
from spnas_dsl.parser import load
from spnas_dsl.passes import with_options
from spnas_dsl.profiling.models import random_networks
from spnas_dsl.targets import load_target
from spnas_dsl.targets.fit import spearman

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    """Print the comparison as Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    space = load(ROOT / "spaces" / "mnasnet.spnas")
    sp, px = LatencyGraph.build(space, load_target("pixel1")), LatencyGraph.build(space, load_target("pixel1-proxylessnas"))
    named = [("spnasnet", load(ROOT / "examples" / "spnasnet.spnas")),
             ("largest (pixel1)", with_options(space, sp.largest())),
             ("smallest (pixel1)", with_options(space, sp.smallest()))]
    print("| network | pixel1 ms | pixel1-proxylessnas ms | ratio pixel1 / proxylessnas |")
    print("|---|---:|---:|---:|")
    for name, net in named:
        a_ms, b_ms = sp.predict(net), px.predict(net)
        print(f"| {name} | {a_ms:.2f} | {b_ms:.2f} | {a_ms / b_ms:.3f} |")
    nets = random_networks(space, a.samples, seed=a.seed)
    x = np.array([sp.predict(n) for n in nets])
    y = np.array([px.predict(n) for n in nets])
    ratio = x / y
    pairs = list(itertools.combinations(range(len(nets)), 2))
    swapped = sum((x[i] - x[j]) * (y[i] - y[j]) < 0 for i, j in pairs)
    print()
    print(f"| {len(nets)} random networks (seed {a.seed}) | value |")
    print("|---|---:|")
    print(f"| pixel1 range, ms | {x.min():.2f} .. {x.max():.2f} |")
    print(f"| pixel1-proxylessnas range, ms | {y.min():.2f} .. {y.max():.2f} |")
    print(f"| ratio pixel1 / proxylessnas: median (min .. max) | {np.median(ratio):.3f} ({ratio.min():.3f} .. "
          f"{ratio.max():.3f}) |")
    print(f"| Pearson | {np.corrcoef(x, y)[0, 1]:.4f} |")
    print(f"| Spearman | {spearman(x, y):.4f} |")
    print(f"| pairs of networks the two tables order differently | {swapped} of {len(pairs)} "
          f"({100 * swapped / len(pairs):.1f} %) |")
    after = x.mean() / y.mean() * y  # one scale factor removes the level difference
    print(f"| proxylessnas x one scale ({x.mean() / y.mean():.3f}) vs pixel1: MAPE % | "
          f"{float(np.mean(np.abs(after - x) / x) * 100):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
