#!/usr/bin/env bash
# The GitHub workflows: valid against the workflow schema (check-jsonschema, the schema it
# ships, so nothing is downloaded) and clean under zizmor's offline audits (unpinned actions,
# persisted checkout credentials, template injection, excessive permissions, ...). Both tools
# are pinned and installed into a temporary venv of their own. Any finding fails.
# Prints one summary line, "workflows: ...".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CHECK_JSONSCHEMA=0.39.0
ZIZMOR=1.32.0
START=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

shopt -s nullglob
files=(.github/workflows/*.yml .github/workflows/*.yaml)
if [ ${#files[@]} -eq 0 ]; then
    echo "workflows: FAILED (no workflow files under .github/workflows)"; exit 1
fi

"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q --disable-pip-version-check \
    "check-jsonschema==$CHECK_JSONSCHEMA" "zizmor==$ZIZMOR"

failed=()
"$WORK/venv/bin/check-jsonschema" --builtin-schema vendor.github-workflows "${files[@]}" \
    || failed+=("schema")
# zizmor exits non-zero when it reports anything; --color=never keeps CI logs readable.
"$WORK/venv/bin/zizmor" --offline --color=never .github/workflows || failed+=("zizmor")

elapsed=$(( $(date +%s) - START ))
if [ ${#failed[@]} -ne 0 ]; then
    echo "workflows: FAILED (${failed[*]}; ${#files[@]} files; check-jsonschema $CHECK_JSONSCHEMA, zizmor $ZIZMOR; ${elapsed}s)"
    exit 1
fi
echo "workflows: OK (${#files[@]} files valid, no zizmor findings; check-jsonschema $CHECK_JSONSCHEMA, zizmor $ZIZMOR; ${elapsed}s)"
