#!/usr/bin/env bash
# End-to-end comparison of Steelyard against nginx and HAProxy on loopback.
#
#   bash bench/compare.sh            # defaults: ~18 min on a 2-core box (release build cached)
#   DURATION=3 ROUNDS=1 PINNED_ROUNDS=1 bash bench/compare.sh   # quick smoke run
#
# Scenarios (see bench/README.md for what every figure means):
#   1. one worker each, balancer pinned to CPU 0, origins + wrk pinned to CPU 1:
#      req/s, CPU µs per request, p50/p99, errors, peak RSS; medians of PINNED_ROUNDS
#      interleaved rounds (direct nginx haproxy steelyard relay uring-relay, direct nginx ...),
#      where relay (nginx stream passing the bytes through) and uring-relay (the same on
#      io_uring, bench/uring_relay) are the floors no HTTP proxy on kernel sockets goes below.
#   2. memory per idle keep-alive client connection (IDLE_CONNS connections).
#   3. all cores, nothing pinned except the origins: req/s and CPU µs per request.
#   4. HTTPS, pinned as in 1: TLS 1.3 (ECDSA P-256) on keep-alive connections.
#   5. HTTPS, pinned, a new connection (a full TLS 1.3 handshake) for every request.
#   6. TCP (nginx stream, HAProxy mode tcp, Steelyard mode = "tcp"), pinned: HTTP/1.1
#      through each as bytes, keep-alive; a new connection per request; 1 MiB responses.
#
#   7. (only when asked: SCENARIOS="instructions") user-space instructions per request under
#      valgrind's callgrind, one balancer at a time: a count the VM's noise does not reach.
#
#   SCENARIOS="tcp" bash bench/compare.sh   # only some: pinned idle allcores https tcp instructions (idle needs pinned)
#
# Everything listens on 127.0.0.1 only, on ports chosen free at run time. Every
# process started is recorded and killed by PID on exit, including Ctrl-C.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION="${DURATION:-10}"     # seconds per measured wrk run
WARMUP="${WARMUP:-2}"          # seconds of unmeasured load before each measured run
CONNS="${CONNS:-50}"           # wrk connections
THREADS="${THREADS:-1}"        # wrk threads for the pinned scenario (wrk gets one core)
ROUNDS="${ROUNDS:-3}"          # interleaved rounds; the tables show medians
PINNED_ROUNDS="${PINNED_ROUNDS:-5}"   # scenario 1's rounds: its CPU ratios are the headline
IDLE_CONNS="${IDLE_CONNS:-5000}"
NPROC="$(nproc)"
ALL_THREADS="${ALL_THREADS:-$NPROC}"   # wrk threads for the all-cores scenario
LB_CPU="${LB_CPU:-0}"          # core for the balancer under test
LOAD_CPU="${LOAD_CPU:-1}"      # core for origins, wrk and the idle-connection client
SCENARIOS="${SCENARIOS:-pinned idle allcores https tcp}"
WRK_PATH="/"                   # the path wrk requests (scenario 6 also fetches /big)
WRAP=()                        # a command start_balancer runs the balancer under (valgrind)
RESULTS_DIR="$BENCH_DIR/results"

BALANCERS=(nginx haproxy steelyard)
declare -A LB_PID=() LB_PORT=()

# ---------------------------------------------------------------- origins ---

# One nginx, two server blocks (one port each), returning a fixed 6-byte body.
# One worker pinned to LOAD_CPU: it does far less work per request than a
# proxy, so it is not the bottleneck. keepalive_requests is raised so that no
# side closes a keep-alive connection during a run (nginx's default is 1000),
# which would add reconnects to every balancer's figures.
start_origins() {
    local dir="$WORK/origins"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
user root;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server { listen 127.0.0.1:$ORIGIN_A; location / { return 200 "hello\n"; } location = /big { alias $dir/big.bin; } }
    server { listen 127.0.0.1:$ORIGIN_B; location / { return 200 "hello\n"; } location = /big { alias $dir/big.bin; } }
}
EOF
    head -c 1048576 /dev/zero >"$dir/big.bin"
    start_bg origins taskset -c "$LOAD_CPU" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    wait_for_port "$ORIGIN_A" "$LAST_PID" origins
    wait_for_port "$ORIGIN_B" "$LAST_PID" origins
}

# -------------------------------------------------------------- balancers ---

