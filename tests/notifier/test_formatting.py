"""The Telegram message: a headline, the payload as escaped JSON, valid HTML, never over 4096."""

import html
import json
import random

import pytest

from notifier.formatting import (
    MAX_LENGTH,
    MAY_REPEAT_NOTE,
    Event,
    MalformedEventError,
    parse_message,
    render_event,
    render_fitting,
    telegram_length,
)
from streams.subjects import Change
from tests.fake_telegram import ParseError, parse_html, utf16_length
from tests.notifier.conftest import make_todo

NASTY = "<b>&amp; \"quotes\" 'single' </code></pre> 🚀👩‍👩‍👧 &lt; <>&"


@pytest.mark.parametrize(("change", "headline"), [
    (Change.CREATED, "📝 Todo created"), (Change.UPDATED, "✏️ Todo updated"), (Change.DELETED, "🗑 Todo deleted"),
])  # fmt: skip
def test_message_names_the_change_and_carries_the_payload(change, headline):
    """First line names the change; the block unescapes to the exact payload; Telegram would accept it."""
    todo = make_todo()
    text = render_events([Event(change, todo)])
    assert text.splitlines()[0] == headline
    assert text.splitlines()[1].startswith('<pre><code class="language-json">')
    assert text.endswith("</code></pre>")
    assert parse_message(text) == [todo]
    parse_html(text)


def test_nasty_task_survives_and_is_valid_html():
    """Tags, entities, quotes and emoji in the task come back intact and never break the HTML."""
    todo = make_todo(NASTY[:140])
    text = render_event(Event(Change.UPDATED, todo))
    assert parse_message(text) == [todo]
    visible = parse_html(text)
    assert json.loads(visible.split("\n", 1)[1]) == todo


def test_length_is_counted_like_telegram_in_utf16_units():
    text = render_event(Event(Change.CREATED, make_todo("😀" * 140)))
    assert telegram_length(text) == utf16_length(parse_html(text))


def test_oversized_payload_falls_back_to_compact_then_truncates_safely():
    """A payload too big for one message never yields over 4096 characters or broken HTML."""
    compact_fits = {"task": "x" * 3000, "more": list(range(150))}
    text = render_event(Event(Change.CREATED, compact_fits))
    assert telegram_length(text) <= MAX_LENGTH
    assert parse_message(text) == [compact_fits]

    huge = {"task": ('<&>"😀' * 3000)}
    text = render_event(Event(Change.CREATED, huge))
    assert telegram_length(text) <= MAX_LENGTH
    assert utf16_length(parse_html(text)) <= MAX_LENGTH
    assert "truncated" in text.splitlines()[0]


def test_several_events_share_a_message_under_a_summary():
    events = [
        Event(Change.CREATED, make_todo()),
        Event(Change.CREATED, make_todo()),
        Event(Change.DELETED, make_todo()),
    ]
    text = render_events(events)
    assert text.splitlines()[0] == "3 changes: 2 created, 1 deleted"
    assert parse_message(text) == [event.payload for event in events]
    parse_html(text)


@pytest.mark.parametrize(("subject", "data"), [
    ("todos.created", b"not json"), ("todos.created", b"[1, 2]"), ("todos.exploded", b"{}"), ("todos.created", b"\xff"),
])  # fmt: skip
def test_malformed_events_are_refused(subject, data):
    with pytest.raises(MalformedEventError):
        Event.from_message(subject, data)


@pytest.mark.parametrize("bad", ["<b>x", "a < b", "<script>x</script>", "line<br>break", "<b><i>x</b></i>"])
def test_fake_rejects_what_telegram_rejects(bad):
    """The fake's HTML check is strict enough to catch broken messages."""
    with pytest.raises(ParseError):
        parse_html(bad)
    assert parse_html(html.escape(bad)) == bad


ALPHABET = [*"abc xyz<>&\"'/;=", "&amp;", "&lt;", "</pre>", "<b>", "😀", "👩‍👩‍👧", "é", "\n", "\t", "\\"]


def random_task(rng: random.Random) -> str:
    if rng.random() < 0.3:  # as long as the API allows, in the widest characters
        return "".join(rng.choice(["😀", "<", "&", '"']) for _ in range(140))
    text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 60)))
    return text[:140] or "x"


@pytest.mark.parametrize("seed", range(25))
def test_grouped_messages_round_trip_and_fit(seed):
    """Any queue of events packs into messages that parse back into exactly those events, in order,
    each valid HTML for Telegram and at most 4096 characters as Telegram counts them."""
    rng = random.Random(seed)
    events = [
        Event(rng.choice(list(Change)), make_todo(random_task(rng), done=rng.random() < 0.5))
        for _ in range(rng.randint(1, 120))
    ]
    limit = rng.choice([1, 2, 5, 20, 50])
    queue, carried = list(events), []
    while queue:
        count, text = render_fitting(queue, limit)
        assert 1 <= count <= limit
        group, queue = queue[:count], queue[count:]
        assert utf16_length(parse_html(text)) <= MAX_LENGTH
        assert parse_message(text) == [event.payload for event in group]
        first_line = text.splitlines()[0]
        if count == 1:
            assert first_line == render_event(group[0]).splitlines()[0]
        else:
            assert first_line.startswith(f"{count} changes: ")
            assert text == render_events(group)
        if queue and count < limit:  # stopped early only because one more would not fit
            assert not _fits_with_next(group, queue[0])
        carried += group
    assert carried == events


