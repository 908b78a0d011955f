#!/usr/bin/env bash
# What a million stored contacts cost against ten thousand, on SQLite
# (and PostgreSQL with BENCH_GROWTH_PG=1), side by side in one run
# (crates/berth-bench/src/bin/bench-growth.rs): ingest records/s and
# p50/p99 of a first page, a deep page, an email filter, find by email and
# find by id, each against a fresh store and HubSpot fake of that size.
#   scripts/bench-growth.sh
#   BENCH_SMALL=10000 BENCH_LARGE=200000 BENCH_SAMPLES=100 scripts/bench-growth.sh
# Writes the table to bench/results/growth.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BENCH_OUT:-bench/results/growth.md}
SMALL=${BENCH_SMALL:-10000}
LARGE=${BENCH_LARGE:-1000000}
export BENCH_SAMPLES=${BENCH_SAMPLES:-200}
cargo build --release --locked -p berth-bench >&2
export BERTH_LOG=${BERTH_LOG:-warn}
stores=("sqlite://{dir}/berth.db?mode=rwc|SQLite")
if [ "${BENCH_GROWTH_PG:-0}" = 1 ]; then
  export BERTH_PG_ROOT=/tmp/berth-bench-growth-pg BERTH_PG_DURABLE=1
  PG=$(scripts/pg-throwaway.sh start)
  trap 'BERTH_PG_ROOT=/tmp/berth-bench-growth-pg scripts/pg-throwaway.sh stop' EXIT
  stores+=("$PG|PostgreSQL")
fi
rows=()
for s in "${stores[@]}"; do
  url=${s%|*} label=${s#*|}
  small=$(target/release/bench-growth "$url" "$label" "$SMALL")
  large=$(target/release/bench-growth "$url" "$label" "$LARGE")
  rows+=("$small" "$large")
  # The ratio row: each p50 at LARGE over its p50 at SMALL; ingest the
  # other way up (records/s at LARGE over SMALL).
  rows+=("$(printf '%s\n%s\n' "$small" "$large" | awk -F'|' -v label="$label" '
    { for (i = 5; i <= 10; i++) { split($i, p, "/"); v[NR, i] = p[1] + 0 } }
    END {
      printf "| %s | **ratio** | | **%.2fx** |", label, v[2, 5] / v[1, 5]
      for (i = 6; i <= 10; i++) printf " **%.2fx** |", v[2, i] / v[1, i]
      printf "\n"
    }')")
done
mkdir -p "$(dirname "$OUT")"
{
  echo "# Growth benchmark"
  echo
  echo "\`scripts/bench-growth.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $BENCH_SAMPLES sequential requests of each kind. Berth (page cache off: every read is answered from the store) and the HubSpot fake share the machine; SQLite in WAL mode (synchronous=NORMAL)."
  echo
  echo "| store | contacts | ingest s | records/s | first page p50 / p99 ms | deep page | email filter | find by email | find by id |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Ingest: a new HubSpot connection from creation to READY (initial 30-day pass, full backfill, first incremental pass), contacts only, 10 owners. First page: v1 \`GET /crm/contacts?limit=100\`. Deep page: the same from a cursor 90% of the way through. Email filter: v2 \`contacts/list\` with \`{email: {equals}}\` of a contact picked across the store (one match, answered in one page). Find by email: v1 \`GET /crm/contact?id=<email>\`. Find by id: v1 \`GET /crm/contact?id=<v1 id>\`. Ratio: p50 at $LARGE over p50 at $SMALL (target ≤ 1.5x); ingest records/s at $LARGE over $SMALL (target ≥ 0.8x)."
} >"$OUT"
cat "$OUT"