# start_balancer NAME PORT WORKERS PIN [tls|tcp]
#   WORKERS: worker processes/threads ("auto"/nproc for the all-cores scenario)
#   PIN: a CPU list for taskset, or "" for unpinned
#   tls: terminate TLS 1.3 with $WORK/tls/cert.pem and key.pem
#   tcp: balance TCP connections (nginx stream, HAProxy mode tcp, Steelyard mode = "tcp")
start_balancer() {
    local name=$1 port=$2 workers=$3 pin=$4 tls=${5:-} dir="$WORK/$1-$2"
    local nginx_tls="" haproxy_tls="" scheme=http
    local -a steelyard_tls=()
    if [[ "$tls" == tls ]]; then
        scheme=https
        nginx_tls=" ssl;
        ssl_certificate $WORK/tls/cert.pem;
        ssl_certificate_key $WORK/tls/key.pem;
        ssl_protocols TLSv1.3"
        haproxy_tls=" ssl crt $WORK/tls/combined.pem alpn http/1.1 ssl-min-ver TLSv1.3"
        steelyard_tls=(--tls-cert "$WORK/tls/cert.pem" --tls-key "$WORK/tls/key.pem")
    fi
    local -a launch=()
    [[ -n "$pin" ]] && launch=(taskset -c "$pin")
    launch+=("${WRAP[@]}")
    mkdir -p "$dir"
    if [[ "$name" == relay ]]; then
        tcp_balancer_launch nginx "$port" "$workers" "$dir"
    elif [[ "$name" == uring-relay ]]; then
        launch+=("$URING_RELAY_BIN" "127.0.0.1:$port" "127.0.0.1:$ORIGIN_A" "127.0.0.1:$ORIGIN_B")
    elif [[ "$tls" == tcp ]]; then
        tcp_balancer_launch "$name" "$port" "$workers" "$dir"
    else
        http_balancer_launch "$name" "$port" "$workers" "$dir"
    fi
    start_bg "$name-$port" "${launch[@]}"
    LB_PID[$name]=$LAST_PID
    LB_PORT[$name]=$port
    wait_for_port "$port" "$LAST_PID" "$name-$port" "${PORT_WAIT:-10}"
    # One request through it proves the whole path works before measuring.
    curl -fsSk --max-time 5 "$scheme://127.0.0.1:$port/" >/dev/null ||
        die "$name on port $port does not proxy to the origins (see $WORK/$name-$port.log)"
}

# start_balancer's HTTP configs: writes one and appends its command line to the caller's
# `launch` (which holds the pinning); TLS settings come from the caller's *_tls variables.
http_balancer_launch() {
    local name=$1 port=$2 workers=$3 dir=$4
    case "$name" in
        nginx)
            # Upstream keep-alive needs all three: keepalive in the upstream,
            # HTTP/1.1 and an empty Connection header.
            cat >"$dir/nginx.conf" <<EOF
