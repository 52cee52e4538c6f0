#!/usr/bin/env bash
# Creates the platform's databases (FEAST_DB, MLFLOW_DB, AIRFLOW_DB), owned by POSTGRES_USER.
# The platform's PostgreSQL image runs it once, on the first start of an empty data volume;
# it is idempotent all the same, so running it by hand against a live server is safe.
set -euo pipefail

for db in "${FEAST_DB:-feast}" "${MLFLOW_DB:-mlflow}" "${AIRFLOW_DB:-airflow}"; do
  # format(%I) quotes the name and \gexec runs the statement only when the database is missing.
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
       --set db="$db" <<'SQL'
SELECT format('CREATE DATABASE %I OWNER %I', :'db', current_user)
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db')
\gexec
SQL
  echo "init-databases: database \"$db\" is ready"
done
