"""How a model's inference time is measured: warm-up, many runs, medians, spread.

One *visit* to a model = ``warmup`` untimed invocations, then at least ``runs`` timed ones
(and at least ``visit_ms`` of timed work); the visit's figure is the median of its runs.
One *worker process* loads every model once and visits them round-robin, ``rounds`` times,
in a freshly shuffled order each round, so that slow phases of the machine (another job
starting, a frequency change) are spread over all models instead of landing on a few.
A model's figure in one process is the median of its visit medians; the reported figure
is the median over ``processes`` separate worker processes (a process's memory layout
shifts every timing in it by a few percent, so one process is one sample of that).
The spread reported is p10/p90 of every individual timed run.

Worker processes are started fresh (``spawn``) and import only the runtime they need.
With ``processes=0`` everything runs in the calling process (tests, quick checks).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import queue as queue_module
import random
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from spnas_dsl.errors import TargetError


@dataclass(frozen=True)
class ModelSpec:
    """A model file to time: ``key`` names it in the results (a signature, a network id)."""

    key: str
    path: str
    runtime: str = "tflite"
    threads: int = 1


@dataclass(frozen=True)
class TimingConfig:
    warmup: int = 3          # untimed invocations at the start of every visit
    runs: int = 10           # timed invocations per visit (at least)
    visit_ms: float = 15.0   # ... and at least this much timed work per visit
    rounds: int = 8          # visits per model in each process (round-robin)
    processes: int = 3       # worker processes, each timing every model (0: in this process)
    jobs: int = 1            # worker processes running at the same time
    seed: int = 0
    clock: str = "auto"      # thread (CPU time of the invoking thread) | wall | auto (thread for 1 thread)
    statistic: str = "p10"   # a process's figure: p10 (of its timed runs) | median (of its visit medians)
    realtime: bool = False   # workers time with SCHED_FIFO priority, pinned to one CPU (needs root/CAP_SYS_NICE)

    def clock_for(self, threads: int) -> str:
        """The clock used for a model run with ``threads`` threads."""
        if self.clock != "auto":
            return self.clock
        return "thread" if threads == 1 else "wall"

    def describe(self, threads: int = 1) -> str:
        where = (f"{self.processes} process" + ("es" if self.processes > 1 else "")) if self.processes else "in-process"
        clock = {"thread": "CPU time of the invoking thread", "wall": "wall-clock time"}[self.clock_for(threads)]
        stat = {"p10": "p10 of its timed runs", "median": "median of its visit medians"}[self.statistic]
        if self.realtime:
            where += " (real-time priority, one CPU)"
        return (f"{clock}; {where} x {self.rounds} round-robin visits x >= {self.runs} runs (>= {self.visit_ms:g} ms), "
                f"{self.warmup} warm-up runs per visit; figure = median over processes of each process's {stat}")


@dataclass
class Timing:
    """The measured figures of one model (milliseconds)."""

    key: str
    value_ms: float                  # THE figure: median over processes of each process's statistic
    median_ms: float                 # median over processes of per-process medians of visit medians
    p10_ms: float                    # spread of all timed runs
    p90_ms: float
    min_ms: float
    runs: int                        # timed runs in total
    process_ms: list[float] = field(default_factory=list)   # the statistic of each worker process
    visit_ms: list[list[float]] = field(default_factory=list)  # visit medians, per process

    @property
    def spread_pct(self) -> float:
        """(p90 - p10) / median, in percent (of every timed run)."""
        return 100.0 * (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms else 0.0

    def to_dict(self, visits: bool = False) -> dict:
        out = asdict(self)
        if not visits:
            out.pop("visit_ms")
        return out


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (q in 0..100) of a non-empty sequence."""
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


CLOCKS = {"thread": time.thread_time_ns, "wall": time.perf_counter_ns}


def time_session(invoke: Callable[[], object], warmup: int, runs: int, min_ms: float = 0.0,
                 clock: str = "wall") -> list[float]:
    """Run ``warmup`` untimed then at least ``runs`` timed invocations (and ``min_ms`` of work); ms each.

    ``clock="thread"`` times the CPU time of this thread (``CLOCK_THREAD_CPUTIME_ID``): with a
    one-thread runtime the inference runs on this thread, and time spent preempted by other
    processes is not counted. ``"wall"`` is ``perf_counter``.
    """
    for _ in range(warmup):
        invoke()
    clock = CLOCKS[clock]
    samples: list[float] = []
    total = 0.0
    while len(samples) < runs or total < min_ms:
        start = clock()
        invoke()
        elapsed = (clock() - start) / 1e6
        samples.append(elapsed)
        total += elapsed
        if len(samples) >= 100_000:
            break
    return samples


def go_realtime() -> bool:
    """Give this process real-time priority (SCHED_FIFO) on one CPU, if the OS allows it.

    Other processes then cannot preempt it (the kernel still keeps 5 % of each second for
    them), so a timed run is neither interrupted nor started with caches another process
    has filled. Returns whether it worked.
    """
    import os

    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        return True
    except (AttributeError, OSError):
        return False


