"""What a search reports: ``search.json`` (settings, history, result), the header of ``arch.spnas``,
and the supernet figures the history records (decision norms, superkernel spread).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import torch

from spnas_dsl.io import atomic_write_text
from spnas_dsl.ir import Network
from spnas_dsl.search.budget import BudgetFit
from spnas_dsl.shapes import summarize


@torch.no_grad()
def superkernel_spread(supernet) -> list[dict[str, Any]]:
    """Per searched layer: the L2 norm of each kernel position (over all channels), of each
    kernel shell (the inner kernel and each outer ring) and of each channel group (paper Fig. 6)."""
    out = []
    for block in supernet.searched_blocks():
        dw = block.conv_dw
        w = dw.weight.detach().float().cpu()
        starts = (0,) + tuple(dw.group_ends[:-1])
        out.append({
            "index": block.index,
            "name": block.name,
            "positions": w[:, 0].pow(2).sum(0).sqrt().tolist(),
            "shells": {f"k{k}": float(torch.linalg.vector_norm(w * shell.cpu()))
                       for k, shell in zip(dw.kernels, dw.shells)},
            "groups": {f"e{e}": float(torch.linalg.vector_norm(w[lo:hi]))
                       for e, lo, hi in zip(dw.expansions, starts, dw.group_ends)},
        })
    return out


def norms(report: list[dict]) -> dict[str, dict[str, list[float]]]:
    return {str(r["index"]): {n: [round(d["norm"], 5), round(d["threshold"], 5)] for n, d in r["decisions"].items()}
            for r in report}


def write_search_json(s, result: dict | None = None) -> str | None:
    """``search.json`` (rank 0): the settings, the run's shape, the history so far and (at the end) the result.
    Returns the text written (``json.loads`` of it is the record as a reader sees it); None off rank 0."""
    if not s.info.is_main:
        return None
    text = json.dumps({
        "config": s.cfg.to_dict() | {"space_text": None}, "space": s.space.name, "target": s.target.name,
        "data": s.data.description, "image_size": s.image_size, "declared_input": str(s.space.input),
        "steps_per_epoch": s.steps_per_epoch, "warmup_steps": s.warmup_steps, "total_steps": s.total_steps,
        "latency_range_ms": [s.graph.min_ms(), s.graph.max_ms()], "recipe": s.recipe.to_dict(),
        "world_size": s.info.world_size, "kernel_decisions_not_informed": [c.to_dict() for c in s.coverage],
        "history": s.history, "result": result,
    }, indent=1)
    atomic_write_text(s.out / "search.json", text)
    return text


def result_record(s, text: str, latency: float, accuracy: float, lam: float, decisions, answer,
                  fit: BudgetFit | None, selection, seconds: float) -> dict[str, Any]:
    """The ``result`` of ``search.json``."""
    return {"arch": text, "latency_ms": latency, "accuracy": accuracy, "lambda_final": lam,
            "decisions": {str(i): str(o) for i, o in decisions.items()},
            "method": s.cfg.search_method,
            "thresholds_answer": {str(i): str(o) for i, o in answer.items()},
            "budget_fit": None if fit is None else {
                "in_band": fit.in_band, "band_ms": [fit.floor_ms, fit.budget], "latency_ms": fit.latency_ms,
                "note": fit.note, "moves": [asdict(m) for m in fit.moves],
                "decisions": {str(i): str(o) for i, o in fit.decisions.items()}},
            "selection": None if selection is None else selection.to_dict(),
            "seconds": seconds}


def body_comments(space: Network):
    """The space's comments inside the network body (its file header describes the space, not the result)."""
    first = space.span.line if space.span else 0
    return tuple(c for c in space.comments if c.line > first)


def header(s, latency: float, accuracy: float, lam: float, fit: BudgetFit | None, selection) -> list[str]:
    """The comment lines at the top of ``arch.spnas``: how the network was found."""
    cfg, space, target, image_size, coverage = s.cfg, s.space, s.target, s.image_size, s.coverage
    min_ms, max_ms = s.graph.min_ms(), s.graph.max_ms()
    architectures, num_classes, data_desc = summarize(space).architectures, s.data.num_classes, s.data.description
    declared = f"{space.input.height}x{space.input.width}"
    proxy = (f"{image_size}x{image_size} (proxy: trained at this size, latency priced at the declared "
             f"{space.input})") if image_size != space.input.height or image_size != space.input.width else \
        f"{declared} (the declared input)"
    if fit is not None:
        asked = f" (the {cfg.budget_percentile:g}th percentile of the space)" if cfg.budget_percentile is not None else ""
        how = (f"lambda steered after the warm-up, final {lam:.4g}" if cfg.warmup < cfg.epochs else
               "no latency phase: the band is searched after training")
        steer = f"latency budget: {fit.budget:.4g} ms{asked} ({how})"
    else:
        steer = f"lambda: {lam:g} (loss = CE + lambda * 1000 * ln(latency_ms))"
    lines = [
        f"Found by spnasc search (Single-Path NAS) in '{space.name}' ({cfg.space}, {architectures:.4g} networks)",
        f"target: {target.name} ({target.spec.what})",
        f"predicted latency: {_ms(latency)} ms on {target.name} (space: {_ms(min_ms)} .. {_ms(max_ms)} ms)",
        steer,
    ]
    if fit is not None:
        lines.append(fit.describe())
    if selection is not None:
        lines.append(f"method: evolution ({len(selection.scored)} networks in the band scored by the supernet's "
                     f"held-out cross-entropy with inherited weights; the search started from one that scored "
                     f"{selection.answer.ce:.4f}, acc {selection.answer.accuracy:.2%})")
    else:
        lines.append("method: paper (the thresholds' decisions)")
    lines += [
        f"seed: {cfg.seed}",
        f"data: {data_desc}" + (f" (classifier trained for its {num_classes} classes; the network keeps "
                                f"the declared {space.classes})" if num_classes != space.classes else ""),
        f"image size: {proxy}",
    ]
    if coverage:
        un = [f"{c.index}:{c.decision}" for c in coverage if c.level == "uninformed"]
        part = [f"{c.index}:{c.decision}" for c in coverage if c.level == "partial"]
        lines.append("kernel decisions not informed by the data at this size: "
                     + (f"uninformed {' '.join(un)}" if un else "") + ("; " if un and part else "")
                     + (f"partial {' '.join(part)}" if part else ""))
    lines += [
        (f"epochs: {cfg.epochs} ({cfg.warmup:g} warm-up with lambda 0 and indicator keep probability "
         f"{cfg.dropout_keep:g}), batch {cfg.batch_size}, {cfg.optimizer}"),
        f"held-out accuracy of the supernet: {accuracy:.2%} (at this network: inherited weights, no fine-tuning)",
    ]
    return lines


def _ms(value: float) -> str:
    """A latency with 2 decimals, or 4 significant digits below 10 ms (host tables are fractions of a ms)."""
    return f"{value:.2f}" if value >= 10 else f"{value:.4g}"
