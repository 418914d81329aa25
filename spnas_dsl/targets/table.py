"""Lookup-table files: schema, loading (with errors that name the file), writing, lookup.

A table is JSON data, not code::

    {
      "version": 1,
      "name": "pixel1", "description": "...", "device": "...", "runtime": "...",
      "threads": 1, "source": "...", "date": "2019-04-05", "read_only": true,
      "entries": [{"signature": "mbconv:i112x112x16:o24:s2:k3e3", "latency_ms": 4.4905, "position": 1}, ...],
      "fixed_groups": [{"signatures": ["conv:...", "mbconv:...", "head:..."], "latency_ms": 19.5999, "note": "..."}],
      "calibration": {"scale": 1.0, "offset_ms": 0.0, "networks": [], "date": null}
    }

Lookup rule (:meth:`LatencyTable.lookup`): the entry with the same signature measured at the
same position (layer index) first; otherwise the signature alone, and when several entries
share it (measured at other positions) their mean.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from spnas_dsl.errors import TargetError
from spnas_dsl.io import atomic_write_text
from spnas_dsl.targets.signature import is_signature

TABLE_VERSION = 1
# Bounds on a table's numbers: every figure is a finite, plausible number of milliseconds, so
# that no table can make a prediction inf, nan, negative or astronomically large.
MAX_MS = 1e7  # ~3 hours for one layer or group
MAX_THREADS = 1024
MAX_POSITION = 100_000
MAX_SCALE = 1e3


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def _check_ms(value: float) -> float:
    if not (math.isfinite(value) and 0 <= value <= MAX_MS):
        raise ValueError(f"must be a finite number of milliseconds in [0, {MAX_MS:g}], got {value!r}")
    return value


class Entry(_Strict):
    """The runtime of one layer signature, optionally at the layer index it was measured at."""

    signature: str
    latency_ms: float
    position: int | None = Field(default=None, ge=0, le=MAX_POSITION)
    count: int | None = Field(default=None, ge=1)  # runs the figure is the mean of, when the source says
    var: float | None = Field(default=None, ge=0)  # their variance (ms^2), when the source says

    @field_validator("signature")
    @classmethod
    def _signature(cls, v: str) -> str:
        if not is_signature(v):
            raise ValueError(f"'{v}' is not a layer signature (op:field:..., e.g. mbconv:i56x56x24:o24:s1:k3e6)")
        return v

    @field_validator("latency_ms")
    @classmethod
    def _ms(cls, v: float) -> float:
        return _check_ms(v)


class FixedGroup(_Strict):
    """Parts priced jointly (e.g. stem + fixed layers + head): used when all are in the network."""

    signatures: list[str] = Field(min_length=1)
    latency_ms: float
    note: str = ""

    @field_validator("signatures")
    @classmethod
    def _signatures(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not is_signature(s)]
        if bad:
            raise ValueError(f"not layer signatures: {', '.join(repr(s) for s in bad)}")
        return v

    @field_validator("latency_ms")
    @classmethod
    def _ms(cls, v: float) -> float:
        return _check_ms(v)


class Calibration(_Strict):
    """A linear correction of the table's sums: ``predicted = scale * sum + offset_ms``.

    ``networks`` names the networks measured end to end to fit it, ``date`` when.
    The default is the identity.
    """

    scale: float = 1.0
    offset_ms: float = 0.0
    networks: list[str] = Field(default_factory=list)
    date: str | None = None

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: float) -> float:
        if not (math.isfinite(v) and 0 < v <= MAX_SCALE):  # `Infinity` and `NaN` are valid JSON here
            raise ValueError(f"must be a finite number in (0, {MAX_SCALE:g}], got {v!r}")
        return v

    @field_validator("offset_ms")
    @classmethod
    def _offset(cls, v: float) -> float:
        # A negative offset is legitimate (a fit's intercept); whether it keeps every prediction
        # positive depends on the network, and LatencyGraph.build checks that.
        if not (math.isfinite(v) and abs(v) <= MAX_MS):
            raise ValueError(f"must be a finite number of milliseconds in [-{MAX_MS:g}, {MAX_MS:g}], got {v!r}")
        return v

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.offset_ms == 0.0

    def apply(self, raw_ms: Any) -> Any:
        """``scale * raw_ms + offset_ms`` (works on floats and tensors alike)."""
        if self.is_identity:
            return raw_ms
        return raw_ms * self.scale + self.offset_ms

    def invert(self, ms: float) -> float:
        """The raw table sum whose calibrated latency is ``ms`` (scale is positive: order kept)."""
        return ms if self.is_identity else (ms - self.offset_ms) / self.scale


class Provenance(_Strict):
    """Where a fitted table's figures come from (``spnasc lut fit``): enough to redo the fit."""

    method: str
    source_file: str
    source_sha256: str
    device: str
    device_description: str = ""
    space: str
    networks: int = Field(ge=1)
    units: str = "ms"
    regularisation: float = Field(ge=0)
    cv_folds: int = Field(ge=2)
    cv: dict[str, float]   # held-out metrics (each network predicted by the fit without its fold)
    fit: dict[str, float]  # in-sample metrics of the stored table
    residuals_ms: list[float]  # measured - predicted, per network, in file order
    references: list[str] = Field(default_factory=list)


