#!/usr/bin/env bash
# Install into .venv (if needed) and run `taskbridge demo`: five platform fakes, a demo config,
# the daemon, tasks flowing. Extra arguments go to the demo (e.g. --port 9090, --seconds 60).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
venv_install ""
exec .venv/bin/taskbridge demo "$@"
