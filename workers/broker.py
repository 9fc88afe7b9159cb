"""Picks the broker from the settings: in-process (stub), Redis or RabbitMQ.

Dramatiq binds actors to the global broker when they are declared, so this module must be
imported before ``workers.actors``; the actors module does that itself.

Every broker carries :class:`WorkerObservability`: in each ``automation worker`` process
(dramatiq's process manager) it applies ``log_format`` and, when ``metrics_port`` is set,
serves that process's metrics on the first free port from ``metrics_port`` on.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker

QUEUE = "automation"
log = logging.getLogger("automation.workers")


class WorkerObservability(dramatiq.Middleware):
    """Logging format and a metrics endpoint for each worker process.

    ``after_process_boot`` is emitted only by dramatiq's worker processes (not by the
    in-process worker of ``automation run``, whose metrics the web app serves). The settings
    are read here, at process start, not at import, for the reason given below."""

    def __init__(self) -> None:
        self.server: Any = None

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        from automation import observability
        from automation.settings import load_settings

        try:
            settings = load_settings()
        except Exception as exc:  # noqa: BLE001 - the actor reports the same error on use
            log.warning("worker observability off: settings not loaded (%s)", type(exc).__name__)
            return
        observability.configure_logging(settings)
        try:
            self.server = observability.serve_worker_metrics(settings)
        except OSError as exc:
            log.warning("worker metrics not served (%s)", observability.describe_failure(exc))

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


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
broker.add_middleware(WorkerObservability())
dramatiq.set_broker(broker)
