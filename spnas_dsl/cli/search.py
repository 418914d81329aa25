"""spnasc search SPACE --target NAME: Single-Path NAS of a .spnas space (see docs/search.md)."""

from __future__ import annotations

import os

from spnas_dsl.cli.options import (
    nonnegative_float,
    nonnegative_int,
    open_fraction,
    out_folder,
    positive_float,
    positive_int,
    seed,
)
from spnas_dsl.targets.registry import DEFAULT_TARGET

# Options that decide the result: with --resume they must match the saved run (or be left out).
_RESULT_OPTIONS = {
    "target": "target", "data": "data", "data_dir": "data_dir", "epochs": "epochs", "warmup_epochs": "warmup_epochs",
    "lambda_": "lambda_", "latency_budget": "latency_budget", "batch_size": "batch_size", "lr": "lr",
    "optimizer": "optimizer", "image_size": "image_size", "subset": "subset", "val_subset": "val_subset",
    "val_fraction": "val_fraction", "seed": "seed", "checkpoint_every": "checkpoint_every", "log_every": "log_every",
    "threshold_travel": "threshold_travel", "method": "method", "budget_floor": "budget_floor",
    "evaluations": "evaluations", "budget_percentile": "budget_percentile",
}


def register(sub) -> None:
    p = sub.add_parser(
        "search",
        help="Single-Path NAS: search a space for a target's latency",
        description="Train the space's single-path supernet (weights and decision thresholds together, one "
        "optimizer) with loss = CE + lambda * 1000 * ln(latency_ms) on the target's lookup table, then write the found "
        "network as arch.spnas, with search.json, plots, TensorBoard logs and a checkpoint, in --out. "
        "See docs/search.md.",
    )
    p.add_argument("space", metavar="SPACE", nargs="?", help=".spnas search space (not needed with --resume)")
    p.add_argument("--target", help=f"latency target (see 'spnasc targets') or a table .json (default: {DEFAULT_TARGET})")
    p.add_argument("--data", metavar="SPEC",
                   help="fashion-mnist (default), imagefolder:PATH (ImageNet layout), synthetic[:N]")
    p.add_argument("--data-dir", metavar="DIR", help="folder of the Fashion-MNIST IDX files")
    p.add_argument("--epochs", type=positive_int, help="epochs of the search (default 8, as the official recipe)")
    p.add_argument("--warmup-epochs", type=nonnegative_float,
                   help="epochs with lambda 0 and indicator dropout first (default 5/8 of --epochs)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--lambda", dest="lambda_", type=nonnegative_float, metavar="L",
                   help="latency weight: loss = CE + L * 1000 * ln(latency_ms), the official scaling (default 0.02)")
    g.add_argument("--latency-budget", type=_budget, metavar="MS|P%",
                   help="the found network's predicted latency: at most MS and at least --budget-floor * MS; or P%%: "
                   "the P-th percentile of the space's latencies on the target (portable between machines)")
    p.add_argument("--method", choices=["evolution", "paper"],
                   help="'paper': the paper's recipe (weights and thresholds trained together, the network read "
                   "off the thresholds; the default without a budget); 'evolution' (the default with a budget): "
                   "every step trains a random sub-network, then an evolutionary search of the budget band scores "
                   "networks with the supernet's weights (docs/search.md)")
    p.add_argument("--budget-floor", type=positive_float, metavar="F",
                   help="with --latency-budget: the written network is at least F * MS (default 0.98)")
    p.add_argument("--evaluations", type=positive_int, metavar="N",
                   help="--method evolution: networks scored with inherited weights (default 48)")
    p.add_argument("--batch-size", type=positive_int, metavar="B", help="global batch size (default 128)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default 0.016 * B / 256 for rmsprop, 0.1 * B / 256 for sgd)")
    p.add_argument("--optimizer", choices=["rmsprop", "sgd"],
                   help="rmsprop (official: TF-style, exponential decay) or sgd (Nesterov, cosine)")
    p.add_argument("--threshold-travel", type=positive_float, metavar="T",
                   help="how far (in weight-norm units) a threshold can move over the latency phase: its constant "
                   "lr is T / latency-phase steps, with normalised steps (default 10; see docs/search.md)")
    p.add_argument("--official-thresholds", action="store_true",
                   help="optimise the thresholds exactly as the weights (the official recipe); their gradients "
                   "vanish while norms are far above them, so decisions barely move in short searches")
    p.add_argument("--image-size", type=positive_int, metavar="S",
                   help="train at SxS (a proxy; latency is still priced at the space's declared input)")
    p.add_argument("--subset", type=positive_int, metavar="N", help="use N training images (a seeded random choice)")
    p.add_argument("--val-subset", type=positive_int, metavar="N",
                   help="held-out images to evaluate (default: all, or max(N/5, 1000) with --subset)")
    p.add_argument("--val-fraction", type=open_fraction, metavar="F",
                   help="hold out this fraction of the training images instead of the data set's own held-out split")
    p.add_argument("--seed", type=seed, help="random seed (default 0): init, data order, indicator dropout")
    p.add_argument("--out", metavar="DIR", type=out_folder,
                   help="output folder, new or empty (default runs/<space>-<target>-<date>-<time>)")
    p.add_argument("--force", action="store_true",
                   help="start a new search in a non-empty --out: removes the previous run's files (arch.spnas, "
                   "search.json, checkpoint.pt, plots, tensorboard/) and keeps any others")
    p.add_argument("--resume", metavar="DIR", help="continue the search saved in DIR (its checkpoint.pt)")
    p.add_argument("--nproc", type=positive_int, metavar="N", help="run N data-parallel processes on this machine")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    p.add_argument("--workers", type=nonnegative_int, metavar="N",
                   help="data loader processes for image folders (default: up to 4, one per core available)")
    p.add_argument("--checkpoint-every", type=positive_int, metavar="STEPS", help="mid-epoch checkpoint interval (default 100)")
    p.add_argument("--log-every", type=positive_int, metavar="STEPS", help="history / log interval in steps (default 20)")
    p.add_argument("--quiet", action="store_true", help="no progress bar: plain log lines")
    p.set_defaults(run=run)


