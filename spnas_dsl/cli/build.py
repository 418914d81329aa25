"""spnasc build FILE --to pytorch|onnx|tflite|timm: export a concrete network, checked against PyTorch."""

from __future__ import annotations

EXAMPLES = """\
examples:
  spnasc build examples/spnasnet.spnas --to pytorch --to onnx --to tflite --to timm
  spnasc build net.spnas --to tflite --weights net.safetensors --int8 --calib-data fashion-mnist
  spnasc build net.spnas --to onnx,tflite --data fashion-mnist --out build/net

Every build writes build.json (each file's size, sha256, and how far its outputs are from
PyTorch's) and fails when a float export differs by more than 1e-4 of the output scale.
"""


def register(sub) -> None:
    import argparse

    from spnas_dsl.backends import EXPORTERS
    from spnas_dsl.cli.options import out_folder, positive_int, seed

    p = sub.add_parser(
        "build",
        help="export a concrete network (PyTorch .pt2, ONNX, TFLite, timm) with parity checks",
        description="Export a concrete network to one or more backends. Every float artifact is run and\n"
        "compared with PyTorch (fails beyond 1e-4 of the output scale); build.json records files,\n"
        "hashes and differences. Without --weights the network gets seeded weights (for checks and timing).",
        epilog=EXAMPLES + "\nbackends:\n" + "\n".join(f"  {s.name:<8} {s.help}" for s in EXPORTERS.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help="a concrete .spnas network (not a search space)")
    p.add_argument("--to", action="append", metavar="BACKEND", required=True,
                   help=f"backend to build, repeatable or comma-separated: {', '.join(EXPORTERS)}")
    p.add_argument("--weights", metavar="FILE.safetensors", help="trained weights (safetensors state dict)")
    p.add_argument("--out", metavar="DIR", type=out_folder,
                   help="output folder, new or empty (default: build/<network name>/)")
    p.add_argument("--force", action="store_true",
                   help="build into a non-empty --out: replaces the previous build's files (those its build.json "
                   "lists) once the new build has passed its checks, and keeps any others")
    p.add_argument("--int8", action="store_true", help="also write a full-integer int8 TFLite model")
    p.add_argument("--calib-data", metavar="SPEC", help="int8 calibration data set (training split), e.g. "
                   "fashion-mnist, imagefolder:PATH; default: --data, else random samples")
    p.add_argument("--data", metavar="SPEC", help="data set whose held-out split every artifact is also "
                   "checked and scored on (accuracy)")
    p.add_argument("--data-dir", metavar="DIR", help="where the data set's files are")
    p.add_argument("--calib-samples", type=positive_int, default=200, metavar="N", help="calibration images (default 200)")
    p.add_argument("--eval-samples", type=positive_int, default=500, metavar="N", help="held-out images (default 500)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the initial weights and the parity batch")
    p.add_argument("--threads", type=positive_int, metavar="N", help="PyTorch compute threads (default: PyTorch's choice; "
                   "1 is fastest on a machine shared with other jobs)")
    p.add_argument("--json", action="store_true", help="print build.json instead of the summary")
    p.set_defaults(run=run)


def _formats(values: list[str]) -> list[str]:
    return [t.strip() for value in values for t in value.split(",") if t.strip()]


def run(args) -> int:
    import json
    import sys

    from spnas_dsl.backends import build
    from spnas_dsl.parser import load

    network = load(args.file)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    log = (lambda message: print(message, file=sys.stderr)) if args.json else print
    result = build(network, _formats(args.to), args.out, weights=args.weights, int8=args.int8, data=args.data,
                   calib_data=args.calib_data, data_dir=args.data_dir, calib_samples=args.calib_samples,
                   eval_samples=args.eval_samples, seed=args.seed, log=log, force=args.force)
    if args.json:
        print(json.dumps(result.manifest, indent=2))
        return 0
    manifest = result.manifest
    heldout = manifest["parity"]["heldout"]
    print(f"built {network.name} into {result.out_dir}/")
    print(f"parity: max |out - pytorch| / max |pytorch| (limit {manifest['parity']['tolerance']:g} for float32) on "
          f"{manifest['parity']['random_batch']['shape'][0]} random inputs"
          + (f" and {heldout['description']} (PyTorch accuracy {heldout['pytorch_accuracy']:.4f})" if heldout else ""))
    print(f"  {'file':<30} {'size':>10}  {'precision':<9} {'random':>9} {'held-out':>9} {'accuracy':>9}")
    for a in result.artifacts:
        size = (result.out_dir / a.path).stat().st_size
        line = f"  {a.path:<30} {_size(size):>10}"
        if a.parity:
            held = a.parity.get("heldout")
            line += f"  {a.precision:<9} {a.parity['random']['relative']:>9.1e}"
            line += f" {held['relative']:>9.1e} {a.info['heldout_accuracy']:>9.4f}" if held else ""
        print(line)
    print(f"  {'build.json':<30}")
    return 0


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"
