#!/usr/bin/env bash
# Types: mypy over the package (the .pyi stubs of the compiled modules included), and the
# types a user sees for the calls whose result depends on the input (one stream or a batch).
# Runs in the .venv of the README's test command, adding mypy to it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/pip" install -q "mypy>=1.10"
CACHE=$(mktemp -d)
trap 'rm -rf "$CACHE"' EXIT
"$VENV/bin/python" -m mypy --cache-dir "$CACHE" --ignore-missing-imports aiva_cy
out=$("$VENV/bin/python" -m mypy --cache-dir "$CACHE" --ignore-missing-imports .ci/typing_snippet.py 2>&1 || true)
expect() {   # expect LINE TYPE: the revealed type on that line of the snippet
    local got
    # Spelled without NumPy's private module paths and shape tuples, which change between
    # NumPy releases.
    got=$(printf '%s\n' "$out" | grep "typing_snippet.py:$1: note: Revealed type is" \
          | sed -E 's/.*Revealed type is //; s/numpy\.//g; s/_typing\.[a-z_]+\.//g; s/tuple\[Any, \.\.\.\], //g')
    if [ "$got" != "\"$2\"" ]; then
        echo "typing_snippet.py:$1: expected \"$2\", got ${got:-nothing}" >&2; printf '%s\n' "$out" >&2; exit 1
    fi
}
F32='ndarray[dtype[floating[_32Bit]]]'
I64='ndarray[dtype[signedinteger[_64Bit]]]'
B='ndarray[dtype[bool[bool]]]'
expect 7 "$F32"
expect 8 "$F32"
expect 9 "int"
expect 10 "$I64"
expect 11 "int | $I64"
expect 12 "tuple[int, float, bool]"
expect 13 "tuple[int, float, bool] | tuple[$I64, $F32, $B]"
expect 14 "bool"
expect 15 "tuple[str, float, bool]"
echo "types: mypy clean; predict_proba/forward -> NDArray[float32]; predict/decide typed per input"
