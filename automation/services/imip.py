"""iMIP (RFC 6047): calendar invites by email, and the answers that come back.

For a series whose organizer (the manager) has no connected calendar, :func:`queue_invites`
puts one email per attendee into the outbox, each carrying the whole series as a
``text/calendar`` part: METHOD:REQUEST, or METHOD:CANCEL once the series is cancelled.

One REQUEST per change, carrying the whole series. Cancelled or skipped occurrences travel
as EXDATEs of the master and moved ones as RECURRENCE-ID instances, in the same REQUEST at
the series' new SEQUENCE; no separate per-occurrence CANCEL is sent. Each REQUEST is complete,
so one lost or reordered email is put right by the next, and every change costs each
attendee one email. (:func:`automation.domain.ical.imip_cancel` can also cancel one
occurrence, with RECURRENCE-ID, for a caller that wants it.)

The ORGANIZER is a mailbox of ours (:func:`organizer_for`, at ``reply_domain``, which lands
in our inbox) with the manager's name as CN, so that calendar apps send their METHOD:REPLY
back to us. The inbound path hands those to :func:`find_reply` and :func:`apply_replies`:
the attendee's PARTSTAT is stored on the occurrence(s) in ``occurrences.responses``, and a
declined occurrence is cancelled.

``occurrences.responses`` holds ``email (lower) -> PARTSTAT`` and two kinds of bookkeeping
keys, neither of them an address: ``"<email>#instance": "1"`` once that attendee answered for
this one meeting (as the calendar sync writes it; a later answer for the whole series then
leaves this meeting alone), and ``"_sequence"``: ``email -> [SEQUENCE, DTSTAMP iso]`` of the
answer applied last. Answers are ordered by (SEQUENCE, DTSTAMP), as receivers order invites
(RFC 5546 §2.1.5): an older one is ignored, an equal or newer one applies.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from automation import audit
from automation.domain import mime
from automation.domain.ical import (
    CANCEL,
    REPLY,
    REQUEST,
    ImipError,
    ImipReply,
    imip_cancel,
    imip_request,
    method_of,
    parse_imip_replies,
)
from automation.domain.tokens import ReplyToken, reply_address
from automation.models import (
    CheckinSeries,
    Occurrence,
    OccurrenceState,
    OutboundMessage,
    Person,
)
from automation.ports import DECLINED, Attendee, SeriesEvent
from automation.runtime import Runtime
from automation.services.messages import person_ctx, queue_email, when
from automation.services.planning import next_open_occurrence, series_changed

# The organizer mailbox: ORGANIZER_MAILBOX@reply_domain. It must receive mail (the answers
# come to it) and never change for the life of a series (clients match ORGANIZER).
ORGANIZER_MAILBOX = "calendar"
UID_PREFIX = "checkin-"  # our series UIDs (automation.services.planning)
SEQUENCE_KEY = "_sequence"  # bookkeeping inside occurrences.responses, see the module doc
INSTANCE_SUFFIX = "#instance"  # "<email>#instance": answered for this one meeting (as sync)
_CALENDAR_TYPES = ("text/calendar", "application/ics")
_DAYS = {"MO": "Monday", "TU": "Tuesday", "WE": "Wednesday", "TH": "Thursday", "FR": "Friday"}
_DAYS |= {"SA": "Saturday", "SU": "Sunday"}
_NTH = {1: "first", 2: "second", 3: "third", 4: "fourth", -1: "last"}


def organizer_for(rt: Runtime, manager: Person, series: CheckinSeries | None = None) -> Attendee:
    """The ORGANIZER of an iMIP invite: our mailbox, under the manager's name.

    With a series, the address carries the series' signed token
    (``calendar+<org>-s<id>-<sig>@reply_domain``, fixed for the life of the series): clients
    send their REPLY to the ORGANIZER, so a REPLY that does not reach that address was not
    an answer to our invite, whatever its From says."""
    if series is None:
        return Attendee(f"{ORGANIZER_MAILBOX}@{rt.settings.reply_domain}", manager.name)
    token = ReplyToken(series.organization_id, "series", series.id)
    address = reply_address(
        rt.settings.signing_key(), token, ORGANIZER_MAILBOX, rt.settings.reply_domain
    )
    return Attendee(address, manager.name)


def invite_key(series_id: int, sequence: int, attendee: str) -> str:
    """The outbox key of one invite email: one per attendee per SEQUENCE of the series."""
    return f"imip:series:{series_id}:{sequence}:{attendee.lower()}"


def describe_schedule(rrule: str, dtstart_local: dt.datetime, tz_name: str) -> str:
    """ "Every 2 weeks on Tuesday, 10:00 (Europe/Berlin)", for the email's words."""
    parts = dict(p.split("=", 1) for p in rrule.upper().split(";") if "=" in p)
    freq, interval = parts.get("FREQ", ""), int(parts.get("INTERVAL", "1") or 1)
    byday = parts.get("BYDAY", "")
    at = f"{dtstart_local:%H:%M} ({tz_name})"
    found = re.fullmatch(r"([+-]?\d)?([A-Z]{2})", byday)
    day = _DAYS.get(found.group(2), "") if found else ""
    nth = int(found.group(1)) if found and found.group(1) else None
    if freq == "WEEKLY" and day:
        every = "Every week" if interval == 1 else f"Every {interval} weeks"
        return f"{every} on {day}, {at}"
    if freq == "MONTHLY" and day and nth in _NTH:
        every = "Every month" if interval == 1 else f"Every {interval} months"
        return f"{every} on the {_NTH[nth]} {day}, {at}"
    return f"Repeating ({rrule}) from {dtstart_local:%A %d %B %Y}, {at}"


