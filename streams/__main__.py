"""`python -m streams`: bootstrap the JetStream topology, show its state, follow the events, list and replay dead
letters."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ServiceUnavailableError

from streams import subjects, topology
from streams.connection import connect, redact_url
from streams.logs import configure_logging
from streams.permissions import STREAMS
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.dlq import DeadLetter


ATTEMPT_TIMEOUT = 3.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m streams", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    boot = commands.add_parser(
        "bootstrap", help="create or update the stream, consumer, DLQ and KV buckets (idempotent)"
    )
    boot.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait this long for NATS to answer")
    status = commands.add_parser("status", help="stream and consumer state")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    follow = commands.add_parser(
        "tail", help="follow todos.> live, one line per event (time, subject, id, task); Ctrl-C stops"
    )
    follow.add_argument("--json", action="store_true", help="print each event's payload as one JSON line")
    follow.add_argument("--from-start", action="store_true", help="replay the stream from its first event, then follow")
    dead = commands.add_parser("dlq", help="dead letters").add_subparsers(dest="dlq_command", required=True)
    listing = dead.add_parser("list", help="every dead event: subject, payload, deliveries, reason, time")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    replay = dead.add_parser("replay", help="send dead events back through the notifiers")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", type=int, default=[], help="dead-letter ids, as `dlq list` shows them")
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    return parser


# every stream bootstrap creates: the events, the dead letters and the streams that hold the two KV buckets
REPLICATED_STREAMS = (
    subjects.STREAM,
    subjects.DLQ_STREAM,
    topology.kv_stream_name(subjects.SENT_BUCKET),
    topology.kv_stream_name(subjects.STATE_BUCKET),
    topology.kv_stream_name(subjects.REPLIES_BUCKET),
)
NANOSECONDS = 1_000_000_000


def _replication(cluster: Any, replicas: int | None) -> dict[str, Any]:
    """A stream's or consumer's raft group from its info's `cluster` (nats-py ClusterInfo): leader, then each peer.

    `lag` counts the operations a follower is behind; `active_s` is how long ago the leader last heard from
    it (None: never since this leader was elected).
    """
    leader = cluster.leader or None
    peers: list[dict[str, Any]] = []
    if leader is not None:
        peers.append({"name": leader, "leader": True, "current": True, "offline": False, "lag": 0, "active_s": 0.0})
    peers += [
        {
            "name": peer.name,
            "leader": False,
            "current": bool(peer.current),
            "offline": bool(peer.offline),
            "lag": peer.lag or 0,
            "active_s": round(peer.active / NANOSECONDS, 3) if peer.active else None,
        }
        for peer in sorted(cluster.replicas or [], key=lambda peer: str(peer.name))
    ]
    return {
        "replicas": replicas,
        "leader": leader,
        "leader_since": cluster.leader_since.isoformat() if cluster.leader_since else None,
        "peers": peers,
    }


async def _cluster(js: JetStreamContext, known: dict[str, Any], consumer: Any) -> dict[str, Any] | None:
    """Leader and replicas of every stream and of the consumer; None on a single server (no cluster).

    `known`: the stream infos already read, by stream name (TODOS at least).
    """
    stream = known[subjects.STREAM]
    if stream.cluster is None or not stream.cluster.name:
        return None  # a single server names itself leader of every stream, in no cluster
    streams: dict[str, dict[str, Any] | None] = {}
    for name in REPLICATED_STREAMS:
        try:
            info = known.get(name) or await js.stream_info(name)
        except NotFoundError:
            streams[name] = None  # not bootstrapped yet
            continue
        streams[name] = _replication(info.cluster, info.config.num_replicas) if info.cluster else None
    consumers = {}
    if consumer.cluster is not None:
        replicas = consumer.config.num_replicas or stream.config.num_replicas  # 0: as many as its stream
        consumers[f"{subjects.STREAM}/{subjects.CONSUMER}"] = _replication(consumer.cluster, replicas)
    return {"name": stream.cluster.name, "streams": streams, "consumers": consumers}


async def _status(js: JetStreamContext) -> dict[str, Any]:
    stream = await js.stream_info(subjects.STREAM)
    consumer = await js.consumer_info(subjects.STREAM, subjects.CONSUMER)
    dead = await js.stream_info(subjects.DLQ_STREAM)
    return {
        "stream": {
            "name": subjects.STREAM,
            "messages": stream.state.messages,
            "bytes": stream.state.bytes,
            "first_seq": stream.state.first_seq,
            "last_seq": stream.state.last_seq,
            "replicas": stream.config.num_replicas,
        },
        "consumer": {
            "name": subjects.CONSUMER,
            "pending": consumer.num_pending,
            "ack_pending": consumer.num_ack_pending,
            "redelivered": consumer.num_redelivered,
            "waiting": consumer.num_waiting,
            "delivered_seq": consumer.delivered.stream_seq,
            "ack_floor_seq": consumer.ack_floor.stream_seq,
        },
        "dead_letters": dead.state.messages,
        "cluster": await _cluster(js, {subjects.STREAM: stream, subjects.DLQ_STREAM: dead}, consumer),
    }


def _print_status(state: dict[str, Any]) -> None:
    stream, consumer = state["stream"], state["consumer"]
    print(
        f"stream   {stream['name']}: {stream['messages']} messages, {stream['bytes']} bytes, "
        f"seq {stream['first_seq']}..{stream['last_seq']}, {stream['replicas']} replica(s)"
    )
    print(
        f"consumer {consumer['name']}: pending {consumer['pending']}, ack-pending {consumer['ack_pending']}, "
        f"redelivered {consumer['redelivered']}, waiting pulls {consumer['waiting']}"
    )
    print(f"dead letters: {state['dead_letters']}")
    _print_cluster(state["cluster"])


def _print_cluster(cluster: dict[str, Any] | None) -> None:
    if cluster is None:
        print("cluster: none (a single server: no replicas to follow)")
        return
    print(f"cluster {cluster['name']}: leader and replicas (lag in operations; active: last heard from the leader)")
    groups = [("stream", name, group) for name, group in cluster["streams"].items()]
    groups += [("consumer", name, group) for name, group in cluster["consumers"].items()]
    for kind, name, group in groups:
        if group is None:
            print(f"  {kind} {name}: missing (run bootstrap)")
            continue
        leader = group["leader"] or "NONE (no quorum, or an election under way)"
        print(f"  {kind} {name} (R{group['replicas']}): leader {leader}")
        for peer in group["peers"]:
            print(f"    {_peer_line(peer)}")


def _peer_line(peer: dict[str, Any]) -> str:
    if peer["leader"]:
        return f"{peer['name']:<8} leader"
    state = "current" if peer["current"] else "NOT CURRENT"
    active = "never" if peer["active_s"] is None else f"{peer['active_s']:.2f}s ago"
    offline = "  offline" if peer["offline"] else ""
    return f"{peer['name']:<8} {state:<11}  lag {peer['lag']:<6} active {active}{offline}"


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    try:
        payload: Any = json.loads(letter.payload)
    except ValueError:
        payload = letter.payload.decode(errors="replace")
    return {
        "id": letter.dlq_seq,
        "stream_seq": letter.stream_seq,
        "subject": letter.subject,
        "event_id": letter.event_id,
        "deliveries": letter.deliveries,
        "reason": letter.reason,
        "time": letter.time.isoformat(),
        "payload": payload,
    }


async def _bootstrap(js: JetStreamContext, replicas: int, wait: float) -> list[Any]:
    """topology.bootstrap, tried again for up to `wait` seconds while JetStream does not answer yet: a
    cluster that has just formed may still be electing its meta leader, or placing its first R3 stream."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            return list(await topology.bootstrap(js, replicas))
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError):
            if asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(0.5)


