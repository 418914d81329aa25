"""``lut build``: measure every signature of a space on a target and write its lookup table.

1. Every signature of the space (each candidate of each layer, the stem, the head) is built
   as its own small model (``profiling/models.py``) and timed (``profiling/timing.py``).
   Signatures already in the target's table are kept (not measured again), so a killed
   build resumes where it stopped; the table is rewritten atomically after each chunk.
2. Calibration (``--calibrate K``): K random whole networks of the space are timed in the same run, and ``measured = scale * sum +
   offset_ms`` is fitted by least squares against the table's sums. The fitted terms, the
   networks (``SPACE:opt,opt,...``) and the date are stored in the table's ``calibration``.

The table records the machine (CPU model), the runtime and its version, the thread count
and the date; a table measured elsewhere is never extended (``--fresh`` starts over).
One table has one calibration, fitted on one space's networks.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spnas_dsl.errors import TargetError, UsageError
from spnas_dsl.ir import Network
from spnas_dsl.profiling import models as M
from spnas_dsl.profiling.timing import ModelSpec, Timing, TimingConfig

Progress = Callable[[str, int], Callable[[int], None]]  # (description, total) -> tick(n)

HOST_RUNTIMES = {"host-tflite": "tflite", "host-onnxruntime": "onnxruntime"}
DEFAULT_CALIBRATE = 12


def now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


# ---------------------------------------------------------------------------- measurers
@dataclass
class Measurer:
    """Where and how models are timed: this CPU (LiteRT / onnxruntime) or a phone over adb."""

    target: str
    kind: str                        # host | android
    runtime: str                     # tflite | onnxruntime (the model files it reads)
    threads: int
    config: TimingConfig
    serial: str | None = None
    binary: Path | None = None
    _device: str | None = field(default=None, repr=False)

    @property
    def device(self) -> str:
        if self._device is None:
            if self.kind == "android":
                from spnas_dsl.profiling.android import AndroidDevice

                self._device = f"Android device {self.serial}: {AndroidDevice(self.serial).describe()}"
            else:
                from spnas_dsl.profiling.runtimes import cpu_model

                self._device = f"host CPU: {cpu_model()}"
        return self._device

    @property
    def runtime_text(self) -> str:
        from spnas_dsl.profiling.runtimes import runtime_version

        if self.kind == "android":
            return "TFLite float32 (benchmark_model, --enable_op_profiling)"
        if self.runtime == "tflite":
            return f"TFLite float32 ({runtime_version('tflite')}, XNNPACK)"
        return f"ONNX Runtime float32 ({runtime_version('onnxruntime')}, CPU execution provider)"

    def visits(self, count: int) -> int:
        """Progress units of timing ``count`` models."""
        if self.kind == "android":
            return count * max(self.config.processes, 1)
        return count * self.config.rounds * max(self.config.processes, 1)

    def measure(self, paths: dict[str, Path], progress: Callable[[int], None] | None = None) -> dict[str, Timing]:
        specs = [ModelSpec(k, str(p), self.runtime, self.threads) for k, p in paths.items()]
        if self.kind == "android":
            from spnas_dsl.profiling.android import measure_android

            return measure_android(specs, self.serial, self.binary, passes=max(self.config.processes, 1),
                                   progress=progress)
        from spnas_dsl.profiling.timing import measure

        return measure(specs, self.config, progress)


def make_measurer(target: str, threads: int | None = None, config: TimingConfig | None = None,
                  benchmark_binary: str | None = None) -> Measurer:
    """The measurer of a profilable target; a read-only or unknown one is a TargetError."""
    config = config or TimingConfig()
    from spnas_dsl.targets import ANDROID_RE, KNOWN_TARGETS

    if target in HOST_RUNTIMES:
        return Measurer(target, "host", HOST_RUNTIMES[target], threads or KNOWN_TARGETS[target].threads, config)
    m = ANDROID_RE.match(target)
    if m:
        from spnas_dsl.profiling.android import find_benchmark_binary

        if threads not in (None, 1):
            raise UsageError("android targets are timed with --num_threads=1 (the paper's setting)")
        return Measurer(target, "android", "tflite", 1, config, serial=m.group("serial"),
                        binary=find_benchmark_binary(benchmark_binary))
    spec = KNOWN_TARGETS.get(target)
    if spec is not None and not spec.profilable:
        raise TargetError(
            f"target '{target}' is read-only ({spec.what}: {spec.description}); it cannot be profiled from "
            f"this machine. Profile a local target instead: host-tflite, host-onnxruntime or android:SERIAL"
        )
    known = ", ".join(list(HOST_RUNTIMES) + ["android:SERIAL"])
    raise TargetError(f"target '{target}' cannot be profiled; profilable targets: {known}")


# ---------------------------------------------------------------------------- tables
def table_path(target: str, table: str | Path | None = None) -> Path:
    """Where the table of ``target`` is: ``table`` if given, else the target's local table."""
    from spnas_dsl.targets import local_table_path

    return Path(table) if table is not None else local_table_path(target)