def queue_invites(
    rt: Runtime,
    session: Session,
    series: CheckinSeries,
    event: SeriesEvent,
    *,
    skip: Collection[str] = (),
) -> list[OutboundMessage]:
    """One iMIP email per attendee for the series as ``event`` describes it: METHOD:REQUEST
    (new or changed, with its moved and cancelled occurrences) or, when ``event.cancelled``,
    METHOD:CANCEL. Once per attendee and SEQUENCE: calling it again returns the same rows.
    ``skip``: addresses that already have the series in their own calendar (the organizer on
    a CalDAV server that does not send invitations itself)."""
    manager = session.get(Person, series.manager_id)
    employee = session.get(Person, series.employee_id)
    assert manager is not None and employee is not None
    people = {manager.email.lower(): manager, employee.email.lower(): employee}
    skipped = {a.lower() for a in skip}
    recipients = [
        people[a.email.lower()]
        for a in event.attendees
        if a.email.lower() in people and a.email.lower() not in skipped
    ]
    if not recipients:
        return []
    organizer = organizer_for(rt, manager, series)
    stamp = rt.now()
    method = CANCEL if event.cancelled else REQUEST
    data = (
        imip_cancel(event, stamp, organizer)
        if event.cancelled
        else imip_request(event, stamp, organizer)
    )
    upcoming = next_open_occurrence(session, series, stamp)
    messages = []
    for person in dict.fromkeys(recipients):
        invite: dict[str, Any] = {
            "method": method,
            "updated": event.sequence > 0,
            "title": event.summary,
            "schedule": describe_schedule(event.rrule, event.dtstart_local, event.timezone),
            "next": when(upcoming.start_at, person.timezone) if upcoming else None,
            "duration_minutes": event.duration_minutes,
        }
        messages.append(
            queue_email(
                rt,
                session,
                organization_id=series.organization_id,
                key=invite_key(series.id, event.sequence, person.email),
                kind="invite" if method == REQUEST else "invite_cancel",
                template="invite",
                to=[person],
                # Some clients answer the sender rather than ORGANIZER: both reach us.
                reply_to=organizer.email,
                calendar=(method, data),
                context={
                    "manager": person_ctx(manager),
                    "employee": person_ctx(employee),
                    "invite": invite,
                },
            )
        )
    return messages


# --- answers ---------------------------------------------------------------------------------


class ReplyRefused(Exception):
    """A calendar answer that must not be applied; the text is the quarantine reason."""


