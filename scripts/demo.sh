#!/usr/bin/env bash
# Install into .venv (if needed) and run `taskbridge demo`: five platform fakes, a demo config,
# the daemon, tasks flowing. Extra arguments go to the demo (e.g. --port 9090, --seconds 60).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e .
exec .venv/bin/taskbridge demo "$@"
