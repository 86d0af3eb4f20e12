# One image for every process of todo-events: the API (todo-web), the notifier (todo-notifier)
# and the JetStream CLI (todo-streams / python -m streams). Kubernetes picks one with `command`.

# --- builder: a virtualenv with the dependencies and the project installed as a wheel ---
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, so a code change does not reinstall them: the exact versions and sha256
# hashes of requirements.lock (from pyproject.toml's dependencies, kept in sync by tests/k8s), and
# the build backend from requirements-build.lock. Same source, same packages: pip refuses any
# file whose hash is not in the lock, and installs nothing the lock does not list.
COPY pyproject.toml README.md requirements.lock requirements-build.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock \
    && pip install --no-cache-dir --require-hashes -r requirements-build.lock

COPY web ./web
COPY notifier ./notifier
COPY streams ./streams
# A regular (non-editable) install: the packages land in site-packages, byte-compiled, so the
# read-only root filesystem in Kubernetes never needs a __pycache__ write. No dependency and no
# build backend comes from the index here (--no-deps, --no-build-isolation: the locked setuptools);
# the tools that built it leave the virtualenv afterwards.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && pip uninstall --yes setuptools pip


# --- runtime: the slim base, the virtualenv, a non-root user; no compilers, no sources ---
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv

# Nothing here is writable by the app user: state lives in PostgreSQL and JetStream.
WORKDIR /app
USER 10001:10001

# 8080: the API (PORT); 8081: the notifier's /healthz, /readyz, /metrics (NOTIFIER_PORT)
EXPOSE 8080 8081

# Kubernetes probes /healthz and /readyz itself; the default command runs the API.
CMD ["todo-web"]
