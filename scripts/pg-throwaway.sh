#!/usr/bin/env bash
# A throwaway PostgreSQL on loopback for the test suite.
#   scripts/pg-throwaway.sh start   -> prints the admin URL on stdout
#   scripts/pg-throwaway.sh stop
# Installs Debian's postgresql when no server binaries are present. As root,
# initdb/postgres run as the `postgres` system user (they refuse root).
set -euo pipefail
ROOT=${BERTH_PG_ROOT:-/tmp/berth-pg}
case "${1:-start}" in
start)
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "installing postgresql (Debian)..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
  fi
  BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  # Tests trade durability for speed; benchmarks (BERTH_PG_DURABLE=1) keep
  # PostgreSQL's defaults, so "durable" means what it says.
  FAST="-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
  [ "${BERTH_PG_DURABLE:-0}" = 1 ] && FAST=""
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if [ -f "$ROOT/data/postmaster.pid" ]; then "$0" stop || true; fi
  rm -rf "$ROOT"; mkdir -p "$ROOT"
  as_pg=()
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$ROOT"; as_pg=(runuser -u postgres --); fi
  "${as_pg[@]}" "$BIN/initdb" -D "$ROOT/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
  "${as_pg[@]}" "$BIN/pg_ctl" -D "$ROOT/data" -l "$ROOT/server.log" -w -t 60 start \
    -o "-p $PORT -c listen_addresses=127.0.0.1 -k $ROOT $FAST -c max_connections=300" >/dev/null
  echo "$PORT" > "$ROOT/port"
  echo "postgres://postgres@127.0.0.1:$PORT/postgres"
  ;;
stop)
  [ -d "$ROOT/data" ] || exit 0
  BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  as_pg=(); [ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)
  "${as_pg[@]}" "$BIN/pg_ctl" -D "$ROOT/data" -m fast -w stop >/dev/null || true
  rm -rf "$ROOT"
  ;;
esac
