#!/usr/bin/env bash
# Installs the system packages the tests need when they are missing: Debian's Chromium (the
# console's browser tests drive it through Playwright, whose own browser download cannot work
# here) and wrk (HTTP benchmarks). Idempotent, and silent when everything is present.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "missing ${missing[*]}: run 'apt-get install ${missing[*]}' as root" >&2
        exit 1
    fi
fi
echo "installing ${missing[*]} (apt-get)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
