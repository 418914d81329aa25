"""``lut validate``: how well a table predicts whole networks it has never seen.

N random networks of the space (never one of the calibration networks) are built and timed
end to end, interleaved round-robin with fresh measurements of the calibration networks, in
the same worker processes. Three predictions are compared with the measurements:

- ``stored_calibration``: what the table predicts as stored (``scale * sum + offset_ms`` fitted
  by ``lut build`` in its own run): the figure a search uses;
- ``in_run_calibration``: the same sums with scale and offset re-fitted on the calibration
  networks measured in *this* run (the machine drifts between runs; this separates the
  table's per-layer accuracy from that drift);
- ``uncalibrated_sum``: the plain sum of the separately timed parts.

Each reports RMSE (ms), MAPE (%), the largest error (%) and the mean signed error (%).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from spnas_dsl.errors import TargetError
from spnas_dsl.ir import Network
from spnas_dsl.profiling import lut as L
from spnas_dsl.profiling import models as M


def validate_lut(space: Network, measurer: L.Measurer, *, table: str | Path | None = None, samples: int = 100,
                 seed: int = 1, calibrate: int = L.DEFAULT_CALIBRATE, fit_mode: str = "affine",
                 progress: L.Progress | None = None, log: Callable[[str], None] = print) -> dict:
    """Sample, build, time and compare; returns the report (see the module doc)."""
    from spnas_dsl.latency.graph import LatencyGraph
    from spnas_dsl.targets import load_target

    path = L.table_path(measurer.target, table)
    if not path.exists():
        raise TargetError(f"target '{measurer.target}' has no lookup table yet ({path}); build it with "
                          f"`spnasc lut build SPACE --target {measurer.target}`")
    target = load_target(str(path))
    if (target.table.device, target.table.runtime, target.table.threads) != (
            measurer.device, measurer.runtime_text, measurer.threads):
        raise TargetError(
            f"table {path} was measured on {target.table.device}, {target.table.runtime}, "
            f"{target.table.threads} thread(s); this machine is {measurer.device}, {measurer.runtime_text}, "
            f"{measurer.threads} thread(s): validate it where it was measured")
    graph = LatencyGraph.build(space, target)
    stored = target.calibration
    if stored.networks and L._calibrated_on(stored.model_dump(), space):
        cal_nets = [M.from_network_id(space, n) for n in stored.networks]
    else:
        if not stored.is_identity:
            log(f"note: the table's calibration was fitted on other networks ({', '.join(stored.networks[:2])}...); "
                f"the in-run calibration uses {calibrate} networks of '{space.name}'")
        cal_nets = L.calibration_networks(space, calibrate)
    cal_ids = [M.network_id(n) for n in cal_nets]
    nets = M.random_networks(space, samples, seed=seed, exclude=cal_ids)
    ids = [M.network_id(n) for n in nets]
    if len(nets) < samples:
        log(f"note: the space has only {len(nets)} networks besides the calibration networks")
    log(f"validating {target.name} ({path}) on {len(nets)} random networks of '{space.name}' "
        f"+ {len(cal_nets)} calibration networks, interleaved")
    jobs = [M.network_job(measurer.runtime, n, i) for n, i in zip(cal_nets + nets, cal_ids + ids)]
    tick = progress("building networks", len(jobs)) if progress else None
    paths = M.ensure_models(jobs, tick)
    tick = progress("timing networks", measurer.visits(len(jobs))) if progress else None
    timings = measurer.measure(paths, tick)
    date = L.now()
    L._record("validation", timings, measurer, date, {"space": space.name, "table": str(path)})

    def raw(n: Network) -> float:
        return graph.raw_total(n)

    cal_raw = [raw(n) for n in cal_nets]
    cal_measured = [timings[i].value_ms for i in cal_ids]
    scale, offset = L.fit(cal_raw, cal_measured, fit_mode)
    rows = []
    for net, key in zip(nets, ids):
        r = raw(net)
        t = timings[key]
        rows.append({
            "network": key, "measured_ms": t.value_ms, "median_ms": t.median_ms, "p10_ms": t.p10_ms, "p90_ms": t.p90_ms,
            "process_ms": t.process_ms, "sum_ms": r, "predicted_stored_ms": graph.predict(net),
            "predicted_in_run_ms": scale * r + offset,
        })
    measured = [row["measured_ms"] for row in rows]
    stored_err = L.errors([row["predicted_stored_ms"] for row in rows], measured)
    in_run_err = L.errors([row["predicted_in_run_ms"] for row in rows], measured)
    plain_err = L.errors([row["sum_ms"] for row in rows], measured)
    report = {
        "space": space.name, "target": target.name, "table": str(path), "date": date,
        "device": measurer.device, "runtime": measurer.runtime_text, "threads": measurer.threads,
        "timing": measurer.config.describe() if measurer.kind == "host" else "benchmark_model",
        "samples": len(rows), "seed": seed,
        # Headline: the table as stored, i.e. what a search gets.
        "rmse_ms": stored_err["rmse_ms"], "mape_pct": stored_err["mape_pct"],
        "max_error_pct": stored_err["max_error_pct"],
        "stored_calibration": {**stored.model_dump(), **stored_err},
        "in_run_calibration": {"scale": scale, "offset_ms": offset, "networks": cal_ids, "date": date,
                               **in_run_err},
        "uncalibrated_sum": plain_err,
        "measured_ms_range": [min(measured), max(measured)] if measured else None,
        # how much slower each worker process ran than the fastest (divided out of every figure)
        "process_factors": next(iter(timings.values())).process_factors if timings else [],
        "calibration_networks": [
            {"network": i, "sum_ms": r, "measured_ms": m, "stored_ms": graph.calibrate(r),
             "in_run_ms": scale * r + offset}
            for i, r, m in zip(cal_ids, cal_raw, cal_measured)
        ],
        "networks": rows,
    }
    out = M.work_dir() / "validation" / f"{path.stem}-{space.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from spnas_dsl.io import atomic_write_text
    from spnas_dsl.shapes import infer_shapes
    from spnas_dsl.targets.measurements import measurement_json

    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    report["report_file"] = str(out)
    # The same networks as a measurement file (docs/targets.md): `lut fit` / `lut validate --measurements` read it.
    options = [[s.layer.options[0] for s in infer_shapes(n).layers] for n in nets]
    data = measurement_json(space, options, measurer.target, measured, measurer.device)
    data.update({"runtime": measurer.runtime_text, "threads": measurer.threads, "date": date})
    meas = M.work_dir() / "measurements" / f"validation-{path.stem}-{space.name}.json"
    meas.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meas, json.dumps(data) + "\n")
    report["measurements_file"] = str(meas)
    return report


def plot(report: dict, path: str | Path) -> None:
    """Predicted vs measured scatter (the paper's Fig. 7), stored and in-run calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["networks"]
    measured = [r["measured_ms"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.6, 5.2), dpi=120)
    series = [
        ("predicted_stored_ms", "stored calibration", report["stored_calibration"], "tab:blue", "o"),
        ("predicted_in_run_ms", "in-run calibration", report["in_run_calibration"], "tab:orange", "x"),
        ("sum_ms", "plain sum (uncalibrated)", report["uncalibrated_sum"], "tab:gray", "."),
    ]
    for key, label, err, color, marker in series:
        ax.scatter(measured, [r[key] for r in rows], s=16, color=color, marker=marker, alpha=0.8,
                   label=f"{label}: RMSE {err['rmse_ms']:.3g} ms, MAPE {err['mape_pct']:.2f} %, "
                         f"max {err['max_error_pct']:.2f} %")
    values = measured + [r[k] for r in rows for k in ("predicted_stored_ms", "predicted_in_run_ms", "sum_ms")]
    lo, hi = min(values) * 0.97, max(values) * 1.03
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="predicted = measured")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured runtime (ms)")
    ax.set_ylabel("predicted runtime (ms)")
    ax.set_title(f"{report['space']} on {report['target']}: {report['samples']} random networks", fontsize=10)
    ax.legend(fontsize=6.5, loc="upper left")
    ax.grid(alpha=0.3)
    fig.text(0.01, 0.005, f"{report['device']}; {report['runtime']}; {report['threads']} thread(s)", fontsize=5.5)
    fig.tight_layout()
    from spnas_dsl.io import save_figure

    save_figure(fig, path)
