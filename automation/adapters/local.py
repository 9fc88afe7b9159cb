"""The embedded providers: calendar files and Maildir folders, for set-up-free local use.

Calendars: one ``<email>.ics`` per person, a feed any calendar client can subscribe to. Each
write replaces the components of one UID in each participant's file, atomically (write to a
temporary file, then rename), so a reader never sees half a calendar. The read-modify-write
of a file holds an exclusive ``flock`` on a lock file beside it, so writers in several
processes (``automation worker --processes N``, the tick) never lose each other's series. The
VEVENTs and the RRULE-based VTIMEZONEs come from :mod:`automation.domain.ical`, as for the
iMIP invites.

Mail: outgoing messages land in a Maildir named after a hash of their Message-ID, which is
what lets a retry see that an earlier attempt already sent the message. Incoming messages are
read from another Maildir's ``new/`` and moved to ``cur/`` once stored.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import icalendar
from dateutil.rrule import rrulestr

from automation.domain.cadence import localize
from automation.domain.ical import series_calendar, with_timezones
from automation.domain.ical import series_components as series_components  # moved; re-exported
from automation.ports import (
    EventState,
    InboxPage,
    OutgoingMail,
    SentMail,
    SeriesEvent,
    SyncOutcome,
)

PRODID = "-//checkin-automation//local calendar//EN"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``.<name>.lock`` beside ``path`` for the block: excludes
    other processes and, each opening the file anew, other threads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class LocalCalendar:
    """Calendar files under one folder: ``<email>.ics`` per person."""

    name = "local"

    def __init__(self, folder: Path, now: Callable[[], dt.datetime] | None = None):
        self.folder = folder
        self._lock = threading.Lock()
        # DTSTAMP comes from the service's clock, so a simulated run writes the same bytes.
        self._now = now or (lambda: dt.datetime.now(dt.UTC))

    def path_for(self, email: str) -> Path:
        return self.folder / f"{email.lower()}.ics"

    def _read(self, email: str) -> icalendar.Calendar:
        path = self.path_for(email)
        if path.exists():
            return icalendar.Calendar.from_ical(path.read_bytes())
        cal = icalendar.Calendar()
        cal.add("prodid", PRODID)
        cal.add("version", "2.0")
        cal.add("x-wr-calname", f"Check-ins: {email}")
        return cal

    def write_many(self, events: Sequence[SeriesEvent]) -> dict[str, str]:
        return {event.uid: self.write_series(event) for event in events}

    def sync(
        self,
        calendar: str,
        cursor: str | None,
        apply: Callable[[Sequence[EventState]], None],
    ) -> SyncOutcome:
        """Local files change only through us: there is nothing to read back."""
        return SyncOutcome(cursor=cursor, full_resync=False, requests=0, events=0)

    def write_series(self, event: SeriesEvent, stamp: dt.datetime | None = None) -> str:
        stamp = stamp or self._now()
        # The same VEVENTs as an iMIP invite, without METHOD (a published calendar file).
        components = [c for c in series_calendar(event, stamp).subcomponents if c.name == "VEVENT"]
        people = [event.organizer.email, *(a.email for a in event.attendees)]
        with self._lock:
            for email in dict.fromkeys(p.lower() for p in people):
                # One file at a time, so two writers never wait for each other in a cycle.
                with _file_lock(self.path_for(email)):
                    cal = self._read(email)
                    kept = [
                        c
                        for c in cal.subcomponents
                        if not (c.name == "VEVENT" and str(c.get("uid")) == event.uid)
                        and c.name != "VTIMEZONE"
                    ]
                    cal.subcomponents = [*kept, *components]
                    # RRULE-based VTIMEZONEs for every zone the file uses (never RDATE lists).
                    with_timezones(cal)
                    _atomic_write(self.path_for(email), cal.to_ical())
        return event.uid

    def busy(
        self, emails: Sequence[str], start: dt.datetime, end: dt.datetime
    ) -> list[tuple[dt.datetime, dt.datetime]]:
        """Scan each person's file and expand its series (the embedded free/busy)."""
        out: list[tuple[dt.datetime, dt.datetime]] = []
        for email in emails:
            path = self.path_for(email)
            if not path.exists():
                continue
            cal = icalendar.Calendar.from_ical(path.read_bytes())
            for comp in cal.walk("VEVENT"):
                if "recurrence-id" in comp or str(comp.get("status")) == "CANCELLED":
                    continue
                first = comp.decoded("dtstart")
                length = comp.decoded("dtend") - first
                if "rrule" not in comp:
                    starts = [first]
                else:
                    ical = comp["rrule"].to_ical()
                    text = ical.decode() if isinstance(ical, bytes) else str(ical)
                    rule = rrulestr(text, dtstart=first.replace(tzinfo=None))
                    tz = first.tzinfo
                    starts = [
                        localize(s, tz)
                        for s in rule.between(
                            start.astimezone(tz).replace(tzinfo=None) - length,
                            end.astimezone(tz).replace(tzinfo=None),
                            inc=True,
                        )
                    ]
                for s in starts:
                    if s < end and s + length > start:
                        out.append((s.astimezone(dt.UTC), (s + length).astimezone(dt.UTC)))
        return out


def _maildir(folder: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return folder


class MaildirSender:
    """Delivers outgoing mail into a Maildir, one file per Message-ID."""

    name = "maildir"

    def __init__(self, folder: Path):
        self.folder = _maildir(folder)

    @staticmethod
    def _name(message_id: str) -> str:
        return hashlib.sha256(message_id.encode()).hexdigest()[:32] + ".eml"

    def already_sent(self, mail: OutgoingMail) -> SentMail | None:
        name = self._name(mail.message_id)
        found = (self.folder / "new" / name).exists() or any((self.folder / "cur").glob(name + "*"))
        return SentMail(mail.message_id, name) if found else None

    def send(self, mail: OutgoingMail) -> SentMail:
        name = self._name(mail.message_id)
        tmp = self.folder / "tmp" / name
        tmp.write_bytes(mail.raw)
        os.replace(tmp, self.folder / "new" / name)
        return SentMail(mail.message_id, name)

    def send_many(self, mails: Sequence[OutgoingMail]) -> list[SentMail | Exception]:
        out: list[SentMail | Exception] = []
        for mail in mails:
            try:
                out.append(self.send(mail))
            except OSError as exc:
                out.append(exc)
        return out

    def messages(self) -> list[bytes]:
        files = sorted([*(self.folder / "new").iterdir(), *(self.folder / "cur").iterdir()])
        return [f.read_bytes() for f in files]


class MaildirInbox:
    """Reads a Maildir's new/ folder; acknowledged messages move to cur/ (flag Seen).

    No cursor: new/ itself is the queue of what has not been taken yet."""

    name = "maildir"

    def __init__(self, folder: Path):
        self.folder = _maildir(folder)

    def fetch(self, cursor: str | None = None, limit: int = 100) -> InboxPage:
        entries = sorted((self.folder / "new").iterdir(), key=lambda p: p.name)
        page = [(path.name, path.read_bytes()) for path in entries[:limit]]
        return InboxPage(page, None, more=len(entries) > limit)

    def ack(self, keys: Sequence[str]) -> None:
        for key in keys:
            src = self.folder / "new" / key
            if src.exists():
                os.replace(src, self.folder / "cur" / f"{key}:2,S")

    def deliver(self, raw: bytes, key: str) -> None:
        """Drop a message into new/ (what an MTA's Maildir delivery does)."""
        tmp = self.folder / "tmp" / key
        tmp.write_bytes(raw)
        os.replace(tmp, self.folder / "new" / key)
