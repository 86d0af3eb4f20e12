"""PostgreSQL: every commit that adds outbox rows notifies the channel `outbox`, so the replica that
relays (web.leader) hears of commits made by the others without any of them trying the relay's lock.

A statement-level trigger: one notification per INSERT, and PostgreSQL folds equal notifications of one
transaction into one. SQLite has one relay per process and needs none.
"""

# ruff: noqa: RUF012
from typing import Any

from tortoise import migrations
from tortoise.migrations import operations as ops

CHANNEL = "outbox"

CREATE = f"""
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
"""

DROP = """
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
"""


def _on_postgres(sql: str) -> Any:
    async def run(_: Any, editor: Any) -> None:
        if str(editor.client.capabilities.dialect) == "postgres":
            await editor.client.execute_script(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("web", "0001_initial")]

    operations = [ops.RunPython(_on_postgres(CREATE), _on_postgres(DROP))]
