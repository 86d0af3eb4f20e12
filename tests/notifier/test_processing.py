"""The Processor in-process against real NATS: the consumer's last delivery dead-letters with a reason."""

import nats.errors
import pytest
from notifier.processing import BotPause, Processor, SentLog
from notifier.telegram import TelegramSink

from notifier.chats import ChatGate, ChatRoute
from notifier.metrics import Metrics
from notifier.settings import Settings
from streams import subjects, topology
from streams.dlq import list_dead_letters
from tests.notifier.conftest import CHAT_ID, publish, wait_until


async def test_last_delivery_is_terminated_with_the_reason(fake, nc, js):
    """With max_deliver=2 and Telegram failing, the 2nd delivery is terminated and the DLQ says why."""
    config = topology.consumer_config()
    config.max_deliver = 2
    await js.add_consumer(subjects.STREAM, config)
    settings = Settings.model_validate({
        "NATS_URL": "nats://127.0.0.1:1", "TELEGRAM_ACCESS_TOKEN": fake.token,
        "TELEGRAM_CHAT_ID": str(CHAT_ID), "TELEGRAM_API_BASE_URL": fake.base_url,
    })  # fmt: skip
    sink = TelegramSink(settings)
    await sink.start()
    metrics = Metrics()
    processor = Processor(
        nc=nc, sink=sink, route=ChatRoute(CHAT_ID, None), gate=ChatGate(),
        sent=SentLog(await js.key_value(subjects.SENT_BUCKET)), metrics=metrics, pause=BotPause(metrics),
        probe_interval=1.0,
    )  # fmt: skip
    processor.max_deliver = 2
    fake.fail_500 = 10
    event_id = await publish(js)
    psub = await js.pull_subscribe_bind(durable=subjects.CONSUMER, stream=subjects.STREAM)
    try:
        for delivery in (1, 2):
            [msg] = await psub.fetch(1, timeout=5)
            assert msg.metadata.num_delivered == delivery
            await processor.handle(msg)
        await wait_until(lambda: list_dead_letters(js), what="a dead letter")
        [letter] = await list_dead_letters(js)
        assert letter.event_id == event_id
        assert letter.reason.startswith("gave up after 2 deliveries: NetworkError")
        assert "Internal Server Error" in letter.reason
        with pytest.raises(nats.errors.TimeoutError):  # terminated: never delivered again
            await psub.fetch(1, timeout=1)
    finally:
        await psub.unsubscribe()
        await sink.stop()
    assert fake.sent == []
    assert metrics.registry.get_sample_value("notifier_events_dead_lettered_total") == 1
