"""Regenerate the shipped FBNet device tables (targets/<name>.json) with ``spnasc lut fit``'s fit.

    .venv/bin/python tools/fit_device_targets.py [MEASUREMENTS]

(default MEASUREMENTS: targets/measurements/fbnet_cifar100_latency.json of this repository). One
table per device of the measurement file, for spaces/fbnet_cifar100.spnas, each with its provenance
(source file and hash, networks, regularisation, held-out error, residuals); name, description,
device and runtime come from the target registry (``spnas_dsl.targets.registry``). Prints the
held-out and in-sample errors as a Markdown table (docs/targets.md shows it); fails if an exactly
additive device is not recovered to 0.01 ms.
"""

from __future__ import annotations

import sys
from pathlib import Path

from spnas_dsl.parser import load
from spnas_dsl.profiling.lut import now
from spnas_dsl.targets.fit import fit_table, to_table
from spnas_dsl.targets.measurements import read_measurement_file, resolve
from spnas_dsl.targets.registry import DEVICE_KEYS, KNOWN_TARGETS
from spnas_dsl.targets.table import write_table

ROOT = Path(__file__).resolve().parent.parent
MEASUREMENTS = ROOT / "targets" / "measurements" / "fbnet_cifar100_latency.json"
EXACT = ("pixel3", "raspi4", "fpga", "eyeriss")  # table sums: must come back within 0.01 ms


def main(argv: list[str]) -> int:
    """Fit and write every device table; exit 1 if an additive device is not recovered exactly."""
    source = read_measurement_file(Path(argv[0]) if argv else MEASUREMENTS)  # read once, for every device
    space = load(ROOT / "spaces/fbnet_cifar100.spnas")
    networks = None  # the same networks for every device: resolved once
    status = 0
    print("| target | device key | networks | held-out MAPE % | held-out within 10 % | in-sample max \\|residual\\| ms "
          "| regularisation |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, key in DEVICE_KEYS.items():
        spec = KNOWN_TARGETS[name]
        meas = source.for_device(key)
        networks = networks if networks is not None else resolve(space, meas)
        result = fit_table(space, networks, meas.latency_ms)
        table = to_table(result, meas, space, name=name, description=spec.description, device=spec.device,
                         runtime=spec.runtime, threads=spec.threads, references=[spec.source], date=now())
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