worker_processes $workers;
daemon off;
user root;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile $(ulimit -n);
events { worker_connections $(($(ulimit -n) - 100)); }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream origins {
        server 127.0.0.1:$ORIGIN_A;
        server 127.0.0.1:$ORIGIN_B;
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$port$nginx_tls;
        location / {
            proxy_pass http://origins;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
            # Under a wrapper (callgrind) nginx runs as one process, without a master.
            local -a single=()
            ((${#WRAP[@]})) && single=(-g "master_process off;")
            launch+=(nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" "${single[@]}")
            ;;
        haproxy)
            [[ "$workers" == auto ]] && workers="$NPROC"
            # maxconn: the idle-connection scenario needs IDLE_CONNS client
            # connections; HAProxy reserves about two descriptors per conn.
            cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $workers
    maxconn $(( ($(ulimit -n) - 200) / 2 ))

defaults
    mode http
    option http-keep-alive
    http-reuse always
    maxconn $(( ($(ulimit -n) - 200) / 2 ))
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    timeout http-request 30s

frontend fe
    bind 127.0.0.1:$port$haproxy_tls
    default_backend origins

backend origins
    balance roundrobin
    server a 127.0.0.1:$ORIGIN_A
    server b 127.0.0.1:$ORIGIN_B
EOF
            launch+=(haproxy -db -f "$dir/haproxy.cfg")
            ;;
        steelyard)
            [[ "$workers" == auto ]] && workers="$NPROC"
            launch+=("$STEELYARD_BIN" --listen "127.0.0.1:$port"
                --backend "127.0.0.1:$ORIGIN_A" --backend "127.0.0.1:$ORIGIN_B"
                --workers "$workers" --log-level warn "${steelyard_tls[@]}")
            ;;
        *) die "unknown balancer $name" ;;
    esac
}

# The TCP flavour of start_balancer's configs: writes one and appends its command line to the
# caller's `launch` (which holds the pinning).
tcp_balancer_launch() {
    local name=$1 port=$2 workers=$3 dir=$4
    case "$name" in
        nginx)
            cat >"$dir/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes $workers;
daemon off;
user root;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
worker_rlimit_nofile $(ulimit -n);
events { worker_connections $(($(ulimit -n) - 100)); }
stream {
    upstream origins {
        server 127.0.0.1:$ORIGIN_A;
        server 127.0.0.1:$ORIGIN_B;
    }
    server {
        listen 127.0.0.1:$port;
        proxy_pass origins;
    }
}
EOF
            launch+=(nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf")
            ;;
        haproxy)
            cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread $workers
    maxconn $(( ($(ulimit -n) - 200) / 2 ))

defaults
    mode tcp
    maxconn $(( ($(ulimit -n) - 200) / 2 ))
    timeout connect 5s
    timeout client 300s
    timeout server 300s

frontend fe
    bind 127.0.0.1:$port
    default_backend origins

backend origins
    balance roundrobin
    server a 127.0.0.1:$ORIGIN_A
    server b 127.0.0.1:$ORIGIN_B
EOF
            launch+=(haproxy -db -f "$dir/haproxy.cfg")
            ;;
        steelyard)
            cat >"$dir/steelyard.toml" <<EOF
[server]
workers = $workers

[[listeners]]
listen = "127.0.0.1:$port"
mode = "tcp"
pool = "origins"

[pools.origins]
backends = ["127.0.0.1:$ORIGIN_A", "127.0.0.1:$ORIGIN_B"]
EOF
            launch+=("$STEELYARD_BIN" --config "$dir/steelyard.toml" --log-level warn)
            ;;
        *) die "unknown balancer $name" ;;
    esac
}

stop_balancers() {
    local name
    for name in "${BALANCERS[@]}"; do
        if [[ -n "${LB_PID[$name]:-}" ]]; then
            stop_pid "${LB_PID[$name]}"
        fi
    done
}

# ------------------------------------------------------------ measurement ---

# measure_rps SCENARIO NAME ROUND PORT WRK_PIN WRK_THREADS [SCHEME [WRK_ARGS...]]
# Appends "name round requests rps p50 p99 errors cpu_us_per_req user_us_per_req
# system_us_per_req" to $WORK/SCENARIO.tsv.
# NAME "direct" means wrk straight at origin A; it has no balancer CPU figure.
measure_rps() {
    local scenario=$1 name=$2 round=$3 port=$4 pin=$5 threads=$6 scheme=${7:-http}
    local -a wrk=(wrk)
    [[ -n "$pin" ]] && wrk=(taskset -c "$pin" wrk)
    wrk+=("${@:8}")
    local url="$scheme://127.0.0.1:$port$WRK_PATH" out="$WORK/$scenario-$name-$round.wrk"
    local pid="${LB_PID[$name]:-}" before=(0 0) after=(0 0) requests rps p50 p99 errors
    local cpu="-" user="-" system="-"

    # Warm up: fills the upstream keep-alive pools and the caches.
    "${wrk[@]}" -t"$threads" -c"$CONNS" -d"${WARMUP}s" "$url" >/dev/null
    [[ "$name" != direct ]] && read -r -a before < <(cpu_ticks "$pid")
    "${wrk[@]}" -t"$threads" -c"$CONNS" -d"${DURATION}s" --latency "$url" >"$out"
    [[ "$name" != direct ]] && read -r -a after < <(cpu_ticks "$pid")
    read -r requests rps p50 p99 errors < <(python3 "$BENCH_DIR/report.py" parse-wrk "$out")
    if [[ "$name" != direct ]]; then
        # ticks -> µs: 1e6 / CLK_TCK per tick.
        read -r cpu user system < <(awk -v u=$((after[0] - before[0])) -v s=$((after[1] - before[1])) \
            -v hz="$CLK_TCK" -v n="$requests" \
            'BEGIN { f = 1e6 / hz / n; printf "%.3f %.3f %.3f\n", (u + s) * f, u * f, s * f }')
    fi
    printf '%s %s %s %s %s %s %s %s %s %s\n' "$name" "$round" "$requests" "$rps" "$p50" "$p99" \
        "$errors" "$cpu" "$user" "$system" >>"$WORK/$scenario.tsv"
    log "  $scenario round $round $name: $rps req/s, p99 ${p99} ms, cpu ${cpu} µs/req, errors $errors"
}

