"""The small protocols that providers implement. Domain types only cross these lines."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
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
    # The provider's id for this series once it was created (Graph assigns one; Google and
    # CalDAV derive theirs from the UID, so they may ignore it). None: never written.
    provider_id: str | None = None

    @property
    def calendar(self) -> str:
        """The calendar the series lives in: the organizer's (the manager's) address."""
        return self.organizer.email.lower()


# Attendee participation status, as RFC 5545 PARTSTAT spells it (Google's responseStatus and
# Graph's response are mapped onto these).
ACCEPTED, DECLINED, TENTATIVE, NEEDS_ACTION = "ACCEPTED", "DECLINED", "TENTATIVE", "NEEDS-ACTION"


@dataclass(frozen=True)
class EventState:
    """What a provider says one of our events (a series, or one instance of it) is now.

    A sync reports every event of ours it sees: a full sync all of them, an incremental one
    the changed ones. Applying a state is idempotent, so replays and duplicates are harmless.
    """

    uid: str | None  # our series UID (iCalendar UID; Google iCalUID), when the provider says
    # The provider's id of the series (Graph seriesMasterId / master id) when it cannot give
    # our UID (a removed item, a Graph instance): the service finds the series by its link.
    series_provider_id: str | None = None
    recurrence_id: dt.datetime | None = None  # UTC original start; None: the whole series
    removed: bool = False  # deleted or cancelled in the provider
    start: dt.datetime | None = None  # UTC; for an instance, where it is now
    end: dt.datetime | None = None
    responses: Mapping[str, str] = field(default_factory=dict)  # email (lower) -> PARTSTAT


@dataclass(frozen=True)
class SyncOutcome:
    cursor: str | None  # store it; the next sync starts from it
    full_resync: bool  # True when the stored cursor was refused (410 / invalid sync token)
    requests: int  # HTTP requests this sync made
    events: int  # EventStates reported


class CalendarProvider(Protocol):
    name: str  # "local", "google", "graph", "caldav", "imip"

    def write_series(self, event: SeriesEvent) -> str:
        """Create, update or (``event.cancelled``) cancel the series in the organizer's calendar,
        with its overrides (moved or cancelled instances). Idempotent: running it again, even
        after a crash between the provider's answer and our commit, never makes a second
        event. Returns the provider's id for the series."""
        ...

    def write_many(self, events: Sequence[SeriesEvent]) -> dict[str, str]:
        """``write_series`` for many, batched where the provider can (uid -> provider id)."""
        ...

    def busy(
        self, emails: Sequence[str], start: dt.datetime, end: dt.datetime
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        """Busy UTC intervals of these people between start and end (all-day events and
        out-of-office included)."""
        ...

    def sync(
        self,
        calendar: str,
        cursor: str | None,
        apply: Callable[[Sequence[EventState]], None],
    ) -> SyncOutcome:
        """Report our events changed in ``calendar`` since ``cursor`` (None: a full sync),
        page by page through ``apply`` (so memory stays bounded), then return the new cursor.
        A refused cursor means one full resync, never a loop."""
        ...


@dataclass(frozen=True)
class Channel:
    """A push channel: a Google watch channel or a Graph subscription on one calendar."""

    id: str  # Google channel id / Graph subscription id
    resource: str  # Google resourceId (needed to stop it) / Graph resource path
    secret: str  # Google channel token / Graph clientState: a notice must carry it
    expires_at: dt.datetime  # UTC, as the provider reported it


class PushChannels(Protocol):
    """Providers that push change notices (Google, Graph). CalDAV and iMIP are polled."""

    def watch(
        self, calendar: str, address: str, secret: str, ttl: dt.timedelta, channel_id: str
    ) -> Channel:
        """Open a channel that posts to ``address``; ``channel_id`` is ours (Google) or a hint."""
        ...

    def renew(self, calendar: str, channel: Channel, address: str, ttl: dt.timedelta) -> Channel:
        """Keep notices coming past ``channel.expires_at``: Google opens a new channel before
        stopping the old one (channels cannot be extended); Graph PATCHes the expiry."""
        ...

    def stop(self, calendar: str, channel: Channel) -> None:
        """Close it; a channel the provider no longer knows counts as stopped."""
        ...


@dataclass(frozen=True)
class OutgoingMail:
    """One message of the outbox, ready for a transport."""

    message_id: str  # ours, deterministic: "<key-hash@domain>"
    raw: bytes  # the whole RFC 5322 message, Message-ID included
    sender: str  # envelope sender (the From address)
    recipients: tuple[str, ...]
    thread: str | None = None  # the provider's thread of the message this one follows (Gmail)


@dataclass(frozen=True)
class SentMail:
    """What the transport did with it."""

    message_id: str  # the Message-ID as sent (Gmail and Graph may rewrite ours)
    provider_id: str | None = None  # Gmail/Graph message id
    thread: str | None = None  # Gmail threadId / Graph conversationId


class MailSender(Protocol):
    name: str  # "maildir", "smtp", "gmail", "graph"

    def already_sent(self, mail: OutgoingMail) -> SentMail | None:
        """The earlier copy of this message if a previous attempt sent it (a worker died
        between the provider's answer and our commit): looked up by Message-ID (Gmail
        ``rfc822msgid:``, Graph ``internetMessageId``, the IMAP Sent folder)."""
        ...

    def send(self, mail: OutgoingMail) -> SentMail: ...

    def send_many(self, mails: Sequence[OutgoingMail]) -> list[SentMail | Exception]:
        """Several in one go (one SMTP connection, one batch); one result per message, in
        order, an exception for each that failed so the others still count."""
        ...


@dataclass(frozen=True)
class InboxPage:
    """New inbound messages since a cursor."""

    messages: list[tuple[str, bytes]]  # (key for ack, raw bytes), oldest first
    cursor: str | None  # store it once every message of the page is stored
    more: bool = False  # another page is waiting
    full_resync: bool = False  # the stored cursor was refused (UIDVALIDITY changed, 404…)


class InboxReader(Protocol):
    name: str  # "maildir", "imap", "gmail", "graph"

    def fetch(self, cursor: str | None, limit: int = 100) -> InboxPage:
        """Messages not yet acknowledged, after ``cursor`` when the source has one."""
        ...

    def ack(self, keys: Sequence[str]) -> None:
        """Called only after the messages are stored: move them to the processed folder,
        label or mark them, so they are not fetched again."""
        ...
