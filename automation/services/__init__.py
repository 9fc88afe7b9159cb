"""Services orchestrate: they take a runtime and a session, call the pure core and adapters,
and return a short result ("queued", "already-sent", "quarantined: …"). Expected no-ops are
results, not exceptions.

Importing this package registers every task handler.
"""

from automation.services import (  # noqa: F401
    calendars,
    escalation,
    inbound,
    messages,
    planning,
    privacy,
)
