"""Claim 3, kernel subsets (paper Table 2): one 5x5 superkernel network serves its inner 3x3 too.

    python -m benchmarks.kernel_subsets [--quick] [--epochs N] [--subset N] [--seeds N]
        [--sampling layer|network] [--batch-size B] [--threads T] [--no-write]

The paper trains a MobileNetV2 whose depthwise kernels are 5x5 superkernels, the kernel
decision sampled during training, and evaluates the same weights with the inner 3x3 kernels
and with the full 5x5 ones, against separately trained 3x3 and 5x5 networks (Table 2:
73.59 / 74.10 % separate, 73.43 / 73.86 % superkernel). Here, on Fashion-MNIST (the Debian
package's IDX files) and the MobileNetV2-like backbone of ``spaces/fashion_mnist.spnas``
(every searched layer at expansion 6, none skipped; the fixed layers as declared):

- ``3x3 network``: ``lower_to_network`` of the all-k3e6 network, trained alone;
- ``5x5 network``: the all-k5e6 network, trained alone;
- ``superkernel``: the space's single-path supernet (``lower_to_supernet``), where before every
  step ``supernet.select(...)`` picks e6 and a random kernel (3 or 5) for each searched layer
  (``--sampling layer``, default) or one kernel for the whole network (``--sampling network``);
  thresholds are frozen (the decisions are sampled, not learned). It is evaluated by
  ``extract(supernet, all-k3e6)`` and ``extract(supernet, all-k5e6)``: the inner 3x3 crop and the
  full 5x5 kernels of the same weights.

All three use the same recipe (``spnas_dsl.training``: TF-style RMSProp, lr 0.016*B/256 with
the x0.97 / 2.4-epoch decay, label smoothing 0.1, weight decay 1e-5), the same data order
and the same number of steps; before evaluation, every network's BN statistics are
re-estimated on 1,024 training images (the same "precise BN" as ``spnasc train``), then
top-1 is measured on the held-out split (Fashion-MNIST's 10,000 test images, or a seeded part).
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from benchmarks import _results as R

SPACE = R.REPO / "spaces" / "fashion_mnist.spnas"
PAPER = {"3x3 network": 73.59, "5x5 network": 74.10, "superkernel, inner 3x3": 73.43, "superkernel, full 5x5": 73.86}
_FAR_ON = -1e4  # a threshold every norm passes, with a saturated (zero) sigmoid gradient


def backbone(space, kernel: int):
    """The concrete network with every searched layer at (kernel, e6); fixed layers unchanged."""
    from spnas_dsl.ir import Option
    from spnas_dsl.passes import with_options
    from spnas_dsl.shapes import infer_shapes

    options = [Option(kernel=kernel, expansion=6) if s.layer.is_searched else s.layer.options[0]
               for s in infer_shapes(space).layers]
    return with_options(space, options).model_copy(update={"name": f"{space.name}_k{kernel}e6", "comments": ()})


def searched_indices(space) -> list[int]:
    from spnas_dsl.shapes import infer_shapes

    return [s.index for s in infer_shapes(space).layers if s.layer.is_searched]


class KernelSampler:
    """Before each step: e6 in every searched layer, kernel 3 or 5 at random (per layer or per network)."""

    def __init__(self, supernet, indices: list[int], sampling: str, seed: int):
        self.supernet, self.indices, self.sampling = supernet, indices, sampling
        self.rng = random.Random(seed)
        self.counts = {3: 0, 5: 0}

    def __call__(self) -> None:
        from spnas_dsl.ir import Option

        if self.sampling == "network":
            k = self.rng.choice((3, 5))
            kernels = [k] * len(self.indices)
        else:
            kernels = [self.rng.choice((3, 5)) for _ in self.indices]
        for k in kernels:
            self.counts[k] += 1
        self.supernet.select({i: Option(kernel=k, expansion=6) for i, k in zip(self.indices, kernels)})
        with torch.no_grad():  # 'on' thresholds far below every norm: no straight-through gradient either
            for p in self.supernet.threshold_parameters():
                if float(p) < 0:
                    p.fill_(_FAR_ON)


def train(model, data, *, epochs: int, batch_size: int, seed: int, optimizer: str = "rmsprop", before_step=None,
          log=print, name=""):
    """The shared recipe (``optimizer``: spnasc train's rmsprop or sgd); returns seconds.
    ``before_step()`` runs before every step (the sampler)."""
    from spnas_dsl import training
    from spnas_dsl.data import Batches

    recipe = training.Recipe(optimizer=optimizer, batch_size=batch_size)
    optimizer = training.build_optimizer(model, recipe)
    steps_per_epoch = len(Batches(data.train, batch_size, drop_last=True))
    scheduler = training.build_scheduler(optimizer, recipe, steps_per_epoch, epochs)
    criterion = training.loss_function(recipe)
    model.train()
    started = time.perf_counter()
    for epoch in range(epochs):
        total, n = 0.0, 0
        for x, y in Batches(data.train, batch_size, shuffle=True, seed=seed, epoch=epoch, drop_last=True):
            if before_step is not None:
                before_step()
            out = model(x.contiguous(memory_format=torch.channels_last))
            logits = out if isinstance(out, torch.Tensor) else out.logits
            loss = criterion(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total, n = total + loss.item(), n + 1
        log(f"  [{name}] epoch {epoch + 1}/{epochs}: train loss {total / max(n, 1):.4f} "
            f"({time.perf_counter() - started:.0f} s)")
    return time.perf_counter() - started


def accuracy(net, data, seed: int, bn_images: int = 1024) -> float:
    """Top-1 (%) on the held-out split after re-estimating BN statistics on ``bn_images`` training images."""
    from spnas_dsl import training
    from spnas_dsl.data import Batches, subset_indices

    calib = data.train.subset(subset_indices(len(data.train), bn_images, seed + 17), train=False)
    net = net.to(memory_format=torch.channels_last)
    training.precise_bn(net, Batches(calib, 128))
    return 100 * training.evaluate(net, Batches(data.val, 500), ks=(1,))["top1"]


def run_seed(space, data, seed: int, a, variant: tuple[str, str, int], separate: dict | None = None,
             log=print) -> tuple[dict[str, float], dict[str, float], dict]:
    """One seed of one variant (optimizer, sampling): the separate 3x3 and 5x5 networks (taken from
    ``separate`` when an earlier variant with the same optimizer trained them) and the superkernel."""
    from spnas_dsl import training
    from spnas_dsl.compiler.extract import extract
    from spnas_dsl.compiler.network import lower_to_network
    from spnas_dsl.compiler.supernet import lower_to_supernet

    optimizer, sampling, factor = variant
    k3, k5 = backbone(space, 3), backbone(space, 5)
    acc, secs = {}, {}
    if separate is not None:
        acc, secs = dict(separate[0]), dict(separate[1])
    else:
        for name, arch in (("3x3 network", k3), ("5x5 network", k5)):
            training.seed_everything(seed)
            net = lower_to_network(arch).to(memory_format=torch.channels_last)
            secs[name] = train(net, data, epochs=a.epochs, batch_size=a.batch_size, seed=seed, optimizer=optimizer,
                               log=log, name=name)
            acc[name] = accuracy(net, data, seed)
            log(f"  [{name}] top-1 {acc[name]:.2f} %")
    training.seed_everything(seed)
    supernet = lower_to_supernet(space).to(memory_format=torch.channels_last)
    for p in supernet.threshold_parameters():
        p.requires_grad_(False)  # sampled, not learned: not in the optimizer
    sampler = KernelSampler(supernet, searched_indices(space), sampling, seed)
    secs["superkernel"] = train(supernet, data, epochs=a.epochs * factor, batch_size=a.batch_size, seed=seed,
                                optimizer=optimizer, before_step=sampler, log=log, name="superkernel")
    for name, arch in (("superkernel, inner 3x3", k3), ("superkernel, full 5x5", k5)):
        acc[name] = accuracy(extract(supernet, arch), data, seed)
        log(f"  [{name}] top-1 {acc[name]:.2f} %")
    return acc, secs, dict(sampler.counts)


def parse_variants(text: str) -> list[tuple[str, str, int]]:
    """``rmsprop:layer,sgd:network:x2`` -> [("rmsprop", "layer", 1), ("sgd", "network", 2)]: optimizer,
    kernel sampling and how many times the separate networks' epochs the superkernel trains."""
    out = []
    for item in text.split(","):
        optimizer, _, rest = item.strip().partition(":")
        sampling, _, factor = rest.partition(":")
        sampling = sampling or "layer"
        ok = optimizer in RECIPES and sampling in ("layer", "network") and (not factor or factor[1:].isdigit()
                                                                             and factor[0] == "x" and int(factor[1:]) > 0)
        if not ok:
            raise argparse.ArgumentTypeError(f"{item!r}: expected OPTIMIZER[:SAMPLING[:xF]] with OPTIMIZER one of "
                                             f"{', '.join(RECIPES)}, SAMPLING layer or network, F a positive integer")
        out.append((optimizer, sampling, int(factor[1:]) if factor else 1))
    return out


SECTIONS = {
    "kernel_subsets": "Claim 3: kernel subsets, one 5x5 superkernel network vs separate 3x3 and 5x5 networks "
                      "(paper Table 2)",
    "kernel_subsets_steps": "Claim 3b: what closes the superkernel's gap: as many steps per kernel as a separate "
                            "network",
}

RECIPES = {"rmsprop": "spnasc train's default: TF-style RMSProp, lr 0.016*B/256 decayed x0.97 every 2.4 epochs "
                      "(nearly constant over a few epochs)",
           "sgd": "spnasc train --optimizer sgd: SGD with Nesterov momentum, lr 0.1*B/256 on a cosine schedule to zero"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    R.common_options(parser)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per network (default 10; quick 2)")
    parser.add_argument("--subset", type=int, default=None, help="training images (default all 60,000; quick 6000)")
    parser.add_argument("--seeds", type=int, default=None, help="repeats with seeds 0..N-1 (default 2; quick 1)")
    parser.add_argument("--variants", type=parse_variants, default=parse_variants("rmsprop:layer,sgd:layer"),
                        help="training recipes compared side by side, OPTIMIZER[:SAMPLING],... with OPTIMIZER "
                             "rmsprop or sgd and SAMPLING layer (a random kernel per layer each step) or network "
                             "(one kernel for the whole network each step) (default rmsprop:layer,sgd:layer)")
    parser.add_argument("--section", choices=list(SECTIONS), default="kernel_subsets",
                        help="the docs/results.md section written: kernel_subsets (claim 3, the recipes) or "
                             "kernel_subsets_steps (claim 3b, with an xF variant: what closes the gap)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (default the Debian package's)")
    a = parser.parse_args(argv)
    R.set_threads(a.threads)
    a.epochs = a.epochs or (2 if a.quick else 10)
    a.seeds = a.seeds or (1 if a.quick else 2)
    a.subset = a.subset if a.subset is not None else (6000 if a.quick else None)
    started = time.perf_counter()

    from spnas_dsl.data import open_dataset
    from spnas_dsl.parser import parse_text
    from spnas_dsl.shapes import summarize

    space = parse_text(SPACE.read_text(), filename=str(SPACE))
    data = open_dataset("fashion-mnist", space.input.height, space.input.channels, data_dir=a.data_dir,
                        subset=a.subset, val_subset=None if a.subset is None else 10000, seed=0)
    print(f"data: {data.description}")
    results: dict[tuple[str, str], list] = {}  # variant -> per seed (acc, secs, counts)
    separate: dict[tuple[str, int], tuple[dict, dict]] = {}  # (optimizer, seed) -> separate networks' (acc, secs)
    for variant in a.variants:
        results[variant] = []
        for seed in range(a.seeds):
            print(f"{variant[0]}, kernel per {variant[1]}, superkernel x{variant[2]} epochs, seed {seed}:")
            acc, secs, counts = run_seed(space, data, seed, a, variant, separate.get((variant[0], seed)))
            separate.setdefault((variant[0], seed), ({k: acc[k] for k in ("3x3 network", "5x5 network")},
                                                     {k: secs[k] for k in ("3x3 network", "5x5 network")}))
            results[variant].append((acc, secs, counts))

    def label(variant: tuple[str, str]) -> str:
        steps = f", superkernel {variant[2]}x the epochs" if variant[2] > 1 else ""
        return f"{variant[0]}, kernel per {variant[1]}{steps}" if len(a.variants) > 1 else variant[0] + steps

    def pm(values: list[float], signed: bool = False) -> str:
        mean, std = R.mean_std(values)
        return (f"{mean:+.2f}" if signed else f"{mean:.2f}") + (f" \u00b1 {std:.2f}" if len(values) > 1 else "")

    rows = []
    for variant, per_seed in results.items():
        for name, paper in PAPER.items():
            values = [acc[name] for acc, _, _ in per_seed]
            rows.append([label(variant), name, pm(values), ", ".join(f"{v:.2f}" for v in values), f"{paper:.2f}"])
    table = R.md_table(["recipe", "network (evaluated kernels)", "top-1 % (ours, mean \u00b1 std)", "per seed",
                        "top-1 % (paper, ImageNet)"], rows)

    pairs = [("superkernel inner 3x3 - separate 3x3", "superkernel, inner 3x3", "3x3 network", "-0.16"),
             ("superkernel full 5x5 - separate 5x5", "superkernel, full 5x5", "5x5 network", "-0.24"),
             ("separate 5x5 - separate 3x3", "5x5 network", "3x3 network", "+0.51"),
             ("superkernel 5x5 - superkernel 3x3", "superkernel, full 5x5", "superkernel, inner 3x3", "+0.43")]
    gaps = R.md_table(["difference (points)", *(label(v) for v in results), "paper"], [
        [what, *(pm([acc[x] - acc[y] for acc, _, _ in per_seed], signed=True) for per_seed in results.values()), paper]
        for what, x, y, paper in pairs])
    timing = "; ".join(
        f"{label(v)}: " + ", ".join(f"{k} {R.mean_std([s[k] for _, s, _ in per_seed])[0]:.0f} s"
                                    for k in per_seed[0][1])
        for v, per_seed in results.items())
    counts = next(iter(results.values()))[0][2]
    k3 = backbone(space, 3)
    k5 = backbone(space, 5)
    body = R.section_header(
        SECTIONS[a.section],
        R.command_line("benchmarks.kernel_subsets", argv), a.threads,
        [(f"backbone: `{SPACE.relative_to(R.REPO)}` with every searched layer at e6 and no skip (MobileNetV2-like): "
         f"{summarize(k3).params_max:,} parameters with 3x3 kernels, {summarize(k5).params_max:,} with 5x5"),
         (f"data: {data.description}; {a.epochs} epoch(s), batch {a.batch_size}, seeds 0..{a.seeds - 1}; label "
          f"smoothing 0.1; recipes: " + "; ".join(f"`{o}`: {RECIPES[o]}" for o in dict.fromkeys(v[0] for v in a.variants))),
         (f"superkernel: e6 everywhere, a random kernel per layer (or per network) every step ({counts[3]} 3x3 and "
          f"{counts[5]} 5x5 layer-steps for the first variant's seed 0); evaluated through `extract` (inner 3x3 crop "
          f"/ full 5x5) after BN re-estimation on 1,024 training images, like the separate networks; the separate "
          f"networks are trained once per recipe and seed and shared by the variants of that recipe"),
         "training time per network (mean over seeds): " + timing,
         f"total wall time {time.perf_counter() - started:.0f} s"])
    body += "\n" + table + "\n\n" + gaps + "\n\n" + NOTES[a.section]
    R.publish(a.section, body, a.no_write)


PAPER_DIFFERENCES = """**What differs from the paper, and why.** The paper's figures are ImageNet top-1 of a
MobileNetV2 at 224x224 after full training; ours are Fashion-MNIST top-1 of a small
MobileNetV2-like network at 28x28 after a few epochs, where 3x3 and 5x5 kernels are close
and seed-to-seed noise is of the same order as the paper's gaps (0.2-0.5 points), so compare
the signs and sizes of the differences with the std, not the absolute accuracies. The
paper does not say how its kernel choice was sampled while training; here it is a fair coin
per layer (or per network) per step, with the expansion fixed at 6 and no skip. The
superkernel network is evaluated after re-estimating BN statistics for each sub-network
(its BN saw a mixture of 3x3 and 5x5 outputs); the separate networks get the same treatment."""

NOTES = {
    "kernel_subsets": PAPER_DIFFERENCES + """

**Why the superkernel lags.** Not the learning-rate schedule: RMSProp (nearly constant lr) and
SGD annealed to zero leave gaps of the same size. Not the mixing of 3x3 and 5x5 layers in one
network: one kernel for the whole network per step (each evaluated network is then trained
exactly, half of the steps) leaves a gap of the same size within the noise. What is left is
the training each kernel subset gets: with the same number of steps, each of the superkernel's
two networks is trained about half as much as a separate network. Claim 3b measures that
directly: trained for twice the epochs, the superkernel closes the gap.""",
    "kernel_subsets_steps": """The superkernel is trained for F times the separate networks' epochs (`:xF`), so that each
kernel subset gets about as many steps as one separately trained network, against the
separate networks trained the usual number of epochs, with the same recipe and seeds. If the
gaps of claim 3 close here, the superkernel's lag there is its share of the training, not the
weight sharing: one 5x5 superkernel network then serves its inner 3x3 and its full 5x5 network
as well as two separately trained ones, for the cost of training one network twice as long
(the paper's networks were trained to convergence, where that share matters less).

""" + PAPER_DIFFERENCES,
}


if __name__ == "__main__":
    main()
