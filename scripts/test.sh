#!/usr/bin/env bash
# `make test`: the whole suite against real PostgreSQL and Redis (project-local ones
# unless DATABASE_URL / REDIS_URL are given). pytest-django creates and drops its own
# test database. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
eval "$(scripts/services.sh start)"
export DATABASE_URL REDIS_URL
exec .venv/bin/python -m pytest "$@"
