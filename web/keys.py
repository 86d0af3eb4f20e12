"""Every typed key the API stores on its application, in one place."""

from __future__ import annotations

import asyncio

from aiohttp import web

from web.broker import Broker
from web.feed import Feed
from web.metrics import Metrics
from web.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
# the NATS connection, once open (never, when NATS_URL is not set: the API then writes no outbox rows)
BROKER = web.AppKey("broker", Broker)
# set by a handler right after it committed an outbox row; the relay waits on it
OUTBOX_WAKEUP = web.AppKey("outbox_wakeup", asyncio.Event)
# the page's live feed: every open /api/events stream of this process
FEED = web.AppKey("feed", Feed)
# the request id of a streaming answer, which prepares its headers itself (web.middlewares.edge sets it)
REQUEST_ID = web.RequestKey("request_id", str)
