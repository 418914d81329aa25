"""The user cache of local lookup tables: where it is, and what it holds (read in one pass).

Local tables live in ``$SPNAS_CACHE_DIR/targets/<name>.json`` (default ``$XDG_CACHE_HOME/spnas``
or ``~/.cache/spnas`` for ``$SPNAS_CACHE_DIR``), written by ``spnasc lut build``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from spnas_dsl.errors import TargetError
from spnas_dsl.targets.table import LatencyTable, load_table


def cache_dir() -> Path:
    """The folder of local tables: ``$SPNAS_CACHE_DIR/targets`` (default ``~/.cache/spnas/targets``)."""
    base = os.environ.get("SPNAS_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "spnas")
    return Path(base) / "targets"


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def local_table_path(name: str) -> Path:
    """Where the local table of target ``name`` is (or will be) stored (``android:X`` -> ``android_X.json``)."""
    return cache_dir() / f"{_file_stem(name)}.json"


@dataclass(frozen=True)
class LocalTable:
    """One ``*.json`` file of the cache: its table, or why it does not load."""

    path: Path
    table: LatencyTable | None
    error: str | None = None

    @property
    def name(self) -> str:
        """The target the table is for (its ``name`` field; the file stem when it does not load)."""
        return self.table.name if self.table is not None else self.path.stem


def scan_local_tables() -> list[LocalTable]:
    """Every table file of the cache, in file-name order; one bad file does not hide the others."""
    folder = cache_dir()
    found = []
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            try:
                found.append(LocalTable(path, load_table(path)))
            except TargetError as exc:
                found.append(LocalTable(path, None, exc.message))
    return found
