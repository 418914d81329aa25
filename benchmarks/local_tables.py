"""Claim 4c: a local target's table built per layer vs fitted to whole networks, side by side (issue 13).

    nice -n -10 .venv/bin/python -m benchmarks.local_tables [--quick] [--spaces NAME ...]
        [--from-networks NAME=N ...] [--heldout K] [--no-write]

For each space and target ``host-tflite`` (this CPU through LiteRT), in one run:

1. the part models of the space are converted (shared by both modes: TFLite whole networks
   are stitched from them), and the time is reported on its own;
2. the per-layer table: ``spnasc lut build SPACE --fresh`` (``profiling.lut.build_lut``: every
   signature timed alone, in chunks round-robin with 12 calibration networks, an affine
   calibration fitted on them);
3. the whole-network table: ``spnasc lut build SPACE --from-networks N``
   (``profiling.from_networks.build_from_networks``: N random networks timed end to end, the
   table fitted to them by ``lut fit``'s ridge fit); N is chosen so that both builds cost
   about the same time here;
4. the ground truth: K random networks never used by either build (not a fit network, not a
   calibration network), plus the largest and the smallest network (most / fewest
   multiply-adds in every layer), timed end to end in one measurement run, with the per-layer
   table's calibration networks and 12 of the fit networks beside them as *drift anchors*
   (how much faster or slower the machine ran than when each table was built); written as a
   measurement file and scored with ``spnasc lut validate --measurements``'s machinery
   (``latency.score``) for both tables.

Both builds and the ground truth use ``lut build``'s default timing (8 worker processes x >= 5
rounds, >= 5 s each; ``--quick``: 1 process, 2 rounds). Tables and measurement files go under
``runs/benchmarks/local_tables/`` (the user's ``host-tflite`` table is never touched); part
models are cached in the spnas cache as usual.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from benchmarks import _results as R

TARGET = "host-tflite"
SPACES = {"fashion_mnist": R.REPO / "spaces" / "fashion_mnist.spnas",
          "mnasnet": R.REPO / "spaces" / "mnasnet.spnas"}
# Whole networks timed by --from-networks: about the wall time of the per-layer build here
# (a fashion_mnist network is ~0.1 ms, so the per-process time floor dominates and many fit
# in the same time; a mnasnet network is ~10 ms).
FROM_NETWORKS = {"fashion_mnist": 200, "mnasnet": 70}
HELDOUT, HELDOUT_SEED = 50, 1
ANCHORS = 12  # fit networks re-timed beside the held-out ones (drift of the whole-network table)
QUICK = {"from_networks": 12, "heldout": 6, "calibrate": 4}


def extreme_networks(space):
    """(largest, smallest): every layer at its option with the most / fewest multiply-adds (then parameters)."""
    from spnas_dsl.passes import with_options
    from spnas_dsl.shapes import infer_shapes, option_cost

    layers = infer_shapes(space).layers

    def pick(sign: int):
        return with_options(space, [max(s.layer.options, key=lambda o, s=s: tuple(sign * c for c in
                                                                              option_cost(s, o)[::-1]))
                                  for s in layers])

    return pick(+1), pick(-1)


def drift(now_ms: dict[str, float], then_ms: dict[str, float]) -> float | None:
    """Median ratio of networks' times in this run to their times when a table was built (None: none shared)."""
    ratios = [now_ms[k] / then_ms[k] for k in now_ms if k in then_ms and then_ms[k] > 0]
    return statistics.median(ratios) if ratios else None


def parse_counts(items: list[str] | None, default: dict[str, int]) -> dict[str, int]:
    """``NAME=N`` items over the defaults."""
    out = dict(default)
    for item in items or []:
        name, _, n = item.partition("=")
        if name not in SPACES or not n.isdigit() or int(n) < 10:
            raise SystemExit(f"--from-networks {item!r}: expected NAME=N with NAME in {sorted(SPACES)} and N >= 10")
        out[name] = int(n)
    return out


