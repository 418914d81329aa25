"""Single-Path NAS search: train one supernet's weights and decision thresholds together.

The loop reads top to bottom (after nanoGPT's ``train.py``). Run it through the CLI::

    spnasc search spaces/mnasnet.spnas --target pixel1 --optimizer sgd --image-size 32 --subset 5000 \
        --batch-size 64 --epochs 4 --latency-budget 80      # ~8 min on 2 CPU cores (docs/search.md)
    spnasc search spaces/mnasnet.spnas --lambda 0.02 ...                 # a fixed latency weight
    spnasc search --resume runs/mnasnet-pixel1-20250101-120000           # continue a killed run
    spnasc search ... --nproc 2                                          # 2 data-parallel processes
    torchrun --nproc_per_node=8 -m spnas_dsl search ... --data imagefolder:/data/imagenet

The recipe (paper Sec. 3-4 and the official code, scaled to the run's length):

1. Warm-up (the first ``warmup_epochs``, default 5/8 of the search as the official 6255 of
   10008 steps): loss = CE only (lambda = 0), every decision indicator goes through dropout
   (keep probability 0.6, i.e. ``p_drop = 0.4``) so the supernet does not learn as an ensemble.
2. Latency phase: loss = CE + lambda * log(R), R the relaxed latency in ms (paper Eq. 9-12,
   the fixed parts included), no indicator dropout. One optimizer moves the weights and the
   thresholds together; a decision flips when a threshold passes its weight-subset norm.
   ``lambda`` is fixed (``--lambda``) or steered to ``--latency-budget`` (see
   :class:`spnas_dsl.search.control.LambdaController`).
3. The network: ``--method paper`` reads it off the hard indicators (the thresholds' answer);
   with a budget, :func:`spnas_dsl.search.budget.fit_to_budget` then moves it into
   ``[budget_floor * budget, budget]`` both ways. ``--method evolution`` (the default with a
   budget) trains every step a random sub-network (the warm-up for the whole search), then scores
   networks of the band with the supernet's inherited weights (:mod:`spnas_dsl.search.selection`).
   The network is written as ``arch.spnas``.

Scale of lambda: as the official code, the log term is scaled by 1e3: the loss is
``CE + lambda * 1000 * ln(R_ms)``, so lambda values read as the paper's (0.020 gave its
network on ImageNet; the default here). ``--latency-budget`` avoids choosing lambda.

Thresholds: a threshold's gradient is the loss's times ``sigmoid'(norm - t)``, vanishing while
a decision is firmly on, so by default they take normalised steps (their own parameter group,
no momentum), are frozen in the warm-up and then move at most ``threshold_travel`` norm units
over the latency phase (:func:`spnas_dsl.search.control.set_threshold_lr`); ``--official-thresholds`` treats them as
weights. See docs/search.md, "Thresholds", for the measurements behind this.

Determinism and resume: batches are a function of (seed, epoch) (:class:`spnas_dsl.data.Batches`);
the checkpoint holds the model, optimizer, schedule, lambda controller, every RNG state, the
step and the history, saved atomically every epoch and every ``checkpoint_every`` steps, so a
resumed run computes exactly the steps the uninterrupted run would have.

The shape is the one of ``spnasc train`` (:mod:`spnas_dsl.train.loop`): set up (every check,
nothing written: :func:`spnas_dsl.search.setup.prepare`), claim the output folder, the loop over
epochs and steps with its checkpoints (:func:`train_supernet`), the result (:func:`finish`). Test
hooks (:class:`spnas_dsl.training.Hooks`) are passed in by tests; the CLI passes none.
"""


from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spnas_dsl import training
from spnas_dsl.io import atomic_write_text
from spnas_dsl.ir import Network
from spnas_dsl.passes import with_options
from spnas_dsl.search.budget import BudgetFit, fit_to_budget
from spnas_dsl.search.config import LATENCY_LOSS_SCALE, SearchConfig
from spnas_dsl.search.control import set_threshold_lr
from spnas_dsl.search.methods import METHODS, Ending
from spnas_dsl.search.report import body_comments, header, norms, result_record, superkernel_spread, write_search_json
from spnas_dsl.search.setup import Setup, checkpoint_state, prepare
from spnas_dsl.training import CHECKPOINT, NO_HOOKS, Hooks, rundir
from spnas_dsl.training.distributed import any_rank, broadcast_object
from spnas_dsl.training.hooks import diverged


@dataclass
class SearchResult:
    network: Network
    text: str  # arch.spnas
    latency_ms: float
    accuracy: float
    out_dir: Path
    lambda_final: float
    budget_fit: BudgetFit | None = None
    selection: Any = None  # selection.SelectionResult with --method evolution


def default_out_dir(space_path: str, target: str) -> Path:
    """``runs/<space>-<target>-<time>``: a new search's folder without ``--out``."""
    return rundir.default_out_dir(Path(space_path).stem, target.replace(".json", ""))


def load_resume(out_dir: str | Path) -> tuple[SearchConfig, dict]:
    """The saved config and state of the run in ``out_dir`` (for ``--resume`` and ``train --init-from``)."""
    state = training.read_run_checkpoint(out_dir, "search", needed=("config", "step"), kind="spnas-search")
    return SearchConfig.from_dict(state["config"]), state