# Scenario 1: pinned, one worker each, interleaved rounds.
run_pinned() {
    local round name ports
    log "scenario 1: one worker, balancer on CPU $LB_CPU, origins + wrk on CPU $LOAD_CPU"
    local -a floors=(relay)
    read -ra ports <<<"$(free_ports 5)"
    start_balancer nginx "${ports[0]}" 1 "$LB_CPU"
    start_balancer haproxy "${ports[1]}" 1 "$LB_CPU"
    start_balancer steelyard "${ports[2]}" 1 "$LB_CPU"
    # The floors: nginx's stream module relaying the same HTTP/1.1 bytes without reading
    # them, one upstream connection per client (epoll, like all three balancers), and the
    # same relay on io_uring (bench/uring_relay). What a balancer costs above the first is
    # its HTTP work; the rest is the kernel's TCP work, which every balancer pays alike.
    start_balancer relay "${ports[3]}" 1 "$LB_CPU"
    if [[ -n "$URING_RELAY_BIN" ]]; then
        start_balancer uring-relay "${ports[4]}" 1 "$LB_CPU"
        floors+=(uring-relay)
    fi
    for ((round = 1; round <= PINNED_ROUNDS; round++)); do
        measure_rps pinned direct "$round" "$ORIGIN_A" "$LOAD_CPU" "$THREADS"
        for name in "${BALANCERS[@]}" "${floors[@]}"; do
            measure_rps pinned "$name" "$round" "${LB_PORT[$name]}" "$LOAD_CPU" "$THREADS"
        done
    done
    for name in "${floors[@]}"; do
        stop_pid "${LB_PID[$name]}"
        unset "LB_PID[$name]"
    done
    for name in "${BALANCERS[@]}"; do
        echo "$name $(status_kb VmHWM "${LB_PID[$name]}")" >>"$WORK/pinned-rss.tsv"
    done
}

# Scenario 2, on the same pinned balancers: RSS growth per idle keep-alive
# client connection. The client (bench/idle_conns.py) runs on LOAD_CPU, makes
# one request per connection, prints "ready", then idles until SIGTERM.
run_idle() {
    local name pid before after i client
    log "scenario 2: $IDLE_CONNS idle keep-alive connections per balancer"
    for name in "${BALANCERS[@]}"; do
        pid="${LB_PID[$name]}"
        sleep 1
        before="$(status_kb VmRSS "$pid")"
        start_bg "idle-$name" taskset -c "$LOAD_CPU" \
            python3 "$BENCH_DIR/idle_conns.py" "${LB_PORT[$name]}" "$IDLE_CONNS"
        client=$LAST_PID
        for ((i = 0; i < 600; i++)); do
            grep -qs '^ready' "$WORK/idle-$name.log" && break
            kill -0 "$client" 2>/dev/null ||
                { cat "$WORK/idle-$name.log" >&2; die "idle client for $name failed"; }
            sleep 0.1
        done
        grep -q '^ready' "$WORK/idle-$name.log" || die "idle client for $name never got ready"
        # Let the balancer settle: the connections' first requests came in a burst, and
        # what a balancer keeps for a burst (Steelyard: pooled buffers, given back after a
        # second unused) is not what an idle connection costs. nginx and HAProxy keep the
        # same memory however long this is.
        sleep 3
        after="$(status_kb VmRSS "$pid")"
        stop_pid "$client"   # SIGTERM: the client exits and its connections close
        echo "$name $IDLE_CONNS $before $after" >>"$WORK/idle.tsv"
        log "  $name: RSS $before kB -> $after kB"
    done
}

