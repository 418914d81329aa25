"""Targets: devices spnas can price networks for, and their lookup tables.

- :mod:`~spnas_dsl.targets.registry`: the known targets, :data:`DEFAULT_TARGET`, and
  :func:`load_target`, the one resolver of a target name;
- :mod:`~spnas_dsl.targets.table`: the lookup-table file (schema, load, write, lookup rule);
- :mod:`~spnas_dsl.targets.signature`: the layer signatures that key a table;
- :mod:`~spnas_dsl.targets.cache`: the user cache of local tables;
- :mod:`~spnas_dsl.targets.listing`: ``spnasc targets``;
- ``measurements``, ``fit``: whole-network measurement files, and ``lut fit`` (a table fitted to them).
"""

from spnas_dsl.targets.cache import cache_dir, local_table_path
from spnas_dsl.targets.listing import TargetStatus, list_targets
from spnas_dsl.targets.registry import (
    ANDROID_RE,
    DEFAULT_TARGET,
    DEVICE_KEYS,
    KNOWN_TARGETS,
    Target,
    TargetSpec,
    load_target,
    resolve_spec,
)
from spnas_dsl.targets.table import Calibration, LatencyTable, Lookup

__all__ = [
    "ANDROID_RE", "DEFAULT_TARGET", "DEVICE_KEYS", "KNOWN_TARGETS", "Calibration", "LatencyTable", "Lookup",
    "Target", "TargetSpec", "TargetStatus", "cache_dir", "list_targets", "load_target", "local_table_path",
    "resolve_spec",
]
