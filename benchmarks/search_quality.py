"""Claim 2, search quality: Single-Path NAS against random search in the same latency band.

    python -m benchmarks.search_quality [--quick] [--budget-ms MS] [--band F] [--random N]
        [--search-epochs N] [--train-epochs N] [--subset N] [--jobs J] [--fresh] [--threads T] [--no-write]

The paper's Table 1 protocol at Fashion-MNIST scale, through the public command line only:

1. the target's lookup table: ``host-tflite`` (this CPU, LiteRT); built with
   ``spnasc lut build SPACE --target host-tflite`` when it is missing;
2. ``spnasc search SPACE --target host-tflite --latency-budget B`` (the supernet's weights and
   thresholds trained together; lambda steered to the budget);
3. the found network (``arch.spnas``) trained from scratch with ``spnasc train`` (fixed recipe);
4. N random networks of the space, sampled uniformly per layer and kept only when their
   predicted latency lies within ``B * (1 +- band)`` (rejection sampling, the paper's "10
   samples, 75-80 ms"), each trained with the same ``spnasc train`` recipe.

Reported: top-1 of the found network and mean +- std of the random ones, predicted latencies,
and the wall clock of each phase. Runs go to ``runs/benchmarks/search_quality/<settings>/``;
a phase whose outputs are already there (same settings) is reused, so an interrupted
benchmark continues where it stopped (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import _results as R

SPACE = R.REPO / "spaces" / "fashion_mnist.spnas"
TARGET = "host-tflite"


def spnasc(args: list[str], log: Path, threads: int) -> tuple[int, float]:
    """Run ``spnasc ARGS`` (this interpreter's package), output to ``log``; (exit status, seconds)."""
    started = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "spnas_dsl", *args], cwd=R.REPO, env=R.child_env(threads),
                              stdout=out, stderr=subprocess.STDOUT, check=False)
    return proc.returncode, time.perf_counter() - started


def tail(log: Path, n: int = 5) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def ensure_table(space, threads: int, work: Path) -> tuple[object, float | None, str]:
    """The latency graph of ``space`` on host-tflite; builds the table first when it cannot price
    the space. Returns (graph, seconds spent building or None, note)."""
    from spnas_dsl.errors import TargetError
    from spnas_dsl.latency.graph import LatencyGraph

    try:
        return LatencyGraph.build(space, TARGET), None, "existing table"
    except TargetError as exc:
        reason = str(exc).splitlines()[0]
    print(f"[table] {reason}\n[table] building: spnasc lut build {SPACE.relative_to(R.REPO)} --target {TARGET}")
    log = work / "lut-build.log"
    code, seconds = spnasc(["lut", "build", str(SPACE), "--target", TARGET], log, threads)
    if code != 0:
        raise SystemExit(f"spnasc lut build failed ({code}):\n{tail(log)}")
    return LatencyGraph.build(space, TARGET), seconds, "built by this benchmark"


def sample_in_band(space, graph, count: int, lo: float, hi: float, seed: int, max_tries: int = 200_000):
    """Up to ``count`` distinct random networks (uniform per layer) with lo <= predicted <= hi;
    also returns how many were drawn."""
    from spnas_dsl.profiling.models import concrete, network_id
    from spnas_dsl.shapes import infer_shapes

    rng = random.Random(seed)
    shapes = infer_shapes(space).layers
    seen: set[str] = set()
    kept = []
    tries = 0
    while len(kept) < count and tries < max_tries:
        tries += 1
        net = concrete(space, [rng.choice(s.layer.options) for s in shapes], name=f"random{len(kept)}")
        key = network_id(net, space.name)
        if key in seen:
            continue
        seen.add(key)
        ms = graph.predict(net)
        if lo <= ms <= hi:
            kept.append((net, ms))
    return kept, tries


def latency_quantile(space, graph, q: float, seed: int = 12345, samples: int = 4000) -> float:
    from spnas_dsl.profiling.models import random_networks

    values = sorted(graph.predict(n) for n in random_networks(space, samples, seed=seed))
    return values[min(len(values) - 1, int(q * len(values)))]


