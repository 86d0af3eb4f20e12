"""Notifier replicas: events from JetStream to the admin's Telegram chat, each exactly once."""

import os

# python-telegram-bot: RetryAfter.retry_after as a timedelta, without the deprecation warning of the int form
os.environ.setdefault("PTB_TIMEDELTA", "1")
