"""Picks the broker from the settings: in-process (stub), Redis or RabbitMQ.

Dramatiq binds actors to the global broker when they are declared, so this module must be
imported before ``workers.actors``; the actors module does that itself.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.stub import StubBroker

QUEUE = "automation"


def make_broker(url: str) -> dramatiq.Broker:
    if url.startswith(("redis://", "rediss://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url)
    if url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url)
    return StubBroker()


def _configured_url() -> str:
    # Read the environment directly: loading the whole settings file here would make a bad
    # cadence file break `import workers`; the settings are checked when the runtime is built.
    return os.environ.get("AUTOMATION_BROKER_URL", "stub")


broker = make_broker(_configured_url())
dramatiq.set_broker(broker)
