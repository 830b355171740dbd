#!/usr/bin/env bash
# Install into .venv (if needed) and run the whole test suite. PostgreSQL tests run against a
# throwaway server when the PostgreSQL binaries are installed (CI installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
if [ -z "${TASKBRIDGE_TEST_PG_URL:-}" ] && { command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; }; then
  eval "$(bash scripts/start-postgres.sh)"
  trap 'eval "$TASKBRIDGE_TEST_PG_STOP" >/dev/null 2>&1 || true' EXIT
fi
.venv/bin/python -m pytest "$@"
