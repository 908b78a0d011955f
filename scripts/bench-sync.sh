#!/usr/bin/env bash
# Sync ingest and unified list throughput, on SQLite and on PostgreSQL, side
# by side in one run (crates/berth-bench/src/bin/bench-sync.rs):
#   ingest   a new HubSpot connection (the in-repo fake, no rate limits,
#            pages of 100) from creation to READY: 100,000 contacts, 20,000
#            companies, 20,000 deals, 10 owners; records/s, against a bare
#            loader INSERTing the same rows into an identical table, committed
#            per 100, on the same store;
#   list     wrk on v1 GET /crm/contacts?limit=100 against a bare axum
#            handler answering the same page pre-serialized; then the same
#            against a second Berth on the store with its page cache off.
#
#   scripts/bench-sync.sh
#   BENCH_CONTACTS=20000 BENCH_WRK_SECS=3 scripts/bench-sync.sh
# Writes the table to bench/results/sync.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench/results/sync.md}
export BENCH_CONTACTS=${BENCH_CONTACTS:-100000} BENCH_WRK_SECS=${BENCH_WRK_SECS:-10}
if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian)..." >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2
fi
cargo build --release --locked -p berth-bench >&2
export BERTH_LOG=${BERTH_LOG:-warn}
export BERTH_PG_ROOT=/tmp/berth-bench-sync-pg BERTH_PG_DURABLE=1
PG=$(scripts/pg-throwaway.sh start)
trap 'BERTH_PG_ROOT=/tmp/berth-bench-sync-pg scripts/pg-throwaway.sh stop' EXIT
rows=()
rows+=("$(target/release/bench-sync "sqlite://{dir}/berth.db?mode=rwc" SQLite)")
rows+=("$(target/release/bench-sync "$PG" PostgreSQL)")
mkdir -p "$(dirname "$OUT")"
{
  echo "# Sync benchmark"
  echo
  echo "\`scripts/bench-sync.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), BENCH_CONTACTS=$BENCH_CONTACTS. Berth, the HubSpot fake and wrk share the machine. PostgreSQL $(ls /usr/lib/postgresql | sort -V | tail -1) with fsync on, SQLite in WAL mode (synchronous=NORMAL)."
  echo
  echo "| store | records | provider calls | ingest s | Berth records/s | bare loader rows/s | ratio | list req/s | bare handler req/s | ratio | list req/s, cache off | ratio |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Ingest covers the whole lifecycle: the initial pass (search, last 30 days, read again by the backfill), the full backfill (lists with associations inline), and the first incremental pass (search, associations, archived). List: wrk -t2 -c16, v1 \`GET /crm/contacts?limit=100\` (API token and access token checked, connection status checked, the page served from the page cache while the contacts' record version is unchanged) against the same bytes served by a bare axum handler; \"cache off\" is a second Berth on the same store with \`--page-cache-mb 0\`, reading and rendering the 100 records on every request."
} >"$OUT"
cat "$OUT"