class Lookup(BaseModel):
    """The result of one lookup: the figure and how it was found."""

    model_config = ConfigDict(frozen=True)
    latency_ms: float
    rule: str  # "position" (exact signature and position), "signature" (one entry), "mean" (several)
    count: int = 1


class LatencyTable(_Strict):
    """A target's lookup table (see the module docstring for the file format)."""

    version: int = TABLE_VERSION
    name: str = Field(min_length=1)
    description: str
    device: str
    runtime: str
    threads: int = Field(ge=1, le=MAX_THREADS)
    source: str
    date: str
    read_only: bool = False
    entries: list[Entry]
    fixed_groups: list[FixedGroup] = Field(default_factory=list)
    calibration: Calibration = Field(default_factory=Calibration)
    provenance: Provenance | None = None

    _by_position: dict[tuple[str, int | None], list[float]] = PrivateAttr(default_factory=dict)
    _by_signature: dict[str, list[float]] = PrivateAttr(default_factory=dict)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != TABLE_VERSION:
            raise ValueError(f"unsupported table version {v} (this spnas reads version {TABLE_VERSION})")
        return v

    @model_validator(mode="after")
    def _no_duplicates(self) -> LatencyTable:
        seen: set[tuple[str, int | None]] = set()
        for i, e in enumerate(self.entries):
            key = (e.signature, e.position)
            if key in seen:
                where = f" at position {e.position}" if e.position is not None else ""
                raise ValueError(f"entries[{i}]: duplicate entry for {e.signature}{where}")
            seen.add(key)
        return self

    def model_post_init(self, context: Any, /) -> None:
        for e in self.entries:
            self._by_position.setdefault((e.signature, e.position), []).append(e.latency_ms)
            self._by_signature.setdefault(e.signature, []).append(e.latency_ms)

    @property
    def signatures(self) -> set[str]:
        """Every distinct signature priced by an entry or a fixed group."""
        return set(self._by_signature) | {s for g in self.fixed_groups for s in g.signatures}

    def lookup(self, signature: str, position: int | None = None) -> Lookup | None:
        """The latency of ``signature`` measured at ``position``, by the table's lookup rule.

        Exact (signature, position) first; else the entries with that signature (their mean
        when there are several); ``None`` when the table does not have the signature.
        """
        if position is not None and (signature, position) in self._by_position:
            values = self._by_position[(signature, position)]
            return Lookup(latency_ms=values[0], rule="position")
        values = self._by_signature.get(signature)
        if not values:
            return None
        if len(values) == 1:
            return Lookup(latency_ms=values[0], rule="signature")
        return Lookup(latency_ms=sum(values) / len(values), rule="mean", count=len(values))


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "missing field"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    shown = parts[:8]
    more = f" (and {len(parts) - 8} more)" if len(parts) > 8 else ""
    return "; ".join(shown) + more


def parse_table(text: str, filename: str = "<table>") -> LatencyTable:
    """Parse and validate table JSON text; any problem is a :class:`TargetError` naming ``filename``."""
    from spnas_dsl.io import decode_json

    data = decode_json(text, filename, "target table", TargetError)
    if not isinstance(data, dict):
        raise TargetError(f"invalid target table {filename}: expected a JSON object, got {type(data).__name__}")
    try:
        return LatencyTable.model_validate(data)
    except RecursionError:  # nesting the decoder survived but validation did not
        raise TargetError(f"invalid target table {filename}: JSON nested too deeply") from None
    except ValidationError as exc:
        raise TargetError(f"invalid target table {filename}: {_format_validation_error(exc)}") from None


def load_table(path: str | Path) -> LatencyTable:
    """Read and validate a table file; a missing, unreadable or corrupt file is a :class:`TargetError`."""
    from spnas_dsl.io import read_json_file

    _, text, _ = read_json_file(path, "target table", TargetError)
    return parse_table(text, str(path))


def dump_table(table: LatencyTable) -> str:
    """The canonical JSON text of a table (2-space indent, one entry per line, trailing newline)."""
    data = table.model_dump(mode="json")
    entries = data.pop("entries")
    groups = data.pop("fixed_groups")
    calibration = data.pop("calibration")
    provenance = data.pop("provenance")
    lines = ["{"]
    for key, value in data.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value)},")
    lines.append('  "entries": [')
    lines += [f"    {json.dumps(_drop_none(e))}," for e in entries]
    if entries:
        lines[-1] = lines[-1].rstrip(",")
    lines.append("  ],")
    lines.append(f'  "fixed_groups": {json.dumps(groups, indent=2)},'.replace("\n", "\n  "))
    if provenance is None:
        lines.append(f'  "calibration": {json.dumps(calibration)}')
    else:
        lines.append(f'  "calibration": {json.dumps(calibration)},')
        lines.append('  "provenance": {')
        items = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in provenance.items()]
        lines.append(",\n".join(items))
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def write_table(path: str | Path, table: LatencyTable) -> None:
    """Write ``table`` to ``path`` atomically (creating the folder), in the canonical layout."""
    atomic_write_text(path, dump_table(table))
