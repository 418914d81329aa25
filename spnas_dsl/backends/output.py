"""The output folder of a build: checked and staged before any work, published atomically after.

A build writes into a staging folder beside ``--out``; only a build whose checks all pass is
moved into place (:func:`publish`), and a refused or failed one leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from spnas_dsl.errors import BuildError


def prepare_output(out_dir: Path, force: bool = False) -> tuple[Path, list[Path]]:
    """Check that ``out_dir`` can be written and make a staging folder beside it.

    ``out_dir`` must be new or empty unless ``force`` (:func:`spnas_dsl.training.rundir.check_out`).
    Returns (staging folder, folders created on the way) so a failed build can remove both.
    """
    from spnas_dsl.training.rundir import check_out

    out_dir = Path(out_dir)
    check_out(out_dir, "build", force=force)  # a file, or a folder holding anything: a usage error
    created: list[Path] = []
    parent = out_dir.absolute().parent
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        if not parent.is_dir():
            raise NotADirectoryError(20, f"{parent} is not a directory")
        writable = out_dir if out_dir.exists() else parent
        if not os.access(writable, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name or 'build'}.", suffix=".partial", dir=parent))
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it 0700; it becomes --out
    except OSError as exc:
        remove_created(created)
        reason = exc.strerror or str(exc)
        raise BuildError(f"cannot write to --out {out_dir}: {reason}") from None
    return staging, created


def remove_created(created: list[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            pass


def previous_build_files(out_dir: Path) -> list[str]:
    """The files of the build in ``out_dir`` (those its ``build.json`` lists, and itself), for ``--force``.

    Only plain relative paths inside ``out_dir`` count; an unreadable ``build.json`` lists nothing
    (its folder's files are then kept, and replaced only where the new build writes the same names).
    """
    manifest = out_dir / "build.json"
    try:
        artifacts = json.loads(manifest.read_text(encoding="utf-8")).get("artifacts", [])
        paths = [a["path"] for a in artifacts if isinstance(a, dict) and isinstance(a.get("path"), str)]
    except (OSError, ValueError, AttributeError):
        return ["build.json"] if manifest.is_file() else []
    inside = [p for p in paths if not Path(p).is_absolute() and ".." not in Path(p).parts]
    return sorted(set(inside)) + ["build.json"]


def publish(staging: Path, out_dir: Path, log: Callable[[str], None] = print) -> None:
    """Move the staged files into ``out_dir``: one rename when it is new, else file by file
    (each ``os.replace`` atomic, ``build.json`` last). A previous build's files that the new
    build does not replace are removed (``--force``); other files in ``out_dir`` are kept."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    new = {str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file()}
    stale = [name for name in previous_build_files(out_dir) if name not in new and (out_dir / name).is_file()]
    files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name == "build.json")
    for src in files:  # check every destination before moving anything
        dst = out_dir / src.relative_to(staging)
        if dst.is_dir():
            raise BuildError(f"cannot write {dst}: a directory is in the way")
        for parent in dst.relative_to(out_dir).parents:
            if (out_dir / parent).exists() and not (out_dir / parent).is_dir():
                raise BuildError(f"cannot write {dst}: {out_dir / parent} is a file")
    for name in stale:  # after the checks above: a refused build removes nothing
        (out_dir / name).unlink()
    for folder in sorted({(out_dir / n).parent for n in stale}, key=lambda p: len(p.parts), reverse=True):
        if folder != out_dir and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if stale:
        log(f"--force: removed the previous build's {', '.join(stale)} from {out_dir}")
    for src in files:
        dst = out_dir / src.relative_to(staging)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    shutil.rmtree(staging, ignore_errors=True)
