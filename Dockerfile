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

# Dependencies first, read from pyproject.toml, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt

COPY web ./web
COPY notifier ./notifier
COPY streams ./streams
# A regular (non-editable) install: the packages land in site-packages, byte-compiled, so the
# read-only root filesystem in Kubernetes never needs a __pycache__ write.
RUN pip install --no-cache-dir --no-deps . \
    && pip uninstall --yes pip


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
