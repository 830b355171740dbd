#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the tests and print the shell line that points them at it:
#   eval "$(bash scripts/start-postgres.sh)"
# Needs the server binaries (Debian: apt-get install postgresql). Runs as the `postgres` user when
# started as root, since PostgreSQL refuses to run as root.
set -euo pipefail
bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1)" 2>/dev/null || true)
if [ -z "$bin" ] || [ ! -x "$bin/pg_ctl" ]; then
  bin=$(dirname "$(command -v pg_ctl)")
fi
dir=$(mktemp -d /tmp/taskbridge-pg.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$dir"
  as=(runuser -u postgres --)
fi
"${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null
"${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
echo "export TASKBRIDGE_TEST_PG_URL=postgresql+asyncpg://postgres@127.0.0.1:$port/postgres"
echo "export TASKBRIDGE_TEST_PG_STOP='${as[*]} $bin/pg_ctl -D $dir/data -m fast stop'"
