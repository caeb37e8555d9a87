#!/usr/bin/env bash
# Build the extension with AddressSanitizer + UndefinedBehaviorSanitizer in a temporary
# copy of the source tree (the in-place build and any editable install are not touched)
# and run the test suite under it, UBSan halting on the first error.
#
#   .ci/sanitizers.sh            # uses $PYTHON (default: python3) with the test deps
#
# Python is not instrumented, so the sanitizer runtimes are preloaded (LD_PRELOAD); child
# processes the tests start (the fuzz targets, spawn pools) inherit them.  Leak detection
# is off: CPython and NumPy keep allocations for the life of the process by design.
# Prints one summary line, "sanitizers: ...", and exits non-zero on any finding or failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
CC=${CC:-gcc}
START=$(date +%s)

libasan=$($CC -print-file-name=libasan.so)
libubsan=$($CC -print-file-name=libubsan.so)
for lib in "$libasan" "$libubsan"; do
    if [ ! -e "$lib" ]; then
        echo "sanitizers: SKIPPED ($CC has no $(basename "$lib"))"
        exit 0
    fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/aiva_cy-sanitizers.XXXXXX")
[ -n "${AIVA_CY_KEEP_SANITIZER_BUILD:-}" ] || trap 'rm -rf "$WORK"' EXIT
# The tracked and the untracked-but-not-ignored files: the working tree as it is now.
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$WORK"

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
# target_clones (ifunc) resolvers run before the ASan runtime is ready: build one version.
(cd "$WORK" && CC=$CC CFLAGS="$SAN -g -O1 -DAIVA_NO_MULTIVERSION" LDFLAGS="$SAN" \
    "$PY" setup.py build_ext --inplace -q) > "$WORK/build.log" 2>&1 || {
    tail -30 "$WORK/build.log"
    echo "sanitizers: FAILED (the instrumented build failed)"
    exit 1
}

export LD_PRELOAD="$libasan $libubsan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:detect_odr_violation=0:strict_init_order=1"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
export AIVA_CY_FUZZ_EXAMPLES=${AIVA_CY_FUZZ_EXAMPLES:-25}
export PYTHONDONTWRITEBYTECODE=1
# The benchmark tests time peers (torch, onnxruntime) and add nothing the sanitizers check.
set +e
(cd "$WORK" && "$PY" -m pytest -q -p no:cacheprovider -x \
    --deselect tests/test_benchmark_quick.py "$@" tests) > "$WORK/pytest.log" 2>&1
status=$?
findings=$(grep -cE "ERROR: AddressSanitizer|runtime error:" "$WORK/pytest.log" || true)
summary=$(grep -E "^[0-9]+ (passed|failed)|(passed|failed|error).* in [0-9.]+s" "$WORK/pytest.log" | tail -1)
elapsed=$(( $(date +%s) - START ))
if [ "$status" -ne 0 ] || [ "$findings" -ne 0 ]; then
    grep -B5 -A40 -E "ERROR: AddressSanitizer|runtime error:" "$WORK/pytest.log" | head -120
    tail -40 "$WORK/pytest.log"
    echo "sanitizers: FAILED (ASan+UBSan, $findings sanitizer reports; pytest: ${summary:-exit $status}; ${elapsed}s)"
    exit 1
fi
echo "sanitizers: OK (ASan+UBSan build, UBSan halts on error; pytest: $summary; 0 sanitizer reports; ${elapsed}s)"