async def _connect(settings: Settings, wait: float) -> Any:
    """Connect, retrying for up to `wait` seconds (NATS may still be starting, as in `just up`)."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            # every server of a comma-separated NATS_URL gets its try (nats-py gives up after the first failed
            # handshake when reconnecting is off: a hung node would fail the command half the time)
            return await asyncio.wait_for(
                connect(settings, name="streams-cli", identity=STREAMS, allow_reconnect=True, max_reconnect_attempts=1),
                timeout=ATTEMPT_TIMEOUT * (len(settings.servers) + 1),
            )
        except (OSError, TimeoutError, nats.errors.Error):
            if asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(0.2)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "tail":
        from streams.tail import tail  # noqa: PLC0415 - only tail needs it

        return await tail(settings, as_json=args.json, from_start=args.from_start)
    nc = await _connect(settings, getattr(args, "wait", 0.0))
    try:
        js = nc.jetstream()
        if args.command == "bootstrap":
            for action in await _bootstrap(js, settings.nats_stream_replicas, getattr(args, "wait", 0.0)):
                print(action)
        elif args.command == "status":
            state = await _status(js)
            print(json.dumps(state)) if args.json else _print_status(state)
        elif args.command == "dlq":
            return await _dead_letters(js, args)
    finally:
        await nc.close()
    return 0


async def _dead_letters(js: JetStreamContext, args: argparse.Namespace) -> int:
    from streams import dlq  # noqa: PLC0415 - only the dlq commands need it

    if args.dlq_command == "list":
        letters = await dlq.list_dead_letters(js)
        for letter in letters:
            item = _letter_json(letter)
            if args.json:
                print(json.dumps(item, ensure_ascii=False))
            else:
                print(
                    f"#{item['id']} {item['time']} {item['subject']} seq={item['stream_seq']} "
                    f"deliveries={item['deliveries']} reason={item['reason']!r}\n"
                    f"    {json.dumps(item['payload'], ensure_ascii=False)}"
                )
        if not args.json:
            print(f"{len(letters)} dead letter(s)")
        return 0
    replayed = await dlq.replay(js, None if args.all else list(args.ids))
    for letter in replayed:
        print(f"replayed #{letter.dlq_seq} {letter.subject} seq={letter.stream_seq}")
    print(f"{len(replayed)} dead letter(s) replayed")
    missing = set(args.ids) - {letter.dlq_seq for letter in replayed}
    if missing:
        print(f"not found: {', '.join(map(str, sorted(missing)))}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = Settings.from_env()
    configure_logging("critical")
    try:
        code = asyncio.run(run(args, settings))
    except (TimeoutError, nats.errors.NoServersError):
        raise SystemExit(
            f"streams {args.command}: NATS did not answer at {redact_url(settings.nats_url or '')}"
        ) from None
    except Exception as error:  # one clear line for the operator, not a traceback
        raise SystemExit(f"streams {args.command}: {type(error).__name__}: {error}") from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
