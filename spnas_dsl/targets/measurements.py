"""Measurement files: whole networks of a space and their latencies on one or more devices.

The format is that of HELP's / HW-NAS-Bench's FBNet data
(``../shared/reference/devices/fbnet_cifar100_latency.json``)::

    {
      "archs": [["k5_e6", "skip", "k3_e1_g2", ...], ...],   # one op name per layer, layer 0 first
      "latency_ms": {"pixel2": [28.0, ...], ...},           # device -> one figure per network (ms)
      "devices": {"pixel2": "Google Pixel 2, whole network measured"},   # optional descriptions
      ...                                                   # other keys are kept and ignored
    }

Op names may be HW-NAS-Bench's (``kK_eE``, ``kK_eE_gG``, ``skip``: resolved against the
layer's candidates, so ``k3_e1`` is the layer's e=1 option) or spnas's option text
(``k3e6``, ``k3e1x``, ``k3e1xg2``, ``skip``, ``skip_proj``), which ``lut validate`` writes.
Every problem is a :class:`MeasurementError` naming the file and the JSON path of the entry.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spnas_dsl.errors import MeasurementError
from spnas_dsl.io import read_json_file
from spnas_dsl.ir import Network, Option
from spnas_dsl.shapes import infer_shapes
from spnas_dsl.targets.table import MAX_MS

_HWNB_OP = re.compile(r"^k(\d+)_e(\d+)(?:_g(\d+))?$")


@dataclass(frozen=True)
class Measurements:
    """The networks of a measurement file and one device's latencies (ms) for them."""

    path: Path
    sha256: str
    device: str
    description: str
    archs: list[list[str]]
    latency_ms: np.ndarray
    devices: list[str]

    @property
    def count(self) -> int:
        return len(self.archs)


@dataclass(frozen=True)
class MeasurementFile:
    """A measurement file read and checked once: its networks and every device's latencies."""

    path: Path
    sha256: str
    archs: list[list[str]]
    table: dict  # device -> one latency (ms) per network, unchecked until a device is taken
    descriptions: dict

    def _bad(self, message: str) -> MeasurementError:
        return MeasurementError(f"measurement file {self.path}: {message}")

    def for_device(self, device: str, aliases: dict[str, str] | None = None) -> Measurements:
        """``device``'s latencies (``aliases``: other names -> the file's device keys)."""
        table = self.table
        if device not in table and (aliases or {}).get(device) in table:
            device = aliases[device]
        if device not in table:
            raise self._bad(f"no device '{device}' (devices: {', '.join(sorted(table))})")
        values = table[device]
        if not isinstance(values, list) or len(values) != len(self.archs):
            n = len(values) if isinstance(values, list) else type(values).__name__
            raise self._bad(f"latency_ms.{device} has {n} values for {len(self.archs)} networks")
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_MS:  # NaN fails too
                raise self._bad(f"latency_ms.{device}[{i}] = {v!r:.40}: latencies must be finite numbers of ms "
                                f"in [0, {MAX_MS:g}]")
        return Measurements(
            path=self.path, sha256=self.sha256, device=device, description=str(self.descriptions.get(device, "")),
            archs=self.archs, latency_ms=np.asarray(values, dtype=float), devices=sorted(table),
        )


def read_measurement_file(path: str | Path) -> MeasurementFile:
    """Read and check ``path`` (networks and the shape of its latency table); a :class:`MeasurementError`
    names the file and the problem."""
    path = Path(path)
    raw, _, data = read_json_file(path, "measurement file", MeasurementError)

    def bad(message: str) -> MeasurementError:
        return MeasurementError(f"measurement file {path}: {message}")

    if not isinstance(data, dict):
        raise bad(f"expected a JSON object with 'archs' and 'latency_ms', got {type(data).__name__}")
    for key in ("archs", "latency_ms"):
        if key not in data:
            raise bad(f"missing key '{key}'")
    archs, table = data["archs"], data["latency_ms"]
    if not isinstance(archs, list) or not archs:
        raise bad("'archs' must be a non-empty list of networks (lists of op names)")
    for i, arch in enumerate(archs):
        if not isinstance(arch, list) or not all(isinstance(op, str) for op in arch):
            raise bad(f"archs[{i}] must be a list of op names")
    if not isinstance(table, dict) or not table:
        raise bad("'latency_ms' must be an object: device -> list of latencies (ms)")
    descriptions = data.get("devices") if isinstance(data.get("devices"), dict) else {}
    return MeasurementFile(path, hashlib.sha256(raw).hexdigest(), archs, table, descriptions)


def load_measurements(path: str | Path, device: str, aliases: dict[str, str] | None = None) -> Measurements:
    """Read ``path`` and take ``device``'s latencies; raise :class:`MeasurementError` on any problem.

    ``aliases`` maps other names to the file's device keys (e.g. target ``galaxy-a50`` ->
    ``samsung_a50``); a name the file has is always taken as it is.
    """
    return read_measurement_file(path).for_device(device, aliases)


def resolve_op(name: str, candidates: list[Option]) -> Option | None:
    """The candidate that op ``name`` names (HW-NAS-Bench or spnas naming), or ``None``."""
    text = name.strip()
    if text == "skip":
        skips = [o for o in candidates if o.is_skip]
        return skips[0] if skips else None
    if text == "skip_proj":
        return next((o for o in candidates if o.is_skip and o.project), None)
    m = _HWNB_OP.match(text)
    if m:  # HW-NAS-Bench: kK_eE[_gG]; e=1 is whichever e=1 block the layer has
        k, e, g = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
        found = [o for o in candidates if not o.is_skip and (o.kernel, o.expansion, o.groups) == (k, e, g)]
        return found[0] if len(found) == 1 else None
    return next((o for o in candidates if str(o) == text), None)


def resolve(space: Network, meas: Measurements) -> list[list[Option]]:
    """The option of every layer of every network; an unknown op or a wrong layer count is an error
    naming the network, the layer and the layer's candidates."""
    layers = infer_shapes(space).layers
    out = []
    for i, arch in enumerate(meas.archs):
        if len(arch) != len(layers):
            raise MeasurementError(f"measurement file {meas.path}: archs[{i}] has {len(arch)} ops, but "
                                   f"'{space.name}' has {len(layers)} layers")
        options = []
        for j, (name, shape) in enumerate(zip(arch, layers)):
            option = resolve_op(name, shape.layer.options)
            if option is None:
                known = ", ".join(str(o) for o in shape.layer.options)
                raise MeasurementError(f"measurement file {meas.path}: archs[{i}][{j}] = '{name}' is not a candidate "
                                       f"of layer {j} ({shape.name}) of '{space.name}' (candidates: {known})")
            options.append(option)
        out.append(options)
    return out


def measurement_json(space: Network, networks: list[list[Option]], device: str, latency_ms: list[float],
                     description: str = "") -> dict:
    """A measurement file's content in spnas's op naming (what ``lut validate`` writes)."""
    return {
        "space": space.name, "units": "ms",
        "archs": [[str(o) for o in options] for options in networks],
        "latency_ms": {device: [float(v) for v in latency_ms]},
        "devices": {device: description},
    }
