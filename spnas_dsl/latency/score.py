"""How well a target's table predicts measured whole networks (``spnasc lut validate --measurements``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spnas_dsl.ir import Network, Option
from spnas_dsl.latency.graph import LatencyGraph
from spnas_dsl.targets.fit import metrics
from spnas_dsl.targets.measurements import Measurements
from spnas_dsl.targets.registry import Target


def predict_networks(graph: LatencyGraph, networks: list[list[Option]]) -> np.ndarray:
    """The graph's calibrated latency (ms) of each network (one option per layer), without re-deriving shapes."""
    searched = graph.searched()
    base = graph.fixed_ms
    raw = [base + sum(graph.option_latency(i, options[i]) for i in searched) for options in networks]
    return np.asarray([float(graph.calibrate(r)) for r in raw])


def score(space: Network, target: Target, meas: Measurements, networks: list[list[Option]]) -> dict:
    """The report: metrics of the target's predictions on the measured networks, and the rows."""
    graph = LatencyGraph.build(space, target)
    predicted = predict_networks(graph, networks)
    report = {
        "space": space.name, "target": target.name, "table": str(target.path),
        "measurements": str(meas.path), "measurements_sha256": meas.sha256, "device": meas.device,
        "device_description": meas.description,
        **metrics(predicted, meas.latency_ms),
        "measured_ms_range": [float(meas.latency_ms.min()), float(meas.latency_ms.max())],
        "predicted_ms": [round(float(p), 6) for p in predicted],
        "measured_ms": [float(m) for m in meas.latency_ms],
    }
    return report


def plot_scatter(report: dict, path: str | Path) -> None:
    """Predicted vs measured, one point per network (the paper's Fig. 7), with the headline errors."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    measured, predicted = report["measured_ms"], report["predicted_ms"]
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=120)
    ax.scatter(measured, predicted, s=6, alpha=0.5, color="tab:blue",
               label=f"{report['networks']} networks: MAPE {report['mape_pct']:.2f} %, RMSE {report['rmse_ms']:.3g} ms, "
                     f"Spearman {report['spearman']:.3f}")
    lo, hi = min(measured + predicted) * 0.97, max(measured + predicted) * 1.03
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="predicted = measured")
    for pct in (10,):
        ax.plot([lo, hi], [lo * (1 + pct / 100), hi * (1 + pct / 100)], color="gray", lw=0.6, ls="--",
                label=f"±{pct} %")
        ax.plot([lo, hi], [lo * (1 - pct / 100), hi * (1 - pct / 100)], color="gray", lw=0.6, ls="--")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"measured latency (ms): {report['device']}")
    ax.set_ylabel(f"predicted latency (ms): target {report['target']}")
    ax.set_title(f"{report['space']}: {report['within_10_pct']:.1f} % of networks within 10 %", fontsize=9)
    ax.legend(fontsize=6.5, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    from spnas_dsl.io import save_figure

    save_figure(fig, path)