def _fits_with_next(group, following):
    count, text = render_fitting([*group, following], len(group) + 1)
    return count == len(group) + 1 and utf16_length(parse_html(text)) <= MAX_LENGTH


def render_events(events):
    """All the events in one message (the test's own check that they fit)."""
    count, text = render_fitting(events, len(events))
    assert count == len(events)
    return text


def test_an_event_whose_answer_was_lost_says_it_may_repeat():
    todo = make_todo("<b>x</b> & y")
    plain = render_event(Event(Change.UPDATED, todo))
    flagged = render_event(Event(Change.UPDATED, todo, may_repeat=True))
    assert MAY_REPEAT_NOTE not in plain
    assert flagged.splitlines()[:2] == [plain.splitlines()[0], html.escape(MAY_REPEAT_NOTE)]
    assert parse_message(flagged) == [todo]
    parse_html(flagged)
    count, grouped = render_fitting(
        [Event(Change.CREATED, make_todo()), Event(Change.UPDATED, todo, may_repeat=True)], 2
    )
    assert count == 2
    assert grouped.count(MAY_REPEAT_NOTE) == 1


def test_small_events_fill_a_message_up_to_the_limit():
    events = [Event(Change.CREATED, make_todo(f"task {n}")) for n in range(30)]
    count, text = render_fitting(events, 10)
    assert count == 10
    assert text.splitlines()[0] == "10 changes: 10 created"
    count, text = render_fitting(events, 30)  # as many as 4096 characters hold (19 short todos)
    assert 15 <= count < 30
    assert not _fits_with_next(events[:count], events[count])
    count, _ = render_fitting([Event(Change.CREATED, make_todo("😀" * 140)) for _ in range(30)], 20)
    assert 1 < count < 20  # wide tasks: as many as fit 4096


# the "late" line


def test_a_late_event_says_when_and_how_late_under_its_headline():
    """Past `late_after` the line follows the headline (and the may-repeat line); the block is unchanged."""
    todo = make_todo()
    now = 1_800_000_000.0
    event = Event(Change.UPDATED, todo, may_repeat=True, changed_at=now - (2 * 86400 + 3 * 3600 + 59))
    text = render_event(event, late_after=300, now=now)
    late = "⏰ 2 d 3 h late: changed 2027-01-13 04:59:01 UTC"
    assert text.splitlines()[:3] == ["✏️ Todo updated", MAY_REPEAT_NOTE, late]
    assert parse_message(text) == [todo]
    parse_html(text)


@pytest.mark.parametrize(("seconds", "span"), [
    (301, "5 min"), (3599, "59 min"), (3600, "1 h"), (3 * 3600 + 125, "3 h 2 min"), (86400, "1 d"), (90061, "1 d 1 h"),
])  # fmt: skip
def test_how_late_is_said_in_words(seconds, span):
    text = render_event(Event(Change.CREATED, make_todo(), changed_at=1000.0), late_after=300, now=1000.0 + seconds)
    assert text.splitlines()[1].startswith(f"⏰ {span} late: changed 1970-01-01 00:16:40 UTC")


def test_an_event_on_time_or_with_late_after_off_has_no_line():
    event = Event(Change.CREATED, make_todo(), changed_at=1000.0)
    assert "⏰" not in render_event(event, late_after=300, now=1300.0)  # exactly on the limit: not late
    assert "⏰" not in render_event(event, late_after=0, now=1_000_000.0)
    assert "⏰" not in render_event(Event(Change.CREATED, make_todo()), late_after=300, now=1_000_000.0)


def test_the_change_time_is_updated_at_except_for_a_deletion():
    """A creation or update is timed by the todo's updatedAt; a deletion (the todo as it was) by the stream."""
    todo = {**make_todo(), "updatedAt": "2026-11-28T23:15:54.808Z"}
    data = json.dumps(todo).encode()
    updated_at = 1795907754.808
    assert Event.from_message("todos.updated", data, stored_at=5.0).changed_at == pytest.approx(updated_at)
    assert Event.from_message("todos.created", data, stored_at=5.0).changed_at == pytest.approx(updated_at)
    assert Event.from_message("todos.deleted", data, stored_at=5.0).changed_at == 5.0
    no_time = json.dumps({"id": "x", "updatedAt": "yesterday"}).encode()
    assert Event.from_message("todos.updated", no_time, stored_at=5.0).changed_at == 5.0


def test_the_late_line_is_escaped_and_counts_towards_the_limit():
    """A grouped message: each late event has its line; the text stays within 4096 and valid HTML."""
    events = [Event(Change.CREATED, make_todo(NASTY[:140]), changed_at=0.0) for _ in range(40)]
    count, text = render_fitting(events, 40, late_after=300, now=10_000.0)
    assert text.count("⏰ 2 h 46 min late") == count
    assert telegram_length(text) <= MAX_LENGTH
    parse_html(text)


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "yesterday", "2026-13-40"])
def test_an_updated_at_at_the_edge_of_time_or_no_time_at_all_never_stops_the_replica(stamp):
    """A time at the edge of what Python can represent must not raise (it would crash-loop every replica on
    that event); one that is no time at all is replaced by when the stream stored it."""
    todo = {**make_todo(), "updatedAt": stamp}
    stored = 1_800_000_000.0
    event = Event.from_message("todos.updated", json.dumps(todo).encode(), stored_at=stored)
    if not stamp[0].isdigit() or "-13-" in stamp:
        assert event.changed_at == stored
    text = render_event(event, late_after=300, now=stored + 3600)
    assert parse_message(text) == [todo]
    parse_html(text)
