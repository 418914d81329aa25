"""PNG plots of a search, drawn from its ``search.json`` (matplotlib, no display needed).

- ``search_curves.png``: training CE and the latency (relaxed and of the hard decisions)
  over the search, lambda on a second axis, the warm-up shaded (paper Fig. 4).
- ``decisions.png``: every searched layer's chosen option over the steps.
- ``norms_thresholds.png``: per searched layer, each decision's weight-subset norm and its
  threshold over the steps (a decision is on while its norm is above the threshold).
- ``superkernel.png``: the superkernel weight spread at the end (paper Fig. 6): per searched
  layer, the L2 norm of each kernel position over all channels.
- ``superkernel_groups.png``: per searched layer, the norms of the inner kernel vs each
  outer shell and of each channel group, at the start and at the end of the search.

``spnasc search`` calls :func:`make_plots`; to redraw: ``python -m spnas_dsl.search.plots RUN_DIR``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from spnas_dsl.io import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _shade_warmup(ax, steps: list[dict], end: int | None = None) -> None:
    warm = [r["step"] for r in steps if r.get("warmup")]
    end = end if end is not None else (max(warm) if warm else 0)
    if end:
        ax.axvspan(0, end, color="0.9", zorder=0, label="warm-up (lambda 0, indicator dropout)")


def plot_curves(search: dict, path: Path) -> None:
    plt = _plt()
    steps = search["history"]["steps"]
    budget = search["config"].get("latency_budget")
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    x = [r["step"] for r in steps]
    _shade_warmup(ax1, steps, search.get("warmup_steps"))
    ax1.plot(x, [r["ce"] for r in steps], label="training CE (label-smoothed)")
    val = search["history"]["epochs"]
    if val:
        ax1.plot([e["step"] for e in val], [e["val_ce"] for e in val], "o-", label="held-out CE")
    ax1.set_ylabel("cross-entropy")
    ax1.legend(loc="upper right", fontsize=8)
    _shade_warmup(ax2, steps, search.get("warmup_steps"))
    ax2.plot(x, [r["latency_relaxed"] for r in steps], label="relaxed latency (batch)", alpha=0.7)
    ax2.plot(x, [r["latency_ms"] for r in steps], label="latency of the decisions", lw=2)
    if budget is not None:
        ax2.axhline(budget, color="red", ls="--", label=f"budget {budget:g} ms")
    lo, hi = search.get("latency_range_ms", [None, None])
    ax2.set_ylabel(f"latency on {search['target']} (ms)")
    ax2.set_xlabel("step")
    ax3 = ax2.twinx()
    ax3.plot(x, [r["lambda"] for r in steps], color="tab:green", ls=":", label="lambda")
    ax3.set_ylabel("lambda", color="tab:green")
    lines = ax2.get_legend_handles_labels()
    extra = ax3.get_legend_handles_labels()
    ax2.legend(lines[0] + extra[0], lines[1] + extra[1], loc="upper right", fontsize=8)
    if lo is not None:
        ax2.set_title(f"space: {lo:.1f} .. {hi:.1f} ms", fontsize=9)
    fig.suptitle(f"Single-Path NAS search of {search['space']} on {search['target']}")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _option_key(text: str) -> tuple:
    from spnas_dsl.latency.graph import as_option

    o = as_option(text)
    if o.is_skip:
        return (0, 0, 0, 0, o.project)
    return (o.kernel, o.expansion, o.expand_always, o.groups, False)


def plot_decisions(search: dict, path: Path) -> None:
    plt = _plt()
    from matplotlib.colors import ListedColormap

    steps = search["history"]["steps"]
    if not steps:
        return
    layers = sorted(steps[0]["decisions"], key=int)
    options = sorted({r["decisions"][i] for r in steps for i in layers}, key=_option_key)
    code = {o: n for n, o in enumerate(options)}
    grid = [[code[r["decisions"][i]] for r in steps] for i in layers]
    fig, ax = plt.subplots(figsize=(9, 0.3 * len(layers) + 1.8))
    cmap = ListedColormap(plt.get_cmap("viridis")(
        [n / max(len(options) - 1, 1) for n in range(len(options))]))
    x0, x1 = steps[0]["step"], max(steps[-1]["step"], steps[0]["step"] + 1)
    ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=cmap, vmin=-0.5, vmax=len(options) - 0.5,
              extent=(x0, x1, len(layers) - 0.5, -0.5))
    ax.set_yticks(range(len(layers)), [f"layer {i}" for i in layers], fontsize=7)
    ax.set_xlabel("step")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(code[o])) for o in options]
    ax.legend(handles, options, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    warm = [r["step"] for r in steps if r.get("warmup")]
    if warm:
        ax.axvline(max(warm), color="white", ls="--", lw=1)
    ax.set_title("decision of each searched layer over the search (dashed: end of warm-up)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_norms(search: dict, path: Path) -> None:
    plt = _plt()
    steps = search["history"]["steps"]
    if not steps:
        return
    layers = sorted(steps[0]["norms"], key=int)
    cols = min(5, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.2 * rows), squeeze=False, sharex=True)
    x = [r["step"] for r in steps]
    for ax, layer in zip(axes.flat, layers):
        for n, name in enumerate(steps[0]["norms"][layer]):
            color = plt.get_cmap("tab10")(n)
            ax.plot(x, [r["norms"][layer][name][0] for r in steps], color=color, label=f"||{name}||")
            ax.plot(x, [r["norms"][layer][name][1] for r in steps], color=color, ls="--", label=f"t_{name}")
        ax.set_title(f"layer {layer}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5, loc="best")
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.suptitle("weight-subset norms (solid) vs thresholds (dashed)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def plot_superkernel(search: dict, path: Path) -> None:
    plt = _plt()
    epochs = search["history"]["epochs"]
    if not epochs:
        return
    spread = epochs[-1]["spread"]
    cols = min(5, len(spread))
    rows = math.ceil(len(spread) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows), squeeze=False)
    for ax, layer in zip(axes.flat, spread):
        im = ax.imshow(layer["positions"], cmap="magma")
        ax.set_title(f"layer {layer['index']} ({epochs[-1]['decisions'].get(str(layer['index']), '')})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(spread):]:
        ax.axis("off")
    fig.suptitle("superkernel: L2 norm of each kernel position over all channels (end of search)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def plot_groups(search: dict, path: Path) -> None:
    plt = _plt()
    epochs = search["history"]["epochs"]
    init = search["history"].get("init", {}).get("spread")
    if not epochs:
        return
    final = epochs[-1]["spread"]
    # Layers may have different candidate sets: plot the union, 0 where a layer lacks a part.
    shells = sorted({k for layer in final for k in layer["shells"]}, key=str)
    groups = sorted({e for layer in final for e in layer["groups"]}, key=str)
    names = [f"shell {k}" for k in shells] + [f"channels {e}" for e in groups]

    def values(layer: dict) -> list[float]:
        return [layer["shells"].get(k, 0.0) for k in shells] + [layer["groups"].get(e, 0.0) for e in groups]

    fig, ax = plt.subplots(figsize=(min(16, max(8, 0.3 * len(final) * len(names) / 2)), 4))
    width = 0.8 / (len(names) * (2 if init else 1))
    xs = range(len(final))
    bar = 0
    for n, name in enumerate(names):
        color = plt.get_cmap("tab10")(n)
        if init:
            ax.bar([x + bar * width for x in xs], [values(layer)[n] for layer in init], width, color=color, alpha=0.35,
                   label=f"{name} (start)")
            bar += 1
        ax.bar([x + bar * width for x in xs], [values(layer)[n] for layer in final], width, color=color,
               label=f"{name} (end)")
        bar += 1
    ax.set_xticks([x + 0.4 - width / 2 for x in xs], [f"{layer['index']}" for layer in final], fontsize=8)
    ax.set_xlabel("searched layer")
    ax.set_ylabel("L2 norm")
    ax.set_title("superkernel: inner kernel vs outer shells, first vs further channel groups")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


PLOTS = {
    "search_curves.png": plot_curves,
    "decisions.png": plot_decisions,
    "norms_thresholds.png": plot_norms,
    "superkernel.png": plot_superkernel,
    "superkernel_groups.png": plot_groups,
}


def make_plots(search: dict, out_dir: str | Path) -> list[Path]:
    """Draw every plot of :data:`PLOTS` into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    written = []
    for name, fn in PLOTS.items():
        path = out_dir / name
        fn(search, path)  # save_figure writes atomically: a reader never sees half a PNG
        if path.exists():
            written.append(path)
    return written


if __name__ == "__main__":
    run = Path(sys.argv[1])
    print("\n".join(str(p) for p in make_plots(json.loads((run / "search.json").read_text()), run)))
