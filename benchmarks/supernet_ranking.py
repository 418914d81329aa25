"""Claim 2c, which score ranks: trained supernets against networks trained from scratch.

    python -m benchmarks.supernet_ranking [--quick] [--searches DIR ...] [--trained DIR] [--min-seeds N]
        [--threads T] [--no-write]

The evolution (``spnasc search --method evolution``) picks the network its supernet scores best.
This benchmark asks how well those scores order networks as training them does. It takes

- trained supernets: the ``checkpoint.pt`` of finished searches (default: every
  ``search-evolution-s*`` of ``benchmarks.search_quality``'s full runs), each rebuilt from its
  checkpoint exactly as the search left it;
- the truth: every network ``benchmarks.search_quality`` trained from scratch with at least
  ``--min-seeds`` training seeds (default: its default SGD recipe), their mean top-1 on the
  official test set;

scores every network with each supernet exactly as that search's selection scored candidates
(:func:`spnas_dsl.search.selection.selection_scorer`: inherited weights, BN re-estimated on the
same 20 training batches, the same held-out training images), and prints, per supernet, the
Spearman correlation of the truth with the supernet's top-1 and with its held-out cross-entropy,
and the trained top-1 of the network each score would pick among them; beside it, the same for
two scores that need no supernet (parameters, multiply-adds), and the truth's own noise.

Nothing is trained here: a run takes about a minute per supernet (``--quick``: the first two).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from benchmarks import _results as R

SECTION = "supernet_ranking"
TITLE = "Claim 2c: which score of a trained supernet ranks networks as training them does"


def default_searches() -> list[Path]:
    """The evolution searches of search_quality's full runs, one per distinct supernet (runs whose
    settings differ only in how they select, e.g. two protocols, trained the same supernet)."""
    root = R.RUNS / "search_quality" / "searches"
    seen, searches = set(), []
    for folder in sorted(p.parent for p in root.glob("full-*/search-evolution-s*/checkpoint.pt")):
        try:
            config = json.loads((folder / "search.json").read_text())["config"]
        except (OSError, ValueError, KeyError):
            continue
        key = json.dumps({k: v for k, v in config.items() if k != "space"}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            searches.append(folder)
    return searches


def default_trained() -> Path:
    """The folder of the networks ``benchmarks.search_quality`` trains with its full-scale defaults."""
    from benchmarks.search_quality import DEFAULT_BATCH, DEFAULT_TRAIN_OPTIMIZER, SCALES, trained_dir

    full = SCALES["full"]
    return trained_dir(argparse.Namespace(train_epochs=full["train_epochs"], subset=full["subset"],
                                          val_subset=full["val_subset"], batch_size=DEFAULT_BATCH,
                                          train_optimizer=DEFAULT_TRAIN_OPTIMIZER))


def read_truth(folder: Path, min_seeds: int) -> dict[str, dict]:
    """``{choices slug: {"accs", "mean", "params", "macs"}}`` of the networks trained with seeds 0..min_seeds-1."""
    runs: dict[str, dict[int, dict]] = {}
    for metrics in folder.glob("*-t*/metrics.json"):
        slug, seed = metrics.parent.name.rsplit("-t", 1)
        try:
            runs.setdefault(slug, {})[int(seed)] = json.loads(metrics.read_text())
        except (ValueError, OSError):  # not a training run's folder, or a run cut off while writing
            continue
    truth = {}
    for slug, by_seed in sorted(runs.items()):
        if all(t in by_seed for t in range(min_seeds)):
            ms = [by_seed[t] for t in range(min_seeds)]
            accs = [100 * m["top1"] for m in ms]
            truth[slug] = {"accs": accs, "mean": statistics.fmean(accs), "params": ms[0]["parameters"],
                           "macs": ms[0]["multiply_adds"]}
    return truth


def truth_noise(truth: dict[str, dict]) -> tuple[float, float]:
    """(spread of the networks' means, noise of one mean): the network x seed residual of
    :func:`benchmarks.search_quality.noise_of` over the square root of the seeds."""
    from benchmarks.search_quality import noise_of

    rows = [t["accs"] for t in truth.values()]
    _pooled, residual, _seed_means = noise_of(rows)
    return statistics.stdev(t["mean"] for t in truth.values()), residual / math.sqrt(len(rows[0]))


def score_with(search: Path, slugs: list[str]) -> tuple[dict, dict[str, tuple[float, float]], float]:
    """(the search's config, {slug: (supernet top-1 %, held-out CE)}, seconds) for the networks of ``slugs``
    that are in the search's space."""
    from spnas_dsl import training
    from spnas_dsl.latency.graph import as_option
    from spnas_dsl.search.budget import Pricer
    from spnas_dsl.search.config import BN_RECALIBRATION_BATCHES
    from spnas_dsl.search.loop import load_resume
    from spnas_dsl.search.selection import selection_scorer
    from spnas_dsl.search.setup import prepare

    cfg, state = load_resume(search)
    info = training.setup("cpu")
    cfg.device = "cpu"
    s = prepare(cfg, info, state)
    scorer = selection_scorer(s, selection_images=cfg.selection_images, bn_batches=BN_RECALIBRATION_BATCHES)
    options = Pricer(s.space, s.graph).options
    layers = sorted(options)
    started = time.perf_counter()
    scores = {}
    for slug in slugs:
        parts = slug.split("_")
        if len(parts) != len(layers):
            continue
        decisions = {i: as_option(p) for i, p in zip(layers, parts)}
        if any(decisions[i] not in options[i] for i in layers):
            continue
        acc, ce = scorer(decisions)
        scores[slug] = (100 * acc, ce)
    return cfg.to_dict(), scores, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    from spnas_dsl.targets.fit import spearman

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    R.common_options(parser)
    parser.add_argument("--searches", nargs="+", type=Path, default=None,
                        help="search folders with a checkpoint.pt (default: search_quality's evolution searches)")
    parser.add_argument("--trained", type=Path, default=None,
                        help="folder of trained networks <choices>-t<seed>/metrics.json (default: search_quality's, SGD)")
    parser.add_argument("--min-seeds", type=int, default=3, help="networks trained with at least this many seeds (default 3)")
    a = parser.parse_args(argv)
    if a.min_seeds < 2:
        parser.error("--min-seeds must be >= 2 (the truth's noise is measured between seeds)")
    R.set_threads(a.threads)
    searches = a.searches or default_searches()
    if a.quick:  # nothing is trained here: quick scores fewer supernets
        searches = searches[:2]
    trained = a.trained or default_trained()
    missing = [str(p) for p in searches if not (p / "checkpoint.pt").is_file()]
    if not searches or missing:
        sys.exit(f"supernet_ranking: no search checkpoint in {', '.join(missing) or 'runs/benchmarks/search_quality'}: "
                 "run python -m benchmarks.search_quality first")
    truth = read_truth(trained, a.min_seeds)
    if len(truth) < 5:
        sys.exit(f"supernet_ranking: {len(truth)} networks trained with {a.min_seeds} seeds in {trained}; need 5")
    slugs = sorted(truth)
    spread, noise = truth_noise(truth)

    def pick(score: dict[str, float]) -> float:
        return truth[max(score, key=score.get)]["mean"]

    from spnas_dsl.errors import SpnasError

    rows, by_top1, by_ce, pick_top1, pick_ce = [], [], [], [], []
    for search in searches:
        try:
            cfg, scores, seconds = score_with(search, slugs)
        except SpnasError as exc:  # a corrupt or foreign checkpoint, a missing data set: one line
            sys.exit(f"supernet_ranking: {search}: {exc}")
        names = sorted(scores)
        if len(names) < 5:
            print(f"[{search.name}] only {len(names)} of the trained networks are in its space: skipped")
            continue
        t = [truth[n]["mean"] for n in names]
        top1 = {n: scores[n][0] for n in names}
        neg_ce = {n: -scores[n][1] for n in names}
        r1, rc = spearman([top1[n] for n in names], t), spearman([neg_ce[n] for n in names], t)
        by_top1.append(r1)
        by_ce.append(rc)
        pick_top1.append(pick(top1))
        pick_ce.append(pick(neg_ce))
        label = f"{search.parent.name}/{search.name}"
        how = f"{cfg['epochs']} epochs, {cfg['optimizer']}, seed {cfg['seed']}"
        print(f"[{label}] {len(names)} networks scored in {seconds:.0f} s: Spearman top-1 {r1:+.2f}, CE {rc:+.2f}")
        rows.append([f"`{label}` ({how})", len(names), f"{r1:+.2f}", f"{rc:+.2f}", f"{pick(top1):.2f}",
                     f"{pick(neg_ce):.2f}"])
    if not rows:
        sys.exit("supernet_ranking: no supernet could score the trained networks")
    t_all = [truth[n]["mean"] for n in slugs]
    for label, key in (("parameters (no supernet)", "params"), ("multiply-adds (no supernet)", "macs")):
        score = {n: float(truth[n][key]) for n in slugs}
        rows.append([label, len(slugs), f"{spearman([score[n] for n in slugs], t_all):+.2f}", "", f"{pick(score):.2f}",
                     ""])
    mean = statistics.fmean
    better = sum(c > t for c, t in zip(by_ce, by_top1))
    table = R.md_table(["supernet (search)", "networks", "Spearman: supernet top-1", "Spearman: supernet -CE",
                        "trained top-1 of its top-1 pick", "trained top-1 of its CE pick"], rows)
    summary = (f"Over the {len(by_ce)} supernets: Spearman {mean(by_top1):+.2f} (top-1) against {mean(by_ce):+.2f} "
               f"(held-out cross-entropy); the cross-entropy ranked better in {better} of {len(by_ce)}. The network "
               f"each would pick among these: {mean(pick_top1):.2f} % (top-1) and {mean(pick_ce):.2f} % (CE) on "
               f"average, against {mean(t_all):.2f} % for the mean network and {max(t_all):.2f} % for the best. "
               f"The truth: {len(slugs)} networks' mean top-1 over {a.min_seeds} training seeds spread by "
               f"{spread:.2f} points, each carrying about {noise:.2f} points of its own noise: the truth itself is "
               f"nearly as noisy as the differences it ranks, which caps every coefficient here well below 1.")
    notes = ("**Reading it.** The networks are those claim 2 trained (random networks of the band, the cheap "
             "baselines, the networks both methods found, with and without 8-epoch supernets), so some were picked "
             "by these supernets: a supernet's ranking of its own picks is not independent of it. With about 25 "
             "networks a Spearman coefficient carries about 0.2 of sampling error; compare the two scores of the "
             "same supernet (paired), not supernets with each other.")
    body = R.section_header(TITLE, R.command_line("benchmarks.supernet_ranking", argv), a.threads,
                            [(f"truth: `{R.rel(trained)}` "
                              f"({len(slugs)} networks trained with {a.min_seeds} seeds each, top-1 on 10,000 test "
                              "images)")])
    R.publish(SECTION, body + "\n" + table + "\n\n" + summary + "\n\n" + notes + "\n", a.no_write)


if __name__ == "__main__":
    main()