def run_space(name: str, space_path: Path, measurer, *, count: int, heldout: int, calibrate: int, seed: int,
              work: Path, log=print) -> dict:
    """Both builds and the common ground truth for one space; returns a JSON-ready dict."""
    from spnas_dsl.io import atomic_write_text
    from spnas_dsl.latency.score import score
    from spnas_dsl.parser import load
    from spnas_dsl.passes import with_options
    from spnas_dsl.profiling import lut as L
    from spnas_dsl.profiling import models as M
    from spnas_dsl.profiling.from_networks import build_from_networks
    from spnas_dsl.targets import load_target
    from spnas_dsl.targets.measurements import load_measurements, measurement_json, resolve

    space = load(space_path)
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"space": name, "file": str(space_path.relative_to(R.REPO))}

    # 1. part models (both modes need them; TFLite networks are stitched from them)
    parts = M.space_parts(space)
    t = time.perf_counter()
    M.ensure_models([M.part_job(measurer.runtime, space, p) for p in parts])
    out["conversion_s"] = time.perf_counter() - t
    log(f"[{name}] {len(parts)} part models ready ({out['conversion_s']:.0f} s)")

    # 2. per-layer table
    layers_table = work / f"{TARGET}-{name}-layers.json"
    t = time.perf_counter()
    rep = L.build_lut(space, measurer, table=layers_table, calibrate=calibrate, fresh=True, seed=seed,
                      log=lambda m: log(f"[{name}] {m}"))
    chunks = math.ceil(len(parts) / 16)
    out["layers"] = {"table": str(layers_table), "seconds": time.perf_counter() - t, "parts": len(parts),
                     "calibration_networks": calibrate, "chunks": chunks,
                     "timed": f"{len(parts)} parts + {calibrate} networks x {chunks} chunks",
                     "models_timed": len(parts) + calibrate * chunks, "calibration": rep.calibration}
    log(f"[{name}] per-layer table: {out['layers']['timed']} in {out['layers']['seconds']:.0f} s")

    # 3. whole-network table
    networks_table = work / f"{TARGET}-{name}-networks.json"
    t = time.perf_counter()
    fn = build_from_networks(space, measurer, count=count, seed=seed, table=networks_table,
                             log=lambda m: log(f"[{name}] {m}"))
    out["networks"] = {"table": str(networks_table), "seconds": time.perf_counter() - t, "timed": f"{count} networks",
                       "models_timed": count, "cv": fn["cv"], "regularisation": fn["regularisation"],
                       "measurements": fn["measurements"]}
    log(f"[{name}] whole-network table: {count} networks in {out['networks']['seconds']:.0f} s "
        f"(its own 5-fold CV MAPE {fn['cv']['mape_pct']:.2f} %)")

    # 4. ground truth: held-out random networks + the extremes, with drift anchors, in one run
    fit_meas = load_measurements(fn["measurements"], TARGET)
    fit_nets = [with_options(space, opts) for opts in resolve(space, fit_meas)]
    fit_ms = {M.network_id(n): float(v) for n, v in zip(fit_nets, fit_meas.latency_ms)}
    cal = rep.table.calibration
    cal_ids = list(cal.networks) if cal.networks else []
    anchors_file = layers_table.parent / (layers_table.name + ".anchors")
    cal_ms = json.loads(anchors_file.read_text())["networks"] if anchors_file.exists() else {}
    held = M.random_networks(space, heldout, seed=HELDOUT_SEED, exclude=list(fit_ms) + cal_ids)
    largest, smallest = extreme_networks(space)
    truth = held + [largest, smallest]
    truth_ids = [M.network_id(n) for n in truth]
    anchor_ids = [i for i in cal_ids + list(fit_ms)[:ANCHORS] if i not in truth_ids]
    nets = {i: n for i, n in zip(truth_ids, truth)}
    nets.update({i: M.from_network_id(space, i) for i in anchor_ids if i not in nets})
    log(f"[{name}] timing the ground truth: {len(held)} held-out random networks + largest + smallest "
        f"(+ {len(anchor_ids)} drift anchors)")
    t = time.perf_counter()
    paths = M.ensure_models([M.network_job(measurer.runtime, n, i) for i, n in nets.items()])
    timings = measurer.measure(paths)
    out["truth_seconds"] = time.perf_counter() - t
    now_ms = {i: timings[i].value_ms for i in nets}
    date = L.now()

    def write(kind: str, networks: list, note: str):
        """A measurement file of these networks' times in this run (what `lut validate --measurements` reads)."""
        ids = [M.network_id(n) for n in networks]
        data = measurement_json(space, [M.choices(n) for n in networks], TARGET, [now_ms[i] for i in ids],
                                measurer.device)
        data.update({"runtime": measurer.runtime_text, "threads": measurer.threads, "date": date,
                     "timing": measurer.config.describe(measurer.threads), "note": note})
        path = work / f"{kind}-{name}.json"
        atomic_write_text(path, json.dumps(data) + "\n")
        meas = load_measurements(path, TARGET)
        return meas, resolve(space, meas)

    held_meas = write("heldout", held, f"{len(held)} random networks (seed {HELDOUT_SEED}), none a fit or "
                      "calibration network of the two tables")
    ext_meas = write("extremes", [largest, smallest], "the largest and the smallest network of the space")
    held_ms = [now_ms[i] for i in truth_ids[:len(held)]]
    out["truth"] = {"heldout_file": str(work / f"heldout-{name}.json"), "extremes_file": str(work / f"extremes-{name}.json"),
                    "networks": len(held), "measured_ms_range": [min(held_ms), max(held_ms)],
                    "largest_ms": now_ms[truth_ids[-2]], "smallest_ms": now_ms[truth_ids[-1]]}
    for mode, table, then in (("layers", layers_table, cal_ms), ("networks", networks_table, fit_ms)):
        target = load_target(str(table))
        out[mode]["heldout"] = {k: v for k, v in score(space, target, *held_meas).items()
                                if k not in ("predicted_ms", "measured_ms")}
        ext = score(space, target, *ext_meas)
        p, m = ext["predicted_ms"], ext["measured_ms"]
        out[mode]["largest_error_pct"] = 100 * (p[0] - m[0]) / m[0]
        out[mode]["smallest_error_pct"] = 100 * (p[1] - m[1]) / m[1]
        out[mode]["drift"] = drift({i: now_ms[i] for i in anchor_ids}, then)
        h = out[mode]["heldout"]
        log(f"[{name}] {mode:>8}: MAPE {h['mape_pct']:.2f} %  RMSE {h['rmse_ms']:.4g} ms  max {h['max_error_pct']:.2f} %  "
            f"within 5 % {h['within_5_pct']:.0f} %  within 10 % {h['within_10_pct']:.0f} %  "
            f"Spearman {h['spearman']:.3f}  largest {out[mode]['largest_error_pct']:+.1f} %  "
            f"smallest {out[mode]['smallest_error_pct']:+.1f} %")
    return out


