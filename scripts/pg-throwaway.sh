#!/usr/bin/env bash
# A throwaway PostgreSQL on loopback for the test suite.
#   scripts/pg-throwaway.sh start   -> prints the admin URL on stdout
#   scripts/pg-throwaway.sh stop
#   scripts/pg-throwaway.sh restart|halt|resume   (fault tests)
# The server also speaks TLS with a certificate for 127.0.0.1 and localhost
# signed by a throwaway CA ($ROOT/ca.crt), so clients can be tested with
# sslmode=verify-full.
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
  # A CA and a server certificate for the loopback names.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=berth test CA" \
    -keyout "$ROOT/ca.key" -out "$ROOT/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$ROOT/data/server.key" -out "$ROOT/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > "$ROOT/ext.cnf"
  openssl x509 -req -in "$ROOT/server.csr" -CA "$ROOT/ca.crt" -CAkey "$ROOT/ca.key" \
    -CAcreateserial -days 2 -extfile "$ROOT/ext.cnf" -out "$ROOT/data/server.crt" 2>/dev/null
  chmod 600 "$ROOT/data/server.key"
  chmod 644 "$ROOT/ca.crt"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$ROOT/data/server.key" "$ROOT/data/server.crt"
  echo "-p $PORT -c listen_addresses=127.0.0.1 -k $ROOT $FAST -c max_connections=300 -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key" > "$ROOT/opts"
  "${as_pg[@]}" "$BIN/pg_ctl" -D "$ROOT/data" -l "$ROOT/server.log" -w -t 60 start -o "$(cat "$ROOT/opts")" >/dev/null
  echo "$PORT" > "$ROOT/port"
  echo "postgres://postgres@127.0.0.1:$PORT/postgres"
  ;;
restart|halt|resume)
  # For fault tests: restart in place (fast shutdown: sessions are cut),
  # halt (stop, keeping the data), resume (start a halted one again).
  BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  as_pg=(); [ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)
  case "$1" in
  restart) "${as_pg[@]}" "$BIN/pg_ctl" -D "$ROOT/data" -m fast -w -t 60 restart -o "$(cat "$ROOT/opts")" >/dev/null ;;
  halt) "${as_pg[@]}" "$BIN/pg_ctl" -D "$ROOT/data" -m fast -w -t 60 stop >/dev/null ;;
  resume) "${as_pg[@]}" "$BIN/pg_ctl" -D "$ROOT/data" -l "$ROOT/server.log" -w -t 60 start -o "$(cat "$ROOT/opts")" >/dev/null ;;
  esac
  ;;
stop)
  [ -d "$ROOT/data" ] || exit 0
  BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  as_pg=(); [ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)
  "${as_pg[@]}" "$BIN/pg_ctl" -D "$ROOT/data" -m fast -w stop >/dev/null || true
  rm -rf "$ROOT"
  ;;
esac