def load_existing(path: Path, measurer: Measurer, fresh: bool):
    """The table to extend (None: start a new one). A table measured elsewhere is an error."""
    from spnas_dsl.targets.table import load_table

    if fresh or not path.exists():
        return None
    try:
        table = load_table(path)
    except TargetError as exc:
        raise TargetError(f"{exc.message}\nthe table cannot be resumed; pass --fresh to measure a new one "
                          f"(it replaces {path})") from None
    if table.read_only:
        raise TargetError(f"table {path} is read-only; it cannot be extended")
    mine = (measurer.device, measurer.runtime_text, measurer.threads)
    theirs = (table.device, table.runtime, table.threads)
    if table.name != measurer.target or mine != theirs:
        raise TargetError(
            f"table {path} was measured for '{table.name}' on {table.device}, {table.runtime}, {table.threads} "
            f"thread(s); this run is '{measurer.target}' on {mine[0]}, {mine[1]}, {mine[2]} thread(s). Figures "
            f"of different machines or settings are never mixed: pass --fresh to start a new table "
            f"(it replaces this one) or --table FILE to write another file"
        )
    return table


def make_table(measurer: Measurer, entries: list[dict], calibration: dict | None, source: str, date: str):
    from spnas_dsl.targets import KNOWN_TARGETS
    from spnas_dsl.targets.table import LatencyTable

    spec = KNOWN_TARGETS.get(measurer.target)
    description = spec.description if spec else f"{measurer.target}: measured with spnasc lut build"
    data = {
        "name": measurer.target, "description": description, "device": measurer.device,
        "runtime": measurer.runtime_text, "threads": measurer.threads, "source": source, "date": date,
        "read_only": False, "entries": entries, "fixed_groups": [],
    }
    if calibration is not None:
        data["calibration"] = calibration
    return LatencyTable.model_validate(data)


def _entries_of(table) -> list[dict]:
    return [e.model_dump(exclude_none=True) for e in table.entries] if table is not None else []


def _record(kind: str, timings: dict[str, Timing], measurer: Measurer, date: str, extra: dict | None = None) -> None:
    """Append the raw figures to ``<cache>/profiling/measurements/<target>.jsonl`` (for reports)."""
    from spnas_dsl.targets import local_table_path

    folder = M.work_dir() / "measurements"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (local_table_path(measurer.target).stem + ".jsonl")
    with open(path, "a", encoding="utf-8") as f:
        for t in timings.values():
            row = {"date": date, "kind": kind, "threads": measurer.threads, **t.to_dict(), **(extra or {})}
            f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------- calibration
def fit(raw: Sequence[float], measured: Sequence[float], mode: str = "affine") -> tuple[float, float]:
    """Least-squares ``measured = scale * raw + offset`` (``mode='scale'``: offset 0).

    With fewer than 3 networks, or a fit whose scale would not be positive, the scale-only
    fit is used.
    """
    n = len(raw)
    if n == 0:
        raise ValueError("no networks to fit a calibration on")
    sxx = sum(r * r for r in raw)
    scale_only = sum(r * m for r, m in zip(raw, measured)) / sxx
    if mode == "scale" or n < 3:
        return scale_only, 0.0
    mx, my = statistics.fmean(raw), statistics.fmean(measured)
    vxx = sum((r - mx) ** 2 for r in raw)
    if vxx <= 1e-12 * max(sxx, 1e-30):
        return scale_only, 0.0
    scale = sum((r - mx) * (m - my) for r, m in zip(raw, measured)) / vxx
    if scale <= 0:
        return scale_only, 0.0
    return scale, my - scale * mx


