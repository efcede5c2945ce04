#!/usr/bin/env bash
# Start a throwaway PostgreSQL for the registry tests, listening on 127.0.0.1 only.
# Installs the Debian `postgresql` package when no initdb is found (needs root), creates a
# cluster under /tmp, a role and a database, and prints the SQLAlchemy URL as the last line
# of stdout:   export FORGEML_TEST_PG_URL="$(.ci/start_postgres.sh | tail -n1)"
# Running it again reuses the running server. Stop it with:
#   pg_ctl -D "${FORGEML_PG_DIR:-/tmp/forgeml-pg}/data" stop   (as the postgres user when root)
set -euo pipefail

PORT="${FORGEML_PG_PORT:-55432}"
BASE="${FORGEML_PG_DIR:-/tmp/forgeml-pg}"
DATA="$BASE/data"
DB="forgeml_test"
ROLE="forgeml"
PASSWORD="forgeml"

log() { echo "[start_postgres] $*" >&2; }

find_bindir() {
  if command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
    return
  fi
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  if [[ -n "$dir" && -x "$dir/initdb" ]]; then
    echo "$dir"
  fi
}

BINDIR="$(find_bindir)"
if [[ -z "$BINDIR" ]]; then
  if [[ "$(id -u)" -ne 0 ]]; then
    log "initdb not found and not root: install PostgreSQL (apt-get install postgresql)"
    exit 1
  fi
  log "installing the postgresql apt package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >&2
  apt-get install -y --no-install-recommends postgresql >&2
  BINDIR="$(find_bindir)"
  [[ -n "$BINDIR" ]] || { log "initdb still missing after install"; exit 1; }
fi

# initdb and postgres refuse to run as root: use the postgres account the package made.
if [[ "$(id -u)" -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir "$BASE" --shell /bin/bash postgres
  as_pg() { runuser -u postgres -- "$@"; }
else
  as_pg() { "$@"; }
fi

mkdir -p "$BASE"
[[ "$(id -u)" -eq 0 ]] && chown postgres: "$BASE"

if [[ ! -f "$DATA/PG_VERSION" ]]; then
  log "initialising a cluster in $DATA"
  as_pg "$BINDIR/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --no-locale >&2
fi

# Sockets go under $BASE: /var/run/postgresql may not exist in a bare container.
PSQL=(as_pg "$BINDIR/psql" -h "$BASE" -p "$PORT" -U postgres -v ON_ERROR_STOP=1 -qAt)
# A throwaway test server: skip fsync so commit latency does not dominate the tests.
FAST="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
if ! as_pg "$BINDIR/pg_isready" -h "$BASE" -p "$PORT" -q; then
  log "starting the server on 127.0.0.1:$PORT"
  as_pg "$BINDIR/pg_ctl" -D "$DATA" -l "$BASE/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $BASE -c max_connections=100 $FAST" >&2 || {
    cat "$BASE/server.log" >&2
    exit 1
  }
fi

if [[ "$("${PSQL[@]}" -d postgres -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != "1" ]]; then
  "${PSQL[@]}" -d postgres -c "CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD'" >&2
fi
if [[ "$("${PSQL[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]]; then
  "${PSQL[@]}" -d postgres -c "CREATE DATABASE $DB OWNER $ROLE" >&2
fi

log "ready"
echo "postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"
