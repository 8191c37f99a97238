#!/usr/bin/env bash
# What a rate-limit check costs per request, end to end: Steelyard with one worker pinned to
# CPU 0 (origin, redis-server and wrk on CPU 1), a pool with no limit, a local limit, and a
# global limit counted in a real redis-server: once with one hot key (every request from one
# client IP: tokens come from Redis in batches) and once with a new key per request (every
# request waits for a Redis round trip: the worst case). The limits are set too high to refuse
# anything, so every request does the same proxying work plus the check.
#
#   bash bench/rate_limit.sh             # DURATION=10 ROUNDS=3 by default
#
# Prints medians (and the spread) of req/s and CPU µs per request, and each case against no
# limit. Needs nginx (the origin), wrk and redis-server from Debian (installed if missing).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CONNS="${CONNS:-50}"
LB_CPU="${LB_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"

ensure_packages nginx:nginx wrk:wrk redis-server:redis-server
build_steelyard
bench_init
CLK_TCK="$(getconf CLK_TCK)"
read -r ORIGIN REDIS P_NONE P_LOCAL P_HOT P_FRESH <<<"$(free_ports 6)"

mkdir -p "$WORK/origin"
cat >"$WORK/origin/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $WORK/origin;
    proxy_temp_path $WORK/origin;
    fastcgi_temp_path $WORK/origin;
    uwsgi_temp_path $WORK/origin;
    scgi_temp_path $WORK/origin;
    server { listen 127.0.0.1:$ORIGIN; location / { return 200 "hello\n"; } }
}
EOF
start_bg origin taskset -c "$LOAD_CPU" nginx -p "$WORK/origin" -e "$WORK/origin/error.log" -c "$WORK/origin/nginx.conf"
wait_for_port "$ORIGIN" "$LAST_PID" origin
start_bg redis taskset -c "$LOAD_CPU" redis-server --bind 127.0.0.1 --port "$REDIS" --save '' --appendonly no
wait_for_port "$REDIS" "$LAST_PID" redis

# config NAME PORT RATE_LIMIT_LINE
config() {
    cat >"$WORK/$1.toml" <<EOF
[server]
workers = 1

[redis]
url = "redis://127.0.0.1:$REDIS"

[[listeners]]
listen = "127.0.0.1:$2"
routes = [{ pool = "p" }]

[pools.p]
backends = ["127.0.0.1:$ORIGIN"]
$3
EOF
}
HIGH='rate = "10000000/s", burst = 1000000'
config none "$P_NONE" ""
config local "$P_LOCAL" "rate_limit = { key = \"client_ip\", $HIGH }"
config hot "$P_HOT" "rate_limit = { key = \"client_ip\", $HIGH, scope = \"global\" }"
config fresh "$P_FRESH" "rate_limit = { key = \"header:x-key\", $HIGH, scope = \"global\" }"

declare -A PID PORT=([none]=$P_NONE [local]=$P_LOCAL [hot]=$P_HOT [fresh]=$P_FRESH)
for name in none local hot fresh; do
    start_bg "sy-$name" taskset -c "$LB_CPU" "$STEELYARD_BIN" --config "$WORK/$name.toml" --admin off --log-level warn
    PID[$name]=$LAST_PID
    wait_for_port "${PORT[$name]}" "$LAST_PID" "sy-$name"
done

# Every request with a key never seen before (for the header-keyed pool; harmless elsewhere).
cat >"$WORK/fresh.lua" <<'EOF'
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, { ["X-Key"] = tostring(n) .. "-" .. tostring(math.random(1, 1000000000)) })
end
EOF

: >"$WORK/results.tsv"
for ((round = 1; round <= ROUNDS; round++)); do
    for name in none local hot fresh; do
        url="http://127.0.0.1:${PORT[$name]}/"
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s -s "$WORK/fresh.lua" "$url" >/dev/null
        before="$(cpu_ticks "${PID[$name]}" | awk '{ print $1 + $2 }')"
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$WORK/fresh.lua" "$url" >"$WORK/$name-$round.wrk"
        after="$(cpu_ticks "${PID[$name]}" | awk '{ print $1 + $2 }')"
        requests="$(awk '/requests in/ { print $1 }' "$WORK/$name-$round.wrk")"
        non2xx="$(awk '/Non-2xx/ { print $NF }' "$WORK/$name-$round.wrk")"
        rps="$(awk '/Requests\/sec/ { print $2 }' "$WORK/$name-$round.wrk")"
        cpu="$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.3f", d * 1e6 / hz / n }')"
        printf '%s\t%s\t%s\t%s\n' "$name" "$rps" "$cpu" "${non2xx:-0}" >>"$WORK/results.tsv"
        log "round $round $name: $rps req/s, $cpu µs/req, non-2xx ${non2xx:-0}"
    done
done

python3 - "$WORK/results.tsv" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
by = {}
for name, rps, cpu, bad in rows:
    by.setdefault(name, []).append((float(rps), float(cpu), int(bad)))
labels = {
    "none": "no limit",
    "local": "local limit (client_ip)",
    "hot": "global, one hot key (batches from Redis)",
    "fresh": "global, a new key every request (a Redis round trip each)",
}
base_rps = statistics.median(r for r, _, _ in by["none"])
base_cpu = statistics.median(c for _, c, _ in by["none"])
print("| case | req/s on one core | CPU µs per request | vs no limit (CPU) | added µs | non-2xx |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for name in ["none", "local", "hot", "fresh"]:
    rps = [r for r, _, _ in by[name]]
    cpu = [c for _, c, _ in by[name]]
    m_rps, m_cpu = statistics.median(rps), statistics.median(cpu)
    print(f"| {labels[name]} | {m_rps:,.0f} ({min(rps):,.0f}–{max(rps):,.0f}) | {m_cpu:.2f} ({min(cpu):.2f}–{max(cpu):.2f}) "
          f"| {m_cpu / base_cpu:.2f}x | {m_cpu - base_cpu:+.2f} | {sum(b for _, _, b in by[name])} |")
EOF
