"""The NATS users of k8s/nats-values.yaml are the ones streams/permissions.py defines (and the tests run),
their passwords come from per-component Secrets, and nats-server accepts the configuration."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from streams.permissions import IDENTITIES, chart_merge, password_variable
from tests.k8s.manifests import NATS_VALUES
from tests.services import _nats_server_binary


def _values() -> dict[str, Any]:
    return dict(yaml.safe_load(NATS_VALUES.read_text()))


def test_the_chart_gets_exactly_the_users_and_permissions_of_streams_permissions() -> None:
    assert _values()["config"]["merge"] == chart_merge(), (
        "k8s/nats-values.yaml config.merge differs from streams.permissions.chart_merge(); paste:\n"
        + yaml.safe_dump(chart_merge(), sort_keys=False)
    )


def test_each_password_comes_from_its_own_secret() -> None:
    env = _values()["container"]["env"]
    for identity in IDENTITIES:
        source = env[password_variable(identity.user)]
        assert source == {"valueFrom": {"secretKeyRef": {"name": f"nats-{identity.user}", "key": "password"}}}


def test_nats_server_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    """What the chart writes: the merge block as JSON, each << $VAR >> unquoted; nats-server -t checks it with
    the variables set, as the container's environment sets them."""
    rendered = re.sub(r'"<< (\$[A-Z_]+) >>"', r"\1", json.dumps(_values()["config"]["merge"], indent=2))
    config = tmp_path / "nats.conf"
    config.write_text(rendered[1:-1])
    env = {**os.environ, **{password_variable(identity.user): f"pw-{identity.user}" for identity in IDENTITIES}}
    result = subprocess.run(
        [_nats_server_binary(), "-c", str(config), "-t"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "$NATS_WEB_PASSWORD" in rendered
