#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each (default 600), one after another,
# starting from the committed seeds in fuzz/seeds/TARGET. New inputs go to fuzz/corpus/TARGET
# (not committed); a crash stops the run and leaves its input in fuzz/artifacts/TARGET.
#
#   bash fuzz/run.sh                 # every target, 10 minutes each
#   SECONDS_EACH=60 bash fuzz/run.sh chunked config
#
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz). Everything runs in
# process: no target opens a socket or resolves a name.
set -euo pipefail
cd "$(dirname "$0")"
each="${SECONDS_EACH:-600}"
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(http1_request http1_response chunked config addresses hash_key client_hello)
fi
cargo +nightly fuzz build
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: ${each}s"
  cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$each" -print_final_stats=1 2>&1 |
    grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+== ERROR|.*panicked)" || true
  if [ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]; then
    echo "== $t: CRASH, inputs in fuzz/artifacts/$t" >&2
    exit 1
  fi
done
echo "== all targets ran ${each}s each without a crash"
