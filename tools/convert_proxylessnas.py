"""Convert the ProxylessNAS authors' Pixel 1 latency table into targets/pixel1-proxylessnas.json.

Usage: python tools/convert_proxylessnas.py [YAML] [OUTPUT]
(defaults: targets/sources/proxylessnas_pixel1_mobile_trim.yaml, a copy of
../shared/reference/devices/proxylessnas_pixel1_mobile_trim.yaml; targets/pixel1-proxylessnas.json)

The source (``mobile_trim.yaml`` of the han-cai/files repository that ProxylessNAS's search
code downloads) maps an operator and its shapes to ``count``, ``mean`` and ``var`` (ms):

- ``expanded_conv-input:HxWxC-output:H'xW'xC'-expand:E-kernel:K-stride:S-idskip:I`` -> the
  MBConv signature ``mbconv:iHxWxC:oC':sS:kKeE`` (E = 1 is the depthwise-separable block, as
  in the MnasNet space's first layer; ``idskip`` follows from the shape);
- ``Conv-input:224x224x3-output:112x112x32`` -> the stem ``conv:i224x224x3:o32:s2:k3``;
- ``Conv_1-...`` (1x1 head conv) + ``Logits-...`` (pool and classifier) -> the head signature,
  the sum of the two means (their counts are equal; the variances add).

Entries are keyed by shape only (no position): every layer of that shape gets the figure.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from spnas_dsl.targets.registry import KNOWN_TARGETS
from spnas_dsl.targets.table import Entry, LatencyTable, write_table

REPO = Path(__file__).resolve().parent.parent
SPEC = KNOWN_TARGETS["pixel1-proxylessnas"]  # name, device, runtime, threads: the registry's
SOURCE = (
    "ProxylessNAS (Cai et al., ICLR 2019): the authors' published Pixel 1 latency table mobile_trim.yaml "
    "(han-cai/files, downloaded by ProxylessNAS's search code), per operator: count (runs), mean and var (ms); "
    "measured with TFLite on a Google Pixel 1 (version, threads and precision not recorded). Converted by "
    "tools/convert_proxylessnas.py from targets/sources/proxylessnas_pixel1_mobile_trim.yaml."
)
_KEY = re.compile(r"^(?P<op>[A-Za-z_0-9]+)-input:(?P<i>\d+x\d+x\d+)-output:(?P<o>[0-9x]+)(?P<rest>.*):$")
_REST = re.compile(r"^-expand:(\d+)-kernel:(\d+)-stride:(\d+)-idskip:([01])$")


def parse_yaml(text: str, name: str) -> dict[str, dict[str, float]]:
    """The file's ``key: {count, mean, var}`` records (the only YAML shape it uses)."""
    records: dict[str, dict[str, float]] = {}
    key = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if not line.startswith(" "):
            key = line.strip().removesuffix(":")
            records[key] = {}
            continue
        field, _, value = line.strip().partition(":")
        if key is None or field not in ("count", "mean", "var"):
            raise ValueError(f"{name}:{number}: unexpected line {line.strip()!r}")
        records[key][field] = float(value)
    return records


def convert(records: dict[str, dict[str, float]]) -> LatencyTable:
    """The pixel1-proxylessnas table from the parsed records."""
    entries, head = [], {}
    for key, rec in records.items():
        m = _KEY.match(key + ":")
        if not m:
            raise ValueError(f"unexpected key {key!r}")
        op, i, o, rest = m.group("op"), m.group("i"), m.group("o"), m.group("rest")
        count, mean, var = int(rec["count"]), rec["mean"], rec["var"]
        if op == "expanded_conv":
            e, k, s, _ = (int(v) for v in _REST.match(rest).groups())
            signature = f"mbconv:i{i}:o{o.split('x')[2]}:s{s}:k{k}e{e}"
        elif op == "Conv":
            h_in = int(i.split("x")[0])
            h_out = int(o.split("x")[0])
            signature = f"conv:i{i}:o{o.split('x')[2]}:s{h_in // h_out}:k3"
        elif op in ("Conv_1", "Logits"):
            head[op] = (i, o, count, mean, var)
            continue
        else:
            raise ValueError(f"unknown operator {op!r} in {key!r}")
        entries.append(Entry(signature=signature, latency_ms=mean, count=count, var=var))
    (i, o, count, mean1, var1), (_, classes, _, mean2, var2) = head["Conv_1"], head["Logits"]
    entries.append(Entry(signature=f"head:i{i}:o{o.split('x')[2]}:c{classes}", latency_ms=mean1 + mean2,
                         count=count, var=var1 + var2))
    return LatencyTable(
        name=SPEC.name,
        description="the ProxylessNAS authors' Pixel 1 table for the MnasNet space, keyed by operator shape "
                    "(kernels 3, 5, 7; expansions 1, 3, 6; read-only)",
        device=SPEC.device, runtime=SPEC.runtime, threads=SPEC.threads, source=SOURCE, date="undated (published with ProxylessNAS, ICLR 2019)",
        read_only=True, entries=sorted(entries, key=lambda e: e.signature),
    )


def main(argv: list[str]) -> int:
    """Read the YAML, write the table."""
    src = Path(argv[0]) if argv else REPO / "targets" / "sources" / "proxylessnas_pixel1_mobile_trim.yaml"
    out = Path(argv[1]) if len(argv) > 1 else REPO / "targets" / "pixel1-proxylessnas.json"
    table = convert(parse_yaml(src.read_text(encoding="utf-8"), str(src)))
    write_table(out, table)
    print(f"wrote {out}: {len(table.entries)} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
