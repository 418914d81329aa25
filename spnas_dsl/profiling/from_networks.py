"""``lut build --from-networks N``: a local target's table fitted to N whole networks timed here.

What a user with only ``benchmark_model`` on a phone can do: time N random networks of the
space end to end (the same stitched TFLite / ONNX models ``lut validate`` times), write them
as a measurement file (spnas's op names; ``<cache>/profiling/measurements/``), and fit the
table with ``spnasc lut fit``'s fit (ridge around an arithmetic prior, costs >= 0, K-fold
CV). The table is the target's ordinary local table, with the fit's provenance.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from spnas_dsl.errors import UsageError
from spnas_dsl.io import atomic_write_text
from spnas_dsl.ir import Network
from spnas_dsl.profiling import lut as L
from spnas_dsl.profiling import models as M
from spnas_dsl.shapes import infer_shapes


def build_from_networks(space: Network, measurer: L.Measurer, *, count: int, seed: int = 0,
                        table: str | Path | None = None, folds: int = 5, progress: L.Progress | None = None,
                        log: Callable[[str], None] = print) -> dict:
    """Time ``count`` random networks, fit, write the table; returns a JSON-ready report."""
    import time

    from spnas_dsl.targets.fit import fit_table, to_table
    from spnas_dsl.targets.measurements import load_measurements, measurement_json
    from spnas_dsl.targets.table import write_table

    if count < 2 * folds:
        raise UsageError(f"--from-networks needs at least {2 * folds} networks for {folds}-fold cross-validation")
    started = time.perf_counter()
    path = L.table_path(measurer.target, table)
    nets = M.random_networks(space, count, seed=seed)
    ids = [M.network_id(n) for n in nets]
    log(f"timing {len(nets)} random networks of '{space.name}' on {measurer.target} "
        f"({measurer.device}, {measurer.runtime_text}, {measurer.threads} thread(s))")
    jobs = [M.network_job(measurer.runtime, n, i) for n, i in zip(nets, ids)]
    tick = progress("building networks", len(jobs)) if progress else None
    paths = M.ensure_models(jobs, tick)
    tick = progress("timing networks", measurer.visits(len(jobs))) if progress else None
    timings = measurer.measure(paths, tick)
    date = L.now()
    latency = [timings[i].value_ms for i in ids]
    options = [[s.layer.options[0] for s in infer_shapes(n).layers] for n in nets]
    data = measurement_json(space, options, measurer.target, latency, measurer.device)
    data.update({"runtime": measurer.runtime_text, "threads": measurer.threads, "date": date,
                 "timing": measurer.config.describe(measurer.threads) if measurer.kind == "host" else "benchmark_model"})
    meas_path = M.work_dir() / "measurements" / f"{Path(path).stem}-{space.name}.json"
    meas_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meas_path, json.dumps(data) + "\n")
    meas = load_measurements(meas_path, measurer.target)
    result = fit_table(space, options, latency, folds=folds, seed=seed)
    source = (f"spnasc lut build --from-networks {count}: {count} random whole networks of '{space.name}' timed "
              f"here ({data['timing']}), table fitted to them (ridge around an arithmetic prior, costs >= 0, "
              f"{result.folds}-fold CV); measurements in {meas_path}")
    fitted = to_table(result, meas, space, name=measurer.target, description=f"{measurer.target}: fitted to "
                      f"{count} whole networks of '{space.name}' timed with spnasc lut build --from-networks",
                      runtime=measurer.runtime_text, date=date, read_only=False, threads=measurer.threads,
                      source=source)
    write_table(path, fitted)
    return {"table": str(path), "measurements": str(meas_path), "networks": count, "seed": seed,
            "regularisation": result.regularisation, "cv": result.cv, "fit": result.fit,
            "seconds": time.perf_counter() - started}
