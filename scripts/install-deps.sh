#!/usr/bin/env bash
# Installs the Debian packages convoy's build and tests need, only when
# missing: pkg-config and libssl-dev (git2's https transport), git (tests
# build real repositories), chromium (the browser test loads the rollout
# page headless; it never skips, so the browser must be here), postgresql
# (the server programs: the PostgreSQL tests start a throwaway server with
# initdb and pg_ctl; they never skip either).
set -euo pipefail

missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v git >/dev/null 2>&1 || missing+=(git)
[ -x /usr/bin/chromium ] || missing+=(chromium)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
