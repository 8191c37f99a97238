#!/usr/bin/env bash
# Soak test: 10 minutes of mixed GET/POST/streaming/WebSocket traffic through the release
# binary while origins are killed and restarted and the config is reloaded every few seconds.
# Everything stays on 127.0.0.1 and stops at the end. See bench/soak.py for what it reports.
#
#   bash bench/soak.sh                    # 10 minutes
#   DURATION=60 bash bench/soak.sh        # a quick run
#   CLIENTS=16 KILL_EVERY=5 RELOAD_EVERY=2 bash bench/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec python3 bench/soak.py
