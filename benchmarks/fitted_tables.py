"""Claim 4b: how good a lookup table fitted from whole-network timings can be (issue 13).

For every device of the measurement file (HELP's 2,000 FBNet networks, 9 devices), the 500
networks of a fixed random split are never fitted on; tables are fitted by ``spnasc lut
fit``'s fit (ridge, costs >= 0, 5-fold CV for the regularisation) on N of the remaining 1,500
networks (N = 50, 100, 200, 500, 1,500; several random draws for N < 1,500) and scored on the
500. Beside them: the best additive table (fitted on all 2,000; its in-sample error is a floor
no additive table beats on these networks) and its 5-fold cross-validated error, and a model
with one extra term per pair of adjacent layers' ops (differentiable in the same indicators;
kept only if it wins on held-out networks).

    .venv/bin/python -m benchmarks.fitted_tables [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import _results as R

MEASUREMENTS = R.REPO / "targets" / "measurements" / "fbnet_cifar100_latency.json"
SPACE = R.REPO / "spaces" / "fbnet_cifar100.spnas"
SIZES = (50, 100, 200, 500, 1500)
TEST = 500


def pair_features(networks, ops: list[str]) -> np.ndarray:
    """One-hot of (layer i's op, layer i+1's op) for each adjacent pair: 21 x 81 columns."""
    index = {o: j for j, o in enumerate(ops)}
    n_ops = len(ops)
    x = np.zeros((len(networks), (len(networks[0]) - 1) * n_ops * n_ops))
    for r, arch in enumerate(networks):
        for i in range(len(arch) - 1):
            x[r, i * n_ops * n_ops + index[str(arch[i])] * n_ops + index[str(arch[i + 1])]] = 1.0
    return x


def fit_pairs(x_pair, residual, lam_pair: float):
    """Ridge of the additive table's residuals on the pair columns; returns the correction's predictor."""
    k = x_pair.shape[1]
    a = np.vstack([x_pair, np.sqrt(lam_pair) * np.eye(k)])
    w = np.linalg.lstsq(a, np.concatenate([residual, np.zeros(k)]), rcond=None)[0]
    return lambda xp: xp @ w


def main(argv: list[str] | None = None) -> None:
    """Run the study, print the table, write its section of docs/results.md."""
    from spnas_dsl.parser import load
    from spnas_dsl.targets import DEVICE_KEYS
    from spnas_dsl.targets.fit import cross_validate, design, fit_table, metrics
    from spnas_dsl.targets.measurements import load_measurements, resolve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    R.common_options(parser)
    parser.add_argument("--draws", type=int, default=None, help="random draws per size below 1,500 (default 5; quick 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the draws")
    a = parser.parse_args(argv)
    draws = a.draws or (2 if a.quick else 5)
    devices = list(DEVICE_KEYS.items())
    if a.quick:
        devices = [d for d in devices if d[0] in ("pixel3", "pixel2", "xeon-gold-6226")]
    started = time.perf_counter()
    space = load(SPACE)
    d = design(space)
    rng = np.random.default_rng(a.seed)
    order = None
    rows, pair_rows, goals = [], [], []
    for name, key in devices:
        meas = load_measurements(MEASUREMENTS, key)
        nets = resolve(space, meas)
        y = meas.latency_ms
        if order is None:
            order = rng.permutation(len(y))
        test, pool = order[:TEST], order[TEST:]
        test_nets = [nets[i] for i in test]
        curve = {}
        for n in SIZES:
            scores = []
            for draw in range(1 if n >= len(pool) else draws):
                pick = pool if n >= len(pool) else np.random.default_rng([a.seed, n, draw]).choice(pool, n, replace=False)
                result = fit_table(space, [nets[i] for i in pick], y[pick], seed=draw)
                scores.append(metrics(result.predict(test_nets), y[test]))
            curve[n] = scores
        best = fit_table(space, nets, y)
        x_all = d.matrix(nets)
        cv_all = metrics(cross_validate(x_all, y, best.regularisation, [np.array(f) for f in
                                        np.array_split(np.random.default_rng(a.seed).permutation(len(y)), 5)],
                                        d), y)
        floor = metrics(best.predict(test_nets), y[test])
        row = [f"`{name}` ({key})", f"{float(y.min()):.3g}-{float(y.max()):.3g}"]
        for n in SIZES:
            mape = [s["mape_pct"] for s in curve[n]]
            m, sd = R.mean_std(mape)
            row.append(f"{m:.2f}" + (f" ± {sd:.2f}" if len(mape) > 1 else ""))
        worst = max(s["max_abs_error_ms"] for s in curve[SIZES[-1]])
        exact_from = next((n for n in SIZES if all(s["max_abs_error_ms"] <= 0.01 for s in curve[n])), None)
        row += [f"{floor['mape_pct']:.2f}", f"{cv_all['mape_pct']:.2f}", f"{curve[1500][0]['within_10_pct']:.1f}",
                f"{curve[1500][0]['spearman']:.3f}", f"{worst:.2g}"]
        rows.append(row)
        gap = R.mean_std([s["mape_pct"] for s in curve[200]])[0] - curve[1500][0]["mape_pct"]
        goals.append((name, gap, exact_from))
        # adjacent-pair model: fitted on the 1,500, scored on the 500, against the additive table
        ops = sorted({str(o) for arch in nets for o in arch})
        pool_nets = [nets[i] for i in pool]
        xp_pool, xp_test = pair_features(pool_nets, ops), pair_features(test_nets, ops)
        inner = np.random.default_rng(a.seed).permutation(len(pool))
        val, fit_idx = inner[:300], inner[300:]
        base = fit_table(space, [pool_nets[i] for i in fit_idx], y[pool][fit_idx])  # additive part, inner fit
        residual = y[pool][fit_idx] - base.predict([pool_nets[i] for i in fit_idx])
        base_val = base.predict([pool_nets[i] for i in val])
        best_pair = None
        for lam_pair in (1.0, 10.0, 100.0, 1000.0, 10000.0):
            correct = fit_pairs(xp_pool[fit_idx], residual, lam_pair)
            err = metrics(base_val + correct(xp_pool[val]), y[pool][val])["mape_pct"]
            if best_pair is None or err < best_pair[0]:
                best_pair = (err, lam_pair)
        full = fit_table(space, pool_nets, y[pool])  # the 1,500-network table, then its pair correction
        correct = fit_pairs(xp_pool, y[pool] - full.predict(pool_nets), best_pair[1])
        pair = metrics(full.predict(test_nets) + correct(xp_test), y[test])
        pair_rows.append([f"`{name}`", f"{curve[1500][0]['mape_pct']:.2f}", f"{pair['mape_pct']:.2f}",
                          f"{best_pair[1]:g}", "yes" if pair["mape_pct"] < curve[1500][0]["mape_pct"] - 0.1 else "no"])
        print(" | ".join(row))
    headers = ["device", "measured ms"] + [f"MAPE % fitted on {n}" for n in SIZES] + [
        "best additive (all 2,000, in-sample) MAPE %", "best additive 5-fold CV MAPE %", "within 10 % (1,500)",
        "Spearman (1,500)", "max abs error ms (1,500)"]
    table = R.md_table(headers, rows, "l" + "r" * (len(headers) - 1))
    pair_table = R.md_table(["device", "additive, 1,500 networks: held-out MAPE %",
                             "additive + adjacent pairs: held-out MAPE %", "pair regularisation", "wins by > 0.1 pt"],
                            pair_rows, "lrrrl")
    goal_lines = [f"`{n}`: table from 200 networks {gap:+.2f} points of mean error vs from 1,500"
                  + (f"; every draw within 0.01 ms on all {TEST} networks from N = {exact} on" if exact else "")
                  + ("" if abs(gap) <= 1 else " (goal: within 1 point; not met)")
                  for n, gap, exact in goals]
    extra = [(f"data: `{MEASUREMENTS.relative_to(R.REPO)}` (HELP's 2,000 FBNet networks; devices as in "
             "`targets/measurements/README.md`)"),
             (f"split: {TEST} networks never fitted on (seed {a.seed}); tables fitted on N of the other 1,500, "
             f"{draws} random draws per N < 1,500 (mean ± sd)"),
             f"total wall time {time.perf_counter() - started:.0f} s"]
    body = R.section_header("Claim 4b: lookup tables fitted from whole-network latencies (issue 13)",
                            R.command_line("benchmarks.fitted_tables", argv), None, extra)
    body += "\n" + table + "\n\n" + "\n".join(f"- {g}" for g in goal_lines) + "\n\n"
    body += "Adjacent-layer terms (one per pair of neighbouring layers' ops, ridge), fitted on the same 1,500:\n\n"
    body += pair_table + "\n\n" + NOTES
    print(table)
    print(pair_table)
    R.publish("fitted_tables", body, a.no_write)


NOTES = """**Reading it.** Error is MAPE on the 500 networks no table was fitted on. The fit is
`spnasc lut fit`'s: ridge around an arithmetic prior (multiply-adds, parameters, activations and
an overhead per kind of op, fitted to the same networks), costs >= 0, regularisation by 5-fold
CV. pixel3, raspi4, fpga and eyeriss are sums of HW-NAS-Bench's per-block tables: a table of
one cost per layer and op plus a constant reproduces them exactly once the networks cover
every (layer, op) often enough; with 50 or 100 networks some are never seen and only the prior
prices them, hence the error there. The phones (whole-ms timings) and the Xeon are not additive: the
best additive table, judged on the very networks it was fitted on, is the floor; the 5-fold
cross-validated figure is what to expect on new networks (the reference data's README reports
8.3 / 6.4 / 11.2 / 10.1 / 3.1 % for pixel2 / galaxy-a50 / galaxy-s7 / essential-ph1 / xeon on
3,000 other networks). The adjacent-pair terms are kept only where the last table says "yes"
(a held-out gain above 0.1 point); where it says "no" everywhere, the shipped tables stay
additive. The shipped tables (`spnasc targets`) are the fits on all 2,000
networks (`tools/fit_device_targets.py`)."""


if __name__ == "__main__":
    main()
