#!/usr/bin/env bash
# Berth's proxy overhead, side by side in one run on one machine:
#   direct       wrk -> upstream
#   nginx        wrk -> nginx (2 workers, adds the auth header) -> upstream
#   bare-proxy   wrk -> a bare proxy on Berth's stack (Berth's HTTP front and
#                outbound layer; adds the auth header, nothing else: the
#                floor of what Berth can cost)
#   berth-proxy  wrk -> Berth ANY /proxy/{path} (streaming) -> upstream
#   berth-json   wrk -> Berth POST /passthrough (JSON)       -> upstream
# The upstream is a minimal hyper server (crates/berth-bench). Load is wrk
# at fixed connections and duration. Prints req/s, p50/p99 and Berth's
# ratio to nginx, and writes the table to bench/results/proxy.md.
#
#   scripts/bench-proxy.sh        # 8 and 64 connections, 10 rounds of 1 s
#   BENCH_ROUNDS=10 BENCH_SLICE=3 BENCH_CONNECTIONS="64" scripts/bench-proxy.sh
#
# The targets take turns: each round runs every target for BENCH_SLICE
# seconds, and a target's req/s is over all its rounds. Run one after the
# other, a target that happened to run in a fast spell of this (shared,
# virtual) machine showed twice another's throughput.
#
# Berth runs with its defaults (SQLite store, request log on, every call
# authenticated and logged to the store) except BERTH_LOG=warn, the
# counterpart of nginx's `access_log off`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${BENCH_ROUNDS:-10}
SLICE=${BENCH_SLICE:-1}
CONNS=${BENCH_CONNECTIONS:-"8 64"}
WRK_THREADS=${BENCH_WRK_THREADS:-2}
OUT=${BENCH_OUT:-bench/results/proxy.md}

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (Debian)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq "${need[@]}" >&2
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# BENCH_BIN_DIR: binaries of another build to compare (an A/B against an
# earlier commit, built with CARGO_TARGET_DIR elsewhere).
if [ -z "${BENCH_BIN_DIR:-}" ]; then cargo build --release --locked -p berth -p berth-bench >&2; fi
BIN=${BENCH_BIN_DIR:-target/release}

WORK=$(mktemp -d /tmp/berth-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1" >&2; return 1
}
UP=$(free_port); NG=$(free_port); BP=$(free_port); XP=$(free_port)

"$BIN/bench-upstream" "127.0.0.1:$UP" 1 >"$WORK/upstream.log" 2>&1 &
pids+=($!)
wait_port "$UP"
"$BIN/bench-bareproxy" "127.0.0.1:$XP" "127.0.0.1:$UP" >"$WORK/bareproxy.log" 2>&1 &
pids+=($!)
wait_port "$XP"

mkdir -p "$WORK/nginx/tmp"
cat >"$WORK/nginx.conf" <<EOF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  upstream backend { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$NG;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer bench-key";
    }
  }
}
EOF
"$NGINX" -c "$WORK/nginx.conf" -p "$WORK/nginx" -e "$WORK/nginx-error.log"
wait_port "$NG"

cat >"$WORK/providers.toml" <<EOF
[integrations.bench]
name = "Bench upstream"
category = "crm"
base_url = "http://127.0.0.1:$UP"
[integrations.bench.auth.apiKey]
attach = { header = "Authorization", value = "Bearer {{credential.apiKey}}" }
questions = [{ id = "api-key", label = "Key", type = "password" }]
EOF
BERTH_LOG=warn "$BIN/berth" serve --listen "127.0.0.1:$BP" --data-dir "$WORK/data" \
  --providers-file "$WORK/providers.toml" >"$WORK/berth.out" 2>"$WORK/berth.err" &
BERTH_PID=$!
pids+=($BERTH_PID)
wait_port "$BP"
for _ in $(seq 1 100); do grep -q berth_dev_ "$WORK/berth.out" && break; sleep 0.05; done
API=$(grep -o 'berth_dev_[A-Za-z0-9_-]*' "$WORK/berth.out" | head -1)
B="http://127.0.0.1:$BP"
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
ST=$(curl -sf -X POST "$B/auth/session-token" -H "x-vessel-api-token: $API" -d '{}' | json "['result']['sessionToken']")
curl -sf -X POST "$B/auth/start" -H "x-vessel-session-token: $ST" \
  -d '{"integrationId":"bench","authType":"apiKey","answers":{"api-key":"bench-key"}}' >/dev/null
