#!/usr/bin/env bash
# A quick probe, from outside, of one fleet shape: sessions in a row of N simulated
# instances on a fresh database, P worker processes x C, and per session the syncs/s, the
# workers' CPU per sync and (PostgreSQL) the CPU of every server process per sync, read
# from /proc. The figures in docs/BENCHMARKS.md marked "probe" came from it; the bench
# (scripts/bench.sh) is what measures the targets, beside the raw apalis peer.
#
#   scripts/probe.sh BIN sqlite|postgres [N] [P] [C] [LATENCY_MS] [ACCOUNTS] [SESSIONS]
#   scripts/probe.sh target/release/syncpool postgres 10000 2 64 50     # the efficiency shape
#
# PostgreSQL: a database is created and dropped on PROBE_PG (default the machine's server,
# postgres://postgres@127.0.0.1:5432); point it at a private server started with
# `-c shared_preload_libraries=pg_stat_statements` to see where the server's time goes.
set -euo pipefail
BIN=$1; BACKEND=$2; N=${3:-10000}; P=${4:-2}; C=${5:-16}; LAT=${6:-0}; ACC=${7:-0}; S=${8:-1}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/syncpool-probe.XXXXXX")
PG=${PROBE_PG:-postgres://postgres@127.0.0.1:5432}
case $BACKEND in
  sqlite) export SYNCPOOL_DATABASE_URL=sqlite://$DIR/probe.db ;;
  postgres) DB=probe_$$; psql "$PG/test" -qc "CREATE DATABASE $DB" >/dev/null
            export SYNCPOOL_DATABASE_URL=$PG/$DB ;;
  *) echo "usage: probe.sh BIN sqlite|postgres [N] [P] [C] [LATENCY_MS] [ACCOUNTS] [SESSIONS]" >&2; exit 2 ;;
esac
export RUST_LOG=error
pids=()
cleanup() {
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null && wait "${pids[@]}" 2>/dev/null
  [ "$BACKEND" = postgres ] && psql "$PG/test" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT
python3 -c "import json; print(json.dumps([{'name': f'i{i}', 'kind': 'simulated', \
  'options': {'latency_ms': $LAT, 'accounts': $ACC}} for i in range($N)]))" > "$DIR/fleet.json"
"$BIN" migrate >/dev/null
"$BIN" instances import "$DIR/fleet.json" >/dev/null
[ "$BACKEND" = postgres ] && psql "$SYNCPOOL_DATABASE_URL" -qc "ANALYZE" >/dev/null
for _ in $(seq "$P"); do "$BIN" worker --concurrency "$C" >/dev/null 2>"$DIR/worker.err" & pids+=($!); done
sleep 2
# utime + stime of the workers, and of the server's processes, in clock ticks.
ticks() { for p in "$@"; do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null; done | paste -sd+ | bc; }
server() { [ "$BACKEND" = postgres ] && ticks $(pgrep -u postgres postgres) || echo 0; }
hz=$(getconf CLK_TCK)
for s in $(seq "$S"); do
  w0=$(ticks "${pids[@]}"); s0=$(server); t0=$(date +%s.%N)
  "$BIN" sync-all --wait >/dev/null 2>&1 || true
  t1=$(date +%s.%N); w1=$(ticks "${pids[@]}"); s1=$(server)
  python3 -c "
n, t = $N, $t1 - $t0
print(f'session $s: {n / t:.0f} syncs/s ({t:.2f} s), workers {($w1 - $w0) / $hz / n * 1e6:.0f} us CPU/sync', end='')
print(f', server {($s1 - $s0) / $hz / n * 1e6:.0f} us/sync' if '$BACKEND' == 'postgres' else '')"
done