@dataclass(frozen=True)
class ReplyResult:
    text: str
    occurrence_id: int | None  # the one occurrence answered, if the answer named one

    def __str__(self) -> str:
        return self.text


_OUR_UID = re.compile(rb"^UID:" + re.escape(UID_PREFIX.encode()), re.MULTILINE | re.IGNORECASE)
# In the Content-Type of a calendar part, as clients write it (a fast scan of the raw bytes).
_CALENDAR_MARKERS = (b"/calendar", b"/Calendar", b"/CALENDAR", b"/ics", b"/ICS")


def find_reply(raw: bytes) -> tuple[ImipReply, ...] | str | None:
    """The calendar answers in an inbound email, if it carries a METHOD:REPLY for one of our
    series (UID ``checkin-…``) as a text/calendar (or application/ics) part: the answers, or
    the reason the REPLY is unusable (a string). None: no such part, route it as usual."""
    if not any(marker in raw for marker in _CALENDAR_MARKERS):
        return None  # no calendar part: no need to parse the message again
    # The inbound path's bounded parser (limits on size, depth, parts and header length).
    msg = mime.parse_message(raw)
    if msg is None:  # damaged MIME or over limits: the normal route keeps it, with the reason
        return None
    try:
        parts = [p for p in mime.walk(msg) if p.get_content_type() in _CALENDAR_TYPES]
    except Exception:  # damaged MIME: not ours to read here; the normal route keeps it
        return None
    problem = None
    for part in parts:
        try:
            data = part.get_payload(decode=True)
        except Exception:
            continue
        if not isinstance(data, bytes) or method_of(data) != REPLY:
            continue
        if not _OUR_UID.search(re.sub(rb"\r?\n[ \t]", b"", data)):
            continue
        try:
            replies = parse_imip_replies(data)
        except ImipError as exc:
            problem = f"invalid calendar reply: {exc}"
            continue
        if replies[0].uid.startswith(UID_PREFIX):
            return replies
    return problem


def _order(reply: ImipReply) -> list[Any]:
    stamp = reply.dtstamp.astimezone(dt.UTC).isoformat() if reply.dtstamp else ""
    return [reply.sequence, stamp]


