#!/usr/bin/env bash
# Idle memory of `berth serve` with the defaults (SQLite), in one run:
#   1. right after start (first-start bootstrap done, nothing connected);
#   2. idle again after a warm-up: a sandbox connection synced, 2,000 API
#      calls (unified lists, passthrough, connection reads), then 5 s idle.
# Reports VmRSS split into anonymous memory and file-backed pages (the
# binary's own code and the SQLite file map), and VmHWM, against the 30 MB
# target. Writes bench/results/memory.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p berth >&2
BIN=$PWD/target/release/berth
DIR=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT

"$BIN" serve --listen 127.0.0.1:0 --data-dir "$DIR" >"$DIR/out" 2>"$DIR/err" &
PID=$!
for _ in $(seq 1 200); do grep -q '^Listening on' "$DIR/out" 2>/dev/null && break; sleep 0.05; done
BASE=$(sed -n 's/^Listening on //p' "$DIR/out")
TOKEN=$(grep -o 'berth_dev_[A-Za-z0-9_]*' "$DIR/out" | head -1)
[ -n "$BASE" ] && [ -n "$TOKEN" ] || { cat "$DIR/err" >&2; exit 1; }

rss() { # VmRSS RssAnon RssFile VmHWM, in MB
  awk '/^(VmRSS|RssAnon|RssFile|VmHWM):/ {v[$1]=$2/1024} END {printf "%.1f %.1f %.1f %.1f\n", v["VmRSS:"], v["RssAnon:"], v["RssFile:"], v["VmHWM:"]}' "/proc/$PID/status"
}
sleep 3
read -r START_RSS START_ANON START_FILE _ < <(rss)

post() { curl -s -X POST "$BASE$1" -H "x-vessel-api-token: $TOKEN" "${@:2}"; }
ST=$(post /auth/session-token -d '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["sessionToken"])')
curl -s -X POST "$BASE/auth/start" -H "x-vessel-session-token: $ST" \
  -d '{"integrationId":"sandbox","answers":{"api-key":"memory-bench"}}' >/dev/null
ACCESS=$(post /auth/access-token -H "x-vessel-session-token: $ST" -d '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["accessToken"])')
for _ in $(seq 1 200); do
  S=$(post /connections/list -d '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["connections"][0]["status"])')
  [ "$S" = READY ] && break; sleep 0.1
done
H=(-H "x-vessel-api-token: $TOKEN" -H "x-vessel-access-token: $ACCESS")
for i in $(seq 1 500); do
  curl -s -X POST "$BASE/unifications/crm/contacts/list" "${H[@]}" -d '{}' >/dev/null
  curl -s -X POST "$BASE/unifications/crm/deals/list" "${H[@]}" -d '{"associations":["accounts"]}' >/dev/null
  curl -s -X POST "$BASE/passthrough" "${H[@]}" -d '{"method":"GET","path":"/me"}' >/dev/null
  curl -s -X POST "$BASE/connections/list" -H "x-vessel-api-token: $TOKEN" -d '{}' >/dev/null
done
sleep 5
read -r WARM_RSS WARM_ANON WARM_FILE HWM < <(rss)

mkdir -p bench/results
{
  echo "# Idle memory: \`scripts/bench-memory.sh\`"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc) cores, \`berth serve\` with the defaults (SQLite), release build."
  echo
  echo "| | RSS (MB) | anonymous | file-backed | target | ratio to target |"
  echo "|---|---:|---:|---:|---:|---:|"
  echo "| idle after start | $START_RSS | $START_ANON | $START_FILE | 30 | $(python3 -c "print(f'{$START_RSS/30:.2f}x')") |"
  echo "| idle after a synced connection and 2,000 calls | $WARM_RSS | $WARM_ANON | $WARM_FILE | 30 | $(python3 -c "print(f'{$WARM_RSS/30:.2f}x')") |"
  echo
  echo "Peak (VmHWM) during the warm-up: $HWM MB."
} | tee bench/results/memory.md
