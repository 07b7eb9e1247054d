#!/usr/bin/env bash
# Latency of GET /api/v1/sessions/{id} while 2 worker processes (x16) sync N simulated
# instances (10 ms each). Prints figures; asserts nothing.
# Usage: scripts/api_latency.sh [DATABASE_URL] [N]   (default: a temp SQLite file, 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin syncpool >&2
B=$PWD/target/release/syncpool
dir=$(mktemp -d)
export SYNCPOOL_DATABASE_URL=${1:-sqlite://$dir/latency.db}
n=${2:-10000}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$B migrate >/dev/null
python3 -c "import json; print(json.dumps([{'name': 'lat-%06d' % i, 'kind': 'simulated', 'options': {'latency_ms': 10, 'accounts': 5}} for i in range($n)]))" > "$dir/instances.json"
$B instances import "$dir/instances.json" >/dev/null
$B serve --bind 127.0.0.1:$port 2>/dev/null & pids="$!"
$B worker --concurrency 16 2>/dev/null & pids="$pids $!"
$B worker --concurrency 16 2>/dev/null & pids="$pids $!"
trap 'kill $pids 2>/dev/null; rm -rf "$dir"' EXIT
sleep 2
python3 - "$port" <<'PY'
import http.client, json, sys, time
port = int(sys.argv[1])
def call(method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request(method, path, body, {"Content-Type": "application/json"} if body else {})
    return c.getresponse().read()
sid = json.loads(call("POST", "/api/v1/sessions", '{"all": true}'))["session_id"]
lat, t0 = [], time.time()
while True:
    t = time.time()
    body = call("GET", "/api/v1/sessions/" + sid)
    lat.append((time.time() - t) * 1000)
    status = json.loads(body)["status"]
    if status in ("completed", "completed_with_errors", "failed", "cancelled"):
        break
    time.sleep(0.2)
lat.sort()
n = len(lat)
print("session %s in %.1f s; %d GETs of /api/v1/sessions/{id} (%d KiB each): p50 %.0f ms, p95 %.0f ms, max %.0f ms"
      % (status, time.time() - t0, n, len(body) // 1024, lat[n // 2], lat[int(n * 0.95)], lat[-1]))
PY
