#!/usr/bin/env bash
# The C core's tests (tests/c/run.sh): natively with gcc and clang, and cross-compiled with
# mingw-w64 (LLP64, the proxy for MSVC) under wine.  Installs the toolchains it lacks from
# Debian's packages (CI runs as root on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v clang >/dev/null || need+=(clang)
command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
command -v wine >/dev/null || need+=(wine wine64)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${need[@]}" >/dev/null
fi
bash tests/c/run.sh all
