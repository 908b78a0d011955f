#!/usr/bin/env bash
# Berth's whole test suite, as CI runs it (.ci/run calls exactly this).
#  1. formatting, clippy (warnings are errors) and unused dependencies
#  2. every unit and integration test on SQLite, with the store conformance
#     suite also run against a throwaway PostgreSQL
#  3. the HTTP and CLI integration tests again with PostgreSQL as the store
#  4. the end-to-end connect suite (tests/e2e): a real OAuth2 server
#     (oidc-provider), Debian's Chromium driven by playwright-core, and
#     Vessel's own client packages, on SQLite and on PostgreSQL
#  5. the HubSpot connector's calls checked against HubSpot's official
#     OpenAPI specs through Stoplight Prism's validating proxy
# It installs what it needs (postgresql, chromium, the e2e node packages,
# the Python packages the webhook and Vessel-file tests use, and Stoplight
# Prism from npm).
set -euo pipefail
cd "$(dirname "$0")/.."

# standardwebhooks: the webhook tests verify signatures with it;
# jsonschema and PyYAML: tests/vessel/conformance.py validates Berth's
# answers against Vessel's OpenAPI files with them.
if ! python3 -c 'import standardwebhooks, jsonschema, yaml' 2>/dev/null; then
  echo "installing Python packages (PyPI): standardwebhooks jsonschema PyYAML..." >&2
  python3 -m pip install --quiet --disable-pip-version-check standardwebhooks jsonschema PyYAML >&2 \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
         standardwebhooks jsonschema PyYAML >&2
fi

PG_URL=$(scripts/pg-throwaway.sh start)
trap 'scripts/pg-throwaway.sh stop' EXIT
export BERTH_TEST_POSTGRES_URL="$PG_URL"
# The throwaway server's CA: the store suite connects with verify-full too.
export BERTH_TEST_POSTGRES_CA="${BERTH_PG_ROOT:-/tmp/berth-pg}/ca.crt"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== unused dependencies (cargo-machete)"
if ! command -v cargo-machete >/dev/null; then
  echo "installing cargo-machete (crates.io)..." >&2
  cargo install --quiet --locked cargo-machete@0.9.2 >&2
fi
cargo machete

echo "== tests (SQLite; store suite on SQLite and PostgreSQL)"
cargo test --workspace --locked

echo "== HTTP and CLI tests on PostgreSQL"
BERTH_TEST_BACKEND=postgres cargo test -p berth --locked --test api --test cli

echo "== end-to-end connect suite"
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (Debian)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends chromium >&2
fi
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
cargo build --locked -p berth
export BERTH_BIN="$PWD/target/debug/berth"
(cd tests/e2e && BERTH_TEST_BACKEND=sqlite node run.mjs)
(cd tests/e2e && BERTH_TEST_BACKEND=postgres node run.mjs)

echo "== HubSpot connector against HubSpot's official specs (Prism)"
scripts/prism-check.sh
