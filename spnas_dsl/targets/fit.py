"""Fitting a target table to whole-network latencies (``spnasc lut fit``), and scoring a table on them.

The model is the latency graph's own: a network's latency is a constant (the stem, the head and
the fixed layers, one fixed group of the table) plus one cost per searched layer and option
(an entry keyed by the option's signature at that layer's position); an identity skip costs 0,
the reference level of its layer. The costs are fitted by ridge-regularised least squares
(the constant is not penalised) with costs kept >= 0: a cost that comes out negative is set to
0 and the rest refitted, until none is. The ridge pulls each cost towards a **prior**, not
towards 0: a small model of the cost from the option's arithmetic (multiply-adds, parameters,
activations moved, and a per-op overhead, one coefficient set per kind of op: MBConv, grouped
MBConv, projection), least-squares fitted to the same networks first. With few networks, costs
the data barely sees stay near what their size suggests. The regularisation is picked by
K-fold cross-validation from a small grid (the prior refitted inside each fold); the reported
held-out error is that of the chosen setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spnas_dsl.ir import Network, Option
from spnas_dsl.shapes import infer_shapes, option_cost
from spnas_dsl.targets.signature import head_signature, layer_signature, stem_signature

LAMBDAS = (1e-6, 1e-3, 1e-1, 1.0, 10.0, 1e2, 1e3, 1e4, 1e5)


@dataclass(frozen=True)
class Design:
    """The columns of the fit: (layer index, option, signature) of every priced searched option."""

    columns: list[tuple[int, Option, str]]
    fixed_signatures: list[str]
    free_layers: list[list[int]]  # column indices of each layer without an identity option
    features: np.ndarray  # (columns, features) of the prior: arithmetic of each option, by kind


    def matrix(self, networks: list[list[Option]]) -> np.ndarray:
        """0/1 matrix: row n has a 1 in the column of each option network n uses."""
        where = {(i, o): c for c, (i, o, _) in enumerate(self.columns)}
        x = np.zeros((len(networks), len(self.columns)))
        for n, options in enumerate(networks):
            for i, o in enumerate(options):
                c = where.get((i, o))
                if c is not None:
                    x[n, c] = 1.0
        return x


def design(space: Network) -> Design:
    """The fit's columns for ``space``; fixed layers join the stem and head in the constant."""
    shapes = infer_shapes(space)
    columns, fixed, free = [], [stem_signature(space, shapes)], []
    for s in shapes.layers:
        options = s.layer.options
        if len(options) == 1:
            sig = layer_signature(s, options[0])
            if sig is not None:
                fixed.append(sig)
            continue
        priced = [(s.index, o, sig) for o in options if (sig := layer_signature(s, o)) is not None]
        if len(priced) == len(options):
            free.append(list(range(len(columns), len(columns) + len(priced))))
        columns += priced
    by_index = {s.index: s for s in shapes.layers}
    features = np.array([_features(by_index[i], o) for i, o, _ in columns]).reshape(len(columns), len(_KINDS) * 4)
    return Design(columns, fixed + [head_signature(shapes)], free, features)


_KINDS = ("mbconv", "grouped", "proj")


def _features(shape, option: Option) -> list[float]:
    """Prior features of one option: (MACs, params, activations, 1) in the block of its kind."""
    params, macs = option_cost(shape, option)
    (h, w, cin), (oh, ow, cout) = shape.in_hwc, shape.out_hwc
    mid = cin * (option.expansion or 1)
    acts = h * w * cin + oh * ow * cout + (h * w * mid + oh * ow * mid if not option.is_skip else 0)
    kind = "proj" if option.is_skip else ("grouped" if option.groups > 1 else "mbconv")
    row = [0.0] * (len(_KINDS) * 4)
    k = _KINDS.index(kind) * 4
    row[k:k + 4] = [macs / 1e6, params / 1e4, acts / 1e5, 1.0]
    return row


