#!/usr/bin/env bash
# Runs CMD... with a private PostgreSQL 15 server on 127.0.0.1 (a free port,
# a temporary directory and a socket directory of its own) and
# WASMHOST_TEST_PG set to it, so that every TestEnv of the tests gets a
# database of its own there: `bash tests/with-postgres.sh cargo test` runs
# the whole suite on PostgreSQL. The server is stopped and removed however
# CMD ends; the exit code is CMD's.
#
# PostgreSQL refuses to run as root: as root, its programs run as the
# `postgres` system user. PG_BIN overrides where they are.
set -euo pipefail
if [ $# -eq 0 ]; then
    echo "usage: tests/with-postgres.sh CMD [ARGS...]" >&2
    exit 2
fi
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
dir=$(mktemp -d "${TMPDIR:-/tmp}/wasmhost-pg-XXXXXX")
started=
as_server_user() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
    if [ -n "$started" ]; then
        as_server_user "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
            as_server_user "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
as_server_user "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
as_server_user mkdir "$dir/sockets"
# A free port can be taken between the look and the bind: try a few.
for _ in 1 2 3 4 5; do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # Speed over durability: the server lives as long as CMD. Parallel
    # tests each hold a few connections.
    if as_server_user "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir/sockets -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
        start >/dev/null; then
        started=1
        break
    fi
done
if [ -z "$started" ]; then
    echo "with-postgres.sh: PostgreSQL did not start:" >&2
    cat "$dir/server.log" >&2
    exit 1
fi
export WASMHOST_TEST_PG="postgres://postgres@127.0.0.1:$port"
echo "with-postgres.sh: PostgreSQL at $WASMHOST_TEST_PG" >&2
set +e
"$@"
code=$?
set -e
exit $code
