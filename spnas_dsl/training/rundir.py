"""Output folders of ``search``, ``train`` and ``build``: never mix two runs, never delete unasked.

A new run writes into an empty (or new) ``--out`` folder only. A folder that holds anything is
refused with one usage error that names what is there and the ways forward: ``--resume DIR``
(search, train) to continue the run saved in it, ``--force`` to start over in it, or another
``--out``. ``--force`` removes only the files the command itself writes (:data:`SEARCH_OUTPUTS`,
:data:`TRAIN_OUTPUTS`; for ``build`` the files its previous ``build.json`` lists) and the
temporaries of interrupted saves; anything else in the folder is kept and named.

Temporaries: every output is written through ``.<name>.<random>.tmp`` and an atomic rename
(:mod:`spnas_dsl.io`); a process killed in the middle of a save leaves that file behind (up to a
checkpoint's size). :func:`remove_temporaries` deletes them when a run is resumed or restarted.

Typical use (rank 0 only writes)::

    check_out(out, "search", force=args.force)              # before any work: refuse early
    ...
    claim(out, SEARCH_OUTPUTS, "search", force=force, resume=resume is not None, log=print)
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from spnas_dsl.errors import UsageError
from spnas_dsl.io import out_path_problem

# What each command writes into its --out folder (files or folders). --force removes exactly these.
SEARCH_OUTPUTS = ("arch.spnas", "search.json", "checkpoint.pt", "tensorboard", "search_curves.png", "decisions.png",
                  "norms_thresholds.png", "superkernel.png", "superkernel_groups.png")
TRAIN_OUTPUTS = ("checkpoint.pt", "model.safetensors", "arch.spnas", "metrics.json", "tensorboard")

_RESUMABLE = {"search", "train"}


def default_out_dir(*parts: str) -> Path:
    """``runs/<part>-<part>-YYYYmmdd-HHMMSS``: a new run's folder when no ``--out`` is given.

    Characters other than letters, digits and ``-_.`` become ``_``. Under DDP, rank 0 names it
    and broadcasts the name (``distributed.broadcast_object``): the clocks may disagree.
    """
    safe = ["".join(c if c.isalnum() or c in "-_." else "_" for c in part) for part in parts]
    return Path("runs") / "-".join([*safe, time.strftime("%Y%m%d-%H%M%S")])


def _listing(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_out(out: str | Path, command: str, *, force: bool = False) -> None:
    """Refuse ``out`` for a new run of ``command`` when it is a file or holds anything (unless ``force``).

    Writes nothing; safe to call on every rank before any work starts.
    """
    out = Path(out)
    problem = out_path_problem(out)
    if problem is not None:
        raise UsageError(f"--out {problem}")
    if force or not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    ways = [f"continue its run with 'spnasc {command} --resume {out}'"] if command in _RESUMABLE else []
    ways.append("start over with --force (removes the previous " + ("build" if command == "build" else "run")
                + "'s files, keeps any others)")
    ways.append("choose another --out")
    raise UsageError(f"--out {out} is not empty ({_listing(entries)}): " + ", ".join(ways[:-1]) + " or "
                     + ways[-1])


def temporaries(out: Path, names: Iterable[str]) -> list[Path]:
    """Leftover temporary files of ``names`` in ``out`` (``.NAME.*.tmp``, from
    :func:`spnas_dsl.io.atomic_write_bytes`), left by a process killed while saving."""
    found: set[Path] = set()
    for name in names:
        found.update(p for p in out.glob(f".{name}.*.tmp") if p.is_file())
    return sorted(found)


def remove_temporaries(out: Path, names: Iterable[str]) -> tuple[int, int]:
    """Delete the temporaries of ``names`` in ``out``; returns (files, bytes) removed."""
    count = size = 0
    for path in temporaries(Path(out), names):
        try:
            size += path.stat().st_size
            path.unlink()
            count += 1
        except FileNotFoundError:
            pass
    return count, size


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def remove_outputs(out: Path, names: Iterable[str]) -> tuple[list[str], list[str]]:
    """``--force``: delete the outputs ``names`` (and their temporaries) in ``out``.

    Returns (removed names, kept names): kept are the entries the command did not write.
    """
    names = list(names)
    removed = []
    for name in names:
        path = out / name
        if path.exists() or path.is_symlink():
            _remove(path)
            removed.append(name)
    tmp, _ = remove_temporaries(out, names)
    if tmp:
        removed.append(f"{tmp} temporary file{'s' if tmp > 1 else ''}")
    kept = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    return removed, kept


def claim(out: str | Path, outputs: Iterable[str], command: str, *, force: bool = False, resume: bool = False,
          log: Callable[[str], None] = print) -> Path:
    """Make ``out`` ready for a run (rank 0, after every check of the run's inputs has passed).

    - ``resume``: the folder holds the run being continued; remove stale temporaries only.
    - new run: :func:`check_out`; with ``force``, remove the previous run's outputs (the others
      are kept and named). Then create the folder.
    """
    out = Path(out)
    outputs = list(outputs)
    if resume:
        count, size = remove_temporaries(out, outputs)
        if count:
            log(f"removed {count} temporary file{'s' if count > 1 else ''} ({size / 1e6:.1f} MB) left by an "
                "interrupted save")
        return out
    check_out(out, command, force=force)
    if force and out.is_dir():
        removed, kept = remove_outputs(out, outputs)
        if removed:
            log(f"--force: removed the previous run's {_listing(removed, 12)} from {out}")
        if kept:
            log(f"--force: kept {_listing(kept)} (not written by spnasc {command})")
    out.mkdir(parents=True, exist_ok=True)
    return out
