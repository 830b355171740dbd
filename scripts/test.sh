#!/usr/bin/env bash
# Install into .venv (if needed) and run the whole test suite, two tests at a time. PostgreSQL
# tests run against a throwaway server when the PostgreSQL binaries are installed (CI installs
# them).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
venv_install test
if [ -z "${TASKBRIDGE_TEST_PG_URL:-}" ] && { command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; }; then
  eval "$(bash scripts/start-postgres.sh)"
  trap 'eval "$TASKBRIDGE_TEST_PG_STOP" >/dev/null 2>&1 || true' EXIT
fi
# Two workers (pytest-xdist): most tests wait on loopback HTTP and processes, so two at a time
# take about 60 % of the time on two cores. Work stealing: the tests' lengths differ by a
# thousandfold, and a worker that runs out takes tests queued on the other rather than idle while
# it finishes. TASKBRIDGE_TEST_WORKERS=0 runs them in this process (for a debugger); a later -n
# or --dist among the arguments wins.
.venv/bin/python -m pytest -n "${TASKBRIDGE_TEST_WORKERS:-2}" --dist worksteal "$@"