# Scenario 3: all cores, balancer and wrk unpinned (origins stay on LOAD_CPU).
run_all_cores() {
    local round name ports
    log "scenario 3: all $NPROC cores, balancer and wrk unpinned"
    stop_balancers
    read -ra ports <<<"$(free_ports 3)"
    start_balancer nginx "${ports[0]}" auto ""
    start_balancer haproxy "${ports[1]}" "$NPROC" ""
    start_balancer steelyard "${ports[2]}" "$NPROC" ""
    for ((round = 1; round <= ROUNDS; round++)); do
        for name in "${BALANCERS[@]}"; do
            measure_rps allcores "$name" "$round" "${LB_PORT[$name]}" "" "$ALL_THREADS"
        done
    done
}

# Scenarios 4 and 5: HTTPS with the balancers pinned as in 1. The same ECDSA P-256
# certificate for all three; TLS 1.3 only. Scenario 5 sends "Connection: close", so every
# request is a new connection with a full handshake (wrk does not resume sessions).
run_https() {
    local round name ports
    mkdir -p "$WORK/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>/dev/null
    cat "$WORK/tls/cert.pem" "$WORK/tls/key.pem" >"$WORK/tls/combined.pem"
    log "scenarios 4 and 5: HTTPS, one worker, balancer on CPU $LB_CPU"
    stop_balancers
    read -ra ports <<<"$(free_ports 3)"
    start_balancer nginx "${ports[0]}" 1 "$LB_CPU" tls
    start_balancer haproxy "${ports[1]}" 1 "$LB_CPU" tls
    start_balancer steelyard "${ports[2]}" 1 "$LB_CPU" tls
    for ((round = 1; round <= ROUNDS; round++)); do
        for name in "${BALANCERS[@]}"; do
            measure_rps https "$name" "$round" "${LB_PORT[$name]}" "$LOAD_CPU" "$THREADS" https
        done
    done
    for ((round = 1; round <= ROUNDS; round++)); do
        for name in "${BALANCERS[@]}"; do
            measure_rps handshake "$name" "$round" "${LB_PORT[$name]}" "$LOAD_CPU" "$THREADS" https \
                -H "Connection: close"
        done
    done
}

# Scenario 6: TCP balancing, pinned as in 1. HTTP/1.1 passes through as bytes: keep-alive
# requests (the per-request relay cost), a new connection per request (connections/s and
# CPU per connection), and 1 MiB responses (throughput: MiB/s = req/s, CPU µs per MiB).
run_tcp() {
    local round name ports
    log "scenario 6: TCP, one worker, balancer on CPU $LB_CPU"
    stop_balancers
    read -ra ports <<<"$(free_ports 3)"
    start_balancer nginx "${ports[0]}" 1 "$LB_CPU" tcp
    start_balancer haproxy "${ports[1]}" 1 "$LB_CPU" tcp
    start_balancer steelyard "${ports[2]}" 1 "$LB_CPU" tcp
    for ((round = 1; round <= ROUNDS; round++)); do
        for name in "${BALANCERS[@]}"; do
            measure_rps tcp "$name" "$round" "${LB_PORT[$name]}" "$LOAD_CPU" "$THREADS"
        done
    done
    for ((round = 1; round <= ROUNDS; round++)); do
        for name in "${BALANCERS[@]}"; do
            measure_rps tcpconn "$name" "$round" "${LB_PORT[$name]}" "$LOAD_CPU" "$THREADS" http \
                -H "Connection: close"
        done
    done
    WRK_PATH=/big
    for ((round = 1; round <= ROUNDS; round++)); do
        for name in "${BALANCERS[@]}"; do
            measure_rps tcpbig "$name" "$round" "${LB_PORT[$name]}" "$LOAD_CPU" "$THREADS"
        done
    done
    WRK_PATH=/
}