ACCESS=$(curl -sf -X POST "$B/auth/access-token" -H "x-vessel-api-token: $API" -H "x-vessel-session-token: $ST" -d '{}' | json "['result']['accessToken']")

# Every target must reach the upstream with the credential attached.
check() { grep -q '"auth":true' <<<"$1" || { echo "bad answer from $2: $1" >&2; exit 1; }; }
check "$(curl -sf -H 'Authorization: Bearer bench-key' "http://127.0.0.1:$UP/x")" direct
check "$(curl -sf "http://127.0.0.1:$NG/x")" nginx
check "$(curl -sf "http://127.0.0.1:$XP/x")" bare-proxy
check "$(curl -sf -H "x-vessel-api-token: $API" -H "x-vessel-access-token: $ACCESS" "$B/proxy/x")" berth-proxy
check "$(curl -sf -X POST -H "x-vessel-api-token: $API" -H "x-vessel-access-token: $ACCESS" -d '{"method":"GET","path":"/x"}' "$B/passthrough")" berth-json

cat >"$WORK/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"method":"GET","path":"/x"}'
wrk.headers["Content-Type"] = "application/json"
EOF

# wrk latency line value -> milliseconds
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'; }

# User-space instructions per request of the proxy under test: unlike req/s
# on a shared machine, a count that repeats from run to run. Needs perf
# (Debian's linux-perf) and a kernel that exposes the counter.
PERF=0
if command -v perf >/dev/null && perf stat -e instructions:u true >/dev/null 2>&1; then PERF=1; fi
pids_of() {
  case $1 in
    nginx) pgrep -d, -f "nginx: worker" -P "$(cat "$WORK/nginx.pid")" ;;
    bare-proxy) echo "${pids[1]}" ;;
    berth-proxy|berth-json) echo "$BERTH_PID" ;;
  esac
}

run() { # name conns secs -> "requests secs p50 p99 instructions"
  local name=$1 c=$2 secs=$3 args=()
  case $name in
    direct) args=(-H "Authorization: Bearer bench-key" "http://127.0.0.1:$UP/x") ;;
    nginx) args=("http://127.0.0.1:$NG/x") ;;
    bare-proxy) args=("http://127.0.0.1:$XP/x") ;;
    berth-proxy) args=(-H "x-vessel-api-token: $API" -H "x-vessel-access-token: $ACCESS" "$B/proxy/x") ;;
    berth-json) args=(-s "$WORK/post.lua" -H "x-vessel-api-token: $API" -H "x-vessel-access-token: $ACCESS" "$B/passthrough") ;;
  esac
  local ppid="" target; target=$(pids_of "$name")
  if [ "$PERF" = 1 ] && [ -n "$target" ]; then
    perf stat -x, -e instructions:u -p "$target" -o "$WORK/perf.out" -- sleep "$secs" >/dev/null 2>&1 &
    ppid=$!
  fi
  local out; out=$(wrk -t"$WRK_THREADS" -c"$c" -d"${secs}s" --latency "${args[@]}")
  [ -n "$ppid" ] && wait "$ppid"
  if grep -q "Non-2xx" <<<"$out"; then echo "$name: non-2xx answers:" >&2; echo "$out" >&2; exit 1; fi
  local reqs took p50 p99 ins="-"
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  took=$(awk '/requests in/ {sub(/s,$/, "", $4); print $4}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  if [ -n "$ppid" ] && [ -s "$WORK/perf.out" ]; then
    ins=$(awk -F, '/instructions/ && $1 ~ /^[0-9]+$/ {print $1}' "$WORK/perf.out")
    [ -n "$ins" ] || ins="-"
  fi
  echo "$reqs $took $p50 $p99 $ins"
}

