#!/usr/bin/env bash
# Waits for PostgreSQL, at most WAIT_SECONDS, saying what it waits for; then, with PROVISION=true,
# makes sure each service in SERVICES has its role shopmesh_<service> (password from
# SHOPMESH_<SERVICE>_PASSWORD) and its own database shopmesh_<service>, which only that role
# (and the superuser) may connect to. Idempotent: the bundled PostgreSQL's first start runs it
# (docker-entrypoint-initdb.d) and so does every pre-upgrade migration Job.
# Without PROVISION, it waits for each SHOPMESH_<SERVICE>_DATABASE_URL instead (an external
# database), logging the URL without its password.
set -euo pipefail
wait_seconds="${WAIT_SECONDS:-300}"
deadline=$((SECONDS + wait_seconds))

wait_for() { # wait_for <description> <pg_isready arguments…>
  local what="$1"; shift
  until pg_isready -q -t 2 "$@"; do
    if ((SECONDS >= deadline)); then
      echo "gave up: PostgreSQL at ${what} did not accept connections within ${wait_seconds}s" >&2
      exit 1
    fi
    echo "waiting for PostgreSQL at ${what} ($((deadline - SECONDS))s left)"
    sleep 2
  done
  echo "PostgreSQL at ${what} accepts connections"
}

if [[ "${PROVISION:-false}" != true ]]; then
  for svc in ${SERVICES}; do
    var="SHOPMESH_${svc^^}_DATABASE_URL"
    url="${!var}"
    # The host, port and database; never the password.
    wait_for "$(sed -E 's#^[a-z]+://([^@/]*@)?##' <<<"${url}") (${svc})" -d "${url}"
  done
  exit 0
fi

wait_for "${PGHOST:-the local socket}:${PGPORT:-5432}"
for svc in ${SERVICES}; do
  var="SHOPMESH_${svc^^}_PASSWORD"
  psql -v ON_ERROR_STOP=1 -X -q -d "${PGDATABASE:-postgres}" \
    -v role="shopmesh_${svc}" -v password="${!var}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')\gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'role', :'password')\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'role', :'role') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'role')\gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'role')\gexec
SQL
  echo "database and role shopmesh_${svc} ready"
done
