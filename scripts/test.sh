#!/usr/bin/env bash
# Berth's whole test suite, as CI runs it (.ci/run calls exactly this).
#  1. formatting and clippy (warnings are errors)
#  2. every unit and integration test on SQLite, with the store conformance
#     suite also run against a throwaway PostgreSQL
#  3. the HTTP and CLI integration tests again with PostgreSQL as the store
set -euo pipefail
cd "$(dirname "$0")/.."

PG_URL=$(scripts/pg-throwaway.sh start)
trap 'scripts/pg-throwaway.sh stop' EXIT
export BERTH_TEST_POSTGRES_URL="$PG_URL"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests (SQLite; store suite on SQLite and PostgreSQL)"
cargo test --workspace --locked

echo "== HTTP and CLI tests on PostgreSQL"
BERTH_TEST_BACKEND=postgres cargo test -p berth --locked --test api --test cli
