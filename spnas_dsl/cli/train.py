"""spnasc train ARCH --data SPEC: train a concrete network (from scratch or from a search's supernet)."""

from __future__ import annotations

import os
import sys

from spnas_dsl.cli.options import nonnegative_float, nonnegative_int, out_folder, positive_float, positive_int, seed
from spnas_dsl.errors import SpnasError

# Options with a value, in the order they are passed on to --nproc workers: (flag, dest).
_VALUE_OPTIONS = [
    ("--data", "data"), ("--data-dir", "data_dir"), ("--epochs", "epochs"), ("--batch-size", "batch_size"),
    ("--lr", "lr"), ("--optimizer", "optimizer"), ("--warmup-epochs", "warmup_epochs"),
    ("--image-size", "image_size"), ("--subset", "subset"), ("--val-subset", "val_subset"), ("--seed", "seed"),
    ("--init-from", "init_from"),
    ("--out", "out"), ("--resume", "resume"), ("--device", "device"), ("--checkpoint-minutes", "checkpoint_minutes"),
    ("--bn-recalibrate", "bn_recalibrate"), ("--workers", "workers"),
]


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a concrete network (from scratch, or fine-tune from a search's supernet)",
        description="Train a concrete network (a .spnas file with one candidate per layer) and write, in --out:\n"
        "  model.safetensors  the weights (state dict, BN statistics included)\n"
        "  arch.spnas         the network trained, canonical\n"
        "  metrics.json       held-out top-1/top-5, per-epoch history, settings, wall time\n"
        "  checkpoint.pt      for --resume;  tensorboard/  TensorBoard logs\n"
        "Default recipe (MnasNet's): RMSProp decay 0.9 momentum 0.9 eps 1e-3, lr 0.016*B/256 decayed x0.97\n"
        "every 2.4 epochs, label smoothing 0.1, weight decay 1e-5 except BN/biases; --optimizer sgd: SGD +\n"
        "cosine. See docs/train.md.",
        epilog="examples:\n"
        "  spnasc train net.spnas --data fashion-mnist --epochs 3\n"
        "  spnasc train net.spnas --data fashion-mnist --init-from runs/search-x --epochs 2\n"
        "  spnasc train --resume runs/train-net-20250101-120000 --epochs 6\n"
        "  spnasc train net.spnas --data synthetic --nproc 2     # 2 processes, gloo (or torchrun ...)",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument("arch", nargs="?", metavar="ARCH", help="the concrete network (.spnas); optional with --resume")
    p.add_argument("--data", metavar="SPEC",
                   help="fashion-mnist | imagefolder:PATH | synthetic[:N] (required unless --resume)")
    p.add_argument("--data-dir", metavar="DIR", help="where the data set's files are (Fashion-MNIST: default "
                   "/usr/share/datasets/fashion-mnist)")
    p.add_argument("--epochs", type=positive_int, metavar="N", help="epochs to train (default 10; with --resume: the new total)")
    p.add_argument("--batch-size", type=positive_int, metavar="B", help="global batch size, over all processes (default 128)")
    p.add_argument("--lr", type=positive_float, metavar="LR",
                   help="peak learning rate (default 0.016*B/256 for rmsprop, 0.1*B/256 for sgd)")
    p.add_argument("--optimizer", choices=["rmsprop", "sgd"], help="rmsprop (default, MnasNet recipe) or sgd (+ cosine)")
    p.add_argument("--warmup-epochs", type=nonnegative_float, metavar="W", help="linear lr warm-up epochs (default 0)")
    p.add_argument("--image-size", type=positive_int, metavar="S",
                   help="train at S x S (default: the arch's input size; arch.spnas then records SxS)")
    p.add_argument("--subset", type=positive_int, metavar="N", help="train on N images (a seeded random choice); the "
                   "held-out split is cut to max(N/5, 1000) images")
    p.add_argument("--val-subset", type=positive_int, metavar="N",
                   help="evaluate on N held-out images (a seeded random choice; default: all of them, or "
                   "max(subset / 5, 1000) with --subset)")
    p.add_argument("--seed", type=seed, metavar="S", help="seed of the weights, batch order and subsets (default 0)")
    p.add_argument("--init-from", metavar="SEARCH_DIR",
                   help="start from the weights of a 'spnasc search' output folder's supernet (the arch must be a "
                   "network of that search's space)")
    p.add_argument("--out", metavar="DIR", type=out_folder,
                   help="output folder, new or empty (default runs/train-<name>-<time>/)")
    p.add_argument("--force", action="store_true", default=None,
                   help="start a new run in a non-empty --out: removes the previous run's files (checkpoint.pt, "
                   "model.safetensors, arch.spnas, metrics.json, tensorboard/) and keeps any others")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint "
                   "(its settings are reused; --epochs may raise the total)")
    p.add_argument("--nproc", type=positive_int, metavar="N", help="run N data-parallel processes on this machine (gloo on "
                   "CPU, NCCL on GPUs); under torchrun leave it out")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    p.add_argument("--checkpoint-minutes", type=nonnegative_float, metavar="M",
                   help="also checkpoint mid-epoch every M minutes (default 10; 0: at epoch ends only)")
    p.add_argument("--bn-recalibrate", type=nonnegative_int, metavar="N",
                   help="before each held-out evaluation, re-estimate the BN statistics on N training images "
                   "(precise BN; default 1024; 0: keep the running averages)")
    p.add_argument("--workers", type=nonnegative_int, metavar="N",
                   help="data loader processes for image folders (default: up to 4, one per core available)")
    p.add_argument("--quiet", "-q", action="store_true", default=None,
                   help="no progress bar: a summary line every 50 steps and per epoch")
    p.set_defaults(run=run)


