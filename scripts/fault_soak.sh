#!/usr/bin/env bash
# The long form of the randomized fault test (tests/fault_soak.rs): many seeds, longer
# fault windows, on SQLite and on a private PostgreSQL cluster (never the machine's).
#   scripts/fault_soak.sh [SEEDS] [SECONDS]     # defaults: 20 random seeds, 60 s each
# A failing run prints its seed; replay one with SYNCPOOL_FAULT_SEEDS=N.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20}
secs=${2:-60}
seeds=$(for _ in $(seq 1 "$n"); do echo $((RANDOM * 32768 + RANDOM)); done | paste -sd, -)
echo "seeds: $seeds; $secs s of faults each" >&2
SYNCPOOL_FAULT_SEEDS=$seeds SYNCPOOL_FAULT_SECONDS=$secs \
  exec cargo test --test main -- fault_soak --nocapture --test-threads 2
