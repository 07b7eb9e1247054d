#!/usr/bin/env bash
# Throughput figures: enqueue of one N-instance session, no-op syncs by 2 worker
# processes x 16 against raw apalis no-op jobs with the same settings, on SQLite and
# PostgreSQL, measured in the same run. Prints figures; asserts nothing.
# Usage: scripts/bench.sh [--backend sqlite|postgres|both] [--instances N] [--processes P] [--concurrency C]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin syncpool --example bench >&2
exec target/release/examples/bench "$@"
