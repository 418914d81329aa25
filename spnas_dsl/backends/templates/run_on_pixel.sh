#!/usr/bin/env bash
# Time @NETWORK@ on an Android phone with TFLite's benchmark_model: one thread, per-operator
# profile (the setting of the Single-Path NAS paper's Pixel 1 measurements). Written by
# `spnasc build --to tflite`; see README.md in this folder for the benchmark_model binary.
#
# Usage: ./run_on_pixel.sh [MODEL.tflite] [more benchmark_model flags...]
#   MODEL defaults to @DEFAULT_MODEL@ (models built: @MODELS@).
# Environment:
#   BENCHMARK_MODEL  path of the Android benchmark_model binary (default: ./benchmark_model here)
#   ADB              adb command (default: adb); ANDROID_SERIAL picks one of several phones
#   DEVICE_DIR       folder on the phone (default: /data/local/tmp/spnas)
#   NUM_RUNS, WARMUP_RUNS  benchmark repeats (default: 100, 10)
#   CPU_MASK         optional taskset mask to pin the run to one core cluster, e.g. f0
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL="${1:-$HERE/../@DEFAULT_MODEL@}"
if [ $# -gt 0 ]; then shift; fi
BENCHMARK_MODEL="${BENCHMARK_MODEL:-$HERE/benchmark_model}"
ADB="${ADB:-adb}"
DEVICE_DIR="${DEVICE_DIR:-/data/local/tmp/spnas}"
NUM_RUNS="${NUM_RUNS:-100}"
WARMUP_RUNS="${WARMUP_RUNS:-10}"

die() { echo "run_on_pixel.sh: $*" >&2; exit 1; }

command -v "$ADB" >/dev/null 2>&1 || die "'$ADB' not found: install Android platform-tools (adb) or set ADB"
[ -f "$MODEL" ] || die "no model file '$MODEL'"
[ -f "$BENCHMARK_MODEL" ] || die "no benchmark_model binary at '$BENCHMARK_MODEL' (see $HERE/README.md)"
[ "$("$ADB" get-state 2>/dev/null || true)" = "device" ] || die "no phone connected (adb get-state); enable USB debugging"

NAME="$(basename "$MODEL")"
"$ADB" shell mkdir -p "$DEVICE_DIR"
"$ADB" push "$BENCHMARK_MODEL" "$DEVICE_DIR/benchmark_model" >/dev/null
"$ADB" shell chmod 755 "$DEVICE_DIR/benchmark_model"
"$ADB" push "$MODEL" "$DEVICE_DIR/$NAME" >/dev/null

PREFIX=""
if [ -n "${CPU_MASK:-}" ]; then PREFIX="taskset $CPU_MASK"; fi

echo "benchmarking $NAME on $("$ADB" shell getprop ro.product.model | tr -d '\r') (1 thread, op profiling)"
"$ADB" shell $PREFIX "$DEVICE_DIR/benchmark_model" \
    --graph="$DEVICE_DIR/$NAME" \
    --num_threads=1 \
    --enable_op_profiling=true \
    --num_runs="$NUM_RUNS" \
    --warmup_runs="$WARMUP_RUNS" \
    "$@" | tee "$HERE/benchmark_${NAME%.tflite}.txt"
