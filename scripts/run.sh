#!/usr/bin/env bash
# `make run`: migrate, seed when empty, then run every process of the Procfile in the
# foreground (Ctrl-C stops them all; `make stop` stops the local PostgreSQL/Redis).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
eval "$(scripts/services.sh start)"
export DATABASE_URL REDIS_URL
PY=.venv/bin/python
$PY manage.py migrate --noinput
$PY manage.py seed_demo --if-empty
PORT="${WEB_PORT:-8000}"
cat <<MSG

  Exchange starting:
    web app         http://127.0.0.1:$PORT/
    admin           http://127.0.0.1:$PORT/admin/
    ops dashboard   http://127.0.0.1:$PORT/ops/dashboard/
    client API      http://127.0.0.1:$PORT/fapi/v1/time
    metrics         http://127.0.0.1:$PORT/metrics
    demo traders    $( [ "${DEMO_TRADERS:-1}" = "0" ] && echo "off (DEMO_TRADERS=0)" || echo "on: makers, takers, trend followers (DEMO_TRADERS=0 turns them off)")
  Ops login: $( [ -f var/ops-credentials.txt ] && tr '\n' ' ' < var/ops-credentials.txt || echo "see the seed output above")
  Ctrl-C stops the processes; 'make stop' stops the project-local PostgreSQL and Redis.

MSG
export WEB_PORT="$PORT"
# DEMO_TRADERS=0 leaves the Procfile's `traders` (the demo participants) out.
HONCHO_ARGS=()
if [ "${DEMO_TRADERS:-1}" = "0" ]; then HONCHO_ARGS+=(-c traders=0); fi
exec .venv/bin/honcho start -f Procfile "${HONCHO_ARGS[@]}"
