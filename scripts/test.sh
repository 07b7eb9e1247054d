#!/usr/bin/env bash
# The test command (README): makes sure PostgreSQL and MariaDB are up on loopback, then
# runs every test of the workspace. The PostgreSQL tests fail, never skip, without a server.
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

# Test databases from an interrupted earlier run would only waste disk: drop them.
psql -h 127.0.0.1 -U postgres -d test -Atc \
  "SELECT 'DROP DATABASE IF EXISTS ' || quote_ident(datname) || ' WITH (FORCE);' FROM pg_database WHERE datname LIKE 'syncpool_t_%'" \
  2>/dev/null | psql -h 127.0.0.1 -U postgres -d test -q >/dev/null 2>&1 || true

exec cargo test --workspace "$@"
