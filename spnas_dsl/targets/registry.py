"""The target registry: which devices spnas can price networks for, and the one resolver of a name.

A target is a device + runtime + thread count whose per-layer latencies are recorded in a
lookup table (:mod:`spnas_dsl.targets.table`). Targets are data, not code:

- built-in tables ship in the repository's ``targets/`` folder (``pixel1``: the paper's
  published Pixel 1 table, read-only: it cannot be profiled here);
- local tables live in the user cache (:mod:`spnas_dsl.targets.cache`), written by
  ``spnasc lut build`` for the profilable kinds: ``host-tflite``, ``host-onnxruntime`` and
  ``android:SERIAL`` (any phone reachable over adb).

A command resolves the name the user gave once, with :func:`load_target` (default
:data:`DEFAULT_TARGET`), and hands the :class:`Target` on. To add a target kind, add a
:class:`TargetSpec` to :data:`KNOWN_TARGETS` (or a name pattern like :data:`ANDROID_RE`
resolved in :func:`resolve_spec`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from spnas_dsl.errors import TargetError
from spnas_dsl.resources import data_path
from spnas_dsl.targets.cache import local_table_path, scan_local_tables
from spnas_dsl.targets.table import Calibration, LatencyTable, Lookup, load_table

DEFAULT_TARGET = "pixel1"  # the paper's table: what a command prices on when no --target is given


@dataclass(frozen=True)
class TargetSpec:
    """What a target is. ``table``: the built-in table file in ``targets/`` (None: a local table)."""

    name: str
    description: str
    device: str
    runtime: str
    threads: int
    profilable: bool  # whether ``spnasc lut build`` can measure it from this machine
    kind: str = "builtin"  # builtin | host | android | local | file
    table: str | None = None
    source: str = ""  # where the table's figures come from (papers, licences, how they were obtained)
    space: str = ""   # the space file the table prices, when it is made for one

    @property
    def what(self) -> str:
        """One line: device, runtime, threads."""
        threads = f"{self.threads} thread" + ("s" if self.threads != 1 else "")
        return f"{self.device}, {self.runtime}, {threads}"


_HELP = ("HELP (Lee et al., NeurIPS 2021; HayeonLee/HELP data/fbnet, MIT licence), "
         "targets/measurements/fbnet_cifar100_latency.json")
_HWNB = "HW-NAS-Bench (Li et al., ICLR 2021; GATECH-EIC/HW-NAS-Bench, MIT licence)"

_SUMMED = f"{_HWNB} per-block figures, summed over each network in {_HELP}; fitted back by spnasc lut fit"
_MEASURED = "whole networks measured on the {}, " + _HELP + "; fitted by spnasc lut fit (additive)"

# name, device key of the measurement file, device, runtime, how the figures were obtained
_DEVICES = (
    ("pixel3", "pixel3", "Google Pixel 3", "TFLite", _SUMMED),
    ("raspi4", "raspi4", "Raspberry Pi 4", "TFLite", _SUMMED),
    ("fpga", "fpga", "FPGA (HW-NAS-Bench)", "HW-NAS-Bench FPGA flow", _SUMMED),
    ("eyeriss", "eyeriss", "Eyeriss ASIC (HW-NAS-Bench)", "HW-NAS-Bench Eyeriss flow", _SUMMED),
    ("pixel2", "pixel2", "Google Pixel 2", "as measured by HELP", _MEASURED.format("phone (whole ms)")),
    ("galaxy-a50", "samsung_a50", "Samsung Galaxy A50", "as measured by HELP", _MEASURED.format("phone (whole ms)")),
    ("galaxy-s7", "samsung_s7", "Samsung Galaxy S7", "as measured by HELP", _MEASURED.format("phone (whole ms)")),
    ("essential-ph1", "essential_ph_1", "Essential PH-1", "as measured by HELP", _MEASURED.format("phone (whole ms)")),
    ("xeon-gold-6226", "gold_6226", "Intel Xeon Gold 6226 CPU", "as measured by HELP (batch 1)",
     _MEASURED.format("CPU")),
)
DEVICE_KEYS = {name: key for name, key, *_ in _DEVICES}  # target name -> device key of the measurement file


def _device_specs() -> list[TargetSpec]:
    return [
        TargetSpec(name=name, description=f"{device}: a table for spaces/fbnet_cifar100.spnas (read-only)",
                   device=device, runtime=runtime, threads=1, profilable=False, kind="builtin", table=f"{name}.json",
                   source=source, space="spaces/fbnet_cifar100.spnas")
        for name, _, device, runtime, source in _DEVICES
    ]


KNOWN_TARGETS: dict[str, TargetSpec] = {
    "pixel1": TargetSpec(
        name="pixel1",
        description="the Single-Path NAS paper's published Pixel 1 table (read-only)",
        device="Google Pixel 1",
        runtime="TFLite float",
        threads=1,
        profilable=False,
        kind="builtin",
        table="pixel1.json",
        source="Stamoulis et al., Single-Path NAS (ECML-PKDD 2019), pixel1_runtime_model.json of "
        "dstamoulis/single-path-nas; converted by tools/convert_pixel1.py",
        space="spaces/mnasnet.spnas",
    ),
    "pixel1-proxylessnas": TargetSpec(
        name="pixel1-proxylessnas",
        description="the ProxylessNAS authors' Pixel 1 table, keyed by operator shape (read-only)",
        device="Google Pixel 1",
        runtime="TFLite",
        threads=1,
        profilable=False,
        kind="builtin",
        table="pixel1-proxylessnas.json",
        source="ProxylessNAS (Cai et al., ICLR 2019), mobile_trim.yaml of han-cai/files (count, mean, var per "
        "operator); converted by tools/convert_proxylessnas.py",
        space="spaces/mnasnet.spnas",
    ),
    **{spec.name: spec for spec in _device_specs()},
    "host-tflite": TargetSpec(
        name="host-tflite",
        description="this machine's CPU through the TFLite (LiteRT) interpreter",
        device="host CPU",
        runtime="TFLite float",
        threads=1,
        profilable=True,
        kind="host",
    ),
    "host-onnxruntime": TargetSpec(
        name="host-onnxruntime",
        description="this machine's CPU through ONNX Runtime",
        device="host CPU",
        runtime="ONNX Runtime float (CPU execution provider)",
        threads=1,
        profilable=True,
        kind="host",
    ),
}

# ``android:SERIAL``: a phone reachable with ``adb -s SERIAL`` (serials may hold host:port).
ANDROID_RE = re.compile(r"^android:(?P<serial>[A-Za-z0-9][A-Za-z0-9._:-]*)$")
ANDROID_PATTERN = "android:SERIAL"


@dataclass(frozen=True)
class Target:
    """A target with its loaded lookup table."""

    spec: TargetSpec
    table: LatencyTable
    path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def calibration(self) -> Calibration:
        return self.table.calibration

    @property
    def read_only(self) -> bool:
        return self.table.read_only or not self.spec.profilable

    def lookup(self, signature: str, position: int | None = None) -> Lookup | None:
        """The table's figure for ``signature`` at layer ``position`` (see :meth:`LatencyTable.lookup`)."""
        return self.table.lookup(signature, position)