class _Percentile(float):
    """``--latency-budget 40%``: a percentile of the space's latencies, resolved on the target's table."""


def _budget(text: str) -> float:
    import argparse

    try:
        value = _Percentile(text[:-1]) if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a latency in ms or a percentile like 40%, got '{text}'") from None
    return value if isinstance(value, _Percentile) else positive_float(text)  # ms: finite and > 0


def _split_budget(args) -> None:
    """``--latency-budget P%`` -> ``budget_percentile``; a plain number stays ``latency_budget`` (ms)."""
    args.budget_percentile = None
    if isinstance(args.latency_budget, _Percentile):
        args.budget_percentile, args.latency_budget = float(args.latency_budget), None


def _config(args):
    from pathlib import Path

    from spnas_dsl.errors import UsageError
    from spnas_dsl.search import SearchConfig, load_resume

    _split_budget(args)
    if args.resume:
        if args.force:
            raise UsageError("--force starts a new search in --out; --resume continues the one in its folder")
        cfg, state = load_resume(args.resume)
        if args.space and Path(args.space).resolve() != Path(cfg.space).resolve():
            raise UsageError(f"--resume {args.resume} continues a search of {cfg.space}, not {args.space}")
        for opt, name in _RESULT_OPTIONS.items():
            given = getattr(args, opt, None)
            if given is not None and given != getattr(cfg, name):
                flag = "--" + opt.rstrip("_").replace("_", "-")
                raise UsageError(f"{flag} {given} differs from the resumed run's {getattr(cfg, name)}: "
                                 f"--resume continues the saved search with its own settings")
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise UsageError("--out and --resume name different folders; --resume writes into its own folder")
        if args.device:
            cfg.device = args.device
        if args.workers is not None:
            cfg.workers = args.workers
        return cfg, state, args.resume
    if not args.space:
        raise UsageError("give a SPACE to search (or --resume DIR)")
    if args.out:
        from spnas_dsl.training.rundir import check_out

        check_out(args.out, "search", force=args.force)  # before anything is loaded: nothing lost, nothing waited for
    try:
        text = Path(args.space).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        from spnas_dsl.parser import load

        load(args.space)  # raises the parser's located error for a missing / unreadable file
        raise
    values = {name: getattr(args, opt) for opt, name in _RESULT_OPTIONS.items() if getattr(args, opt) is not None}
    if args.official_thresholds:
        if args.threshold_travel is not None:
            raise UsageError("--official-thresholds and --threshold-travel are alternatives")
        values.update(threshold_travel=None)
    for opt in ("device", "workers"):
        if getattr(args, opt) is not None:
            values[opt] = getattr(args, opt)
    return SearchConfig(space=args.space, space_text=text, **values), None, args.out


def run(args) -> int:
    from spnas_dsl.errors import SpnasError
    from spnas_dsl.training.distributed import QUIET_RANK_ENV, launch_local

    if args.nproc is not None and args.nproc > 1:
        if args.out and not args.resume:  # one message, before N processes start
            from spnas_dsl.training.rundir import check_out

            check_out(args.out, "search", force=args.force)
        return launch_local(args.nproc, _child_argv(args))
    try:
        return _run(args)
    except SpnasError:
        if os.environ.get(QUIET_RANK_ENV) and not args.debug:
            return 1  # rank 0 of the same --nproc launch reports the error
        raise


def _run(args) -> int:
    from spnas_dsl.search import run_search

    cfg, state, out = _config(args)
    result = run_search(cfg, out_dir=out, resume=state, quiet=args.quiet, force=args.force)
    if result is None:  # ranks other than 0
        return 0
    print()
    print(result.text, end="")
    print()
    print(f"predicted latency: {result.latency_ms:.4g} ms on {cfg.target}"
          + (f" (budget {cfg.latency_budget:g} ms)" if cfg.latency_budget is not None else ""))
    print(f"held-out accuracy of the supernet: {result.accuracy:.2%}")
    print(f"output: {result.out_dir}/ (arch.spnas, search.json, *.png, tensorboard/, checkpoint.pt)")
    return 0


def _child_argv(args) -> list[str]:
    """The command line each of the ``--nproc`` processes runs: this one, without ``--nproc``, with
    ``--out`` fixed here so that every process agrees on the folder."""
    from spnas_dsl.search import default_out_dir

    argv = (["--debug"] if args.debug else []) + ["search"] + ([args.space] if args.space else [])
    out = args.out
    if out is None and not args.resume and args.space:
        out = str(default_out_dir(args.space, args.target or DEFAULT_TARGET))
    options = {opt: getattr(args, opt, None) for opt in _RESULT_OPTIONS if opt != "budget_percentile"} | {
        "out": out, "resume": args.resume, "device": args.device, "workers": args.workers}
    for opt, value in options.items():
        if value is not None:
            text = f"{float(value):g}%" if isinstance(value, _Percentile) else str(value)
            argv += ["--" + opt.rstrip("_").replace("_", "-"), text]
    flags = {"--quiet": args.quiet, "--official-thresholds": args.official_thresholds, "--force": args.force}
    return argv + [flag for flag, given in flags.items() if given]
