"""Least privilege on PostgreSQL: k8s/postgres-roles.sql, `python -m web migrate` as the owner, the API as
the app role (which reads and writes its tables and nothing else), and database passwords kept out of logs."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from streams.logs import REDACTED, redact
from tests.services import DB_PASSWORD, LOCALHOST, NatsServer, Postgres, free_port, refusing_port
from tests.web.conftest import ClientFactory
from tests.web.helpers import count_rows, sql, wait_for, wait_for_events
from web.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
ROLES_SQL = ROOT / "k8s" / "postgres-roles.sql"
MIGRATIONS = ["0001_initial", "0002_outbox_notify"]


@dataclass(frozen=True)
class RolesDatabase:
    superuser: str  # the superuser's URL of this database, to look at it from outside
    owner: str  # todos_owner: DATABASE_MIGRATION_URL
    app: str  # todos_app: DATABASE_URL
    passwords: tuple[str, str]  # the owner's and the app's, as the script set them

    @property
    def name(self) -> str:
        return self.app.rsplit("/", 1)[1]

    def shown(self, url: str) -> str:
        """`url` as the API prints it: the password hidden, the role kept."""
        for password in (*self.passwords, DB_PASSWORD):
            url = url.replace(f":{password}@", ":***@")
        return url


def make_roles_database(postgres: Postgres) -> RolesDatabase:
    """A new database made by k8s/postgres-roles.sql (run with psql as the superuser), not migrated yet.

    The roles are cluster-wide and the script idempotent: it runs again for every database made here.
    The server trusts every local connection, so the passwords are not checked; the privileges are.
    """
    name = f"roles_{uuid.uuid4().hex[:12]}"
    owner_password, app_password = f"ow-{secrets.token_hex(8)}", f"ap-{secrets.token_hex(8)}"
    subprocess.run(
        [
            str(postgres.bin / "psql"),
            postgres.url("postgres"),
            "--quiet",
            "-v",
            f"owner_password={owner_password}",
            "-v",
            f"app_password={app_password}",
            "-v",
            f"database={name}",
            "-f",
            str(ROLES_SQL),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    base = f"{LOCALHOST}:{postgres.port}/{name}"
    return RolesDatabase(
        postgres.url(name),
        f"postgres://todos_owner:{owner_password}@{base}",
        f"postgres://todos_app:{app_password}@{base}",
        (owner_password, app_password),
    )


@pytest.fixture
def roles_db(postgres: Postgres) -> RolesDatabase:
    """A database of its own with the two roles, not migrated yet."""
    return make_roles_database(postgres)


@pytest.fixture(scope="module")
def migrated(postgres: Postgres) -> RolesDatabase:
    """A database with the two roles, migrated by the owner; shared by tests that change no schema."""
    database = make_roles_database(postgres)
    result = run_web("migrate", DATABASE_MIGRATION_URL=database.owner, DATABASE_URL=database.app)
    assert result.returncode == 0, result.stderr
    return database


def run_web(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m web ARGS` with only the given database settings (none from the caller's environment)."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("NATS_", "DATABASE_"))}
    return subprocess.run(
        [sys.executable, "-m", "web", *args],
        cwd=ROOT,
        env=clean | {"LOG_LEVEL": "critical", "HOST": LOCALHOST, "PORT": str(free_port())} | env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed start printed (and nothing else: no traceback)."""
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


async def owners(database_url: str) -> dict[str, str]:
    rows = await sql(database_url, "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'")
    return {row["tablename"]: row["tableowner"] for row in rows}