def calibration_networks(space: Network, count: int, seed: int = 0) -> list[Network]:
    """The networks a calibration is fitted on: ``count`` random networks of the space.

    Random (uniform per layer) like the networks a search and a validation meet: the
    extremes (fewest / most multiply-adds everywhere) were tried and left out, because the
    smallest network sat 4.6 % off the line that fits the random ones and pulled the fit.
    """
    return M.random_networks(space, count, seed=10_000 + seed) if count > 0 else []


def errors(predicted: Sequence[float], measured: Sequence[float]) -> dict:
    """RMSE (ms), mean absolute percentage error, max absolute percentage error, mean signed error."""
    if not measured:
        return {"rmse_ms": None, "mape_pct": None, "max_error_pct": None, "mean_error_pct": None}
    diffs = [p - m for p, m in zip(predicted, measured)]
    pct = [100.0 * d / m for d, m in zip(diffs, measured)]
    return {
        "rmse_ms": (sum(d * d for d in diffs) / len(diffs)) ** 0.5,
        "mape_pct": statistics.fmean(abs(p) for p in pct),
        "max_error_pct": max(abs(p) for p in pct),
        "mean_error_pct": statistics.fmean(pct),
    }


# ---------------------------------------------------------------------------- lut build
@dataclass
class BuildReport:
    path: Path
    measured: list[str]
    kept: list[str]
    calibration: dict | None
    calibration_rows: list[dict]
    seconds: float
    table: object = None

    def to_json(self) -> dict:
        return {"table": str(self.path), "measured": len(self.measured), "kept": len(self.kept),
                "signatures": len(self.measured) + len(self.kept), "calibration": self.calibration,
                "calibration_networks": self.calibration_rows, "seconds": round(self.seconds, 1)}


def build_lut(space: Network, measurer: Measurer, *, table: str | Path | None = None, calibrate: int = DEFAULT_CALIBRATE,
              fit_mode: str = "affine", fresh: bool = False, recalibrate: bool = False, chunk: int = 16,
              seed: int = 0, progress: Progress | None = None, log: Callable[[str], None] = print) -> BuildReport:
    """Measure every missing signature of ``space`` and (re)fit the calibration; see the module doc.

    Signatures are timed in chunks of ``chunk``; every chunk is timed round-robin together with
    the calibration networks (the *anchors*) in the same worker processes. A chunk's figures
    are scaled by the median ratio of the reference anchor times (the first chunk ever timed
    for this table, kept in ``<table>.anchors``) to this chunk's, so that chunks timed while
    the machine was faster or slower (or in a resumed run) add up consistently; the
    calibration is fitted on the reference anchor times.
    """
    import time

    started = time.perf_counter()
    path = table_path(measurer.target, table)
    old = load_existing(path, measurer, fresh)
    parts = M.space_parts(space)
    have = {e["signature"] for e in _entries_of(old)}
    missing = [p for p in parts if p.signature not in have]
    kept = [p.signature for p in parts if p.signature in have]
    entries = _entries_of(old)
    calibration = old.calibration.model_dump() if old is not None and not old.calibration.is_identity else None
    timing = measurer.config.describe(measurer.threads) if measurer.kind == "host" else "benchmark_model"
    source = (f"spnasc lut build: every signature timed as its own single-part model ({timing}), in chunks timed "
              f"round-robin with the calibration networks and scaled to a common reference by their times. "
              f"Calibration: measured = scale * sum + offset_ms, least squares ({fit_mode}) on whole networks of "
              f"the space timed in the same run.")
    if kept:
        log(f"{len(kept)} of {len(parts)} signatures already in {path}: kept")
    cal_nets = calibration_networks(space, calibrate, seed) if calibrate > 0 else []
    cal_ids = [M.network_id(n) for n in cal_nets]
    stale = calibrate > 0 and (calibration is None or recalibrate or not _calibrated_on(calibration, space)
                               or calibration.get("networks") != cal_ids)
    anchors = _load_anchors(path, cal_ids) if old is not None else None
    if kept and cal_ids and missing and anchors is None:
        log("note: no reference anchor times for these calibration networks: the kept entries and the new "
            "ones are combined as measured (use --fresh for one consistent run)")
    rows: list[dict] = []
    if not missing and not stale:
        if calibrate > 0:
            log(f"calibration kept (fitted {calibration.get('date')} on {len(calibration['networks'])} networks of "
                f"'{space.name}'); pass --recalibrate to fit it again")
        return BuildReport(path, [], kept, calibration, rows, time.perf_counter() - started, old)
    if missing:
        log(f"measuring {len(missing)} signature(s) of '{space.name}' on {measurer.target} "
            f"({measurer.device}, {measurer.runtime_text}, {measurer.threads} thread(s))"
            + (f", round-robin with {len(cal_nets)} calibration networks" if cal_nets else ""))
    jobs = [M.part_job(measurer.runtime, space, p) for p in missing]
    jobs += [M.network_job(measurer.runtime, n, i) for n, i in zip(cal_nets, cal_ids)]
    tick = progress("building models", len(jobs)) if progress else None
    paths = M.ensure_models(jobs, tick)
    step = max(chunk, 1)
    chunks = [missing[i:i + step] for i in range(0, len(missing), step)] or [[]]
    total = sum(measurer.visits(len(c) + len(cal_ids)) for c in chunks)
    tick = progress("timing", total) if progress else None
    latest: dict[str, float] = {}
    for group in chunks:
        timings = measurer.measure({k: paths[k] for k in [p.signature for p in group] + cal_ids}, tick)
        date = now()
        _record("part", {p.signature: timings[p.signature] for p in group}, measurer, date)
        if cal_ids:
            _record("anchor", {i: timings[i] for i in cal_ids}, measurer, date, {"space": space.name})
            latest = {i: timings[i].value_ms for i in cal_ids}
            if anchors is None:
                anchors = {"space": space.name, "date": date, "networks": dict(latest)}
                _save_anchors(path, anchors)
            factor = statistics.median(anchors["networks"][i] / latest[i] for i in cal_ids)
        else:
            factor = 1.0
        for p in group:
            entries.append({"signature": p.signature, "latency_ms": round(timings[p.signature].value_ms * factor, 6)})
        if group:
            note = f" (scaled by {factor:.4f} to the reference anchors)" if cal_ids else ""
            log(f"  {len(group)} signature(s) timed{note}")
            # entries changed: a calibration fitted on the old sums no longer applies
            _write(path, make_table(measurer, entries, None if cal_ids else calibration, source, date))
    if cal_ids:
        reference = anchors["networks"] if not recalibrate or missing else latest
        calibration, rows = _fit_calibration(space, cal_nets, cal_ids, reference, entries, fit_mode,
                                             anchors["date"] if reference is anchors["networks"] else now())
        _write(path, make_table(measurer, entries, calibration, source, now()))
    from spnas_dsl.targets.table import load_table

    return BuildReport(path, [p.signature for p in missing], kept, calibration, rows,
                       time.perf_counter() - started, load_table(path))