def rows_of(results: list[dict]) -> list[list[str]]:
    """The side-by-side table: one row per space and mode."""
    rows = []
    for r in results:
        for mode, label in (("layers", "per layer (`lut build`)"), ("networks", "whole networks (`--from-networks`)")):
            b, h = r[mode], r[mode]["heldout"]
            d = b.get("drift")
            rows.append([f"`{r['space']}`", label, f"{b['seconds']:.0f}", b["timed"], f"{h['mape_pct']:.2f}",
                         f"{h['rmse_ms']:.3g}", f"{h['max_error_pct']:.2f}", f"{h['within_5_pct']:.0f}",
                         f"{h['within_10_pct']:.0f}", f"{h['spearman']:.3f}", f"{b['largest_error_pct']:+.1f}",
                         f"{b['smallest_error_pct']:+.1f}", "-" if d is None else f"{d:.3f}"])
    return rows


HEADERS = ["space", "table", "build s", "timed in the build", "MAPE %", "RMSE ms", "max error %", "within 5 %",
           "within 10 %", "Spearman", "largest: error %", "smallest: error %", "drift"]


def main(argv: list[str] | None = None) -> list[dict]:
    from spnas_dsl.profiling import lut as L
    from spnas_dsl.profiling.timing import TimingConfig
    from spnas_dsl.targets import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    R.common_options(parser)
    parser.add_argument("--spaces", nargs="+", choices=list(SPACES), default=list(SPACES))
    parser.add_argument("--from-networks", nargs="+", metavar="NAME=N",
                        help="whole networks the fitted table is built from (default "
                             + ", ".join(f"{k}={v}" for k, v in FROM_NETWORKS.items()) + f"; quick {QUICK['from_networks']})")
    parser.add_argument("--heldout", type=int, default=None,
                        help=f"held-out random networks per space (default {HELDOUT}; quick {QUICK['heldout']})")
    parser.add_argument("--seed", type=int, default=0, help="seed of both builds' networks (default 0)")
    parser.add_argument("--work", type=Path, default=R.RUNS / "local_tables", help="folder of the tables and files")
    a = parser.parse_args(argv)
    R.set_threads(a.threads)
    counts = parse_counts(a.from_networks, {k: QUICK["from_networks"] for k in SPACES} if a.quick else FROM_NETWORKS)
    heldout = a.heldout or (QUICK["heldout"] if a.quick else HELDOUT)
    calibrate = QUICK["calibrate"] if a.quick else L.DEFAULT_CALIBRATE
    config = TimingConfig(processes=1, rounds=2, min_seconds=0.0) if a.quick else TimingConfig()
    measurer = L.make_measurer(TARGET, None, config)
    started = time.perf_counter()
    results = [run_space(name, SPACES[name], measurer, count=counts[name], heldout=heldout, calibrate=calibrate,
                         seed=a.seed, work=a.work) for name in a.spaces]
    total = time.perf_counter() - started
    (a.work / "report.json").write_text(json.dumps(results, indent=1) + "\n")
    table = R.md_table(HEADERS, rows_of(results), "ll" + "r" + "l" + "r" * 9)
    extra = [f"target `{TARGET}`: {measurer.device}; {measurer.runtime_text}; {measurer.threads} thread(s)",
             f"timing (both builds and the ground truth): {config.describe(measurer.threads)}",
             f"spnas cache (part models: converted by this run unless already there): `{R.rel(cache_dir().parent)}`"]
    for r in results:
        lo, hi = r["truth"]["measured_ms_range"]
        cv = r["networks"]["cv"]
        extra.append(
            f"`{r['space']}`: part models converted in {r['conversion_s']:.0f} s (shared by both modes, not in "
            f"'build s'); ground truth: {r['truth']['networks']} held-out random networks ({lo:.3g}-{hi:.3g} ms), "
            f"largest {r['truth']['largest_ms']:.3g} ms, smallest {r['truth']['smallest_ms']:.3g} ms, timed in "
            f"{r['truth_seconds']:.0f} s; the whole-network fit's own 5-fold CV estimate: MAPE {cv['mape_pct']:.2f} %, "
            f"Spearman {cv['spearman']:.3f}")
    extra.append(f"total wall time {total:.0f} s")
    body = R.section_header("Claim 4c: a local table per layer vs fitted to whole networks (issue 13)",
                            R.command_line("benchmarks.local_tables", argv), a.threads, extra)
    body += "\n" + table + "\n\n" + NOTES
    R.publish("local_tables", body, a.no_write)
    return results


NOTES = """**Reading it.** Both tables are scored on the same networks, timed end to end in one
measurement run after both builds: the held-out random networks (MAPE, RMSE, max error, shares
within 5 / 10 %, Spearman over them), and the largest and the smallest network of the space
(signed error of each table). *build s* is each build's wall time with the part models already
converted; *timed in the build*: the per-layer build times every signature alone, in chunks of
16, each chunk round-robin with the calibration networks; the whole-network build times N
networks once. *drift* is the median ratio of the anchor networks' times in the ground-truth run
to their times in the build (the per-layer table's calibration networks; 12 of the fit
networks): above 1, the machine ran slower than when the table was built, and that table
under-predicts by about as much (the shared 2-vCPU host switches between a fast and a ~1.5x
slower state; docs/targets.md, *Measured on this machine*). The scores are `spnasc lut validate
--measurements`'s: `spnasc lut validate spaces/SPACE.spnas --target
runs/benchmarks/local_tables/host-tflite-SPACE-layers.json` (or `-networks.json`) `--measurements
runs/benchmarks/local_tables/heldout-SPACE.json` (or `extremes-SPACE.json`) `--device host-tflite --json`
reprints them from the files this run wrote."""


if __name__ == "__main__":
    main()
