"""Names on the wire: the subjects events travel on and the JetStream objects that hold them."""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum

STREAM = "TODOS"
SUBJECT_PREFIX = "todos"
SUBJECTS = f"{SUBJECT_PREFIX}.*"
CONSUMER = "todos_broadcasters"
# core-NATS queue group of NOTIFIER_MODE=core: the course's at-most-once delivery
QUEUE_GROUP = CONSUMER

DLQ_STREAM = "TODOS_DLQ"
_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER"
MAX_DELIVERIES_ADVISORY = f"{_ADVISORY}.MAX_DELIVERIES.{STREAM}.{CONSUMER}"
TERMINATED_ADVISORY = f"{_ADVISORY}.MSG_TERMINATED.{STREAM}.{CONSUMER}"

# KV bucket where notifiers record the events Telegram confirmed, keyed by event id
SENT_BUCKET = "todos_sent"
# KV bucket for state every notifier replica shares (migrated chat id, rate-limit pauses)
STATE_BUCKET = "todos_notifier"
# KV bucket of the message that announced each todo's creation, so its updates and deletion reply to it
REPLIES_BUCKET = "todos_replies"

# KV keys (one format each, used by every notifier replica)
_KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")
_NUMERIC = re.compile(r"-?\d+")


def sent_key(event_id: str) -> str:
    """Key of an event in SENT_BUCKET: its id, or a digest of it when the id holds characters KV refuses."""
    return event_id if _KV_KEY.fullmatch(event_id) else hashlib.sha256(event_id.encode()).hexdigest()


def _chat_token(chat_id: int | str) -> str:
    return str(chat_id).lstrip("@")


def pace_key(chat_id: int | str) -> str:
    """Key in STATE_BUCKET of a chat's shared pace: reserved send slots and a 429's pause."""
    return f"chat.{_chat_token(chat_id)}.pace"


PACE_KEYS = "chat.*.pace"


def chat_of_pace_key(key: str) -> int | str:
    name = key.split(".")[1]
    return int(name) if _NUMERIC.fullmatch(name) else f"@{name}"


def migration_key(chat_id: int | str) -> str:
    """Key in STATE_BUCKET of the chat id a configured chat migrated to (a supergroup upgrade)."""
    return f"chat.{_chat_token(chat_id)}.migrated_to"


_TODO_ID = re.compile(r"[-_=a-zA-Z0-9]+")


def reply_key(chat_id: int | str, thread_id: int | None, todo_id: str) -> str:
    """Key in REPLIES_BUCKET of the message announcing a todo in one chat (and forum topic): a message id
    means something only there, so another chat or topic never replies to it."""
    todo = todo_id if _TODO_ID.fullmatch(todo_id) else hashlib.sha256(todo_id.encode()).hexdigest()
    return f"chat.{_chat_token(chat_id)}.{thread_id or 0}.{todo}"


# headers
MSG_ID_HEADER = "Nats-Msg-Id"
# set on a replayed dead letter: the id of the original event (its Nats-Msg-Id is new)
EVENT_ID_HEADER = "Todos-Event-Id"
REPLAY_OF_HEADER = "Todos-Replay-Of"


class Change(StrEnum):
    """What happened to a todo; the last token of the subject."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"

    @property
    def subject(self) -> str:
        return f"{SUBJECT_PREFIX}.{self.value}"

    @classmethod
    def from_subject(cls, subject: str) -> Change:
        """`todos.created` -> Change.CREATED; ValueError for any other subject."""
        prefix, _, change = subject.partition(".")
        if prefix != SUBJECT_PREFIX:
            raise ValueError(f"not a todo subject: {subject!r}")
        return cls(change)
