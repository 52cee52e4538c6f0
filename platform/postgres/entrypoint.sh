#!/usr/bin/env bash
# Starts PostgreSQL; on the first start of an empty data volume, creates the cluster with
# POSTGRES_USER / POSTGRES_PASSWORD and the platform's databases first. The password reaches initdb
# through a file that is deleted at once, never through a command line.
set -euo pipefail
: "${POSTGRES_USER:?}" "${POSTGRES_PASSWORD:?}"

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
         --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  # Listens on the socket only while the databases are created, so nothing connects half-way and
  # the healthcheck (over TCP) turns healthy only once they exist.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/run/postgresql" -w start >/dev/null
  PGHOST=/run/postgresql bash /usr/local/lib/platform-postgres/init-databases.sh
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec "$@" -c listen_addresses='*' -c unix_socket_directories=/run/postgresql