def run_search(cfg: SearchConfig, out_dir: str | Path | None = None, resume: dict | None = None,
               quiet: bool = False, force: bool = False, hooks: Hooks = NO_HOOKS) -> SearchResult | None:
    """Run (or, with ``resume`` = a loaded checkpoint, continue) a search; rank 0 returns the result.

    A new search needs ``out_dir`` new or empty; ``force`` removes a previous run's files there
    (:mod:`spnas_dsl.training.rundir`). ``hooks``: test hooks (:class:`spnas_dsl.training.Hooks`)."""
    cfg.check()
    if resume is None and out_dir is not None:
        rundir.check_out(out_dir, "search", force=force)  # refuse before any work, on every rank
    info = training.setup(cfg.device)
    try:
        s = prepare(cfg, info, resume)  # every check; nothing written yet
        out = Path(out_dir) if out_dir is not None else default_out_dir(cfg.space, cfg.target)
        s.out = Path(broadcast_object(str(out), info))
        writer = None
        if info.is_main:
            rundir.claim(s.out, rundir.SEARCH_OUTPUTS, "search", force=force, resume=resume is not None)
            writer = training.tensorboard_writer(s.out / "tensorboard", purge_step=s.step if resume is not None else None)
        announce(s, resume is not None)
        progress = training.Progress(s.total_steps, initial=s.step, quiet=quiet, enabled=info.is_main,
                                     log_every=cfg.log_every)
        train_supernet(s, progress, writer, hooks)
        return finish(s, progress, writer)
    finally:
        training.teardown()


def announce(s: Setup, resumed: bool) -> None:
    """The run's opening lines (rank 0, stdout)."""
    from spnas_dsl.search.proxy import coverage_message
    from spnas_dsl.shapes import summarize

    if not s.info.is_main:
        return
    cfg, info = s.cfg, s.info

    def say(msg: str) -> None:
        print(msg, flush=True)

    say(f"search: {cfg.space} ('{s.space.name}', {summarize(s.space).architectures:.4g} networks) on {s.target.name} "
        f"({s.graph.min_ms():.2f} .. {s.graph.max_ms():.2f} ms)")
    say(f"data: {s.data.description}")
    say(f"{cfg.epochs} epochs x {s.steps_per_epoch} steps (warm-up {s.warmup_steps} steps), batch {cfg.batch_size}"
        f"{f' ({s.per_rank_batch} per process x {info.world_size})' if info.enabled else ''}, {s.recipe.optimizer} "
        f"lr {s.recipe.base_lr:g}, " + (f"latency budget {s.budget:.4g} ms" if s.budget is not None
                                        else f"lambda {cfg.lambda_value:g}") + f", device {info.device}; output: {s.out}")
    if s.coverage:
        say(coverage_message(s.space, s.image_size, s.coverage))
    if resumed:
        say(f"resuming at step {s.step} of {s.total_steps}")


def save(s: Setup, epoch_done: bool) -> None:
    """An atomic checkpoint (rank 0). The sums of the history record in progress go into it (over all
    ranks), so that a resumed run's next record covers the same steps as the uninterrupted one."""
    total = training.all_reduce_sum(s.record_sums, s.info)
    s.record_sums = total if s.info.is_main else [0.0, 0.0, 0.0]
    if s.info.is_main:
        training.save_checkpoint(s.out / CHECKPOINT, checkpoint_state(s, epoch_done, s.seconds()))


