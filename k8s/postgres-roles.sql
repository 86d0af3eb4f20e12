-- The database's two roles, run once by a superuser with psql (the postgres pod's init script does, and
-- so do the tests, from this one file):
--   psql -v owner_password=... -v app_password=... -v database=todos -f postgres-roles.sql
-- todos_owner owns the database and its schema and runs the migrations (`python -m web migrate`,
-- DATABASE_MIGRATION_URL); todos_app is what the API connects as (DATABASE_URL): it reads and writes the
-- tables the owner creates and can do nothing else (no DDL, no roles, no other database).
\set ON_ERROR_STOP on

SELECT format('CREATE ROLE todos_owner LOGIN PASSWORD %L', :'owner_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'todos_owner') \gexec
SELECT format('CREATE ROLE todos_app LOGIN PASSWORD %L', :'app_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'todos_app') \gexec
-- on a second run, the passwords follow the Secret
ALTER ROLE todos_owner LOGIN PASSWORD :'owner_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
ALTER ROLE todos_app LOGIN PASSWORD :'app_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;

SELECT format('CREATE DATABASE %I OWNER todos_owner', :'database')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database') \gexec
ALTER DATABASE :"database" OWNER TO todos_owner;
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"database" TO todos_owner;
GRANT CONNECT ON DATABASE :"database" TO todos_app;

\connect :"database"
ALTER SCHEMA public OWNER TO todos_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO todos_app;
-- what the owner creates from now on (each migration's tables and sequences) the API may use, no more
ALTER DEFAULT PRIVILEGES FOR ROLE todos_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO todos_app;
ALTER DEFAULT PRIVILEGES FOR ROLE todos_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO todos_app;
-- a database migrated before these roles existed (by the superuser): its tables (with their sequences)
-- and the outbox trigger's function go to the owner, who must be able to migrate them further
DO $$
DECLARE
    statement text;
BEGIN
    FOR statement IN
        SELECT format('ALTER TABLE %I.%I OWNER TO todos_owner', schemaname, tablename)
        FROM pg_tables WHERE schemaname = 'public' AND tableowner <> 'todos_owner'
        UNION ALL
        SELECT format('ALTER FUNCTION %s OWNER TO todos_owner', p.oid::regprocedure)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) <> 'todos_owner'
    LOOP
        EXECUTE statement;
    END LOOP;
END
$$;
-- and what it created before this script ran (a database migrated by an earlier deployment)
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO todos_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO todos_app;
