#!/bin/sh
# A throwaway PostgreSQL for the tests: Debian's server binaries, a fresh cluster in a
# temporary folder, loopback only, on a free port, run by an unprivileged user (the
# `postgres` system user when called as root). Nothing is installed or left running:
#
#   sh scripts/pg.sh run CMD ARGS...   start a cluster, run CMD with IOTFIN_TEST_PG set to
#                                      the URL of an empty database, stop and delete the
#                                      cluster (also when CMD fails or is interrupted);
#                                      CMD's exit status is the script's.
#
# The server keeps its durable defaults (fsync, full_page_writes): with fsync off a commit
# costs nothing, devices then publish as fast as the CPU allows and starve the rest of a
# test, which is not the system iotfin runs on. Only initdb skips its fsync (--no-sync).
set -eu

bindir=""
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do bindir=$d; done
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
  echo "pg.sh: no PostgreSQL server binaries in /usr/lib/postgresql (apt-get install postgresql-15)" >&2
  exit 1
fi
major=$(basename "$(dirname "$bindir")")
if [ "${major%%.*}" -lt 15 ]; then
  echo "pg.sh: PostgreSQL $major found; iotfin needs 15 or newer" >&2
  exit 1
fi

[ "${1:-}" = "run" ] && [ $# -ge 2 ] || { echo "usage: sh scripts/pg.sh run CMD [ARGS...]" >&2; exit 2; }
shift

# initdb refuses root; as root, the cluster belongs to the system user `postgres`.
as_owner() { "$@"; }
owner=$(id -un)
if [ "$(id -u)" = 0 ]; then
  owner=postgres
  id "$owner" >/dev/null 2>&1 || { echo "pg.sh: no user $owner to run the cluster" >&2; exit 1; }
  as_owner() { runuser -u "$owner" -- "$@"; }
fi

dir=$(mktemp -d /tmp/iotfin-pg.XXXXXX)
chmod 755 "$dir"
[ "$owner" = "$(id -un)" ] || chown "$owner" "$dir"
started=""
cleanup() {
  status=$?
  trap - EXIT INT TERM
  if [ -n "$started" ]; then
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A random password proves the URL's password reaches libpq (scram over TCP) and lets
# the tests check that it never shows in a log.
pass=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$pass" > "$dir/pw"
[ "$owner" = "$(id -un)" ] || chown "$owner" "$dir/pw"
as_owner "$bindir/initdb" -D "$dir/data" -U iotfin --pwfile="$dir/pw" -E UTF8 --locale=C.UTF-8 \
  --auth-local=trust --auth-host=scram-sha-256 --no-sync >"$dir/initdb.log" 2>&1 ||
  { cat "$dir/initdb.log" >&2; exit 1; }

# A free port: ask the kernel for one, then hand it to the server at once.
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
  -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir \
-c max_connections=300 -c shared_buffers=64MB" \
  start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
started=1
as_owner "$bindir/../bin/psql" -X -q -h "$dir" -p "$port" -U iotfin -d postgres \
  -c "CREATE DATABASE iotfin" >/dev/null

export IOTFIN_TEST_PG="postgres://iotfin:$pass@127.0.0.1:$port/iotfin"
echo "pg.sh: PostgreSQL $major on 127.0.0.1:$port ($dir)" >&2
set +e
"$@"
status=$?
set -e
exit "$status"
