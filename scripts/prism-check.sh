#!/usr/bin/env bash
# Checks Berth's HubSpot connector against HubSpot's official OpenAPI specs
# with Stoplight Prism's validating proxy:
#
#   Berth -> Prism proxy --errors (tests/prism/hubspot/*.oas.json) -> the HubSpot fake
#
# Prism answers a request that breaks the spec (unknown path, missing auth,
# a body or parameter of the wrong shape) with an error instead of passing
# it on; tests/prism/drive.py makes Berth issue every kind of HubSpot call
# it has (full and incremental sync, live reads, writes, metadata) and
# fails on any call Berth's request log shows refused.
#
#   scripts/prism-check.sh
#
# Installs Prism from npm (tests/prism/package-lock.json) on first use;
# uses the debug build (cargo build -p berth -p berth-fakes).
set -euo pipefail
cd "$(dirname "$0")/.."
PRISM=tests/prism/node_modules/.bin/prism
if [ ! -x "$PRISM" ]; then
  echo "installing Stoplight Prism (npm, tests/prism/package-lock.json)..." >&2
  (cd tests/prism && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
cargo build --locked -p berth -p berth-fakes >&2
BIN=target/debug

WORK=$(mktemp -d /tmp/berth-prism.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # file pattern
  for _ in $(seq 1 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; return 1
}

python3 tests/prism/merge_specs.py --errata tests/prism/hubspot-errata.json "$WORK/hubspot.json" tests/prism/hubspot/*.json tests/prism/hubspot-extra/*.json >&2

"$BIN/berth-fake" hubspot >"$WORK/fake.log" 2>&1 &
pids+=($!)
wait_for "$WORK/fake.log" "HubSpot fake on"
FAKE=$(grep -o 'http://127.0.0.1:[0-9]*' "$WORK/fake.log" | head -1)

PRISM_PORT=$(free_port)
"$PRISM" proxy --errors -v debug -h 127.0.0.1 -p "$PRISM_PORT" "$WORK/hubspot.json" "$FAKE" >"$WORK/prism.log" 2>&1 &
pids+=($!)
wait_for "$WORK/prism.log" "Prism is listening"

cat >"$WORK/providers.toml" <<TOML
[integrations.hubspot]
base_url = "http://127.0.0.1:$PRISM_PORT"
TOML
BP=$(free_port)
BERTH_LOG=warn "$BIN/berth" serve --listen "127.0.0.1:$BP" --data-dir "$WORK/data" \
  --providers-file "$WORK/providers.toml" >"$WORK/berth.out" 2>"$WORK/berth.err" &
pids+=($!)
wait_for "$WORK/berth.out" "Listening on"
API=$(grep -o 'berth_dev_[A-Za-z0-9_-]*' "$WORK/berth.out" | head -1)

if ! python3 tests/prism/drive.py "http://127.0.0.1:$BP" "$API"; then
  echo "--- Prism's findings:" >&2
  grep -E "✖|violation" "$WORK/prism.log" | sort | uniq -c | sort -rn | head -40 >&2 || true
  exit 1
fi
echo "prism-check: every HubSpot call Berth made matches HubSpot's official OpenAPI specs"