def _anchors_path(path: Path) -> Path:
    return path.parent / (path.name + ".anchors")


def _load_anchors(path: Path, cal_ids: list[str]) -> dict | None:
    """The reference anchor times of a table, if they are for these calibration networks."""
    try:
        data = json.loads(_anchors_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or sorted(data.get("networks", {})) != sorted(cal_ids):
        return None
    return data


def _save_anchors(path: Path, anchors: dict) -> None:
    from spnas_dsl.io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(_anchors_path(path), json.dumps(anchors, indent=1) + "\n")


def _fit_calibration(space, nets, ids, measured_by_id, entries, fit_mode, date):
    figures = {e["signature"]: e["latency_ms"] for e in entries}
    raws = [raw_sum(space, n, figures) for n in nets]
    measured = [measured_by_id[i] for i in ids]
    scale, offset = fit(raws, measured, fit_mode)
    rows = [{"network": i, "sum_ms": round(r, 4), "measured_ms": round(m, 4),
             "fitted_ms": round(scale * r + offset, 4), "error_pct": round(100 * (scale * r + offset - m) / m, 3)}
            for i, r, m in zip(ids, raws, measured)]
    calibration = {"scale": round(scale, 6), "offset_ms": round(offset, 6), "networks": ids, "date": date}
    return calibration, rows


def _calibrated_on(calibration: dict, space: Network) -> bool:
    return bool(calibration.get("networks")) and all(n.startswith(f"{space.name}:") for n in calibration["networks"])


def _write(path: Path, table) -> None:
    from spnas_dsl.targets.table import write_table

    write_table(path, table)


def raw_sum(space: Network, network: Network, entries: dict[str, float]) -> float:
    """Sum of the table figures of a concrete network's parts."""
    return sum(entries[s] for s in M.network_parts(network))
