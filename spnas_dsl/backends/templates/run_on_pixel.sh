#!/usr/bin/env bash
# Time @NETWORK@ on an Android phone with TFLite's benchmark_model, one thread, as the
# Single-Path NAS paper timed its Pixel 1 networks. Written by `spnasc build --to tflite`;
# see README.md in this folder for the benchmark_model binary and how to read the results.
#
# Two runs: the headline timing (op profiling off: the profiler adds overhead to every op),
# then a separate, shorter run with the per-operator profile.
#
# Usage: ./run_on_pixel.sh [MODEL.tflite] [more benchmark_model flags...]
#   MODEL defaults to @DEFAULT_MODEL@ (models built: @MODELS@).
# Environment:
#   BENCHMARK_MODEL  path of the Android benchmark_model binary (default: ./benchmark_model here)
#   ADB              adb command (default: adb)
#   ANDROID_SERIAL   the phone to use when several are connected (see `adb devices`)
#   DEVICE_DIR       folder on the phone (default: /data/local/tmp/spnas)
#   NUM_RUNS, WARMUP_RUNS  headline benchmark repeats (default: 100, 10)
#   PROFILE_RUNS     runs of the op-profiling pass (default: 20; 0 skips it)
#   CPU_MASK         taskset mask (hex) pinning the run to a core cluster; default chosen from the
#                    phone model (Pixel / Pixel XL: c = cpu2-3, the big pair of its 4 cores;
#                    Pixel 2 / 2 XL: f0 = cpu4-7); `none` turns pinning off
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODEL="${1:-$HERE/../@DEFAULT_MODEL@}"
if [ $# -gt 0 ]; then shift; fi
BENCHMARK_MODEL="${BENCHMARK_MODEL:-$HERE/benchmark_model}"
ADB="${ADB:-adb}"
DEVICE_DIR="${DEVICE_DIR:-/data/local/tmp/spnas}"
NUM_RUNS="${NUM_RUNS:-100}"
WARMUP_RUNS="${WARMUP_RUNS:-10}"
PROFILE_RUNS="${PROFILE_RUNS:-20}"

die() { echo "run_on_pixel.sh: $*" >&2; exit 1; }

command -v "$ADB" >/dev/null 2>&1 || die "'$ADB' not found: install Android platform-tools (adb) or set ADB"
[ -f "$MODEL" ] || die "no model file '$MODEL'"
[ -f "$BENCHMARK_MODEL" ] || die "no benchmark_model binary at '$BENCHMARK_MODEL' (see $HERE/README.md)"

# Which phone: `adb devices` lists "SERIAL<TAB>STATE" lines after its header.
LISTING="$("$ADB" devices 2>/dev/null | tail -n +2 | tr -d '\r' || true)"
READY="$(printf '%s\n' "$LISTING" | awk -F'\t' '$2 == "device" {print $1}')"
OTHERS="$(printf '%s\n' "$LISTING" | awk -F'\t' 'NF == 2 && $2 != "device" {print $1 " (" $2 ")"}')"
COUNT="$(printf '%s\n' "$READY" | grep -c . || true)"
if [ -n "${ANDROID_SERIAL:-}" ]; then
    printf '%s\n' "$READY" | grep -qxF "$ANDROID_SERIAL" \
        || die "ANDROID_SERIAL=$ANDROID_SERIAL is not a connected phone (adb devices: $(echo $READY $OTHERS))"
    SERIAL="$ANDROID_SERIAL"
elif [ "$COUNT" -eq 0 ]; then
    if [ -n "$OTHERS" ]; then
        die "no usable phone: $(echo $OTHERS) (unlock it and accept the USB debugging prompt)"
    fi
    die "no phone connected (adb devices lists none); connect one with USB debugging on"
elif [ "$COUNT" -gt 1 ]; then
    die "$COUNT phones connected ($(echo $READY)): choose one with ANDROID_SERIAL=SERIAL ./run_on_pixel.sh"
else
    SERIAL="$READY"
fi
adbs() { "$ADB" -s "$SERIAL" "$@"; }

PHONE="$(adbs shell getprop ro.product.model | tr -d '\r')"
CORES="$(adbs shell cat /sys/devices/system/cpu/possible | tr -d '\r')"  # e.g. 0-3
LAST_CPU="${CORES##*-}"
if [ -z "${CPU_MASK:-}" ]; then
    case "$PHONE" in
        "Pixel"|"Pixel XL") CPU_MASK=c ;;      # Snapdragon 821: cpu0-1 little, cpu2-3 big
        "Pixel 2"|"Pixel 2 XL") CPU_MASK=f0 ;; # Snapdragon 835: cpu4-7 big
        *) CPU_MASK=none ;;
    esac
fi
PREFIX=""
if [ "$CPU_MASK" != "none" ]; then
    [[ "$CPU_MASK" =~ ^[0-9a-fA-F]+$ ]] || die "CPU_MASK=$CPU_MASK is not a hexadecimal taskset mask (e.g. c) or none"
    # A mask naming a CPU the phone does not have makes taskset fail: check it first.
    MASK_TOP=$(( 16#$CPU_MASK >> (LAST_CPU + 1) ))
    [ "$MASK_TOP" -eq 0 ] || die "CPU_MASK=$CPU_MASK names CPUs beyond cpu$LAST_CPU of '$PHONE' (cpus $CORES); set CPU_MASK (or none)"
    PREFIX="taskset $CPU_MASK"
fi

NAME="$(basename "$MODEL")"
adbs shell mkdir -p "$DEVICE_DIR"
adbs push "$BENCHMARK_MODEL" "$DEVICE_DIR/benchmark_model" >/dev/null
adbs shell chmod 755 "$DEVICE_DIR/benchmark_model"
adbs push "$MODEL" "$DEVICE_DIR/$NAME" >/dev/null

run() {  # run PROFILING RUNS WARMUP [flags...]
    local profiling="$1" runs="$2" warmup="$3"
    shift 3
    adbs shell $PREFIX "$DEVICE_DIR/benchmark_model" \
        --graph="$DEVICE_DIR/$NAME" \
        --num_threads=1 \
        --enable_op_profiling="$profiling" \
        --num_runs="$runs" \
        --warmup_runs="$warmup" \
        "$@"
}

PINNED="${PREFIX:+, pinned with $PREFIX}"
echo "benchmarking $NAME on $PHONE ($SERIAL; 1 thread$PINNED)"
HEADLINE="$HERE/benchmark_${NAME%.tflite}.txt"
run false "$NUM_RUNS" "$WARMUP_RUNS" "$@" | tee "$HEADLINE"
# benchmark_model reports microseconds: "Inference timings in us: ... Inference (avg): 79480.5"
AVG_US="$(tr -d '\r' < "$HEADLINE" | sed -n 's/.*Inference (avg): \([0-9.e+]*\).*/\1/p' | tail -n 1)"
if [ -n "$AVG_US" ]; then
    echo "headline: $(awk -v us="$AVG_US" 'BEGIN { printf "%.2f", us / 1000 }') ms per inference (Inference (avg) $AVG_US us, no op profiling)"
fi
if [ "$PROFILE_RUNS" -gt 0 ]; then
    echo "per-operator profile ($PROFILE_RUNS runs, profiler on: slower than the headline)"
    run true "$PROFILE_RUNS" 1 "$@" > "$HERE/benchmark_${NAME%.tflite}_ops.txt"
    echo "written to $HERE/benchmark_${NAME%.tflite}_ops.txt"
fi
