"""Claim 4, the runtime model: how well a per-layer lookup table predicts whole networks (paper Fig. 7).

    python -m benchmarks.runtime_model [--quick] [--samples N] [--spaces NAME ...] [--threads T] [--no-write]

The paper times 100 random networks of its space on a Pixel 1 and compares them with the sum
of its per-layer table: RMSE 1.32 ms, mean error 1.76 %. Here the target is this CPU through
LiteRT (``host-tflite``), and the figures come from ``spnasc lut validate`` (the
``spnas_dsl.profiling.validate`` machinery): N random networks of the space, never one of
the calibration networks, each built as a whole TFLite model and timed end to end,
interleaved with the calibration networks; predictions with the table's stored calibration
(what a search uses), with a calibration re-fitted in this run, and the plain sum.

Tables: each space gets a table file of its own under ``runs/benchmarks/tables/`` (a table
holds one calibration, fitted on one space's networks), so that this benchmark never
replaces the target's table in the user cache (the one claim 2 searches with).
A missing table is built first with ``spnasc lut build SPACE --target host-tflite [--table T]``
(its defaults: 8 processes x 5 rounds); the build time is reported.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import _results as R

TARGET = "host-tflite"
SPACES = {
    "fashion_mnist": (R.REPO / "spaces" / "fashion_mnist.spnas", R.RUNS / "tables" / "host-tflite-fashion_mnist.json"),
    "mnasnet": (R.REPO / "spaces" / "mnasnet.spnas", R.RUNS / "tables" / "host-tflite-mnasnet.json"),
}
PAPER = {"rmse_ms": 1.32, "mape_pct": 1.76}


def spnasc(args: list[str], threads: int, log: Path) -> tuple[int, str, float]:
    """Run ``spnasc ARGS``: (exit status, stdout, seconds); stderr goes to ``log``."""
    started = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as err:
        proc = subprocess.run([sys.executable, "-m", "spnas_dsl", *args], cwd=R.REPO, env=R.child_env(threads),
                              stdout=subprocess.PIPE, stderr=err, text=True, check=False)
    return proc.returncode, proc.stdout, time.perf_counter() - started


def table_covers(space_path: Path, table: Path | None) -> bool:
    """Whether the table exists and prices every signature of the space."""
    from spnas_dsl.errors import SpnasError
    from spnas_dsl.latency.graph import LatencyGraph
    from spnas_dsl.parser import parse_text
    from spnas_dsl.targets import load_target

    space = parse_text(space_path.read_text(), filename=str(space_path))
    try:
        LatencyGraph.build(space, load_target(str(table) if table is not None else TARGET))
        return True
    except SpnasError:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    R.common_options(parser)
    parser.add_argument("--samples", type=int, default=None, help="random networks per space (default 100; quick 12)")
    parser.add_argument("--spaces", nargs="+", choices=list(SPACES), default=list(SPACES))
    parser.add_argument("--processes", type=int, default=None,
                        help="validate: worker processes (default lut validate's 8; quick 4)")
    parser.add_argument("--rounds", type=int, default=None, help="validate: rounds per process (default 5; quick 3)")
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild the tables first (`lut build --fresh`; both are this benchmark's own)")
    a = parser.parse_args(argv)
    R.set_threads(a.threads)
    samples = a.samples or (12 if a.quick else 100)
    processes = a.processes or (4 if a.quick else 8)
    rounds = a.rounds or (3 if a.quick else 5)
    started = time.perf_counter()
    work = R.RUNS / "runtime_model"
    work.mkdir(parents=True, exist_ok=True)

    reports, builds, plots = {}, {}, {}
    for name in a.spaces:
        path, table = SPACES[name]
        table_args = ["--table", str(table)] if table is not None else []
        log = work / f"{name}.log"
        log.write_text("")
        if a.rebuild or not table_covers(path, table):
            if table is not None:
                table.parent.mkdir(parents=True, exist_ok=True)
            print(f"[{name}] building the table: spnasc lut build {path.relative_to(R.REPO)} --target {TARGET} "
                  + " ".join(table_args))
            fresh = ["--fresh"] if a.rebuild else []
            code, out, secs = spnasc(["lut", "build", str(path), "--target", TARGET, *table_args, *fresh, "--json"],
                                     a.threads, log)
            if code != 0:
                raise SystemExit(f"spnasc lut build failed for {name} ({code}); see {log}")
            builds[name] = secs
        plot = plots[name] = plot_path(name, a.no_write, work)
        args = ["lut", "validate", str(path), "--target", TARGET, *table_args, "--samples", str(samples),
                "--processes", str(processes), "--rounds", str(rounds), "--plot", str(plot), "--json"]
        print(f"[{name}] spnasc " + " ".join(args[:2] + [str(path.relative_to(R.REPO))] + args[3:]))
        code, out, secs = spnasc(args, a.threads, log)
        if code != 0:
            raise SystemExit(f"spnasc lut validate failed for {name} ({code}); see {log}")
        report = json.loads(out)
        report["seconds"] = secs
        reports[name] = report
        s = report["stored_calibration"]
        print(f"[{name}] RMSE {s['rmse_ms']:.4g} ms, MAPE {s['mape_pct']:.2f} %, max {s['max_error_pct']:.2f} % "
              f"({secs:.0f} s)")

    rows = []
    for name, rep in reports.items():
        lo, hi = rep["measured_ms_range"]
        for key, label in (("stored_calibration", "stored calibration (what a search uses)"),
                           ("in_run_calibration", "calibration re-fitted in this run"),
                           ("uncalibrated_sum", "plain sum of the parts")):
            e = rep[key]
            rows.append([f"`{name}`", label, rep["samples"], f"{lo:.3g}-{hi:.3g}", f"{e['rmse_ms']:.3g}",
                         f"{e['mape_pct']:.2f}", f"{e['max_error_pct']:.2f}", f"{e['mean_error_pct']:+.2f}"])
    rows.append(["paper: `mnasnet` on Pixel 1", "per-layer table (Eq. 9-12)", 100, "~30-130", "1.32", "1.76",
                 "(not given)", "(not given)"])
    table = R.md_table(["space", "prediction", "networks", "measured ms", "RMSE ms", "MAPE %", "max error %",
                        "mean signed %"], rows, "llrrrrrr")
    extra = [f"target `{TARGET}`: " + next(iter(reports.values()))["device"] + "; "
             + next(iter(reports.values()))["runtime"] if reports else "",
             (f"validation: {samples} random networks per space, {processes} processes x {rounds} rounds "
             f"(`spnasc lut validate`); timing: {next(iter(reports.values()))['timing'] if reports else ''}")]
    for name, rep in reports.items():
        cal = rep["stored_calibration"]
        extra.append(f"`{name}`: table `{R.rel(rep['table'])}`"
                     + (f" (built by this run in {builds[name]:.0f} s)" if name in builds else "")
                     + f", stored calibration {cal.get('scale', 1):.4f} x sum {cal.get('offset_ms', 0):+.4f} ms "
                       f"fitted {cal.get('date')}; validation {rep['seconds']:.0f} s; scatter plot (Fig. 7): "
                       + _plot_link(plots[name]))
    for name, rep in reports.items():
        cal = rep.get("calibration_networks") or []
        ratios = sorted(c["measured_ms"] / c["stored_ms"] for c in cal if c.get("stored_ms"))
        if ratios:
            drift = ratios[len(ratios) // 2]
            extra.append(f"`{name}`: the calibration networks ran at {drift:.2f}x the table's stored prediction "
                         f"in this run (median of {len(ratios)}): "
                         + ("the machine was about as fast as when the table was built" if abs(drift - 1) < 0.05
                            else "the machine's speed drifted between the table's build and this validation "
                                 "(other jobs share its 2 cores and caches); the in-run calibration removes that"))
    extra.append(f"total wall time {time.perf_counter() - started:.0f} s")
    body = R.section_header("Claim 4: the runtime model against whole-network timings (paper Fig. 7)",
                            R.command_line("benchmarks.runtime_model", argv), a.threads, extra)
    body += "\n" + table + "\n\n" + NOTES
    R.publish("runtime_model", body, a.no_write)


def plot_path(name: str, no_write: bool, work: Path) -> Path:
    """Where the Fig. 7 scatter plot of a space goes: beside docs/results.md when the run writes
    its section (the page shows the plot it describes), else the work folder."""
    return work / f"{name}-fig7.png" if no_write else R.REPO / "docs" / "img" / f"fig7_{name}_{TARGET}.png"


def _plot_link(path: Path) -> str:
    try:
        return f"[{path.name}](img/{path.relative_to(R.REPO / 'docs' / 'img')})"
    except ValueError:
        return f"`{R.rel(str(path))}`"


NOTES = """**What differs from the paper, and why.** The paper's table and networks are a Pixel 1
phone's (TFLite, one thread, 224x224 MnasNet-space networks of 30-130 ms); ours are this
2-vCPU cloud CPU through LiteRT/XNNPACK, one thread. On such a CPU the plain sum of
separately timed parts misses whole-network effects (cache state between layers, one
interpreter call per part; see `/work/shared/reference/export-and-timing.md`), which is why
`lut build` fits an affine calibration on 12 whole networks timed in the same run. The
"re-fitted in this run" row separates the table's per-layer accuracy from drift of the
machine between the build and this validation: the host switches between a fast and a
~1.5x slower state (docs/targets.md, *Measured on this machine*), so a table built during
a disturbed period over-predicts a quieter one (and vice versa). A phone timed alone, as in
the paper, does not drift like this. Even the best affine map from table sums to the
measured times, fitted on the validation networks themselves, has left about 1.1 % mean and
4 % max error for mnasnet here: the goal of issue 6 (<= 1 % mean, <= 3 % max) is below
what a per-layer sum reaches on this machine. The Fashion-MNIST networks run in a fraction
of a millisecond, so their RMSE in ms is not comparable with the paper's; compare the
percentages."""


if __name__ == "__main__":
    main()
