"""spnasc lut build | validate | export: lookup tables of local targets."""

from __future__ import annotations

import json
import sys

from spnas_dsl.cli.options import nonnegative_float, nonnegative_int, positive_int, seed


def _timing_options(p, processes: int, rounds: int) -> None:
    p.add_argument("--target", required=True, help="host-tflite, host-onnxruntime or android:SERIAL")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads of the runtime (default: the target's, 1)")
    p.add_argument("--processes", type=positive_int, default=processes,
                   help=f"worker processes, each timing every model (default {processes}); android: passes")
    p.add_argument("--jobs", type=positive_int, default=1, help="worker processes running at the same time (default 1)")
    p.add_argument("--rounds", type=positive_int, default=rounds,
                   help=f"round-robin visits per model in each process (default {rounds})")
    p.add_argument("--runs", type=positive_int, default=3, help="timed runs per visit, at least (default 3)")
    p.add_argument("--min-seconds", type=nonnegative_float, default=5.0, metavar="S",
                   help="each process keeps visiting (more rounds) until it has timed for S seconds (default 5)")
    p.add_argument("--table", metavar="FILE", help="table file (default: the target's table in the user cache)")
    p.add_argument("--calibrate", type=nonnegative_int, default=None, metavar="K",
                   help="whole networks to fit the calibration on (default 12; 0: none)")
    p.add_argument("--fit", choices=["affine", "scale"], default="affine",
                   help="calibration: scale * sum + offset (affine, default) or scale * sum")
    p.add_argument("--benchmark-binary", metavar="PATH",
                   help="android: TFLite's benchmark_model built for the phone (or $SPNAS_BENCHMARK_MODEL)")
    p.add_argument("--statistic", choices=["p10", "median"], default="p10",
                   help="each process's figure for a model: p10 of its timed runs (default; robust on a busy "
                   "machine) or the median of its visit medians")
    p.add_argument("--across", choices=["min", "median", "normalized"], default="min",
                   help="a model's figure from its processes' figures: the smallest (default), the median, or the "
                   "median after dividing out each process's common slowness")
    p.add_argument("--realtime", action="store_true",
                   help="time with real-time priority (SCHED_FIFO) pinned to one CPU, so that other processes "
                   "cannot preempt a run (needs root or CAP_SYS_NICE; ignored where not allowed)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def register(sub) -> None:
    p = sub.add_parser(
        "lut",
        help="build, validate and export lookup tables of local targets",
        description="Lookup tables of the profilable targets (this CPU through LiteRT or onnxruntime, an "
        "Android phone over adb). Tables live in the user cache ($SPNAS_CACHE_DIR/targets).",
    )
    lut = p.add_subparsers(dest="lut_command", metavar="SUBCOMMAND", required=True)

    b = lut.add_parser(
        "build",
        help="time every signature of a space and write the target's table",
        description="Time every signature of SPACE (each candidate of each layer, the stem, the head) as its own "
        "small model, then fit the calibration (scale * sum + offset) on whole networks timed in the same run. "
        "Resumable: signatures already in the table are kept.",
    )
    b.add_argument("space", metavar="SPACE")
    _timing_options(b, processes=8, rounds=5)
    b.add_argument("--fresh", action="store_true", help="start a new table (replaces the existing one)")
    b.add_argument("--recalibrate", action="store_true", help="fit the calibration again even if nothing is new")
    b.add_argument("--chunk", type=positive_int, default=16, help="signatures timed (and saved) together (default 16)")
    b.add_argument("--seed", type=seed, default=0, help="seed of the random calibration networks")
    b.add_argument("--from-networks", type=positive_int, default=None, metavar="N",
                   help="instead of timing each signature: time N random whole networks and fit the table to them "
                   "(what a phone with only benchmark_model allows; see docs/targets.md)")
    b.set_defaults(run=run_build)

    v = lut.add_parser(
        "validate",
        help="compare a table's predictions with whole networks timed end to end",
        description="Time N random networks of SPACE end to end, interleaved with the calibration networks, and "
        "report RMSE (ms), mean and max absolute error (%) of the table's predictions: with the stored "
        "calibration, with a calibration re-fitted in this run, and of the plain sum.",
    )
    v.add_argument("space", metavar="SPACE")
    _timing_options(v, processes=8, rounds=5)
    v.add_argument("--samples", type=positive_int, default=100, help="random networks (default 100)")
    v.add_argument("--seed", type=seed, default=1, help="seed of the random networks (default 1)")
    v.add_argument("--plot", metavar="FILE", help="write a predicted-vs-measured scatter plot (PNG)")
    v.add_argument("--measurements", metavar="FILE",
                   help="score the table on the whole networks of a measurement file instead of timing here "
                   "(any target or table file; see docs/targets.md for the format)")
    v.add_argument("--device", metavar="NAME", help="with --measurements: the device's latencies to use")
    v.set_defaults(run=run_validate)

    f = lut.add_parser(
        "fit",
        help="fit a table to whole-network latencies of a measurement file",
        description="Fit a target table (a cost per layer and option, a constant for the fixed parts) to the "
        "whole-network latencies of DEVICE in a measurement file, by ridge-regularised least squares with costs "
        ">= 0; report the cross-validated error; write the table with its provenance.",
    )
    f.add_argument("space", metavar="SPACE")
    f.add_argument("--measurements", required=True, metavar="FILE", help="measurement file (JSON)")
    f.add_argument("--device", required=True, metavar="NAME", help="which device's latencies to fit")
    f.add_argument("--out", metavar="TABLE.json",
                   help="where to write the table (default: the local table of target --name)")
    f.add_argument("--name", metavar="TARGET", help="the table's target name (default: DEVICE-fit)")
    f.add_argument("--folds", type=positive_int, default=5, help="cross-validation folds (default 5)")
    f.add_argument("--seed", type=seed, default=0, help="seed of the fold split (default 0)")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(run=run_fit)

    e = lut.add_parser(
        "export",
        help="copy a local table to a file (e.g. into a repository's targets/ folder)",
        description="Copy the target's table from the user cache to --to (checked first), so that it can be "
        "committed and used by path (--target PATH). --to is required: spnasc writes user data only into the "
        "user cache or where it is told, never into the installed package.",
    )
    e.add_argument("name", metavar="TARGET")
    e.add_argument("--table", metavar="FILE", help="the table to export (default: the target's local table)")
    e.add_argument("--to", metavar="PATH", required=True,
                   help="destination file, or an existing folder (the file is then named <target>.json)")
    e.add_argument("--force", action="store_true", help="overwrite an existing file")
    e.set_defaults(run=run_export)


def progress_bars():
    """(description, total) -> tick: a tqdm bar on stderr (silent when stderr is not a terminal)."""
    from tqdm import tqdm

    def make(desc: str, total: int):
        if not sys.stderr.isatty():  # a log file: a line every 10 %
            state = {"done": 0, "shown": 0}

            def tick_plain(n: int) -> None:
                state["done"] += n
                pct = 100 * state["done"] // max(total, 1)
                if pct >= state["shown"] + 10 or state["done"] >= total:
                    state["shown"] = pct
                    print(f"{desc}: {state['done']}/{total} ({pct} %)", file=sys.stderr, flush=True)

            return tick_plain
        bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)

        def tick(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()

        return tick

    return make


def _measurer(args, default_config):
    from dataclasses import replace

    from spnas_dsl.profiling.lut import make_measurer

    config = replace(default_config, processes=args.processes, rounds=args.rounds, runs=args.runs, jobs=args.jobs,
                     min_seconds=args.min_seconds, across=args.across,
                     statistic=args.statistic, realtime=args.realtime)
    return make_measurer(args.target, args.threads, config, args.benchmark_binary)


def _log(args):
    return (lambda msg: print(msg, file=sys.stderr)) if args.json else print


def run_build(args) -> int:
    from spnas_dsl.parser import load
    from spnas_dsl.profiling.lut import DEFAULT_CALIBRATE, build_lut
    from spnas_dsl.profiling.timing import TimingConfig

    space = load(args.space)
    measurer = _measurer(args, TimingConfig())
    if args.from_networks is not None:
        return _build_from_networks(args, space, measurer)
    report = build_lut(space, measurer, table=args.table,
                       calibrate=DEFAULT_CALIBRATE if args.calibrate is None else args.calibrate,
                       fit_mode=args.fit, fresh=args.fresh, recalibrate=args.recalibrate, chunk=args.chunk,
                       seed=args.seed, progress=progress_bars(), log=_log(args))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    print(f"table: {report.path}")
    print(f"  {len(report.measured)} signature(s) measured, {len(report.kept)} kept, "
          f"{len(report.measured) + len(report.kept)} for '{space.name}' ({report.seconds:.0f} s)")
    cal = report.calibration
    if cal:
        print(f"  calibration: measured = {cal['scale']:.4f} * sum {cal['offset_ms']:+.4f} ms "
              f"({len(cal['networks'])} networks, {cal['date']})")
        for row in report.calibration_rows:
            print(f"    sum {row['sum_ms']:8.4f} ms  measured {row['measured_ms']:8.4f} ms  fitted "
                  f"{row['fitted_ms']:8.4f} ms ({row['error_pct']:+.2f} %)")
    return 0


def run_validate(args) -> int:
    from spnas_dsl.parser import load
    from spnas_dsl.profiling.lut import DEFAULT_CALIBRATE
    from spnas_dsl.profiling.timing import TimingConfig
    from spnas_dsl.profiling.validate import plot, validate_lut

    if args.measurements or args.device:
        return _validate_measurements(args)
    space = load(args.space)
    measurer = _measurer(args, TimingConfig())
    report = validate_lut(space, measurer, table=args.table, samples=args.samples, seed=args.seed,
                          calibrate=DEFAULT_CALIBRATE if args.calibrate is None else args.calibrate,
                          fit_mode=args.fit, progress=progress_bars(), log=_log(args))
    if args.plot:
        plot(report, args.plot)
        report["plot"] = args.plot
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    lo, hi = report["measured_ms_range"]
    print(f"{report['space']} on {report['target']}: {report['samples']} random networks, measured "
          f"{lo:.4g} .. {hi:.4g} ms ({report['device']}; {report['runtime']}; {report['threads']} thread(s))")
    for key, label in (("stored_calibration", "stored calibration"), ("in_run_calibration", "in-run calibration"),
                       ("uncalibrated_sum", "uncalibrated sum")):
        e = report[key]
        terms = f"  [scale {e['scale']:.4f}, offset {e['offset_ms']:+.4f} ms]" if "scale" in e else ""
        print(f"  {label:<20} RMSE {e['rmse_ms']:.4g} ms  MAPE {e['mape_pct']:.2f} %  max {e['max_error_pct']:.2f} %  "
              f"mean signed {e['mean_error_pct']:+.2f} %{terms}")
    print(f"  details: {report['report_file']}")
    print(f"  measurement file (for lut fit / lut validate --measurements): {report['measurements_file']}")
    if args.plot:
        print(f"  plot: {args.plot}")
    return 0


def _build_from_networks(args, space, measurer) -> int:
    from spnas_dsl.profiling.from_networks import build_from_networks

    report = build_from_networks(space, measurer, count=args.from_networks, seed=args.seed, table=args.table,
                                 progress=progress_bars(), log=_log(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    cv = report["cv"]
    print(f"table: {report['table']} (fitted to {report['networks']} whole networks, {report['seconds']:.0f} s)")
    print(f"  measurements: {report['measurements']}")
    print(f"  held-out: MAPE {cv['mape_pct']:.2f} %  RMSE {cv['rmse_ms']:.4g} ms  max {cv['max_error_pct']:.2f} %  "
          f"Spearman {cv['spearman']:.4f}")
    return 0


def _validate_measurements(args) -> int:
    from spnas_dsl.errors import UsageError
    from spnas_dsl.latency.score import plot_scatter, score
    from spnas_dsl.parser import load
    from spnas_dsl.targets import DEVICE_KEYS, load_target
    from spnas_dsl.targets.measurements import load_measurements, resolve

    if not (args.measurements and args.device):
        raise UsageError("--measurements and --device go together")
    space = load(args.space)
    target = load_target(args.table or args.target)
    meas = load_measurements(args.measurements, args.device, DEVICE_KEYS)
    report = score(space, target, meas, resolve(space, meas))
    if args.plot:
        plot_scatter(report, args.plot)
        report["plot"] = args.plot
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k not in ("predicted_ms", "measured_ms")}, indent=2))
        return 0
    print(f"{report['space']} on {report['target']} vs {report['networks']} networks measured on {meas.device} "
          f"({report['measured_ms_range'][0]:.4g} .. {report['measured_ms_range'][1]:.4g} ms)")
    print(f"  MAPE {report['mape_pct']:.2f} %  RMSE {report['rmse_ms']:.4g} ms  max {report['max_error_pct']:.2f} %  "
          f"within 5 % {report['within_5_pct']:.1f} %  within 10 % {report['within_10_pct']:.1f} %  "
          f"Spearman {report['spearman']:.4f}")
    if args.plot:
        print(f"  plot: {args.plot}")
    return 0


def run_fit(args) -> int:
    from pathlib import Path

    from spnas_dsl.errors import UsageError
    from spnas_dsl.parser import load
    from spnas_dsl.profiling.lut import now
    from spnas_dsl.targets import DEVICE_KEYS, local_table_path
    from spnas_dsl.targets.fit import fit_table, to_table
    from spnas_dsl.targets.measurements import load_measurements, resolve
    from spnas_dsl.targets.table import write_table

    if args.folds < 2:
        raise UsageError("--folds must be at least 2")
    space = load(args.space)
    meas = load_measurements(args.measurements, args.device, DEVICE_KEYS)
    result = fit_table(space, resolve(space, meas), meas.latency_ms, folds=args.folds, seed=args.seed)
    name = args.name or f"{args.device}-fit"
    table = to_table(result, meas, space, name=name, runtime="as measured (see provenance)",
                     description=f"fitted to {meas.count} whole networks of '{space.name}' on {meas.device}",
                     date=now())
    out = Path(args.out) if args.out else local_table_path(name)
    write_table(out, table)
    summary = {"table": str(out), "name": name, "device": meas.device, "networks": meas.count,
               "regularisation": result.regularisation, "cv_folds": result.folds, "cv": result.cv, "fit": result.fit}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    cv, fit = result.cv, result.fit
    print(f"table: {out} (target '{name}': --target {out})")
    print(f"  {meas.count} networks of '{space.name}' on {meas.device}; {len(result.design.columns)} costs + a constant "
          f"({result.constant_ms:.4g} ms); regularisation {result.regularisation:g}")
    print(f"  held-out ({result.folds}-fold): MAPE {cv['mape_pct']:.2f} %  RMSE {cv['rmse_ms']:.4g} ms  "
          f"max {cv['max_error_pct']:.2f} %  within 10 % {cv['within_10_pct']:.1f} %  Spearman {cv['spearman']:.4f}")
    print(f"  in-sample:          MAPE {fit['mape_pct']:.2f} %  max |residual| {fit['max_abs_error_ms']:.4g} ms")
    return 0


def run_export(args) -> int:
    from pathlib import Path

    from spnas_dsl.errors import UsageError
    from spnas_dsl.profiling.lut import table_path
    from spnas_dsl.targets import local_table_path
    from spnas_dsl.targets.table import load_table, write_table

    source = table_path(args.name, args.table)
    table = load_table(source)  # a missing or corrupt table is a TargetError naming the file
    dest = Path(args.to)
    if dest.is_dir():
        dest = dest / local_table_path(args.name).name
    if dest.exists() and not args.force:
        raise UsageError(f"{dest} exists; pass --force to overwrite it")
    write_table(dest, table)
    print(f"exported {table.name} ({len(table.entries)} entries, calibration "
          f"{'none' if table.calibration.is_identity else f'scale {table.calibration.scale:g}'}) to {dest}")
    print(f"use it with --target {dest}")
    return 0
