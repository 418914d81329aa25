"""Where the data files shipped with spnas live (grammar, target tables).

In a built wheel they are package data under ``spnas_dsl/_data``; in a source checkout
(editable install, tests) they are read from the repository's ``grammars/`` and
``targets/`` folders, which are the single source of truth.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE_DIR.parent


def data_path(folder: str, name: str = "") -> Path:
    """Path of ``folder/name`` among the shipped data (``grammars`` or ``targets``)."""
    for base in (_REPO_ROOT / folder, _PACKAGE_DIR / "_data" / folder):
        if base.is_dir():
            return base / name if name else base
    raise FileNotFoundError(f"spnas data folder '{folder}' is missing from the installation")
