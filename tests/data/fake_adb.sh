#!/bin/sh
# A stand-in for `adb` in tests: records every call and answers like a phone.
# FAKE_ADB_LOG: file the calls are appended to (one line per call, arguments separated by tabs);
# FAKE_ADB_OUTPUT: a captured benchmark_model output printed for benchmark runs;
# FAKE_ADB_SLEEP: seconds each benchmark run takes (default 0).
printf '%s\t' "$@" >> "$FAKE_ADB_LOG"
printf '\n' >> "$FAKE_ADB_LOG"
if [ "$1" = "-s" ]; then shift 2; fi
case "$1" in
    push)
        if [ ! -f "$2" ]; then echo "adb: error: cannot stat '$2': No such file or directory" >&2; exit 1; fi
        echo "$2: 1 file pushed, 0 skipped." ;;
    shell)
        shift
        case "$*" in
            getprop)
                printf '%s\n' "[ro.build.version.release]: [10]" "[ro.product.cpu.abi]: [arm64-v8a]" \
                    "[ro.product.manufacturer]: [Google]" "[ro.product.model]: [Pixel 1]" ;;
            *benchmark_model*--graph=*)
                if [ -n "$FAKE_ADB_SLEEP" ]; then sleep "$FAKE_ADB_SLEEP"; fi
                cat "$FAKE_ADB_OUTPUT" ;;
            *) ;;
        esac ;;
    devices) printf 'List of devices attached\nFAKE123\tdevice\n' ;;
    *) exit 1 ;;
esac
