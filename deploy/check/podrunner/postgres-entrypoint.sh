#!/usr/bin/env bash
# podrunner's stand-in for the official postgres image's docker-entrypoint.sh, running Debian's
# PostgreSQL: the same contract, smaller. First start (no PG_VERSION in PGDATA): initdb with
# POSTGRES_USER and POSTGRES_PASSWORD, listen on every address with password (scram-sha-256)
# authentication from the network, start a server on the socket only, create POSTGRES_DB, run
# /docker-entrypoint-initdb.d in order (*.sh executed when executable, else sourced; *.sql
# through psql), stop it. Every start: PGDATA mode 0700 (fsGroup may have widened it), then
# exec the command.
set -Eeuo pipefail
if [[ "${1:0:1}" == '-' ]]; then set -- postgres "$@"; fi
if [[ "$1" != postgres ]]; then exec "$@"; fi
: "${PGDATA:=/var/lib/postgresql/data}"
mkdir -p "$PGDATA"
chmod 00700 "$PGDATA" || :
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  : "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
  if [[ -z "${POSTGRES_PASSWORD:-}" && "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]]; then
    echo "Error: Database is uninitialized and superuser password is not specified." >&2
    exit 1
  fi
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") ${POSTGRES_INITDB_ARGS:-}
  printf '\nhost all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.auto.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
  export PGUSER="${PGUSER:-$POSTGRES_USER}" PGPASSWORD="${PGPASSWORD:-${POSTGRES_PASSWORD:-}}"
  if [[ "$POSTGRES_DB" != postgres ]]; then
    psql -v ON_ERROR_STOP=1 --no-psqlrc -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) echo "running $f"; if [[ -x "$f" ]]; then "$f"; else . "$f"; fi ;;
      *.sql) echo "running $f"; psql -v ON_ERROR_STOP=1 --no-psqlrc -d "$POSTGRES_DB" -f "$f" ;;
      *) [[ -e "$f" ]] && echo "ignoring $f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
  unset PGPASSWORD
  echo "PostgreSQL init process complete; ready for start up."
fi
exec "$@"