def train_supernet(s: Setup, progress: training.Progress, writer, hooks: Hooks) -> None:
    """The loop: weights and thresholds trained together, a checkpoint every ``checkpoint_every`` steps
    and at every epoch's end, the history recorded every ``log_every`` steps and at every epoch's end."""
    cfg, info, supernet, controller = s.cfg, s.info, s.supernet, s.controller
    criterion = training.loss_function(s.recipe)
    steps_per_epoch, warmup_steps, total_steps = s.steps_per_epoch, s.warmup_steps, s.total_steps
    last_good = s.step or None  # the step of the last checkpoint written
    set_threshold_lr(s.optimizer, s.threshold_lr, s.step < warmup_steps)
    s.model.train()
    s.started = time.monotonic()
    for epoch in range(s.step // steps_per_epoch, cfg.epochs):
        progress.set_epoch(epoch, cfg.epochs, "warm-up" if epoch * steps_per_epoch < warmup_steps else "")
        for x, y in s.train_batches(epoch, s.step - epoch * steps_per_epoch):
            in_warmup = s.step < warmup_steps
            if s.step == warmup_steps and s.step % steps_per_epoch:
                progress.set_epoch(epoch, cfg.epochs)  # the latency phase starts mid-epoch
            supernet.set_indicator_dropout(1 - cfg.dropout_keep if in_warmup else 0.0)
            lam = controller.value(in_warmup)
            out = s.model(x)
            ce = criterion(out.logits, y)
            loss = ce + lam * LATENCY_LOSS_SCALE * torch.log(out.latency_ms) if lam > 0 else ce
            loss = hooks.on_loss(s.step + 1, loss)
            if any_rank(not bool(torch.isfinite(loss)), info):
                raise diverged(float(loss.detach()), s.step + 1, epoch + 1, last_good, s.out, s.recipe.base_lr)
            s.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            s.optimizer.step()
            s.scheduler.step()
            s.step += 1
            set_threshold_lr(s.optimizer, s.threshold_lr, s.step < warmup_steps)
            ce_value, relaxed = float(ce.detach()), float(out.latency_ms.detach())
            sums = s.record_sums
            sums[0] += ce_value * len(y)
            sums[1] += float((out.logits.detach().argmax(1) == y).sum())
            sums[2] += len(y)
            if not in_warmup and controller.budget is not None and (s.step - warmup_steps) % controller.every == 0:
                controller.update(s.step - warmup_steps, supernet.latency_ms())  # hard latency of the decisions
            progress.update(ce=ce_value, acc=sums[1] / max(sums[2], 1), lat=relaxed, lam=lam)
            if s.step % cfg.log_every == 0 or s.step == total_steps:
                ce_sum, correct, seen = training.all_reduce_sum(sums, info)
                s.record_sums = [0.0, 0.0, 0.0]
                record = {
                    "step": s.step, "epoch": s.step / steps_per_epoch, "ce": ce_sum / max(seen, 1),
                    "acc": correct / max(seen, 1), "latency_relaxed": relaxed,
                    "latency_ms": supernet.latency_ms(), "lambda": lam,
                    "lr": s.scheduler.get_last_lr()[0], "warmup": in_warmup,
                    "decisions": {str(i): str(o) for i, o in supernet.decisions().items()},
                    "norms": norms(supernet.decision_report()),
                }
                s.history["steps"].append(record)
                if writer is not None:
                    for key in ("ce", "acc", "latency_relaxed", "latency_ms", "lambda", "lr"):
                        writer.add_scalar(f"search/{key}", record[key], s.step)
            if s.step % cfg.checkpoint_every == 0 and s.step % steps_per_epoch:
                save(s, False)
                last_good = s.step
            hooks.on_step_done(s.step)
        # -- end of epoch: held-out accuracy of the supernet at its current decisions --------------
        scores = s.evaluate(epoch)
        acc, val_ce = scores["top1"], scores["loss"]
        decisions = supernet.decisions()
        hard = supernet.latency_ms()
        lam = controller.value(s.step <= warmup_steps)
        s.history["epochs"].append({
            "epoch": epoch + 1, "step": s.step, "val_acc": acc, "val_ce": val_ce, "latency_ms": hard,
            "lambda": lam, "lr": s.scheduler.get_last_lr()[0],
            "decisions": {str(i): str(o) for i, o in decisions.items()},
            "report": supernet.decision_report(), "spread": superkernel_spread(supernet), "seconds": s.seconds(),
        })
        if writer is not None:
            writer.add_scalar("epoch/val_acc", acc, s.step)
            writer.add_scalar("epoch/val_ce", val_ce, s.step)
            writer.add_scalar("epoch/latency_ms", hard, s.step)
        progress.log(f"epoch {epoch + 1}/{cfg.epochs}: held-out acc {acc:.2%}, CE {val_ce:.3f}, "
                     f"latency {hard:.2f} ms, lambda {lam:.3g}: " + " ".join(str(decisions[i]) for i in sorted(decisions)))
        save(s, True)
        last_good = s.step
        write_search_json(s)
    progress.close()


def finish(s: Setup, progress: training.Progress, writer) -> SearchResult | None:
    """The network (the method's pick, fitted into the budget band), ``arch.spnas`` and the plots."""
    from spnas_dsl.printer import format_network
    from spnas_dsl.search.plots import make_plots

    cfg, supernet = s.cfg, s.supernet
    answer = supernet.decisions()  # the thresholds' answer (the paper's network)
    accuracy = s.history["epochs"][-1]["val_acc"] if s.history["epochs"] else float("nan")
    fit = None
    if s.budget is not None:
        fit = fit_to_budget(s.space, s.graph, answer, supernet.decision_report(), s.budget, cfg.budget_floor)
    picked = METHODS[cfg.search_method].pick(Ending(s, answer, fit, accuracy, progress.log))
    derived = with_options(s.space, picked.decisions)  # verified (validate) like a parsed network
    derived = derived.model_copy(update={"comments": body_comments(s.space)})
    latency = s.graph.predict(derived)
    lam_final = s.controller.value(False)
    text = format_network(derived, header=header(s, latency, picked.accuracy, lam_final, fit, picked.selection))
    if not s.info.is_main:
        return None
    written = write_search_json(s, result_record(s, text, latency, picked.accuracy, lam_final, picked.decisions,
                                                 answer, fit, picked.selection, s.seconds()))
    make_plots(json.loads(written), s.out)  # the record as written (JSON types), not read back from disk
    atomic_write_text(s.out / "arch.spnas", text)  # last: only a finished search has one
    writer.close()
    return SearchResult(derived, text, latency, picked.accuracy, s.out, lam_final, fit, picked.selection)