# Scenario 7: user-space instructions per request, counted by callgrind (deterministic: the
# VM's noise does not reach it). Each balancer in turn runs under valgrind, pinned as in 1;
# after a warm-up the counters are zeroed, wrk sends load for INSTR_SECONDS, and the count
# dumped then is divided by the requests wrk completed. nginx runs without a master process.
run_instructions() {
    local name port pid requests total dump i
    log "scenario 7: user-space instructions per request under callgrind"
    ensure_packages valgrind:valgrind
    for name in "${BALANCERS[@]}"; do
        read -r port <<<"$(free_ports 1)"
        WRAP=(valgrind --tool=callgrind --dump-instr=no "--callgrind-out-file=$WORK/callgrind-$name.%p")
        PORT_WAIT=60 start_balancer "$name" "$port" 1 "$LB_CPU"
        WRAP=()
        pid=${LB_PID[$name]}
        taskset -c "$LOAD_CPU" wrk -t1 -c20 -d2s "http://127.0.0.1:$port/" >/dev/null
        callgrind_control -z "$pid" >/dev/null
        taskset -c "$LOAD_CPU" wrk -t1 -c20 -d"${INSTR_SECONDS:-4}s" --latency "http://127.0.0.1:$port/" \
            >"$WORK/instructions-$name.wrk"
        callgrind_control -d "$pid" >/dev/null
        dump="$WORK/callgrind-$name.$pid.1"
        for ((i = 0; i < 100; i++)); do
            [[ -s "$dump" ]] && break
            sleep 0.1
        done
        requests="$(python3 "$BENCH_DIR/report.py" parse-wrk "$WORK/instructions-$name.wrk" | cut -d' ' -f1)"
        total="$(callgrind_annotate "$dump" | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')"
        [[ -n "$total" ]] || die "no callgrind totals for $name in $dump"
        echo "$name $requests $total" >>"$WORK/instructions.tsv"
        log "  instructions $name: $total over $requests requests"
        stop_pid "$pid"
        unset "LB_PID[$name]"
    done
}

# ----------------------------------------------------------------- report ---

