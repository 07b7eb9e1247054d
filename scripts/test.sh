#!/usr/bin/env bash
# The test command (README): makes sure PostgreSQL and MariaDB are up on loopback, then
# checks formatting and lints (warnings are errors) and runs every test of the workspace.
# The PostgreSQL tests fail, never skip, without a server.
set -euo pipefail
cd "$(dirname "$0")/.."

wait_for() { # name, check command...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "error: $name did not come up" >&2
  return 1
}

if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  echo "starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_for PostgreSQL pg_isready -h 127.0.0.1 -p 5432
fi
if command -v mariadb-admin >/dev/null 2>&1 && ! mariadb-admin -h 127.0.0.1 -uroot ping >/dev/null 2>&1; then
  echo "starting MariaDB" >&2
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  wait_for MariaDB mariadb-admin -h 127.0.0.1 -uroot ping
fi

# The Prometheus test runs the real thing (Debian's package) against live processes.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "installing prometheus" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi

# Tests that need other server settings (password authentication, crashes and restarts)
# start private PostgreSQL clusters in temporary directories; the machine's servers are
# never reconfigured. Each run keeps its temporary directories in a folder of its own
# (TMPDIR), marked with the run's PID; a cluster's own PID file (data/postmaster.pid)
# says which process to stop. Only the clusters of this run, at its end, and of runs
# that are gone (interrupted) are stopped: never another live run's, and nothing is
# matched by name.
stop_clusters_in() { # run folder
  local pidfile pid
  for pidfile in "$1"/.tmp*/data/postmaster.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(head -n1 "$pidfile" 2>/dev/null) || continue
    case "$pid" in '' | *[!0-9]*) continue ;; esac
    # The PID may have been reused since: stop it only if it is a postgres.
    if [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = postgres ]; then
      kill -QUIT "$pid" 2>/dev/null || true # immediate shutdown
    fi
  done
}
for run in /tmp/syncpool-test.*; do
  [ -d "$run" ] || continue
  owner=$(cat "$run/run.pid" 2>/dev/null || true)
  if [ -n "$owner" ] && kill -0 "$owner" 2>/dev/null; then continue; fi # a live run
  stop_clusters_in "$run"
  rm -rf "$run" 2>/dev/null || true
done
RUN_TMP=$(mktemp -d /tmp/syncpool-test.XXXXXX)
chmod 1777 "$RUN_TMP" # as /tmp: private clusters run as the postgres user
echo $$ >"$RUN_TMP/run.pid"
export TMPDIR=$RUN_TMP
finish() {
  stop_clusters_in "$RUN_TMP"
  rm -rf "$RUN_TMP" 2>/dev/null || true
}
trap finish EXIT

# Test databases from an interrupted earlier run would only waste disk: drop them.
psql -h 127.0.0.1 -U postgres -d test -Atc \
  "SELECT 'DROP DATABASE IF EXISTS ' || quote_ident(datname) || ' WITH (FORCE);' FROM pg_database WHERE datname LIKE 'syncpool_t_%'" \
  2>/dev/null | psql -h 127.0.0.1 -U postgres -d test -q >/dev/null 2>&1 || true

# Roles, users and databases the source tests create are named sp<10 hex>_*; drop those an
# interrupted run left behind.
psql -h 127.0.0.1 -U postgres -d test -Atc \
  "SELECT 'DROP DATABASE IF EXISTS ' || quote_ident(datname) || ' WITH (FORCE);' FROM pg_database WHERE datname ~ '^sp[0-9a-f]{10}_'" \
  2>/dev/null | psql -h 127.0.0.1 -U postgres -d test -q >/dev/null 2>&1 || true
psql -h 127.0.0.1 -U postgres -d test -Atc \
  "SELECT 'DROP OWNED BY ' || quote_ident(rolname) || '; DROP ROLE ' || quote_ident(rolname) || ';' FROM pg_roles WHERE rolname ~ '^sp[0-9a-f]{10}_'" \
  2>/dev/null | psql -h 127.0.0.1 -U postgres -d test -q >/dev/null 2>&1 || true
if command -v mariadb >/dev/null 2>&1; then
  mariadb -h 127.0.0.1 -uroot -N -e \
    "SELECT CONCAT('DROP USER IF EXISTS ', QUOTE(User), '@', QUOTE(Host), ';') FROM mysql.user WHERE User RLIKE '^sp[0-9a-f]{10}_'" \
    2>/dev/null | mariadb -h 127.0.0.1 -uroot 2>/dev/null || true
  mariadb -h 127.0.0.1 -uroot -N -e \
    "SELECT CONCAT('DROP DATABASE IF EXISTS \`', SCHEMA_NAME, '\`;') FROM information_schema.SCHEMATA WHERE SCHEMA_NAME RLIKE '^sp[0-9a-f]{10}_'" \
    2>/dev/null | mariadb -h 127.0.0.1 -uroot 2>/dev/null || true
fi

# The OpenAPI tests check the served document with openapi-spec-validator and run
# schemathesis against the server; the webhook tests' receiver checks signatures with the
# Standard Webhooks reference library (all from PyPI), from a virtual environment of the
# project's own under target/.
if [ ! -x target/pyenv/bin/openapi-spec-validator ] || [ ! -x target/pyenv/bin/st ] \
  || ! target/pyenv/bin/python -c "import standardwebhooks" >/dev/null 2>&1; then
  echo "installing openapi-spec-validator, schemathesis and standardwebhooks into target/pyenv" >&2
  python3 -m venv target/pyenv
  target/pyenv/bin/pip install -q "openapi-spec-validator==0.9.0" "schemathesis==4.32.5" "standardwebhooks==1.0.0"
fi

# A test runs a worker whose clock is 15 minutes fast under libfaketime (Debian's
# faketime): lock waits must be judged by the database's clock, not a worker's.
if ! compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null && [ ! -e /usr/lib/faketime/libfaketime.so.1 ]; then
  echo "installing faketime" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
fi

# The console's browser tests drive Debian's Chromium through ChromeDriver (WebDriver).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "installing chromium and chromium-driver" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# House rules first: structure (no file over 800 lines, no function over 100, no import
# cycle: docs/ARCHITECTURE.md), formatting and lints (warnings are errors), then every test.
python3 scripts/structure.py
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace "$@"
