"""`python -m streams`: bootstrap the JetStream topology, show its state, list and replay dead letters."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.js import JetStreamContext

from streams import subjects, topology
from streams.connection import connect, redact_url
from streams.logs import configure_logging
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
    dead = commands.add_parser("dlq", help="dead letters").add_subparsers(dest="dlq_command", required=True)
    listing = dead.add_parser("list", help="every dead event: subject, payload, deliveries, reason, time")
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    replay = dead.add_parser("replay", help="send dead events back through the notifiers")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", type=int, default=[], help="dead-letter ids, as `dlq list` shows them")
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    return parser


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


async def _connect(settings: Settings, wait: float) -> Any:
    """Connect, retrying for up to `wait` seconds (NATS may still be starting, as in `just up`)."""
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        try:
            return await asyncio.wait_for(
                connect(settings, name="streams-cli", allow_reconnect=False, max_reconnect_attempts=0),
                timeout=ATTEMPT_TIMEOUT,
            )
        except (OSError, TimeoutError, nats.errors.Error):
            if asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(0.2)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    nc = await _connect(settings, getattr(args, "wait", 0.0))
    try:
        js = nc.jetstream()
        if args.command == "bootstrap":
            for action in await topology.bootstrap(js, settings.nats_stream_replicas):
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
    except TimeoutError:
        raise SystemExit(
            f"streams {args.command}: NATS did not answer at {redact_url(settings.nats_url or '')}"
        ) from None
    except Exception as error:  # one clear line for the operator, not a traceback
        raise SystemExit(f"streams {args.command}: {type(error).__name__}: {error}") from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
