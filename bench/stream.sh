#!/usr/bin/env bash
# Streaming memory: does Steelyard stream bodies, or buffer them?
#
#   bash bench/stream.sh                 # 1 GiB up, 1 GiB down
#   STREAM_BYTES=$((256 << 20)) bash bench/stream.sh
#
# Starts bench/stream_origin.py and Steelyard in front of it (loopback, free
# ports), pushes STREAM_BYTES up with curl (chunked upload from a pipe) and
# pulls STREAM_BYTES down, and prints Steelyard's peak RSS (VmHWM) before and
# after each transfer. A streaming proxy's peak stays flat (a few MiB of
# buffers); a buffering one grows by about the body size.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STREAM_BYTES="${STREAM_BYTES:-1073741824}"   # 1 GiB

hwm_mib() {
    awk -v kb="$(status_kb VmHWM "$1")" 'BEGIN { printf "%.1f", kb / 1024 }'
}

# Checks the byte count in a transfer's outcome and fails loudly if it's short.
expect_bytes() {
    local what=$1 got=$2
    [[ "$got" == "$STREAM_BYTES" ]] || die "$what moved $got bytes, expected $STREAM_BYTES"
}

main() {
    local origin_port lb_port sy before after_up after_down got secs
    ensure_packages curl:curl python3:python3 pgrep:procps
    build_steelyard
    bench_init
    read -r origin_port lb_port <<<"$(free_ports 2)"

    start_bg origin python3 "$BENCH_DIR/stream_origin.py" "$origin_port"
    wait_for_port "$origin_port" "$LAST_PID" origin

    start_bg steelyard "$STEELYARD_BIN" --listen "127.0.0.1:$lb_port" \
        --backend "127.0.0.1:$origin_port" --log-level warn
    sy=$LAST_PID
    wait_for_port "$lb_port" "$sy" steelyard
    curl -fsS --max-time 5 "http://127.0.0.1:$lb_port/" >/dev/null

    before="$(hwm_mib "$sy")"
    log "upload: $STREAM_BYTES bytes through Steelyard"
    # -T - with no size sends a chunked body as it reads it; an empty Expect
    # header skips the 100-continue round trip. --data-binary @- would make
    # curl read the whole body into its own memory first.
    secs=$SECONDS
    got="$(head -c "$STREAM_BYTES" /dev/zero |
        curl -fsS --max-time 600 -X POST -H 'Expect:' -T - "http://127.0.0.1:$lb_port/upload")"
    expect_bytes upload "$got"
    log "upload done in $((SECONDS - secs)) s"
    after_up="$(hwm_mib "$sy")"

    log "download: $STREAM_BYTES bytes through Steelyard"
    secs=$SECONDS
    got="$(curl -fsS --max-time 600 -o /dev/null -w '%{size_download}' \
        "http://127.0.0.1:$lb_port/download?bytes=$STREAM_BYTES")"
    expect_bytes download "$got"
    log "download done in $((SECONDS - secs)) s"
    after_down="$(hwm_mib "$sy")"

    echo "| Steelyard peak RSS (VmHWM) | MiB |"
    echo "|---|---:|"
    echo "| before | $before |"
    echo "| after $((STREAM_BYTES >> 20)) MiB upload | $after_up |"
    echo "| after $((STREAM_BYTES >> 20)) MiB download | $after_down |"
}

main "$@"
