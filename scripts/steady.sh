#!/usr/bin/env bash
# Three sessions in a row of N no-op instances on a fresh PostgreSQL database (the
# machine's, 127.0.0.1:5432), two workers of 16: the rate of each, to compare later
# sessions with the first (docs/BENCHMARKS.md, issue #21). Until the bench has its own
# `steady` scenario.
#   scripts/steady.sh target/release/syncpool 3000
set -euo pipefail
BIN=$1; N=${2:-3000}
DB=steady_$$
psql -h 127.0.0.1 -U postgres -d test -qc "CREATE DATABASE $DB" >/dev/null
export SYNCPOOL_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB
export RUST_LOG=error
python3 -c "
import json; print(json.dumps([{'name': f'i{i}', 'kind': 'simulated', 'options': {'latency_ms': 0, 'accounts': 0}} for i in range($N)]))" > /tmp/steady_$$.json
$BIN migrate >/dev/null
$BIN instances import /tmp/steady_$$.json >/dev/null
$BIN worker --concurrency 16 >/dev/null 2>&1 & W1=$!
$BIN worker --concurrency 16 >/dev/null 2>&1 & W2=$!
sleep 2
for s in 1 2 3; do
  t0=$(date +%s.%N)
  $BIN sync-all --wait >/dev/null 2>&1 || true
  t1=$(date +%s.%N)
  python3 -c "print('session $s: %.0f syncs/s (%.2f s)' % ($N/($t1-$t0), $t1-$t0))"
done
kill $W1 $W2; wait $W1 $W2 2>/dev/null || true
psql -h 127.0.0.1 -U postgres -d test -qc "DROP DATABASE $DB WITH (FORCE)" >/dev/null
rm -f /tmp/steady_$$.json
