"""Target ``android:SERIAL``: time single-layer .tflite models on a phone with ``benchmark_model``.

The user provides TFLite's ``benchmark_model`` binary built for the phone (it is not in any
wheel): ``--benchmark-binary PATH`` or ``$SPNAS_BENCHMARK_MODEL``. For each model spnas runs::

    adb -s SERIAL push MODEL /data/local/tmp/spnas/MODEL
    adb -s SERIAL shell /data/local/tmp/spnas/benchmark_model --graph=... --num_threads=1 \\
        --enable_op_profiling=true

and parses what the tool prints (:func:`parse_benchmark_output`; both the older tab-separated
tables and the newer ``INFO:``-prefixed, space-aligned ones). A model's figure is the tool's
``Inference (avg)`` of its regular runs (what one ``Interpreter::Invoke`` costs, the same
quantity the host targets time); the per-operator rows are kept for the report.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spnas_dsl.errors import TargetError, UsageError
from spnas_dsl.profiling.timing import ModelSpec, Timing

DEVICE_DIR = "/data/local/tmp/spnas"
BINARY_ENV = "SPNAS_BENCHMARK_MODEL"
_ADB_TIMEOUT_S = 600


@dataclass(frozen=True)
class OpRow:
    """One operator row of the ``Run Order`` table of the regular runs."""

    node_type: str
    first_ms: float
    avg_ms: float          # per call
    percent: float
    times_called: int      # per run
    name: str

    @property
    def total_ms(self) -> float:
        """Time of this node per inference (avg per call x calls per run)."""
        return self.avg_ms * self.times_called


@dataclass
class BenchmarkResult:
    """What one ``benchmark_model`` run reported (times in milliseconds)."""

    graph: str | None
    threads: int | None
    count: int                      # regular runs
    avg_ms: float                   # Inference (avg)
    min_ms: float | None = None
    max_ms: float | None = None
    std_ms: float | None = None
    first_ms: float | None = None   # first inference
    init_ms: float | None = None
    ops: list[OpRow] = field(default_factory=list)

    @property
    def ops_ms(self) -> float:
        """Sum of the per-operator times of one inference (without the interpreter's overhead)."""
        return sum(op.total_ms for op in self.ops)


_STATS_RE = re.compile(r"count=(\d+)(?:\s+first=(\d+))?\s+curr=(\d+)(?:\s+min=(\d+)\s+max=(\d+)\s+avg=([\d.eE+-]+)"
                       r"\s+std=(\d+))?")
_INFERENCE_RE = re.compile(r"Inference timings in us:.*?Init:\s*([\d.]+),\s*First inference:\s*([\d.]+),"
                           r".*?Inference \(avg\):\s*([\d.eE+-]+)")
_INFO_PREFIX = re.compile(r"^(?:INFO|WARNING|ERROR|VERBOSE):\s?")


def _strip(line: str) -> str:
    return _INFO_PREFIX.sub("", line.rstrip("\r\n"))


def _cells(line: str) -> list[str]:
    """Split a table line: on tabs when it has them, else on runs of 2+ spaces."""
    text = line.strip()
    parts = text.split("\t") if "\t" in text else re.split(r"\s{2,}", text)
    return [p.strip() for p in parts if p.strip()]


def _parse_ops(lines: list[str]) -> list[OpRow]:
    """The rows of the first ``Run Order`` table in ``lines``."""
    rows: list[OpRow] = []
    header: list[str] | None = None
    for line in lines:
        if "Run Order" in line and line.startswith("="):
            header = None
            continue
        if header is None:
            if "[node type]" in line:
                header = [h.strip("[]").lower() for h in _cells(line)]
            continue
        if not line.strip() or line.startswith("="):
            break
        cells = _cells(line)
        if len(cells) != len(header):
            raise ValueError(f"operator row has {len(cells)} columns, the header {len(header)}: {line.strip()!r}")
        row = dict(zip(header, cells))
        rows.append(OpRow(
            node_type=row["node type"], first_ms=float(row["first"]), avg_ms=float(row["avg ms"]),
            percent=float(row["%"].rstrip("%")), times_called=int(float(row.get("times called", "1"))),
            name=row.get("name", ""),
        ))
    return rows


def parse_benchmark_output(text: str, source: str = "benchmark_model") -> BenchmarkResult:
    """Parse the text ``benchmark_model`` printed; a failed or unrecognised run is a TargetError."""
    lines = [_strip(line) for line in text.splitlines()]
    graph = threads = None
    for line in lines:
        m = re.match(r"Graph: \[(.*)\]", line)
        if m and graph is None:
            graph = m.group(1)
        m = re.match(r"(?:Num threads|#threads used for CPU inference): \[(\d+)\]", line)
        if m:
            threads = int(m.group(1))
    inference = None
    for line in lines:
        m = _INFERENCE_RE.search(line)
        if m:
            inference = m
    # The regular runs' statistics: the "count=..." line after "at least N iterations" (the 2nd such block).
    run_stats = [m for line in lines if (m := _STATS_RE.match(line.strip())) and m.group(6)]
    try:
        start = next(i for i, line in enumerate(lines) if "Operator-wise Profiling Info for Regular" in line)
        ops = _parse_ops(lines[start + 1:])
    except StopIteration:
        ops = []
    except (ValueError, KeyError) as exc:
        raise TargetError(f"cannot parse the operator table of {source}: {exc}") from None
    if inference is None and not run_stats:
        errors = [line for line in text.splitlines() if "ERROR" in line or "rror" in line or "ailed" in line]
        tail = errors[-3:] or text.strip().splitlines()[-3:] or ["(no output)"]
        raise TargetError(f"{source} reported no timings: " + " | ".join(t.strip() for t in tail))
    stats = run_stats[1] if len(run_stats) >= 2 else (run_stats[-1] if run_stats else None)
    if inference is not None:
        avg_us = float(inference.group(3))
    else:
        avg_us = float(stats.group(6))
    result = BenchmarkResult(graph=graph, threads=threads, count=int(stats.group(1)) if stats else 0,
                             avg_ms=avg_us / 1000.0, ops=ops)
    if stats is not None:
        result.min_ms = float(stats.group(4)) / 1000.0
        result.max_ms = float(stats.group(5)) / 1000.0
        result.std_ms = float(stats.group(7)) / 1000.0
    if inference is not None:
        result.init_ms = float(inference.group(1)) / 1000.0
        result.first_ms = float(inference.group(2)) / 1000.0
    return result


# ---------------------------------------------------------------------------- the device
def find_benchmark_binary(path: str | None) -> Path:
    """The user's ``benchmark_model`` binary (``--benchmark-binary`` or ``$SPNAS_BENCHMARK_MODEL``)."""
    value = path or os.environ.get(BINARY_ENV)
    if not value:
        raise UsageError(
            "target android:SERIAL needs TFLite's benchmark_model binary built for the phone: pass "
            f"--benchmark-binary PATH or set ${BINARY_ENV} (spnas does not download it)"
        )
    binary = Path(value)
    if not binary.is_file():
        raise UsageError(f"benchmark_model binary not found: {binary}")
    return binary


class AndroidDevice:
    """A phone reachable with ``adb -s SERIAL`` (``adb`` is looked up on PATH, or ``$ADB``)."""

    def __init__(self, serial: str, adb: str | None = None):
        self.serial = serial
        found = adb or os.environ.get("ADB") or shutil.which("adb")
        if not found:
            raise TargetError("adb is not installed (or not on PATH): it is needed for android:SERIAL targets")
        self.adb = found

    def _run(self, *args: str, check: bool = True) -> str:
        cmd = [self.adb, "-s", self.serial, *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_ADB_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise TargetError(f"adb timed out after {_ADB_TIMEOUT_S} s: {shlex.join(cmd)}") from None
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise TargetError(f"adb failed ({proc.returncode}): {shlex.join(cmd)}: {detail[-1] if detail else ''}")
        return proc.stdout + proc.stderr

    def shell(self, command: str, check: bool = True) -> str:
        return self._run("shell", command, check=check)

    def push(self, local: str | Path, remote: str) -> None:
        self._run("push", str(local), remote)

    def describe(self) -> str:
        """``MANUFACTURER MODEL (Android X, ABI)`` of the phone."""
        props = dict.fromkeys(("ro.product.manufacturer", "ro.product.model", "ro.build.version.release",
                               "ro.product.cpu.abi"), "?")
        for line in self.shell("getprop").splitlines():  # "[key]: [value]" lines
            m = re.match(r"\[(.+?)\]: \[(.*)\]", line.strip())
            if m and m.group(1) in props:
                props[m.group(1)] = m.group(2)
        return (f"{props['ro.product.manufacturer']} {props['ro.product.model']} (Android "
                f"{props['ro.build.version.release']}, {props['ro.product.cpu.abi']})").strip()

    def install_binary(self, binary: Path) -> str:
        """Push ``benchmark_model`` to the phone; return its path there."""
        self.shell(f"mkdir -p {DEVICE_DIR}")
        remote = f"{DEVICE_DIR}/benchmark_model"
        self.push(binary, remote)
        self.shell(f"chmod 755 {remote}")
        return remote

    def benchmark(self, remote_binary: str, local_model: str | Path, threads: int = 1) -> BenchmarkResult:
        """Push one model, run benchmark_model on it with op profiling, remove it, parse the output."""
        remote_model = f"{DEVICE_DIR}/{Path(local_model).name}"
        self.push(local_model, remote_model)
        command = (f"{remote_binary} --graph={remote_model} --num_threads={threads} "
                   f"--enable_op_profiling=true; rm -f {remote_model}")
        out = self.shell(command, check=False)
        return parse_benchmark_output(out, f"benchmark_model on {self.serial} ({Path(local_model).name})")


def measure_android(specs: Sequence[ModelSpec], serial: str, binary: Path, passes: int = 1,
                    progress: Callable[[int], None] | None = None,
                    device: AndroidDevice | None = None) -> dict[str, Timing]:
    """Time every model on the phone, ``passes`` round-robin passes; key -> Timing (median of passes).

    benchmark_model itself warms up and averages 50+ runs (>= 1 s) per call; spread is the
    tool's min and max over its runs.
    """
    device = device or AndroidDevice(serial)
    remote = device.install_binary(binary)
    results: dict[str, list[BenchmarkResult]] = {s.key: [] for s in specs}
    for _ in range(max(passes, 1)):
        for spec in specs:
            results[spec.key].append(device.benchmark(remote, spec.path, spec.threads))
            if progress:
                progress(1)
    out = {}
    for key, runs in results.items():
        avgs = [r.avg_ms for r in runs]
        out[key] = Timing(
            key=key, value_ms=statistics.median(avgs), median_ms=statistics.median(avgs),
            p10_ms=min((r.min_ms if r.min_ms is not None else r.avg_ms) for r in runs),
            p90_ms=max((r.max_ms if r.max_ms is not None else r.avg_ms) for r in runs),
            min_ms=min((r.min_ms if r.min_ms is not None else r.avg_ms) for r in runs),
            runs=sum(r.count for r in runs), process_ms=avgs, visit_ms=[avgs],
        )
    return out
