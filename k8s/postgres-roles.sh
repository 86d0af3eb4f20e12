# shellcheck shell=sh
# Creates the roles todos_owner and todos_app (postgres-roles.sql) as the superuser, with the
# passwords of the Secrets todo-db-owner and todo-db-app. Part of the ConfigMap postgres-initdb
# (kustomization.yaml), mounted in /docker-entrypoint-initdb.d of the postgres container:
# - At the first start (an empty data directory) the image's entrypoint sources it, its temporary
#   server listening on the Unix socket only.
# - On a database that already exists it never runs by itself: run it once by hand, it is
#   idempotent (postgres.yaml gives the command).
# No `exit` here: a sourced script would end the entrypoint with it. A missing variable stops it
# with a message, and the entrypoint with it.
: "${POSTGRES_USER:?is not set (Secret todo-db)}"
: "${POSTGRES_DB:?is not set (Secret todo-db)}"
: "${POSTGRES_OWNER_PASSWORD:?is not set (Secret todo-db-owner, key password)}"
: "${POSTGRES_APP_PASSWORD:?is not set (Secret todo-db-app, key password)}"
psql --no-psqlrc --no-password -v ON_ERROR_STOP=1 \
    --username "$POSTGRES_USER" --dbname postgres \
    -v owner_password="$POSTGRES_OWNER_PASSWORD" \
    -v app_password="$POSTGRES_APP_PASSWORD" \
    -v database="$POSTGRES_DB" \
    -f /docker-entrypoint-initdb.d/roles/postgres-roles.sql