def spec_from_table(name: str, table: LatencyTable, kind: str) -> TargetSpec:
    return TargetSpec(
        name=name, description=table.description, device=table.device, runtime=table.runtime,
        threads=table.threads, profilable=not table.read_only, kind=kind,
    )


def _known_names() -> tuple[list[str], list[Path]]:
    """(known target names, unusable table files in the cache)."""
    local = scan_local_tables()
    names = list(KNOWN_TARGETS) + [ANDROID_PATTERN]
    names += [t.name for t in local if t.table is not None and t.name not in KNOWN_TARGETS]
    return names, [t.path for t in local if t.table is None]


def resolve_spec(name: str) -> TargetSpec:
    """The spec of target ``name``; an unknown name is a :class:`TargetError` listing the known ones."""
    if name in KNOWN_TARGETS:
        return KNOWN_TARGETS[name]
    m = ANDROID_RE.match(name)
    if m:
        serial = m.group("serial")
        return TargetSpec(
            name=name, description=f"Android device {serial} over adb", device=f"Android device {serial}",
            runtime="TFLite float", threads=1, profilable=True, kind="android",
        )
    path = local_table_path(name)
    if path.is_file():
        table = load_table(path)
        if table.name == name:
            return spec_from_table(name, table, "local")
    known, unusable = _known_names()
    bad = f" (unusable tables in the cache: {', '.join(str(p) for p in unusable)}; see `spnasc targets`)" if unusable else ""
    raise TargetError(f"unknown target '{name}'; known: {', '.join(known)}{bad}")


def _is_file_name(name: str) -> bool:
    return name.endswith(".json") or os.sep in name or "/" in name


def load_target(name: str) -> Target:
    """Load target ``name`` (a registered name, ``android:SERIAL``, a local table, or a table file path).

    Raises :class:`TargetError` for an unknown target, a profilable target whose table has not
    been built yet, or a missing/corrupt table file (the message names the file).
    """
    if _is_file_name(name):
        path = Path(name)
        table = load_table(path)
        return Target(spec_from_table(table.name, table, "file"), table, path)
    spec = resolve_spec(name)
    if spec.table is not None:
        path = data_path("targets", spec.table)
    else:
        path = local_table_path(name)
        if not path.is_file():
            raise TargetError(
                f"target '{name}' has no lookup table yet ({path}); build it with "
                f"`spnasc lut build SPACE --target {name}`"
            )
    table = load_table(path)
    if table.name != name:
        raise TargetError(f"target table {path} is for target '{table.name}', not '{name}'")
    return Target(spec, table, path)
