"""No container runs as root or privileged, all are bounded, and no secret value is committed."""

from __future__ import annotations

import re

import pytest

from tests.k8s.manifests import (
    ROOT,
    SECRETS_EXAMPLE,
    Container,
    containers,
    load_yaml,
    rendered,
)

ALL = list(containers())
IDS = [c.label for c in ALL]
# a Telegram bot token: <bot id>:<35 characters>
TELEGRAM_TOKEN = re.compile(r"\d{8,10}:[A-Za-z0-9_-]{35}")
OWNED = [
    "Dockerfile",
    ".dockerignore",
    "k8s",
    "docs/kubernetes.md",
    "tests/k8s",
    "requirements.lock",
    "requirements-build.lock",
]


def _effective(container: Container, key: str) -> object:
    """A securityContext field as Kubernetes resolves it: the container's, else the pod's."""
    own = container.spec.get("securityContext", {})
    if key in own:
        return own[key]
    return container.pod.get("securityContext", {}).get(key)


@pytest.mark.parametrize("container", ALL, ids=IDS)
def test_container_runs_as_non_root(container: Container):
    assert _effective(container, "runAsNonRoot") is True
    user = _effective(container, "runAsUser")
    assert isinstance(user, int)
    assert user > 0


@pytest.mark.parametrize("container", ALL, ids=IDS)
def test_container_is_not_privileged_and_drops_all_capabilities(container: Container):
    context = container.spec.get("securityContext", {})
    assert context.get("privileged", False) is False
    assert context.get("allowPrivilegeEscalation") is False
    assert context.get("capabilities", {}).get("drop") == ["ALL"]
    assert not context.get("capabilities", {}).get("add")
    assert _effective(container, "seccompProfile") == {"type": "RuntimeDefault"}
    pod = container.pod
    assert not pod.get("hostNetwork")
    assert not pod.get("hostPID")
    assert not pod.get("hostIPC")
    assert pod.get("automountServiceAccountToken") is False


@pytest.mark.parametrize("container", ALL, ids=IDS)
def test_container_has_read_only_root_filesystem(container: Container):
    """Writes go to emptyDir volumes (/tmp, the PostgreSQL socket dir) or a PVC, never the image."""
    assert container.spec["securityContext"].get("readOnlyRootFilesystem") is True
    mounts = {m["mountPath"] for m in container.spec.get("volumeMounts", [])}
    assert "/tmp" in mounts


@pytest.mark.parametrize("container", ALL, ids=IDS)
def test_container_has_requests_and_limits(container: Container):
    resources = container.spec["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert {"cpu", "memory"} <= set(resources["limits"])


@pytest.mark.parametrize("container", ALL, ids=IDS)
def test_images_are_pinned(container: Container):
    image = container.spec["image"]
    assert ":" in image.rsplit("/", 1)[-1]
    assert not image.endswith(":latest")


def test_no_secret_object_is_applied_by_the_kustomization():
    """Real Secrets are created with kubectl (docs); the kustomization ships none."""
    assert [d for d in rendered() if d["kind"] == "Secret"] == []


def test_example_secrets_hold_only_placeholders():
    placeholder = re.compile(r"CHANGE-ME|^todos$")
    for secret in load_yaml(SECRETS_EXAMPLE):
        assert "data" not in secret, "base64 data hides what is committed: use stringData"
        for key, value in secret["stringData"].items():
            credential = key.endswith(("PASSWORD", "TOKEN", "_URL", "CHAT_ID"))
            assert ("CHANGE-ME" in value) if credential else placeholder.search(value), f"{key}: {value}"


def test_no_telegram_token_in_owned_files():
    files = [ROOT / "Dockerfile", ROOT / ".dockerignore"]
    for name in OWNED[2:]:
        path = ROOT / name
        files += (
            [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        )
    assert len(files) > 10
    for path in files:
        assert not TELEGRAM_TOKEN.search(path.read_text(encoding="utf-8")), path


def test_token_pattern_matches_a_token_shape():
    """The pattern above finds a token-shaped string (built here so no file holds one)."""
    fake = "1234567890:" + "A" * 35
    assert TELEGRAM_TOKEN.search(f"token: {fake}")