def worker_argv(args) -> list[str]:
    """The command line of one ``--nproc`` worker: the same options, without ``--nproc``."""
    argv = ["--debug"] if getattr(args, "debug", False) else []
    argv.append("train")
    if args.arch is not None:
        argv.append(args.arch)
    for flag, dest in _VALUE_OPTIONS:
        value = getattr(args, dest)
        if value is not None:
            argv += [flag, str(value)]
    if args.quiet:
        argv.append("--quiet")
    if args.force:
        argv.append("--force")
    return argv


def _given(args) -> dict:
    """The settings passed on the command line (None where left out)."""
    return {
        "data": args.data, "data_dir": args.data_dir, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "optimizer": args.optimizer, "warmup_epochs": args.warmup_epochs,
        "image_size": args.image_size, "subset": args.subset, "val_subset": args.val_subset,
        "seed": args.seed, "init_from": args.init_from,
        "device": args.device, "quiet": args.quiet, "checkpoint_minutes": args.checkpoint_minutes,
        "bn_recalibrate": args.bn_recalibrate, "workers": args.workers,
    }


def run(args) -> int:
    from spnas_dsl.errors import UsageError

    if args.nproc is not None and args.nproc != 1:
        from spnas_dsl.training.distributed import launch_local

        if args.resume is None and args.out is not None:  # one message, before N processes start
            from spnas_dsl.training.rundir import check_out

            check_out(args.out, "train", force=bool(args.force))
        if args.arch is not None:  # the commonest mistakes, reported once before starting N processes
            from spnas_dsl.compiler.network import require_concrete
            from spnas_dsl.parser import load

            network = load(args.arch)
            require_concrete(network)
        if args.out is None and args.resume is None:  # all ranks must write to (and agree on) one folder
            from spnas_dsl.training.rundir import default_out_dir

            if args.arch is None:
                raise UsageError("give an arch (.spnas file) to train, or --resume DIR")
            args.out = str(default_out_dir("train", network.name))
        return launch_local(args.nproc, worker_argv(args))

    try:
        return _train(args)
    except SpnasError as exc:
        from spnas_dsl.training.distributed import QUIET_RANK_ENV

        if os.environ.get(QUIET_RANK_ENV) and not args.debug:
            return exc.exit_code  # a --nproc worker other than rank 0: rank 0 reports the error
        raise


def _train(args) -> int:
    import time
    from pathlib import Path

    from spnas_dsl.errors import UsageError
    from spnas_dsl.train import TrainSettings, train

    given = _given(args)
    if args.resume is not None:
        if args.init_from is not None:
            raise UsageError("--init-from starts a new run; it cannot be combined with --resume")
        if args.out is not None and Path(args.out) != Path(args.resume):
            raise UsageError("--resume DIR writes into DIR; leave out --out")
        if args.force:
            raise UsageError("--force starts a new run in --out; --resume continues the one in its folder")
        start = time.monotonic()
        result = train(args.arch, resume=args.resume, resume_overrides=given)
    else:
        if args.data is None:
            raise UsageError("--data SPEC is required (fashion-mnist | imagefolder:PATH | synthetic)")
        settings = TrainSettings(**{k: v for k, v in given.items() if v is not None})
        start = time.monotonic()
        result = train(args.arch, settings, out=args.out, force=bool(args.force))
    from spnas_dsl.training.distributed import env_world

    world = env_world()
    if world is None or world[0] == 0:
        print(f"{result.out_dir}: top-1 {result.top1:.2%}, top-5 {result.top5:.2%} on "
              f"{result.metrics['held_out_images']} held-out images after {result.metrics['epochs']} epochs "
              f"({time.monotonic() - start:.0f}s)", file=sys.stdout)
    return 0
