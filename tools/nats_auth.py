"""NATS users on one machine (tests, `just up`): passwords generated once, the server's authorization
block from streams.permissions, and each component's NATS_URL with its own user in it."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from streams.permissions import IDENTITIES, server_config


def new_passwords(*extra_users: str) -> dict[str, str]:
    """A random password for each identity (and each of `extra_users`)."""
    return {user: secrets.token_urlsafe(18) for user in (*(identity.user for identity in IDENTITIES), *extra_users)}


def local_passwords(path: Path) -> dict[str, str]:
    """The passwords kept in `path` (mode 0600), generated on first use."""
    if path.exists():
        stored = json.loads(path.read_text())
        if isinstance(stored, dict) and all(identity.user in stored for identity in IDENTITIES):
            return {str(user): str(password) for user, password in stored.items()}
    passwords = new_passwords()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(passwords, handle)
    return passwords


def authorization(
    passwords: dict[str, str], *, no_auth_user: str | None = None, unrestricted: tuple[str, ...] = ()
) -> str:
    """The `authorization` block (and `no_auth_user`) of a nats-server config file."""
    identities = {identity.user: passwords[identity.user] for identity in IDENTITIES}
    return server_config(
        identities, no_auth_user=no_auth_user, unrestricted={user: passwords[user] for user in unrestricted}
    )


def with_user(url: str, user: str, password: str) -> str:
    """`url` (or a comma-separated list) with `user:password@` on every server, replacing what was there."""
    userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    rewritten = []
    for server in url.split(","):
        parts = urlsplit(server.strip())
        hostport = parts.netloc.rpartition("@")[2]
        rewritten.append(urlunsplit(parts._replace(netloc=userinfo + hostport)))
    return ",".join(rewritten)
