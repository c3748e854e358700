#!/bin/sh
# First start: make the cluster with the superuser and password from the secret, and the database.
# Every start: serve on all addresses, password (scram) required for every network connection.
set -eu
: "${POSTGRES_USER:=cia}" "${POSTGRES_DB:=cia}" "${POSTGRES_PASSWORD_FILE:=/run/secrets/db_password}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  initdb --username="$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" --auth-local=trust \
         --auth-host=scram-sha-256 --encoding=UTF8 -D "$PGDATA" >/dev/null
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" \
    | postgres --single -D "$PGDATA" postgres >/dev/null
  echo "postgres-entrypoint: made the cluster and database $POSTGRES_DB"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/run/postgresql