machine_description() {
    local commit dirty=""
    commit="$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if [[ -n "$(git -C "$REPO_DIR" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
        dirty=" (with uncommitted changes in src/)"
    fi
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- cores: $NPROC; CPU: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "- kernel: $(uname -sr)"
    echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
    echo "- HAProxy: $(haproxy -v | awk 'NR == 1 { print $3 }')"
    echo "- wrk: $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')"
    echo "- steelyard: $commit$dirty"
    echo "- settings: DURATION=${DURATION}s WARMUP=${WARMUP}s CONNS=$CONNS THREADS=$THREADS" \
        "ROUNDS=$ROUNDS PINNED_ROUNDS=$PINNED_ROUNDS IDLE_CONNS=$IDLE_CONNS ALL_THREADS=$ALL_THREADS"
}

write_report() {
    local report="$WORK/report.md"
    {
        echo "## Steelyard vs nginx vs HAProxy"
        echo
        machine_description
        if [[ -f "$WORK/pinned.tsv" ]]; then
            echo
            echo "### 1. One worker, balancer pinned to CPU $LB_CPU (origins and wrk on CPU $LOAD_CPU)"
            echo
            echo "Median of $PINNED_ROUNDS interleaved rounds of wrk -t$THREADS -c$CONNS -d${DURATION}s;" \
                "\"direct\" is wrk straight at one origin; \"relay\" is nginx's stream module" \
                "passing the same bytes through unread, \"uring-relay\" the same on io_uring" \
                "(the floors). Errors are summed over rounds."
            echo
            python3 "$BENCH_DIR/report.py" throughput "$WORK/pinned.tsv" "$WORK/pinned-rss.tsv"
        fi
        if [[ -f "$WORK/idle.tsv" ]]; then
            echo
            echo "### 2. Memory per idle keep-alive client connection"
            echo
            python3 "$BENCH_DIR/report.py" idle "$WORK/idle.tsv"
        fi
        if [[ -f "$WORK/allcores.tsv" ]]; then
            echo
            echo "### 3. All $NPROC cores, balancer and wrk unpinned (noisy on small machines)"
            echo
            echo "Median of $ROUNDS interleaved rounds of wrk -t$ALL_THREADS -c$CONNS -d${DURATION}s."
            echo
            python3 "$BENCH_DIR/report.py" throughput "$WORK/allcores.tsv"
        fi
        if [[ -f "$WORK/https.tsv" ]]; then
            echo
            echo "### 4. HTTPS (TLS 1.3, ECDSA P-256), keep-alive, one worker pinned as in 1"
            echo
            python3 "$BENCH_DIR/report.py" throughput "$WORK/https.tsv"
            echo
            echo "### 5. HTTPS, a new connection and a full TLS 1.3 handshake per request"
            echo
            echo "CPU µs per request is CPU per handshake plus one proxied request."
            echo
            python3 "$BENCH_DIR/report.py" throughput "$WORK/handshake.tsv"
        fi
        if [[ -f "$WORK/tcp.tsv" ]]; then
            echo
            echo "### 6. TCP balancing (nginx stream, HAProxy mode tcp, Steelyard mode = \"tcp\"), pinned as in 1"
            echo
            echo "HTTP/1.1 through each balancer as bytes. a) keep-alive requests; b) a new TCP"
            echo "connection per request (req/s = connections/s, CPU per request = CPU per connection);"
            echo "c) 1 MiB responses on keep-alive connections (req/s = MiB/s, CPU µs per request = per MiB)."
            echo
            echo "a) keep-alive"
            echo
            python3 "$BENCH_DIR/report.py" throughput "$WORK/tcp.tsv"
            echo
            echo "b) a connection per request"
            echo
            python3 "$BENCH_DIR/report.py" throughput "$WORK/tcpconn.tsv"
            echo
            echo "c) 1 MiB responses"
            echo
            python3 "$BENCH_DIR/report.py" throughput "$WORK/tcpbig.tsv"
        fi
        if [[ -f "$WORK/instructions.tsv" ]]; then
            echo
            echo "### 7. User-space instructions per request (callgrind), one balancer at a time"
            echo
            echo "wrk -t1 -c20 -d${INSTR_SECONDS:-4}s against each balancer running under valgrind's callgrind, pinned as in 1."
            echo
            python3 "$BENCH_DIR/report.py" instructions "$WORK/instructions.tsv"
        fi
    } >"$report"
    # A run of some scenarios only leaves the full run's latest.md alone.
    local out=latest
    [[ "$SCENARIOS" == "pinned idle allcores https tcp" ]] || out="latest-${SCENARIOS// /-}"
    mkdir -p "$RESULTS_DIR"
    cp "$report" "$RESULTS_DIR/$out.md"
    cat "$report"
    log "wrote $RESULTS_DIR/$out.md"
}

# ------------------------------------------------------------------- main ---

# Builds bench/uring_relay (scenario 1's io_uring floor; not with SKIP_BUILD=1) and sets
# URING_RELAY_BIN; leaves it empty, and the row out, where there is no binary or the kernel or
# a sandbox refuses io_uring.
URING_RELAY_BIN=""
build_uring_relay() {
    local dir="$BENCH_DIR/uring_relay" err
    local bin="$dir/target/release/uring_relay"
    [[ " $SCENARIOS " == *" pinned "* ]] || return 0
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        (cd "$dir" && cargo build --release --quiet) >&2 || log "cargo build of $dir failed"
    fi
    if [[ ! -x "$bin" ]]; then
        log "no $bin: scenario 1 leaves out the uring-relay row"
        return 0
    fi
    if err="$("$bin" --probe 2>&1)"; then
        URING_RELAY_BIN="$bin"
    else
        log "io_uring is not available here ($err): scenario 1 leaves out the uring-relay row"
    fi
}

main() {
    ((NPROC >= 2)) || die "needs at least 2 cores (balancer on one, load on another)"
    ensure_packages nginx:nginx haproxy:haproxy wrk:wrk curl:curl taskset:util-linux openssl:openssl \
        python3:python3 pgrep:procps
    # nginx's stream module (scenarios 1 and 6) is a package of its own on Debian.
    if [[ ! -f /usr/lib/nginx/modules/ngx_stream_module.so ]]; then
        [[ $(id -u) -eq 0 ]] || die "need root to apt-get install libnginx-mod-stream"
        log "installing libnginx-mod-stream"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnginx-mod-stream >&2
    fi
    build_steelyard
    build_uring_relay
    raise_nofile
    (($(ulimit -n) >= IDLE_CONNS + 1000)) ||
        die "open-file limit $(ulimit -n) is too low for IDLE_CONNS=$IDLE_CONNS"
    CLK_TCK="$(getconf CLK_TCK)"
    bench_init
    log "work dir $WORK"
    read -r ORIGIN_A ORIGIN_B <<<"$(free_ports 2)"
    start_origins
    local scenario
    if [[ " $SCENARIOS " == *" idle "* && " $SCENARIOS " != *" pinned "* ]]; then
        die "scenario idle measures the balancers that pinned starts: use SCENARIOS=\"pinned idle\""
    fi
    for scenario in $SCENARIOS; do
        case "$scenario" in
            pinned) run_pinned ;;
            idle) run_idle ;;
            allcores) run_all_cores ;;
            https) run_https ;;
            tcp) run_tcp ;;
            instructions) run_instructions ;;
            *) die "unknown scenario $scenario (pinned idle allcores https tcp instructions)" ;;
        esac
    done
    write_report
}

main "$@"
