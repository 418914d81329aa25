"""``spnasc targets``: every known target with where its lookup table is and what it holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spnas_dsl.errors import TargetError
from spnas_dsl.resources import data_path
from spnas_dsl.targets.cache import scan_local_tables
from spnas_dsl.targets.registry import (
    ANDROID_PATTERN,
    ANDROID_RE,
    KNOWN_TARGETS,
    TargetSpec,
    resolve_spec,
    spec_from_table,
)
from spnas_dsl.targets.table import LatencyTable, load_table


@dataclass(frozen=True)
class TargetStatus:
    """One row of ``spnasc targets``: a target, where its table is and how many signatures it has."""

    spec: TargetSpec
    path: Path | None  # None: no table yet (or a name pattern)
    signatures: int | None
    error: str | None = None  # the table exists but does not load
    fitted: str | None = None  # for a fitted table: networks, device, held-out error, source hash

    @property
    def source(self) -> str:
        """Where the figures come from (the spec's words; for a fitted table also the fit's summary)."""
        return "; ".join(p for p in (self.spec.source, self.fitted) if p)

    @property
    def built(self) -> bool:
        return self.path is not None and self.error is None

    @property
    def where(self) -> str:
        """Where the table is, or what to run to build it."""
        if self.error:
            return f"{self.path}: unusable ({self.error})"
        if self.path is not None:
            return str(self.path)
        if not self.spec.profilable:
            return "no table"
        return f"not built yet: run spnasc lut build SPACE --target {self.spec.name}"


def list_targets() -> list[TargetStatus]:
    """Every known target (built-in, profilable kinds, the android pattern, local tables) with its state."""
    rows: list[TargetStatus] = []
    local = {t.name: t for t in scan_local_tables()}
    for name, spec in KNOWN_TARGETS.items():
        if spec.table is not None:
            rows.append(_status(spec, data_path("targets", spec.table)))
        elif name in local:
            found = local.pop(name)
            rows.append(TargetStatus(spec, found.path, _count(found.table), found.error))
        else:
            rows.append(TargetStatus(spec, None, None))
    rows.append(TargetStatus(
        TargetSpec(name=ANDROID_PATTERN, description="any Android phone reachable over adb (adb -s SERIAL)",
                   device="Android device", runtime="TFLite float", threads=1, profilable=True, kind="android"),
        None, None,
    ))
    for name, found in sorted(local.items()):
        if found.table is None:
            spec = TargetSpec(name=name, description="local table", device="?", runtime="?", threads=1,
                              profilable=True, kind="local")
        else:
            spec = resolve_spec(name) if ANDROID_RE.match(name) else spec_from_table(name, found.table, "local")
        rows.append(TargetStatus(spec, found.path, _count(found.table), found.error))
    return rows


def _count(table: LatencyTable | None) -> int | None:
    return len(table.signatures) if table is not None else None


def _status(spec: TargetSpec, path: Path) -> TargetStatus:
    try:
        table = load_table(path)
    except TargetError as exc:
        return TargetStatus(spec, path, None, exc.message)
    return TargetStatus(spec, path, len(table.signatures), fitted=_fit_summary(table))


def _fit_summary(table: LatencyTable) -> str | None:
    p = table.provenance
    if p is None:
        return None
    return (f"fit: {p.networks} networks of {p.space} on '{p.device}' from {Path(p.source_file).name} "
            f"(sha256 {p.source_sha256[:12]}), held-out MAPE {p.cv['mape_pct']:.2f} %, "
            f"max |residual| {p.fit['max_abs_error_ms']:.3g} ms")
