"""The small protocols that providers implement. Domain types only cross these lines."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Attendee:
    email: str
    name: str


@dataclass(frozen=True)
class OccurrenceOverride:
    """One instance that differs from the rule: moved, or cancelled."""

    recurrence_id: dt.datetime  # UTC, the instance's original start
    start: dt.datetime  # UTC
    end: dt.datetime  # UTC
    cancelled: bool = False


@dataclass(frozen=True)
class SeriesEvent:
    """A recurring check-in as a calendar series (RFC 5545 VEVENT with RRULE)."""

    uid: str
    sequence: int
    summary: str
    description: str
    organizer: Attendee
    attendees: tuple[Attendee, ...]
    dtstart_local: dt.datetime  # naive wall time in `timezone`
    timezone: str
    duration_minutes: int
    rrule: str
    overrides: tuple[OccurrenceOverride, ...] = field(default_factory=tuple)
    cancelled: bool = False


class CalendarProvider(Protocol):
    def write_series(self, event: SeriesEvent) -> None:
        """Create or update the series for every participant. Must be idempotent."""
        ...

    def busy(
        self, emails: Sequence[str], start: dt.datetime, end: dt.datetime
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        """Busy UTC intervals of these people between start and end."""
        ...


class MailSender(Protocol):
    def already_sent(self, message_id: str) -> bool:
        """True if a message with this Message-ID left earlier (crash between send and record)."""
        ...

    def send(self, message_id: str, raw: bytes, recipients: Sequence[str]) -> None: ...


class InboxReader(Protocol):
    def fetch(self, limit: int = 100) -> Iterator[tuple[str, bytes]]:
        """New messages as (key, raw bytes), oldest first, not yet acknowledged."""
        ...

    def ack(self, key: str) -> None:
        """Mark a message as taken; called only after it is stored."""
        ...
