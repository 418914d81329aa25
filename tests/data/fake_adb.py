#!/usr/bin/env python3
"""A stand-in for ``adb`` in tests: records every call, answers like a phone.

Environment: FAKE_ADB_LOG (file the calls are appended to, one JSON list per line),
FAKE_ADB_OUTPUT (a captured benchmark_model output printed for benchmark runs),
FAKE_ADB_SLEEP (seconds each benchmark run takes, default 0).
"""
import json
import os
import sys
import time

args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(args) + "\n")
if args[:1] == ["-s"]:
    args = args[2:]
if not args:
    sys.exit(1)
if args[0] == "push":
    if not os.path.isfile(args[1]):
        print(f"adb: error: cannot stat '{args[1]}': No such file or directory", file=sys.stderr)
        sys.exit(1)
    print(f"{args[1]}: 1 file pushed, 0 skipped.")
elif args[0] == "shell":
    command = " ".join(args[1:])
    props = {"ro.product.manufacturer": "Google", "ro.product.model": "Pixel 1",
             "ro.build.version.release": "10", "ro.product.cpu.abi": "arm64-v8a"}
    if command.startswith("getprop "):
        print(props.get(command.split()[1], ""))
    elif "benchmark_model" in command and "--graph=" in command:
        time.sleep(float(os.environ.get("FAKE_ADB_SLEEP", "0")))
        with open(os.environ["FAKE_ADB_OUTPUT"], encoding="utf-8") as f:
            sys.stdout.write(f.read())
elif args[0] == "devices":
    print("List of devices attached\nFAKE123\tdevice")
else:
    sys.exit(1)
