"""The typed pieces of a latency graph: its nodes (parts of a network), the fixed groups it
uses, the rows of a breakdown, and option text.

A node is one part of the network in order: the stem (key ``"stem"``), MBConv layer ``i``
(key ``i``), the head (key ``"head"``). Stem and head have one candidate, ``None``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from spnas_dsl.errors import UsageError
from spnas_dsl.ir import SKIP, Option

STEM, HEAD = "stem", "head"
NodeKey = str | int
Candidate = Option | None  # None: the one "candidate" of the stem and the head


@dataclass(frozen=True)
class LatencyNode:
    """One part of a network priced on a target: its shape, its candidates and their figures."""

    key: NodeKey
    kind: str  # stem | mbconv | head
    name: str  # "stem", "<stage>.<position>", "head"
    index: int | None  # MBConv layer index (None for stem and head)
    op: str  # conv | mbconv | head
    in_hwc: tuple[int, int, int]
    out_channels: int
    stride: int
    candidates: tuple[Candidate, ...]
    signatures: dict[Candidate, str | None]  # None: an identity skip (costs 0)
    label: str | None = None  # the choice text of stem ("k3") and head ("c1280")
    latency_ms: dict[Candidate, float] = field(default_factory=dict)  # raw table figures
    rules: dict[Candidate, str] = field(default_factory=dict)  # how each figure was looked up
    fixed_group: int | None = None  # the table's fixed group that prices this part with others

    @property
    def is_searched(self) -> bool:
        """Whether the part has more than one candidate."""
        return len(self.candidates) > 1

    @property
    def where(self) -> str:
        """The part as a message names it: ``stem``, ``layer 3 (stage2.1)``, ``head``."""
        return self.name if self.index is None else f"layer {self.index} ({self.name})"


@dataclass(frozen=True)
class FixedGroupUse:
    """A fixed group of the table that prices some parts of this network jointly."""

    index: int
    latency_ms: float
    note: str
    members: tuple[NodeKey, ...]


@dataclass(frozen=True)
class LayerLatency:
    """One row of a breakdown: a part of a concrete network and its latency on the target."""

    name: str  # "stem", "<stage>.<position>", "head"
    index: int | None  # MBConv layer index (None for stem and head)
    op: str  # conv, mbconv, skip, head
    choice: str  # "k3" (stem), "k3e6" / "skip" (layer), "c1280" (head)
    input: str  # HxWxC
    out_channels: int
    stride: int
    signature: str | None  # None for a skip
    latency_ms: float | None  # None when priced jointly in a fixed group
    fixed_group: int | None = None
    rule: str = ""  # position | signature | mean | skip | group

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


_OPTION_RE = re.compile(r"^k(\d+)e(\d+)(x?)(?:g(\d+))?$")


def as_option(option: Option | str) -> Option:
    """An :class:`Option` from an Option or its text (``"k3e6"``, ``"skip"``)."""
    if isinstance(option, Option):
        return option
    text = option.strip().lower()
    if text == "skip":
        return SKIP
    if text == "skip_proj":
        return Option(project=True)
    m = _OPTION_RE.match(text)
    if m:
        k, e, x, g = m.groups()
        return Option(kernel=int(k), expansion=int(e), expand_always=bool(x), groups=int(g or 1))
    raise UsageError(f"'{option}' is not an option (expected kKeE[x][gG], e.g. k3e6 or k3e1xg2, skip or skip_proj)")


def hwc_text(t: tuple[int, int, int]) -> str:
    """``HxWxC``."""
    return "x".join(str(v) for v in t)
