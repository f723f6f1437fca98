#!/usr/bin/env bash
# Install the Debian packages the build and the test suite need, when any is missing.
# Idempotent: with everything present it only checks and returns.
set -euo pipefail

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
[ -f /usr/include/linux/prctl.h ] || need+=(linux-libc-dev)
# The dashboard tests drive Debian's Chromium through Playwright (never a downloaded browser).
[ -x /usr/bin/chromium ] || need+=(chromium)
# `python -m venv` (the package test installs the wheel into a fresh venv) is its own package on Debian.
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
# The suite starts its own throwaway PostgreSQL, Redis, nginx and Caddy on free ports; it never
# relies on a server that happens to run.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need+=(nginx)
command -v caddy >/dev/null || need+=(caddy)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "system-deps: please install: ${need[*]}" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "system-deps: installing ${need[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