# Aggregates one target's rounds: "req/s p50 p99 k-instructions/req"
# (req/s over all rounds, latencies the median of the rounds').
summarize() {
  awk '
    { reqs += $1; secs += $2; p50[NR] = $3; p99[NR] = $4
      if ($5 != "-") { ins += $5; ireqs += $1 } }
    function median(a, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    END { printf "%.0f %.3f %.3f %s\n", reqs / secs, median(p50, NR), median(p99, NR),
          ireqs ? sprintf("%.1f", ins / ireqs / 1000) : "-" }'
}

TARGETS="direct nginx bare-proxy berth-proxy berth-json"
mkdir -p "$(dirname "$OUT")"
{
  echo "| connections | target | req/s | p50 ms | p99 ms | req/s vs nginx | rounds: lowest–highest | p50 − nginx ms | p99 − nginx ms | k instructions/req |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
} >"$WORK/table.md"
for c in $CONNS; do
  for t in $TARGETS; do
    run "$t" "$c" 1 >/dev/null # warm-up
    : >"$WORK/rounds.$t"
  done
  # Interleaved: every round runs each target once, so a slow or fast
  # spell of the machine (it has them) falls on all of them alike.
  for r in $(seq 1 "$ROUNDS"); do
    for t in $TARGETS; do
      line=$(run "$t" "$c" "$SLICE")
      echo "$line" >>"$WORK/rounds.$t"
      echo "c=$c round $r $t: $line" >&2
    done
  done
  read -r nrps np50 np99 _ <<<"$(summarize <"$WORK/rounds.nginx")"
  for t in $TARGETS; do
    read -r rps p50 p99 kin <<<"$(summarize <"$WORK/rounds.$t")"
    spread=$(paste -d' ' "$WORK/rounds.$t" "$WORK/rounds.nginx" |
      awk '{ r = ($1 / $2) / ($6 / $7); if (NR == 1 || r < lo) lo = r; if (NR == 1 || r > hi) hi = r }
           END { printf "%.2f–%.2fx", lo, hi }')
    awk -v c="$c" -v t="$t" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v nr="$nrps" -v n50="$np50" -v n99="$np99" -v kin="$kin" -v sp="$spread" \
      'BEGIN { printf "| %s | %s | %.0f | %.3f | %.3f | %.2fx | %s | %+.3f | %+.3f | %s |\n", c, t, rps, p50, p99, rps/nr, sp, p50-n50, p99-n99, kin }' >>"$WORK/table.md"
  done
done
RSS=$(awk '/VmHWM/ {print $2}' "/proc/$BERTH_PID/status")
# Constant memory while streaming: 512 MiB through the proxy, then Berth's
# peak RSS again (VmHWM only grows).
BIG=$((512 * 1024 * 1024))
GOT=$(curl -sf -o /dev/null -w '%{size_download}' -H "x-vessel-api-token: $API" -H "x-vessel-access-token: $ACCESS" "$B/proxy/bytes/$BIG")
[ "$GOT" = "$BIG" ] || { echo "streamed $GOT of $BIG bytes" >&2; exit 1; }
RSS_AFTER=$(awk '/VmHWM/ {print $2}' "/proc/$BERTH_PID/status")
{
  echo "# Proxy benchmark"
  echo
  echo "\`scripts/bench-proxy.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), wrk -t$WRK_THREADS, $ROUNDS interleaved rounds of ${SLICE}s per target, nginx $("$NGINX" -v 2>&1 | cut -d/ -f2) with 2 workers."
  echo
  cat "$WORK/table.md"
  echo
  echo "req/s is over all rounds; \"rounds\" is the lowest and highest ratio to nginx within one round; p50 and p99 are the medians of the rounds'."
  echo
  echo "k instructions/req: user-space instructions of the proxy's own process(es) per request, from \`perf stat\` during the run (\`-\` where perf is missing or for \`direct\`, which has no proxy); it repeats within a few percent between runs where req/s does not."
  echo
  echo "Berth peak RSS after the load runs: $((RSS / 1024)) MiB; after also streaming a 512 MiB download through \`/proxy\`: $((RSS_AFTER / 1024)) MiB."
} >"$OUT"
cat "$OUT"