def apply_replies(
    rt: Runtime,
    session: Session,
    replies: Sequence[ImipReply],
    sender: str,
    *,
    organization_id: int | None = None,
    series_id: int | None = None,
) -> ReplyResult:
    """Record the answers of one REPLY (one UID, one attendee); raise :class:`ReplyRefused`
    with the quarantine reason before changing anything if they must not count.

    Counted only when ``sender`` is the ATTENDEE of the REPLY and that attendee is the
    series' manager or employee. An answer for one occurrence (RECURRENCE-ID) goes on that
    occurrence; one for the series on every occurrence still to come. An answer older, by
    (SEQUENCE, DTSTAMP), than the one on record for that attendee is ignored. A DECLINED
    occurrence still planned or invited is cancelled (audited with who declined) and the
    series is re-sent at SEQUENCE+1, so the other participant's calendar drops it too.
    """
    if not replies:
        raise ReplyRefused("calendar reply without an answer")
    uid, attendee = replies[0].uid, replies[0].attendee
    query = select(CheckinSeries).where(CheckinSeries.uid == uid)
    if organization_id is not None:
        query = query.where(CheckinSeries.organization_id == organization_id)
    series = session.scalar(query)
    if series is None:
        raise ReplyRefused(f"calendar reply for unknown event UID {uid}")
    if series_id is not None and series.id != series_id:
        raise ReplyRefused(
            f"calendar reply for {uid} was sent to the organizer address of another series"
        )
    sender = sender.strip().lower()
    if sender != attendee:
        raise ReplyRefused(
            f"calendar reply attendee mismatch: it answers for {attendee} but was sent by {sender}"
        )
    participants = {
        p.email.lower(): p
        for p in (session.get(Person, series.manager_id), session.get(Person, series.employee_id))
        if p is not None
    }
    if sender not in participants:
        raise ReplyRefused(
            f"calendar reply from {sender}, who is not a participant of check-in series {uid}"
        )
    now = rt.now()
    targets: list[tuple[ImipReply, list[Occurrence]]] = []
    # The series answer first, so that an answer for one of its occurrences wins there.
    for reply in sorted(replies, key=lambda r: (r.recurrence_id is not None, r.recurrence_id)):
        occurrences = session.scalars(
            select(Occurrence)
            .where(
                Occurrence.organization_id == series.organization_id,
                Occurrence.series_id == series.id,
                *(
                    [Occurrence.recurrence_id == reply.recurrence_id]
                    if reply.recurrence_id is not None
                    else [Occurrence.start_at > now]
                ),
            )
            .order_by(Occurrence.start_at)
        ).all()
        if reply.recurrence_id is not None and not occurrences:
            raise ReplyRefused(
                f"calendar reply for an occurrence of {uid} that is not planned: "
                f"RECURRENCE-ID {reply.recurrence_id.isoformat()}"
            )
        targets.append((reply, list(occurrences)))

    role = "manager" if participants[sender].id == series.manager_id else "employee"
    applied = ignored = 0
    cancelled: list[Occurrence] = []
    for reply, occurrences in targets:
        for occ in occurrences:
            responses = dict(occ.responses or {})
            seen = dict(responses.get(SEQUENCE_KEY) or {})
            if attendee in seen and _order(reply) < list(seen[attendee]):
                ignored += 1
                continue
            if reply.recurrence_id is None and responses.get(f"{attendee}{INSTANCE_SUFFIX}"):
                continue  # an answer to this one meeting wins over the series answer
            responses[attendee] = reply.partstat
            if reply.recurrence_id is not None:
                responses[f"{attendee}{INSTANCE_SUFFIX}"] = "1"
            seen[attendee] = _order(reply)
            responses[SEQUENCE_KEY] = seen
            occ.responses = responses  # a new dict: the JSON column sees the change
            occ.updated_at = now
            applied += 1
            if reply.partstat == DECLINED and occ.state in (
                OccurrenceState.PLANNED,
                OccurrenceState.INVITED,
            ):
                occ.state = OccurrenceState.CANCELLED
                cancelled.append(occ)
                audit.record(
                    session,
                    series.organization_id,
                    actor=attendee,
                    action="occurrence.declined",
                    subject_kind="occurrence",
                    subject_id=occ.id,
                    at=now,
                    data={
                        "by": attendee,
                        "role": role,
                        "series_uid": uid,
                        "recurrence_id": occ.recurrence_id.isoformat(),
                        "via": "imip",
                    },
                )
        audit.record(
            session,
            series.organization_id,
            actor=attendee,
            action="imip.reply",
            subject_kind="series",
            subject_id=series.id,
            at=now,
            data={
                "uid": uid,
                "attendee": attendee,
                "partstat": reply.partstat,
                "recurrence_id": reply.recurrence_id.isoformat() if reply.recurrence_id else None,
                "sequence": reply.sequence,
                "dtstamp": reply.dtstamp.isoformat() if reply.dtstamp else None,
                "occurrences": [o.id for o in occurrences],
            },
        )
    if cancelled:
        # As a #cancel does: the series changes, and the invite task re-sends it.
        series_changed(session, series, now)
    partstats = "/".join(dict.fromkeys(r.partstat for r in replies))
    if applied == 0 and ignored:
        text = f"{partstats} by {attendee} ignored: older than the answer on record"
    else:
        text = f"{partstats} by {attendee} recorded on {applied} occurrence(s)"
        if ignored:
            text += f", {ignored} ignored as older"
        if cancelled:
            text += f", {len(cancelled)} cancelled"
    single = [occs for r, occs in targets if r.recurrence_id is not None]
    return ReplyResult(text, single[0][0].id if len(single) == 1 and single[0] else None)


def apply_reply(
    rt: Runtime,
    session: Session,
    reply: ImipReply,
    sender: str,
    *,
    organization_id: int | None = None,
) -> str:
    """:func:`apply_replies` for one answer; the short result. Raises :class:`ReplyRefused`."""
    return str(apply_replies(rt, session, (reply,), sender, organization_id=organization_id))
