#!/usr/bin/env bash
# Every benchmark scenario of docs/BENCHMARKS.md on SQLite and PostgreSQL, beside the raw
# apalis peer (bench/apalis-baseline) measured in the same run. Prints a Markdown table,
# writes target/bench/results.json, asserts nothing.
#   scripts/bench.sh                       full sizes (about 25 minutes on 2 cores)
#   scripts/bench.sh --quick               small sizes, debug build: proves it still runs (CI)
#   scripts/bench.sh --backend sqlite --scenario noop,pickup
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/examples/bench
if [[ " $* " == *" --quick "* ]]; then
  cargo build --bin syncpool --example bench >&2
  bin=target/debug/examples/bench
else
  cargo build --release --bin syncpool --example bench >&2
fi
# The peer keeps its own lock file and target dir, as its users build it.
CARGO_TARGET_DIR=$PWD/target/apalis-baseline \
  cargo build --release --quiet --manifest-path bench/apalis-baseline/Cargo.toml >&2
exec "$bin" "$@"