def train_args(arch: Path, out: Path, a) -> list[str]:
    args = ["train", str(arch), "--data", "fashion-mnist", "--epochs", str(a.train_epochs), "--batch-size",
            str(a.batch_size), "--seed", str(a.seed), "--device", "cpu", "--quiet", "--out", str(out)]
    if a.subset:
        args += ["--subset", str(a.subset)]
    return args


def train_one(arch: Path, out: Path, a) -> dict:
    """``spnasc train`` unless ``out`` holds a finished run; returns its metrics (+ seconds, reused)."""
    metrics = out / "metrics.json"
    reused = metrics.exists()
    seconds = None
    if not reused:
        if out.exists():
            shutil.rmtree(out)  # an unfinished run: start it again
        code, seconds = spnasc(train_args(arch, out, a), out.parent / f"{out.name}.log", a.threads)
        if code != 0 or not metrics.exists():
            return {"error": f"spnasc train exited {code}: {tail(out.parent / f'{out.name}.log', 3)}"}
    m = json.loads(metrics.read_text())
    return {"top1": m["top1"], "wall_time_s": m.get("wall_time_s"), "process_s": seconds, "reused": reused,
            "held_out": m.get("held_out_images"), "training_images": m.get("training_images")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    R.common_options(parser)
    parser.add_argument("--budget-ms", type=float, default=None,
                        help="latency budget on host-tflite (default: the 40th percentile of the space's "
                             "predicted latencies, so the budget binds)")
    parser.add_argument("--band", type=float, default=0.05, help="random networks within budget * (1 +- band)")
    parser.add_argument("--random", type=int, default=None, help="random networks (default 10; quick 3)")
    parser.add_argument("--search-epochs", type=int, default=None, help="search epochs (default 8; quick 2)")
    parser.add_argument("--train-epochs", type=int, default=None, help="training epochs (default 5; quick 1)")
    parser.add_argument("--subset", type=int, default=None,
                        help="training images for search and training (default all 60,000; quick 3000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="seed of search, training and sampling")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at the same time (default 1)")
    parser.add_argument("--fresh", action="store_true", help="discard earlier runs of these settings")
    a = parser.parse_args(argv)
    R.set_threads(a.threads)
    a.random = a.random or (3 if a.quick else 10)
    a.search_epochs = a.search_epochs or (2 if a.quick else 8)
    a.train_epochs = a.train_epochs or (1 if a.quick else 5)
    a.subset = a.subset if a.subset is not None else (3000 if a.quick else None)
    started = time.perf_counter()

    from spnas_dsl.parser import parse_text
    from spnas_dsl.printer import format_network

    space = parse_text(SPACE.read_text(), filename=str(SPACE))
    root = R.RUNS / "search_quality"
    root.mkdir(parents=True, exist_ok=True)
    graph, table_s, table_note = ensure_table(space, a.threads, root)
    budget = a.budget_ms or round(latency_quantile(space, graph, 0.4), 4)
    lo, hi = budget * (1 - a.band), budget * (1 + a.band)
    settings = {"budget": budget, "band": a.band, "random": a.random, "search_epochs": a.search_epochs,
                "train_epochs": a.train_epochs, "subset": a.subset, "batch": a.batch_size, "seed": a.seed,
                "table": graph.target.path.name if getattr(graph.target, "path", None) else TARGET,
                "calibration": str(graph.target.calibration.model_dump().get("date"))}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    work = root / f"{'quick' if a.quick else 'full'}-{key}"
    if a.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(settings, indent=1) + "\n")
    print(f"[setup] budget {budget:.4f} ms, band {lo:.4f} .. {hi:.4f} ms; space spans "
          f"{graph.min_ms():.4f} .. {graph.max_ms():.4f} ms; work folder {work.relative_to(R.REPO)}")

    # -- search ------------------------------------------------------------------------------------
    search_dir = work / "search"
    search_s = None
    if not (search_dir / "arch.spnas").exists():
        if search_dir.exists():
            shutil.rmtree(search_dir)
        args = ["search", str(SPACE), "--target", TARGET, "--data", "fashion-mnist", "--latency-budget", str(budget),
                "--epochs", str(a.search_epochs), "--batch-size", str(a.batch_size), "--seed", str(a.seed),
                "--device", "cpu", "--quiet", "--out", str(search_dir)]
        if a.subset:
            args += ["--subset", str(a.subset)]
        print("[search] spnasc " + " ".join(args[:1] + [str(SPACE.relative_to(R.REPO))] + args[2:]))
        code, search_s = spnasc(args, work / "search.log", a.threads)
        if code != 0 or not (search_dir / "arch.spnas").exists():
            raise SystemExit(f"spnasc search failed ({code}):\n{tail(work / 'search.log', 8)}")
    search = json.loads((search_dir / "search.json").read_text())
    result = search["result"]
    found_arch = search_dir / "arch.spnas"
    found = parse_text(found_arch.read_text(), filename=str(found_arch))
    found_ms = graph.predict(found)
    print(f"[search] found {result['decisions']} at {found_ms:.4f} ms ({result['seconds']:.0f} s)")

    # -- random networks in the band -----------------------------------------------------------------
    picked, drawn = sample_in_band(space, graph, a.random, lo, hi, seed=a.seed + 1000)
    arch_dir = work / "random-archs"
    arch_dir.mkdir(exist_ok=True)
    jobs = [("found", found_arch, work / "train-found")]
    for i, (net, _) in enumerate(picked):
        path = arch_dir / f"random{i}.spnas"
        text = format_network(net)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        jobs.append((f"random{i}", path, work / f"train-random{i}"))
    print(f"[random] {len(picked)} networks in the band after {drawn} draws; training {len(jobs)} networks, "
          f"{a.train_epochs} epoch(s) each")

    train_started = time.perf_counter()
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        futures = {name: pool.submit(train_one, arch, out, a) for name, arch, out in jobs}
        results = {}
        for name, fut in futures.items():
            results[name] = fut.result()
            r = results[name]
            print(f"[train] {name}: " + (r["error"] if "error" in r else
                                         f"top-1 {r['top1']:.2%}" + (" (reused)" if r["reused"] else "")))
    train_wall = time.perf_counter() - train_started

    # -- the table --------------------------------------------------------------------------------
    ok_random = [(results[f"random{i}"], ms) for i, (_, ms) in enumerate(picked) if "error" not in results[f"random{i}"]]
    acc_mean, acc_std = R.mean_std([100 * r["top1"] for r, _ in ok_random])
    ms_mean, ms_std = R.mean_std([ms for _, ms in ok_random])
    f = results["found"]
    found_top1 = f"{100 * f['top1']:.2f}" if "error" not in f else "failed"
    rows = [
        [f"Random search ({len(ok_random)} samples, {lo:.4f}-{hi:.4f} ms)", f"{acc_mean:.2f} \u00b1 {acc_std:.2f}",
         f"{ms_mean:.4f} \u00b1 {ms_std:.4f}", "73.78 \u00b1 0.85", "77.31 \u00b1 0.9"],
        [f"Single-Path NAS (budget {budget:.4f} ms)", found_top1, f"{found_ms:.4f}", "74.96", "79.48"],
    ]
    table = R.md_table(["method", "top-1 % (ours)", "host-tflite ms (predicted)", "top-1 % (paper)",
                        "Pixel 1 ms (paper)"], rows)
    per_net = R.md_table(
        ["network", "choices", "predicted ms", "top-1 %"],
        [["found", ", ".join(result["decisions"].values()), f"{found_ms:.4f}", found_top1]]
        + [[f"random{i}", ", ".join(_choices(net, space)), f"{ms:.4f}",
            f"{100 * results[f'random{i}']['top1']:.2f}" if "error" not in results[f"random{i}"] else "failed"]
           for i, (net, ms) in enumerate(picked)])

    def secs(v):
        return f"{v:.0f} s" if v is not None else "reused (earlier run)"

    train_times = [r.get("wall_time_s") for r in results.values() if r.get("wall_time_s")]
    reused_all = all(r.get("reused") for r in results.values())
    phases = R.md_table(["phase", "wall clock"], [
        ["lookup table (`spnasc lut build`)", secs(table_s) if table_s is not None else f"not needed ({table_note})"],
        [f"search ({a.search_epochs} epochs, `spnasc search`)",
         f"{result['seconds']:.0f} s in the search loop" + (f", {search_s:.0f} s process" if search_s else " (reused)")],
        [f"training, per network ({a.train_epochs} epoch(s), `spnasc train`)",
         f"{R.mean_std(train_times)[0]:.0f} s mean in the loop" if train_times else "n/a"],
        [f"training, all {len(jobs)} networks", f"{sum(train_times):.0f} s summed over the runs' loops"
         + (f"; {train_wall:.0f} s of wall clock in this run, {a.jobs} at a time" if not reused_all else
            " (all reused from an earlier run)")],
        ["benchmark total (this run)", f"{time.perf_counter() - started:.0f} s"
         + (" (search and training reused from an earlier run with the same settings)" if reused_all and
            search_s is None else "")],
    ], "ll")
    won = "error" not in f and ok_random and 100 * f["top1"] > acc_mean
    beyond = "error" not in f and ok_random and 100 * f["top1"] > acc_mean + acc_std
    verdict = ("The searched network beats the random mean by more than one standard deviation."
               if beyond else "The searched network is above the random mean, but within one standard deviation: "
               "no clear win at this scale." if won else
               "**The search does not win here**: the found network is not better than the mean of the random "
               "networks of the same latency band.")
    if found_ms < lo:
        verdict += (f" Note that the search ended at {found_ms:.4f} ms, {100 * (1 - found_ms / budget):.0f} % under "
                    f"its budget and below the random networks' band (the lambda steering overshot, and the final "
                    f"repair only moves down): the found network is compared with networks "
                    f"{ms_mean / found_ms:.2f}x slower on average, which favours them.")
    if a.quick:
        verdict += (" (A `--quick` run: one short training epoch on a few thousand images; the ranking it "
                    "shows is noise-dominated and says only that the pipeline works.)")
    data = (f"Fashion-MNIST, {a.subset or 60000} training images"
            + (f", held-out {results['found'].get('held_out')} images" if "error" not in f else ""))
    body = R.section_header(
        "Claim 2: search quality against random search (paper Table 1)",
        R.command_line("benchmarks.search_quality", argv), a.threads,
        [(f"space `{SPACE.relative_to(R.REPO)}` ({_size(space)} networks), target `{TARGET}` "
         f"({graph.target.table.device}; {graph.target.table.runtime}); the space spans "
         f"{graph.min_ms():.4f} .. {graph.max_ms():.4f} ms predicted"),
         (f"data: {data}; search {a.search_epochs} epochs, training {a.train_epochs} epoch(s) from scratch, batch "
         f"{a.batch_size}, seed {a.seed}, default `spnasc train` recipe (RMSProp, MnasNet's) for every network"),
         (f"random networks: uniform per layer, kept when predicted within {budget:.4f} ms \u00b1 {100 * a.band:g} % "
         f"({len(picked)} kept of {drawn} drawn)"),
         f"work folder `{work.relative_to(R.REPO)}`"])
    body += "\n" + table + "\n\n" + verdict + "\n\n" + per_net + "\n\n" + phases + "\n\n" + NOTES
    R.publish("search_quality", body, a.no_write)


def _choices(net, space) -> list[str]:
    """The options of the searched layers of ``space`` in the concrete ``net``."""
    from spnas_dsl.shapes import infer_shapes

    return [str(mine.layer.options[0]) for mine, theirs in zip(infer_shapes(net).layers, infer_shapes(space).layers)
            if theirs.layer.is_searched]


def _size(space) -> str:
    from spnas_dsl.shapes import summarize

    return f"{summarize(space).architectures:,}"


NOTES = """**What differs from the paper, and why.** The paper searches ImageNet at 224x224 for a
Pixel 1 (8 epochs of search, 350 epochs of training per network) and compares with 10 random
networks in a 75-80 ms band; here the space is the 8,000-network Fashion-MNIST space, the
target is this CPU through LiteRT (networks of a fraction of a millisecond), and every
network is trained for a few epochs, so accuracies are close together and the spread of
short training runs is of the same order as the differences between networks. Latencies are
the table's predictions (claim 4 validates them against whole-network timings). The random
networks are sampled within +-band of the budget while the search is steered to stay
*under* the budget, which, if anything, favours the random networks."""


if __name__ == "__main__":
    main()
