"""Regenerate the shipped FBNet device tables (targets/<name>.json) with ``spnasc lut fit``'s fit.

    .venv/bin/python tools/fit_device_targets.py [MEASUREMENTS]

(default MEASUREMENTS: targets/measurements/fbnet_cifar100_latency.json). One table per
device of the measurement file, for spaces/fbnet_cifar100.spnas, each with its provenance
(source file and hash, networks, regularisation, held-out error, residuals). Prints the
held-out and in-sample errors as a Markdown table (docs/targets.md shows it); fails if an exactly additive device is not recovered to 0.01 ms.
"""

from __future__ import annotations

import sys
from pathlib import Path

from spnas_dsl.parser import load
from spnas_dsl.profiling.lut import now
from spnas_dsl.targets import KNOWN_TARGETS
from spnas_dsl.targets.fit import fit_table, to_table
from spnas_dsl.targets.measurements import load_measurements, resolve
from spnas_dsl.targets.table import write_table

ROOT = Path(__file__).resolve().parent.parent
EXACT = ("pixel3", "raspi4", "fpga", "eyeriss")  # table sums: must come back within 0.01 ms


def main(argv: list[str]) -> int:
    """Fit and write every device table; exit 1 if an additive device is not recovered exactly."""
    from spnas_dsl.targets import DEVICE_KEYS

    source = Path(argv[0]) if argv else Path("targets/measurements/fbnet_cifar100_latency.json")
    space = load(ROOT / "spaces/fbnet_cifar100.spnas")
    status = 0
    print("| target | device key | networks | held-out MAPE % | held-out within 10 % | in-sample max \\|residual\\| ms "
          "| regularisation |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, key in DEVICE_KEYS.items():
        spec = KNOWN_TARGETS[name]
        meas = load_measurements(source, key)
        result = fit_table(space, resolve(space, meas), meas.latency_ms)
        table = to_table(result, meas, space, name=name, description=spec.description, runtime=spec.runtime,
                         references=[spec.source], date=now())
        write_table(ROOT / "targets" / spec.table, table)
        worst = result.fit["max_abs_error_ms"]
        cv = result.cv
        print(f"| `{name}` | `{key}` | {meas.count} | {cv['mape_pct']:.2f} | {cv['within_10_pct']:.1f} | {worst:.2g} "
              f"| {result.regularisation:g} |")
        if name in EXACT and worst > 0.01:
            print(f"  {name}: not recovered to 0.01 ms", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