async def test_owner_migrates_and_the_app_role_serves(
    roles_db: RolesDatabase, jetstream: NatsServer, make_client: ClientFactory
) -> None:
    """`python -m web migrate` as todos_owner applies the migrations (once); the API as todos_app then
    creates, updates and deletes a todo, and its relay (outbox, NOTIFY trigger, leader lock) publishes them."""
    # as the initContainer of k8s/web.yaml runs it: DATABASE_MIGRATION_URL alone
    migrated = run_web("migrate", DATABASE_MIGRATION_URL=roles_db.owner)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.splitlines() == [
        f"web: applied 2 migration(s) to {roles_db.shown(roles_db.owner)}: {', '.join(MIGRATIONS)}"
    ]
    assert await owners(roles_db.superuser) == dict.fromkeys(["outbox", "todos", "tortoise_migrations"], "todos_owner")
    again = run_web("migrate", DATABASE_URL=roles_db.app, DATABASE_MIGRATION_URL=roles_db.owner)
    assert again.stdout.splitlines() == [f"web: {roles_db.shown(roles_db.owner)} is up to date: no migration to apply"]
    assert not any(password in migrated.stdout + again.stdout for password in roles_db.passwords)

    api = await make_client(roles_db.app, jetstream.url)
    created = await api.post("/api/todos", json={"task": "least privilege"})
    assert created.status == 201
    todo_id = (await created.json())["id"]
    assert (await api.put(f"/api/todos/{todo_id}", json={"done": True})).status == 200
    assert (await api.delete(f"/api/todos/{todo_id}")).status == 200
    assert await (await api.get("/api/todos")).json() == []
    events = await wait_for_events(jetstream.url, 3)
    assert [event.subject for event in events] == ["todos.created", "todos.updated", "todos.deleted"]

    async def outbox_empty() -> bool:
        return await count_rows(roles_db.superuser, "outbox") == 0

    await wait_for(outbox_empty)


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE todos",
        "CREATE TABLE x (id int)",
        "CREATE TEMPORARY TABLE x (id int)",
        "CREATE ROLE evil",
        "ALTER TABLE todos ADD COLUMN x int",
        "TRUNCATE outbox",
        "CREATE DATABASE x",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE SCHEMA evil",
    ],
)
async def test_the_app_role_may_not_change_the_schema(migrated: RolesDatabase, statement: str) -> None:
    """todos_app is refused every DDL, role, database and TRUNCATE statement (SQLSTATE 42501)."""
    connection = await asyncpg.connect(migrated.app)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await connection.execute(statement)
    finally:
        await connection.close()


async def test_the_app_role_reads_and_writes_its_tables(migrated: RolesDatabase) -> None:
    """todos_app may SELECT, INSERT, UPDATE and DELETE the tables the owner's migrations created."""
    connection = await asyncpg.connect(migrated.app)
    try:
        todo_id = uuid.uuid4()
        await connection.execute(
            "INSERT INTO todos (id, task, done, created_at, updated_at) VALUES ($1, 'x', false, now(), now())", todo_id
        )
        await connection.execute("UPDATE todos SET done = true WHERE id = $1", todo_id)
        assert await connection.fetchval("SELECT done FROM todos WHERE id = $1", todo_id) is True
        assert await connection.fetchval("DELETE FROM todos WHERE id = $1 RETURNING task", todo_id) == "x"
        assert await connection.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        await connection.close()


async def test_api_with_migration_url_migrates_as_owner_and_pools_as_app(
    roles_db: RolesDatabase, make_client: ClientFactory
) -> None:
    """DATABASE_MIGRATION_URL set for the API itself: the owner migrates at start over connections that
    are closed afterwards; every connection the API keeps is todos_app's."""
    api = await make_client(roles_db.app, migration_url=roles_db.owner)
    assert (await api.post("/api/todos", json={"task": "x"})).status == 201
    assert set((await owners(roles_db.superuser)).values()) == {"todos_owner"}
    sessions = await sql(
        roles_db.superuser,
        f"SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = '{roles_db.name}' AND pid <> pg_backend_pid()",
    )
    assert [row["usename"] for row in sessions] == ["todos_app"]


def test_api_as_app_role_on_a_schema_behind_stops_with_one_line(roles_db: RolesDatabase) -> None:
    """The API as todos_app on a database not migrated yet: one line saying to run `python -m web migrate`
    with DATABASE_MIGRATION_URL, and no traceback; `migrate` without DATABASE_MIGRATION_URL says the same."""
    line = one_line(run_web(DATABASE_URL=roles_db.app))
    assert line.startswith("web: the database schema is behind this version and DATABASE_URL's role todos_app")
    assert "permission denied" in line
    assert "run `python -m web migrate` with DATABASE_MIGRATION_URL" in line
    assert one_line(run_web("migrate", DATABASE_URL=roles_db.app)) == line
    wrong = one_line(run_web("migrate", DATABASE_URL=roles_db.app, DATABASE_MIGRATION_URL=roles_db.app))
    assert wrong.startswith("web: DATABASE_MIGRATION_URL's role todos_app may not migrate the schema")


def test_migrate_errors_are_one_line(postgres: Postgres) -> None:
    """`python -m web migrate` fails with one line and a non-zero code: unreachable, missing database."""
    with refusing_port() as port:
        unreachable = one_line(run_web("migrate", DATABASE_URL=f"postgres://todo@{LOCALHOST}:{port}/todos"))
    assert unreachable.startswith(f"web: the database at postgres://todo@{LOCALHOST}:{port}/todos is not reachable")
    missing = one_line(run_web("migrate", DATABASE_URL=postgres.url("no_such_db")))
    shown = postgres.url("no_such_db").replace(DB_PASSWORD, "***")
    assert missing == f'web: the database at {shown} refused: database "no_such_db" does not exist'


