"""The todo API: aiohttp routes over tortoise-orm, and the outbox relay that ships its events to NATS."""
