#!/usr/bin/env bash
# Webhook delivery, on SQLite and on PostgreSQL (durable settings: fsync on),
# side by side in one run: Berth's real server and dispatcher deliver to a
# local receiver that verifies every Standard Webhooks signature.
#   scripts/bench-webhooks.sh                       # 100,000 events, 10 s steady
#   BENCH_EVENTS=20000 BENCH_STEADY_SECS=3 scripts/bench-webhooks.sh
# Writes the table to bench/results/webhooks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench/results/webhooks.md}
export BENCH_EVENTS=${BENCH_EVENTS:-100000} BENCH_STEADY_SECS=${BENCH_STEADY_SECS:-10}
cargo build --release --locked -p berth-bench >&2
export BERTH_LOG=${BERTH_LOG:-warn}
export BERTH_PG_ROOT=/tmp/berth-bench-pg BERTH_PG_DURABLE=1
PG=$(scripts/pg-throwaway.sh start)
trap 'BERTH_PG_ROOT=/tmp/berth-bench-pg scripts/pg-throwaway.sh stop' EXIT
WORK=$(mktemp -d /tmp/berth-bench-wh.XXXXXX)
rows=()
rows+=("$(target/release/bench-webhooks "sqlite://$WORK/bench.db?mode=rwc" SQLite)")
rows+=("$(target/release/bench-webhooks "$PG" PostgreSQL)")
rm -rf "$WORK"
mkdir -p "$(dirname "$OUT")"
{
  echo "# Webhook benchmark"
  echo
  echo "\`scripts/bench-webhooks.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)). 10 endpoints on one local receiver that verifies every signature; events written to the outbox in batches of 1,000; PostgreSQL $(ls /usr/lib/postgresql | sort -V | tail -1) with fsync on, SQLite in WAL mode (synchronous=NORMAL)."
  echo
  echo "| store | events | written in s | received/s | durable deliveries/s | steady-phase deliveries | p50 ms at 1,000/s | p99 ms at 1,000/s |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "durable deliveries/s: until the store records every message as delivered. Latency: event committed to the outbox → signed request received."
} >"$OUT"
cat "$OUT"