def test_api_with_a_migration_url_and_no_database_url_stops(postgres: Postgres) -> None:
    """DATABASE_MIGRATION_URL alone is enough for `migrate`, not for the API (it would serve SQLite): one line."""
    line = one_line(run_web(DATABASE_MIGRATION_URL=postgres.url("todos")))
    assert line.startswith("DATABASE_URL: not set, so the API would use SQLite")


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"DATABASE_URL": "sqlite://x.sqlite3", "DATABASE_MIGRATION_URL": "postgres://todos_owner:pw@db/todos"},
            (
                "DATABASE_MIGRATION_URL is for PostgreSQL only, and DATABASE_URL is SQLite: unset"
                " DATABASE_MIGRATION_URL, or set DATABASE_URL to the PostgreSQL database"
            ),
        ),
        (
            {"DATABASE_URL": "postgres://todos_app:pw@db/todos", "DATABASE_MIGRATION_URL": "sqlite://x.sqlite3"},
            "DATABASE_MIGRATION_URL: is for PostgreSQL only (SQLite is migrated through DATABASE_URL): unset it",
        ),
        (
            {"DATABASE_URL": "postgres://todos_app:pw@db/todos", "DATABASE_MIGRATION_URL": "mysql://db/todos"},
            "DATABASE_MIGRATION_URL: must start with postgres://",
        ),
        (
            {"DATABASE_URL": "postgres://todos_app:pw@db/todos", "DATABASE_MIGRATION_URL": "postgres://db"},
            "DATABASE_MIGRATION_URL: must name a database: postgres://user:pass@host:5432/db",
        ),
        (
            {"DATABASE_URL": "postgres://todo:secret@db:99999/todos"},
            "DATABASE_URL: has a malformed host or port: postgres://user:pass@host:5432/db",
        ),
    ],
)
def test_bad_database_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], line: str
) -> None:
    """DATABASE_MIGRATION_URL with SQLite, or a malformed URL: one line naming the variable (as every setting)."""
    for variable in ("DATABASE_URL", "DATABASE_MIGRATION_URL"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env()
    assert str(stopped.value) == line


def test_database_passwords_never_reach_the_output() -> None:
    """Both database passwords (in the user info, or a `password` parameter) are hidden in the one-line
    start failure of the API and of `migrate`, even at LOG_LEVEL=debug."""
    password, query_password = f"pw-{uuid.uuid4().hex}", f"qp-{uuid.uuid4().hex}"
    with refusing_port() as port:
        env = {
            "DATABASE_URL": f"postgres://todos_app:{password}@{LOCALHOST}:{port}/todos",
            "DATABASE_MIGRATION_URL": f"postgres://todos_owner@{LOCALHOST}:{port}/todos?password={query_password}",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "json",
        }
        serve, migrate = run_web(**env), run_web("migrate", **env)
    for result in (serve, migrate):
        assert result.returncode != 0
        assert password not in result.stdout + result.stderr
        assert query_password not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
    assert f"postgres://todos_app:***@{LOCALHOST}:{port}/todos is not reachable" in serve.stderr
    assert f"postgres://todos_owner@{LOCALHOST}:{port}/todos?password={REDACTED} is not reachable" in migrate.stderr


def test_a_library_error_quoting_the_password_is_redacted_in_the_log() -> None:
    """Once the settings are loaded, a library's log line that quotes DATABASE_URL (stdlib logging, as
    asyncpg or tortoise would) or an exception holding the password comes out redacted."""
    password = f"pw-{uuid.uuid4().hex}"
    url = f"postgres://todos_app:{password}@db:5432/todos"
    script = (
        "import logging, structlog\n"
        "from streams.logs import configure_logging\n"
        "from web.settings import Settings\n"
        "settings = Settings.from_env()\n"
        "configure_logging('info', 'json')\n"
        "logging.getLogger('asyncpg').error('cannot connect to %s', settings.database_url)\n"
        "try:\n"
        "    raise ConnectionError(f'connection to {settings.database_url} failed')\n"
        "except ConnectionError as exc:\n"
        "    structlog.get_logger('web').exception('db.failed', error=exc)\n"
    )
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("NATS_", "DATABASE_"))}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=clean | {"DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert password not in result.stderr
    assert result.stderr.count(f"postgres://todos_app:{REDACTED}@db:5432/todos") >= 3, result.stderr


def test_settings_register_both_passwords() -> None:
    """Loading the settings registers the passwords of both URLs for redaction; a user name is no secret."""
    password, owner_password = f"pw-{uuid.uuid4().hex}", f"ow-{uuid.uuid4().hex}"
    Settings(
        DATABASE_URL=f"postgres://todos_app:{password}@db/todos",
        DATABASE_MIGRATION_URL=f"postgres://todos_owner:{owner_password}@db/todos",
    )
    assert (
        redact(f"{password} {owner_password} todos_app todos_owner") == f"{REDACTED} {REDACTED} todos_app todos_owner"
    )