def measure_here(specs: Sequence[ModelSpec], config: TimingConfig, index: int = 0,
                 tick: Callable[[int], None] | None = None) -> dict[str, dict]:
    """Time every model in this process: ``rounds`` round-robin visits. Returns raw figures per key.

    ``tick(n)`` is called after each visit (n = 1). The result maps key -> {"visits": [visit
    medians], "samples": [every timed run]}.
    """
    from spnas_dsl.profiling.runtimes import open_session

    sessions = {s.key: open_session(s.runtime, s.path, s.threads, seed=index) for s in specs}
    rng = random.Random(config.seed * 1000 + index)
    keys = list(sessions)
    clocks = {s.key: config.clock_for(s.threads) for s in specs}
    out: dict[str, dict] = {k: {"visits": [], "samples": []} for k in keys}
    if config.realtime and config.processes > 0:
        go_realtime()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for key in keys:  # one untimed pass: first invocations allocate and pack weights
            time_session(sessions[key].invoke, config.warmup, 0)
        for _ in range(config.rounds):
            rng.shuffle(keys)
            for key in keys:
                samples = time_session(sessions[key].invoke, config.warmup, config.runs, config.visit_ms,
                                       clocks[key])
                out[key]["visits"].append(statistics.median(samples))
                out[key]["samples"].extend(samples)
                if tick:
                    tick(1)
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


def _worker(specs, config, index, results) -> None:
    """Entry point of a worker process: time everything, post progress and the result."""
    try:
        out = measure_here(specs, config, index, tick=lambda n: results.put(("tick", index, n)))
        results.put(("done", index, out))
    except BaseException as exc:  # noqa: BLE001 - report, never hang the parent
        message = str(exc) if hasattr(exc, "message") else "".join(traceback.format_exception(exc))
        results.put(("error", index, message))


def aggregate(key: str, per_process: list[dict], statistic: str = "median") -> Timing:
    """Combine the raw figures of several processes into one :class:`Timing`.

    ``statistic``: each process's figure is the median of its visit medians (``median``) or
    the 10th percentile of all its timed runs (``p10``: on a busy machine, other processes
    only ever make a run slower, so a low percentile is the least disturbed figure).
    """
    medians = [statistics.median(p["visits"]) for p in per_process]
    if statistic == "median":
        process_ms = medians
    elif statistic == "p10":
        process_ms = [percentile(p["samples"], 10) for p in per_process]
    else:
        raise ValueError(f"unknown statistic '{statistic}'")
    samples = [s for p in per_process for s in p["samples"]]
    return Timing(
        key=key,
        value_ms=statistics.median(process_ms),
        median_ms=statistics.median(medians),
        p10_ms=percentile(samples, 10),
        p90_ms=percentile(samples, 90),
        min_ms=min(samples),
        runs=len(samples),
        process_ms=process_ms,
        visit_ms=[list(p["visits"]) for p in per_process],
    )


def measure(specs: Sequence[ModelSpec], config: TimingConfig = TimingConfig(),
            progress: Callable[[int], None] | None = None) -> dict[str, Timing]:
    """Time every model in ``config.processes`` fresh worker processes; return key -> Timing.

    ``progress(n)`` is called as visits complete (``visits_total(specs, config)`` in all).
    Raises TargetError if a worker fails (a model that cannot be loaded, a crash).
    """
    specs = list(specs)
    if len({s.key for s in specs}) != len(specs):
        raise ValueError("duplicate keys in the models to time")
    if not specs:
        return {}
    if config.processes <= 0:
        raw = [measure_here(specs, config, 0, tick=progress)]
    else:
        raw = _run_workers(specs, config, progress)
    return {s.key: aggregate(s.key, [r[s.key] for r in raw], config.statistic) for s in specs}


def visits_total(specs: Sequence[ModelSpec], config: TimingConfig) -> int:
    """How many visits ``measure`` makes (the length of its progress)."""
    return len(specs) * config.rounds * max(config.processes, 1)


def _run_workers(specs, config: TimingConfig, progress) -> list[dict]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    pending = list(range(config.processes))
    running: dict[int, mp.Process] = {}
    done: dict[int, dict] = {}
    try:
        while pending or running:
            while pending and len(running) < max(config.jobs, 1):
                index = pending.pop(0)
                proc = ctx.Process(target=_worker, args=(specs, config, index, results), daemon=True)
                proc.start()
                running[index] = proc
            try:
                kind, index, payload = results.get(timeout=1.0)
            except queue_module.Empty:
                for index, proc in list(running.items()):
                    if not proc.is_alive() and index not in done:
                        # drain what it may have posted just before exiting
                        try:
                            kind, i, payload = results.get(timeout=2.0)
                            _handle(kind, i, payload, done, running, progress)
                            continue
                        except queue_module.Empty:
                            pass
                        raise TargetError(f"timing worker process {index} died (exit code {proc.exitcode})")
                continue
            _handle(kind, index, payload, done, running, progress)
    finally:
        for proc in running.values():
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=5)
    return [done[i] for i in sorted(done)]


def _handle(kind, index, payload, done, running, progress) -> None:
    if kind == "tick":
        if progress:
            progress(payload)
    elif kind == "done":
        done[index] = payload
        proc = running.pop(index, None)
        if proc is not None:
            proc.join(timeout=30)
    else:
        raise TargetError(f"timing worker process {index} failed: {payload}")