def _prior(x: np.ndarray, y: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Prior costs: ``features @ theta`` with theta least-squares fitted to the networks (>= 0)."""
    if features.size == 0:
        return np.zeros(x.shape[1])
    a = np.hstack([x @ features, np.ones((len(y), 1))])
    theta = np.linalg.lstsq(a, y, rcond=None)[0][:-1]
    return np.maximum(features @ theta, 0.0)


def _fit(x: np.ndarray, y: np.ndarray, lam: float, d: Design, prior: bool = True) -> tuple[np.ndarray, float]:
    """Prior (fitted on these networks), then the ridge around it."""
    w0 = _prior(x, y, d.features) if prior else np.zeros(x.shape[1])
    return _ridge(x, y, lam, d.free_layers, w0)


def _ridge(x: np.ndarray, y: np.ndarray, lam: float, free: list[list[int]] = (),
           w0: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """min ||x w + c - y||^2 + lam ||w - w0||^2 over w >= 0 and c >= 0, refitting without negative costs.

    ``free``: the columns of each layer that has no identity option. One of its options is always
    taken, so shifting its costs by their minimum into ``c`` changes no prediction; that is done
    first, and only a cost still negative (below its layer's identity skip) is set to 0. A
    negative constant (possible on noisy devices) is fixed at 0 and the costs refitted.
    """
    w0 = np.zeros(x.shape[1]) if w0 is None else w0
    w, c = _ridge_active(x, y, lam, free, w0, intercept=True)
    if c < 0:
        w, c = _ridge_active(x, y, lam, free, w0, intercept=False)
    return w, c


def _ridge_active(x, y, lam: float, free, w0: np.ndarray, intercept: bool) -> tuple[np.ndarray, float]:
    keep = np.ones(x.shape[1], dtype=bool)
    w = np.zeros(x.shape[1])
    c = 0.0
    for _ in range(x.shape[1] + 1):
        xa = x[:, keep]
        k = xa.shape[1]
        ones = np.ones((len(y), int(intercept)))
        # w = w0 + delta: [x 1; sqrt(lam) I 0] [delta; c] = [y - x w0; 0] (the constant is not penalised)
        a = np.vstack([np.hstack([xa, ones]), np.hstack([np.sqrt(lam) * np.eye(k), np.zeros((k, int(intercept)))])])
        b = np.concatenate([y - xa @ w0[keep], np.zeros(k)])
        sol = np.linalg.lstsq(a, b, rcond=None)[0]
        w = np.zeros(x.shape[1])
        w[keep], c = w0[keep] + sol[:k], float(sol[k]) if intercept else 0.0
        for cols in free:
            low = w[cols].min()
            w[cols] -= low
            c += low
        if not (w < -1e-12).any():
            break
        keep &= w > -1e-12
        w[~keep] = 0.0
    return np.maximum(w, 0.0), c


def metrics(predicted, measured) -> dict[str, float]:
    """Errors of predictions against measurements: MAPE, RMSE, max error, shares within 5 / 10 %, Spearman."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    err = p - m
    rel = np.abs(err) / np.maximum(m, 1e-9) * 100
    return {
        "networks": len(m),
        "mape_pct": float(rel.mean()),
        "rmse_ms": float(np.sqrt((err**2).mean())),
        "max_error_pct": float(rel.max()),
        "max_abs_error_ms": float(np.abs(err).max()),
        "mean_error_pct": float((err / np.maximum(m, 1e-9)).mean() * 100),
        "within_5_pct": float((rel <= 5).mean() * 100),
        "within_10_pct": float((rel <= 10).mean() * 100),
        "spearman": spearman(p, m),
        "pearson": float(np.corrcoef(p, m)[0, 1]) if len(m) > 1 and p.std() > 0 and m.std() > 0 else float("nan"),
    }


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (what Spearman's coefficient needs)."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=float)
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(a, b) -> float:
    """Spearman's rank correlation (ties averaged); NaN when either side is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=float)), _ranks(np.asarray(b, dtype=float))
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass(frozen=True)
class FitResult:
    """Fitted costs (one per design column), the constant, and how well they do."""

    design: Design
    costs: np.ndarray
    constant_ms: float
    regularisation: float
    folds: int
    cv: dict[str, float]
    fit: dict[str, float]
    residuals_ms: np.ndarray

    def predict(self, networks: list[list[Option]]) -> np.ndarray:
        return self.design.matrix(networks) @ self.costs + self.constant_ms


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(seed).permutation(n), k)


def cross_validate(x: np.ndarray, y: np.ndarray, lam: float, folds: list[np.ndarray], d: Design,
                   prior: bool = True) -> np.ndarray:
    """Held-out predictions of every network (each predicted by the fit without its fold)."""
    pred = np.zeros(len(y))
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        w, c = _fit(x[train], y[train], lam, d, prior)
        pred[test] = x[test] @ w + c
    return pred


def fit_table(space: Network, networks: list[list[Option]], latency_ms, *, folds: int = 5, seed: int = 0,
              lambdas: tuple[float, ...] = LAMBDAS, prior: bool = True) -> FitResult:
    """Fit the additive model to whole-network latencies; ``folds``-fold CV picks the regularisation.

    ``prior=False`` pulls the costs towards 0 instead of towards the arithmetic prior.
    """
    d = design(space)
    x, y = d.matrix(networks), np.asarray(latency_ms, dtype=float)
    k = max(2, min(folds, len(y)))
    split = _folds(len(y), k, seed)
    scored = []
    for lam in lambdas:
        held = cross_validate(x, y, lam, split, d, prior)
        scored.append((metrics(held, y)["mape_pct"], lam, held))
    _, lam, held = min(scored, key=lambda t: (t[0], t[1]))
    w, c = _fit(x, y, lam, d, prior)
    pred = x @ w + c
    return FitResult(d, w, c, lam, k, metrics(held, y), metrics(pred, y), y - pred)


def to_table(result: FitResult, meas, space: Network, *, name: str, description: str, runtime: str,
             references: list[str] | None = None, date: str = "", read_only: bool = True, threads: int = 1,
             source: str | None = None, device: str | None = None):
    """The fitted costs as an ordinary target table, with the fit's full provenance.

    ``device``: the table's device (default: the measurement file's description of it)."""
    from spnas_dsl.targets.table import Entry, FixedGroup, LatencyTable, Provenance

    entries = [Entry(signature=sig, latency_ms=float(max(w, 0.0)), position=i)
               for (i, _, sig), w in zip(result.design.columns, result.costs)]
    group = FixedGroup(signatures=result.design.fixed_signatures, latency_ms=float(result.constant_ms),
                       note="the fit's constant: stem, head and fixed layers together")
    provenance = Provenance(
        method="ridge-regularised least squares, costs >= 0, constant unpenalised; regularisation picked by "
               f"{result.folds}-fold cross-validation (spnasc lut fit)",
        source_file=str(meas.path), source_sha256=meas.sha256, device=meas.device,
        device_description=meas.description, space=space.name, networks=meas.count, units="ms",
        regularisation=float(result.regularisation), cv_folds=result.folds,
        cv={k: float(v) for k, v in result.cv.items()}, fit={k: float(v) for k, v in result.fit.items()},
        residuals_ms=[round(float(r), 6) for r in result.residuals_ms], references=list(references or []),
    )
    source = source or (f"fitted by spnasc lut fit to {meas.count} whole-network latencies of device '{meas.device}' in "
              f"{meas.path.name} (sha256 {meas.sha256[:12]}...); held-out MAPE {result.cv['mape_pct']:.2f} %")
    return LatencyTable(
        name=name, description=description, device=device or meas.description or meas.device, runtime=runtime, threads=threads,
        source=source, date=date, read_only=read_only, entries=entries, fixed_groups=[group], provenance=provenance,
    )
