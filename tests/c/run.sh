#!/usr/bin/env bash
# The C core's own tests (tests/c/test_core.c, and tests/c/test_threads.c for the BLAS
# thread budget), built with every warning as an error:
#   native  gcc and clang (where installed), the flags of setup.py plus -Wall -Wextra
#           -Wconversion -Wshadow -Werror;
#   win64   cross-compiled with mingw-w64 (LLP64: long is 32 bits, as under MSVC) and run
#           under wine — the stand-in for a Windows runner until there is one.
#   onednn  tests/c/onednn_abi.c: our declarations of oneDNN's C API (src_c/aiva_dnnl_api.h)
#           against oneDNN's own headers, from the onednn-devel-cpu-gomp wheel (downloaded).
# The reduced-precision provider (src_c/aiva_onednn.c) is compiled with the same flags by
# native and win64 (it needs oneDNN only at run time, which tests/test_lowp.py covers).
# Usage: bash tests/c/run.sh [native|win64|onednn|all] (default all).  A toolchain that is missing
# fails the run unless AIVA_C_TESTS_OPTIONAL=1 (then it is reported as skipped).
set -euo pipefail
cd "$(dirname "$0")/../.."
which=${1:-all}
out=$(mktemp -d)
cleanup() {
    # wineserver outlives the program for a few seconds: stop it before removing its prefix.
    if [ -d "$out/wine" ]; then WINEPREFIX="$out/wine" wineserver -k 2>/dev/null || true; fi
    rm -rf "$out"
}
trap cleanup EXIT
WARN="-std=c99 -Wall -Wextra -Wconversion -Wshadow -Werror"
OPT="-O3 -fno-math-errno -fno-trapping-math"
SRC="tests/c/test_core.c src_c/aiva_core.c src_c/aiva_adam.c src_c/blas_open.c"
THREADS_SRC="tests/c/test_threads.c src_c/aiva_threads.c"
INC="-Isrc_c -Iaiva_cy"
ran=0 skipped=0

missing() {
    if [ "${AIVA_C_TESTS_OPTIONAL:-0}" = 1 ]; then
        echo "--- skipped: $1 not installed"; skipped=$((skipped + 1)); return 0
    fi
    echo "--- $1 not installed (apt-get install $2)" >&2; exit 1
}

native() {
    for cc in gcc clang; do
        if ! command -v "$cc" >/dev/null; then missing "$cc" "$cc"; continue; fi
        echo "--- native, $cc"
        "$cc" $WARN $OPT $INC $SRC -ldl -lm -o "$out/test_$cc"
        "$cc" $WARN $OPT $INC -c src_c/aiva_onednn.c -o "$out/onednn_$cc.o"
        "$out/test_$cc"
        "$cc" $WARN $OPT $INC $THREADS_SRC -ldl -lpthread -o "$out/test_threads_$cc"
        "$out/test_threads_$cc"
        ran=$((ran + 1))
    done
}

win64() {
    if ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
        missing x86_64-w64-mingw32-gcc gcc-mingw-w64-x86-64; return 0
    fi
    if ! command -v wine >/dev/null; then missing wine "wine wine64"; return 0; fi
    echo "--- win64 (mingw-w64, LLP64) under wine"
    x86_64-w64-mingw32-gcc $WARN $OPT $INC $SRC -o "$out/test_core.exe"
    x86_64-w64-mingw32-gcc $WARN $OPT $INC $THREADS_SRC -o "$out/test_threads.exe"
    x86_64-w64-mingw32-gcc $WARN $OPT $INC -c src_c/aiva_onednn.c -o "$out/onednn.o"
    # A private wine prefix: nothing of the user's, and nothing left behind.
    WINEPREFIX="$out/wine" WINEDEBUG=-all wine "$out/test_core.exe"
    WINEPREFIX="$out/wine" WINEDEBUG=-all wine "$out/test_threads.exe"
    ran=$((ran + 1))
}

onednn() {
    # The headers of the oneDNN the provider is written against (3.2, the onednn-cpu-gomp
    # 2023.2.0 wheel's); pip only downloads and unpacks them here.
    py=${PYTHON:-}
    if [ -z "$py" ]; then py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python; fi
    if ! "$py" -m pip download -q --no-deps --dest "$out/whl" onednn-devel-cpu-gomp==2023.2.0 \
            >/dev/null 2>&1; then
        missing "the onednn-devel-cpu-gomp wheel (from PyPI)" "network access to PyPI"; return 0
    fi
    "$py" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
        "$out"/whl/onednn_devel_cpu_gomp-*.whl "$out/devel"
    inc=$(echo "$out"/devel/onednn_devel_cpu_gomp-*.data/data/include)
    echo "--- oneDNN API declarations against its headers"
    for cc in gcc clang; do
        command -v "$cc" >/dev/null || continue
        "$cc" -std=c11 -Wall -Wextra -Werror -I"$inc" -Isrc_c tests/c/onednn_abi.c -o "$out/abi_$cc"
        "$out/abi_$cc"
    done
    ran=$((ran + 1))
}

case $which in
    native) native ;;
    win64) win64 ;;
    onednn) onednn ;;
    all) native; win64; onednn ;;
    *) echo "usage: $0 [native|win64|onednn|all]" >&2; exit 2 ;;
esac
echo "C tests: ${ran} builds passed, ${skipped} skipped"
