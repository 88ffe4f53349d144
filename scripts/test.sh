#!/usr/bin/env bash
# The test command: installs what the tests need (only when missing), then
# runs the whole suite. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec cargo test --locked "$@"
