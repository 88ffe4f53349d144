#!/usr/bin/env bash
# The test command: installs what the tests need (only when missing), then
# runs the whole suite on SQLite, then every end-to-end test (those using
# tests/common) again on PostgreSQL: each such test process starts a
# throwaway PostgreSQL server of its own (src/testkit/postgres.rs) and
# stops it when it ends. Extra arguments go to `cargo test` (both runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --locked "$@"

e2e=()
for file in tests/*.rs; do
  # A file marked `// both databases` runs each scenario on SQLite and on
  # PostgreSQL itself (tests/replicas.rs): once is enough.
  if grep -q '^mod common;' "$file" && ! grep -q '^// both databases' "$file"; then
    e2e+=(--test "$(basename "$file" .rs)")
  fi
done
echo "== the end-to-end tests again, on PostgreSQL: ${e2e[*]}"
CONVOY_TEST_DB=postgres exec cargo test --locked "${e2e[@]}" "$@"
