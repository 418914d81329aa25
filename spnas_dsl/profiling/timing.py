"""How a model's inference time is measured: warm-up, many runs, medians, spread.

One *visit* to a model = ``warmup`` untimed invocations, then at least ``runs`` timed ones
(and at least ``visit_ms`` of timed work); the visit's figure is the median of its runs.
One *worker process* loads every model once and visits them round-robin, ``rounds`` times,
in a freshly shuffled order each round, so that slow phases of the machine (another job
starting, a frequency change) are spread over all models instead of landing on a few.
A model's figure in one process is the p10 of its timed runs (or the median of its visit
medians); the reported figure is the smallest over ``processes`` worker processes (or
their median; see ``TimingConfig.across``).
The spread reported is p10/p90 of every individual timed run.

Why short visits and many rounds (the defaults): on a shared virtual machine a CPU switches
between a fast and a ~1.45x slower state (presumably a busy neighbour on its physical
core) every few tenths of a second to a few seconds. With long visits (10 runs; 2 rounds in
each of 6 processes) a model's samples fell into a few such phases and the same 12 networks
differed by 6 % on average (29 % at most) between two measuring runs; visits of 3 runs over 20 rounds spread every
model over many phases, and the same test gave 0.5 % (1.6 % at most), in less time.
The phases last long enough that a process timing tiny models (0.1 ms networks) for a third
of a second sat in one phase (its figure 1.55x another process's): ``min_seconds`` makes
every process time for several seconds. Whole worker processes can also run ~1.5x slower
than others, and a slow phase can cover most visits of some models in a process: a model's
figure is therefore the smallest of its processes' figures (``across="min"``). Over 100
mnasnet networks in a disturbed hour, the best affine fit of the table sums to these figures
left 1.3 % mean error (3.6 % max); to the median over processes 3.4 % (21 %); to the median
after dividing out each process's common factor (:func:`process_factors`) 2.5 % (17 %).

Worker processes are started fresh (``spawn``) and import only the runtime they need.
With ``processes=0`` everything runs in the calling process (tests, quick checks).
"""

from __future__ import annotations

import gc
import math
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
    warmup: int = 1          # untimed invocations at the start of every visit
    runs: int = 3            # timed invocations per visit (at least)
    visit_ms: float = 0.0    # ... and at least this much timed work per visit
    rounds: int = 5          # visits per model in each process (round-robin), at least
    min_seconds: float = 5.0  # ... and more rounds until the process has timed this long
    processes: int = 8       # worker processes, each timing every model (0: in this process)
    jobs: int = 1            # worker processes running at the same time
    seed: int = 0
    clock: str = "auto"      # thread (CPU time of the invoking thread) | wall | auto (thread for 1 thread)
    statistic: str = "p10"   # a process's figure: p10 (of its timed runs) | median (of its visit medians)
    realtime: bool = False   # workers time with SCHED_FIFO priority, pinned to one CPU (needs root/CAP_SYS_NICE)
    across: str = "min"      # the model's figure from its processes' figures: min | median | normalized

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
        visit = f">= {self.runs} runs" + (f" (>= {self.visit_ms:g} ms)" if self.visit_ms else "")
        across = {"min": "the smallest over processes", "median": "the median over processes",
                  "normalized": "the median over processes, each divided by its process factor"}[self.across]
        return (f"{clock}; {where} x >= {self.rounds} round-robin visits (and >= {self.min_seconds:g} s) x {visit}, "
                f"{self.warmup} warm-up run(s) per visit; figure = {across} of each process's {stat}")


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
    process_factors: list[float] = field(default_factory=list)  # each process's slowness over all models
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
    """Time every model in this process: ``rounds`` round-robin visits (more while the process has
    timed for less than ``min_seconds``: a small model must be seen in many of the machine's
    fast and slow phases, not in one). Returns raw figures per key.

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
        started = time.perf_counter()
        done = 0
        while done < config.rounds or time.perf_counter() - started < config.min_seconds:
            rng.shuffle(keys)
            for key in keys:
                samples = time_session(sessions[key].invoke, config.warmup, config.runs, config.visit_ms,
                                       clocks[key])
                out[key]["visits"].append(statistics.median(samples))
                out[key]["samples"].extend(samples)
                if tick and done < config.rounds:  # the progress counts the planned rounds
                    tick(1)
            done += 1
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


def process_statistic(per_process: dict, statistic: str) -> float:
    """One process's figure for one model: the median of its visit medians, or the p10 of its runs."""
    if statistic == "median":
        return statistics.median(per_process["visits"])
    if statistic == "p10":
        return percentile(per_process["samples"], 10)
    raise ValueError(f"unknown statistic '{statistic}'")


def process_factors(figures: list[dict[str, float]]) -> list[float]:
    """How much slower each process ran than the fastest one, over all the models it timed.

    ``figures[p][key]`` is process p's figure for a model. A process's factor is the median,
    over the models, of its figure divided by the median over processes of that model's
    figures, relative to the fastest process (factor 1). On a shared virtual machine a whole
    worker process can run ~1.5x slower than another for its whole life (measured for 0.1 ms
    networks: 5 of 8 processes); every model timed in it is slower by the same factor, so it
    can be divided out. One process, or a single model: all factors 1 or the plain ratio.
    """
    if len(figures) <= 1:
        return [1.0] * len(figures)
    keys = list(figures[0])
    logs = {k: statistics.median(math.log(f[k]) for f in figures) for k in keys if all(f[k] > 0 for f in figures)}
    if not logs:
        return [1.0] * len(figures)
    raw = [statistics.median(math.log(f[k]) - logs[k] for k in logs) for f in figures]
    fastest = min(raw)
    return [math.exp(r - fastest) for r in raw]


def aggregate(key: str, per_process: list[dict], statistic: str = "median",
              factors: Sequence[float] | None = None, across: str = "median") -> Timing:
    """Combine the raw figures of several processes into one :class:`Timing`.

    ``statistic``: each process's figure is the median of its visit medians (``median``) or
    the 10th percentile of all its timed runs (``p10``: on a busy machine, other processes
    only ever make a run slower, so a low percentile is the least disturbed figure).
    ``across``: the model's figure is the smallest of the processes' figures (``min``), their
    median (``median``), or the median after dividing each by its process's factor
    (``normalized``, see :func:`process_factors`; ``factors`` are recorded in any case).
    """
    medians = [statistics.median(p["visits"]) for p in per_process]
    process_ms = [process_statistic(p, statistic) for p in per_process]
    factors = list(factors) if factors is not None else [1.0] * len(per_process)
    if across == "min":
        value, median = min(process_ms), min(medians)
    elif across == "median":
        value, median = statistics.median(process_ms), statistics.median(medians)
    elif across == "normalized":
        value = statistics.median(v / f for v, f in zip(process_ms, factors))
        median = statistics.median(m / f for m, f in zip(medians, factors))
    else:
        raise ValueError(f"unknown way to combine processes '{across}'")
    samples = [s for p in per_process for s in p["samples"]]
    return Timing(
        key=key,
        value_ms=value,
        median_ms=median,
        p10_ms=percentile(samples, 10),
        p90_ms=percentile(samples, 90),
        min_ms=min(samples),
        runs=len(samples),
        process_ms=process_ms,
        process_factors=factors,
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
    factors = process_factors([{s.key: process_statistic(r[s.key], config.statistic) for s in specs} for r in raw])
    return {s.key: aggregate(s.key, [r[s.key] for r in raw], config.statistic, factors, config.across) for s in specs}


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
