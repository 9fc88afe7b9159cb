"""iMIP end to end: invites by email for an organizer without a connected calendar, and the
attendees' answers (METHOD:REPLY) mailed back through the inbound path.

``calendar_provider = "imip"``: no organizer is connected (see adapters/calendars.connected),
so the invite task emails every series. Real database (SQLite and PostgreSQL), simulated clock.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import email.utils
import re
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import icalendar
import pytest
from sqlalchemy import select

from automation.db import transaction
from automation.emails import make_message_id, render
from automation.models import (
    AuditEntry,
    CheckinSeries,
    InboundMessage,
    Occurrence,
    OutboundMessage,
    Person,
    Task,
)
from automation.services.imip import (
    ORGANIZER_MAILBOX,
    describe_schedule,
    invite_key,
    queue_invites,
)
from automation.services.loop import run_due
from automation.services.messages import sender_domain
from automation.services.planning import series_event
from automation.settings import PROJECT_ROOT
from automation.template_samples import MANAGER_NAME, sample_context
from tests.conftest import start_organization
from tests.test_loop import PEOPLE, occurrences

ORGANIZER = f"{ORGANIZER_MAILBOX}@reply.example.com"
UTC = dt.UTC


@pytest.fixture
def settings(settings):
    """No organizer has a connected calendar: every series goes out as iMIP invites."""
    return settings.with_(calendar_provider="imip")


@pytest.fixture
def org(rt, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path, PEOPLE)


def outbox(rt, *kinds: str) -> list[OutboundMessage]:
    with rt.factory() as session:
        return list(
            session.scalars(
                select(OutboundMessage)
                .where(OutboundMessage.kind.in_(kinds))
                .order_by(OutboundMessage.id)
            )
        )


def series_of(rt, employee: str) -> CheckinSeries:
    with rt.factory() as session:
        return session.scalars(
            select(CheckinSeries)
            .join(Person, Person.id == CheckinSeries.employee_id)
            .where(Person.email == employee)
        ).one()


def calendar_part(raw: bytes) -> tuple[email.message.EmailMessage, icalendar.Calendar]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parts = list(msg.iter_parts())
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html", "text/calendar"]
    data = parts[2].get_payload(decode=True)
    cal = icalendar.Calendar.from_ical(data)
    assert parts[2].get_param("method") == str(cal["method"])  # RFC 6047 §2.4
    return msg, cal


def invites_to(rt, address: str, *kinds: str) -> list[OutboundMessage]:
    return [m for m in outbox(rt, *(kinds or ("invite",))) if m.recipients == [address]]


def reply_email(
    sender: str,
    attendee: str,
    partstat: str,
    uid: str,
    *,
    sequence: int = 0,
    dtstamp: dt.datetime,
    recurrence_id: str | None = None,
    organizer: bool = False,
    vtimezone: str = "",
    n: int = 1,
) -> bytes:
    """A calendar app's answer: text plus text/calendar METHOD:REPLY, one ATTENDEE."""
    lines = [
        "BEGIN:VCALENDAR",
        "PRODID:-//Test client//EN",
        "VERSION:2.0",
        "METHOD:REPLY",
        *([vtimezone.strip()] if vtimezone else []),
        "BEGIN:VEVENT",
        f"UID:{uid}",
        f"DTSTAMP:{dtstamp.astimezone(UTC):%Y%m%dT%H%M%SZ}",
        f"SEQUENCE:{sequence}",
        *([recurrence_id] if recurrence_id else []),
        f"ATTENDEE;PARTSTAT={partstat};CN=Someone:mailto:{attendee}",
        *([f"ORGANIZER;CN=Bea Boss:mailto:{ORGANIZER}"] if organizer else []),
        "SUMMARY:1:1",
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ORGANIZER
    msg["Subject"] = f"{partstat.title()}: 1:1"
    msg["Date"] = email.utils.format_datetime(dtstamp)
    msg["Message-ID"] = f"<reply-{n}-{partstat}-{sequence}@client.test>"
    msg.set_content(f"{attendee} has answered {partstat}.\n")
    msg.add_alternative("\r\n".join(lines) + "\r\n", subtype="calendar", params={"method": "REPLY"})
    return msg.as_bytes()


def signed_organizer(rt, series: CheckinSeries) -> str:
    from automation.models import Person
    from automation.services.imip import organizer_for

    with rt.factory() as session:
        manager = session.get(Person, series.manager_id)
        return organizer_for(rt, manager, series).email


def deliver(rt, raw: bytes, name: str, *, sign: bool = True) -> InboundMessage:
    """Deliver a calendar reply as a client would: to the ORGANIZER of the invite it answers,
    which carries the series' signed token (``sign=False`` keeps the bare address)."""
    found = re.search(rb"\r?\nUID:([^\r\n]+)", raw)
    if sign and found and f"To: {ORGANIZER}".encode() in raw:
        with rt.factory() as session:
            series = session.scalars(
                select(CheckinSeries).where(CheckinSeries.uid == found.group(1).decode())
            ).first()
        if series is not None:
            raw = raw.replace(
                f"To: {ORGANIZER}".encode(), f"To: {signed_organizer(rt, series)}".encode(), 1
            )
    rt.inbox.deliver(raw, name)
    run_due(rt)
    with rt.factory() as session:
        return session.scalars(select(InboundMessage).where(InboundMessage.raw == raw)).one()


def local_rid(occ: Occurrence, zone: str = "Europe/Berlin") -> str:
    local = occ.recurrence_id.astimezone(ZoneInfo(zone))
    return f"RECURRENCE-ID;TZID={zone}:{local:%Y%m%dT%H%M%S}"


def audit_entries(rt, action: str) -> list[AuditEntry]:
    with rt.factory() as session:
        return list(
            session.scalars(
                select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)
            )
        )


# --- invites ---------------------------------------------------------------------------------


def test_the_loop_emails_request_invites_whose_calendar_part_parses(rt, org):
    every = outbox(rt, "invite")
    with rt.factory() as session:
        all_series = list(session.scalars(select(CheckinSeries)))
    assert len(all_series) == 3
    # One email per attendee (employee and manager) per series.
    assert sorted(r for m in every for r in m.recipients) == sorted(
        ["ana@acme.test", "kai@acme.test", "hr@acme.test"] + ["boss@acme.test"] * 3
    )
    ana = series_of(rt, "ana@acme.test")
    (to_ana,) = invites_to(rt, "ana@acme.test")
    msg, cal = calendar_part(to_ana.raw)
    assert str(cal["method"]) == "REQUEST"
    assert msg["Subject"].startswith("Invitation: ")
    organizer = signed_organizer(rt, ana)
    assert organizer.startswith("calendar+") and organizer.endswith("@reply.example.com")
    assert msg["Reply-To"] == organizer  # clients that answer the sender reach us too
    assert to_ana.message_id == make_message_id(
        f"{org}:{invite_key(ana.id, 0, 'ana@acme.test')}", sender_domain(rt)
    )
    (event,) = list(cal.walk("VEVENT"))
    assert str(event["uid"]) == ana.uid and event["sequence"] == 0
    assert str(event["organizer"]) == f"mailto:{organizer}"
    assert event["organizer"].params["CN"] == "Bea Boss"
    attendees = {str(a): a.params for a in event["attendee"]}
    assert set(attendees) == {"mailto:ana@acme.test", "mailto:boss@acme.test"}
    for params in attendees.values():
        assert (params["ROLE"], params["PARTSTAT"], params["RSVP"]) == (
            "REQ-PARTICIPANT",
            "NEEDS-ACTION",
            "TRUE",
        )
    assert event.decoded("dtstamp") == rt.now()
    (tz,) = list(cal.walk("VTIMEZONE"))
    assert str(tz["tzid"]) == "Europe/Berlin" and b"RDATE" not in tz.to_ical()
    assert {str(s["rrule"].to_ical().decode()) for s in tz.subcomponents} == {
        "FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3",
        "FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10",
    }
    # The text says the same, in the reader's own zone.
    text = msg.get_body(("plain",)).get_content()
    assert "Bea Boss invites you to a recurring check-in." in text
    assert "(Europe/Berlin)" in text and "Next:" in text
    # Sent through the outbox, like every other email.
    assert {m.state for m in every} == {"sent"}
    assert len(rt.sender.messages()) >= len(every)


def test_queue_invites_is_once_per_attendee_and_sequence(rt, org):
    ana = series_of(rt, "ana@acme.test")
    before = outbox(rt, "invite")
    keys = {invite_key(ana.id, 0, e) for e in ("ana@acme.test", "boss@acme.test")}
    with transaction(rt.factory) as session:
        series = session.get(CheckinSeries, ana.id)
        again = queue_invites(rt, session, series, series_event(rt, session, series))
        assert sorted(m.id for m in again) == sorted(
            m.id for m in before if m.idempotency_key in keys
        )
    assert len(outbox(rt, "invite")) == len(before)


def test_a_cancelled_series_sends_cancel(rt, org):
    ana = series_of(rt, "ana@acme.test")
    with transaction(rt.factory) as session:
        series = session.get(CheckinSeries, ana.id)
        series.active = False
        series.sequence += 1
        queue_invites(rt, session, series, series_event(rt, session, series))
    run_due(rt)
    cancels = outbox(rt, "invite_cancel")
    assert sorted(r for m in cancels for r in m.recipients) == ["ana@acme.test", "boss@acme.test"]
    for message in cancels:
        msg, cal = calendar_part(message.raw)
        assert str(cal["method"]) == "CANCEL"
        assert msg["Subject"].startswith("Cancelled: ")
        (event,) = list(cal.walk("VEVENT"))
        assert str(event["uid"]) == ana.uid and event["sequence"] == 1
        assert str(event["status"]) == "CANCELLED"
        assert "Your recurring check-in with" in msg.get_body(("plain",)).get_content()


# --- answers -------------------------------------------------------------------------------


def test_an_accept_without_organizer_is_recorded_on_every_coming_occurrence(rt, org):
    ana = series_of(rt, "ana@acme.test")
    raw = reply_email(
        "Ana Souza <ana@acme.test>", "ana@acme.test", "ACCEPTED", ana.uid, dtstamp=rt.now()
    )
    assert b"ORGANIZER" not in raw  # as Outlook.com sends it
    inbound = deliver(rt, raw, "accept")
    assert inbound.state == "recorded" and inbound.quarantine_reason is None
    occs = occurrences(rt, "ana@acme.test")
    assert occs and all(o.responses["ana@acme.test"] == "ACCEPTED" for o in occs)
    assert all(o.state == "invited" for o in occs)
    (entry,) = audit_entries(rt, "imip.reply")
    assert entry.actor == "ana@acme.test" and entry.data["partstat"] == "ACCEPTED"
    # Nobody else's series changed.
    assert all(o.responses is None for o in occurrences(rt, "kai@acme.test"))


def test_a_declined_occurrence_is_cancelled_and_the_series_sent_again(rt, org, clock):
    ana = series_of(rt, "ana@acme.test")
    first, second, *rest = occurrences(rt, "ana@acme.test")
    old_key = invite_key(ana.id, 0, "boss@acme.test")
    (old_invite,) = [m for m in invites_to(rt, "boss@acme.test") if m.idempotency_key == old_key]
    clock.advance(dt.timedelta(minutes=5))
    # Outlook: a Windows zone name with its own VTIMEZONE, and ORGANIZER present.
    outlook_zone = (
        "BEGIN:VTIMEZONE\r\nTZID:W. Europe Standard Time\r\nBEGIN:STANDARD\r\n"
        "DTSTART:16010101T030000\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\n"
        "RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=10\r\nEND:STANDARD\r\n"
        "BEGIN:DAYLIGHT\r\nDTSTART:16010101T020000\r\nTZOFFSETFROM:+0100\r\n"
        "TZOFFSETTO:+0200\r\nRRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=3\r\n"
        "END:DAYLIGHT\r\nEND:VTIMEZONE"
    )
    raw = reply_email(
        "ana@acme.test",
        "ana@acme.test",
        "DECLINED",
        ana.uid,
        dtstamp=rt.now(),
        recurrence_id=local_rid(second).replace("Europe/Berlin", "W. Europe Standard Time"),
        organizer=True,
        vtimezone=outlook_zone,
    )
    inbound = deliver(rt, raw, "decline")
    assert inbound.state == "recorded" and inbound.occurrence_id == second.id
    after = {o.id: o for o in occurrences(rt, "ana@acme.test")}
    assert after[second.id].state == "cancelled"
    assert after[second.id].responses["ana@acme.test"] == "DECLINED"
    assert after[first.id].state == "invited" and after[first.id].responses is None
    (declined,) = audit_entries(rt, "occurrence.declined")
    assert declined.subject_id == second.id
    assert (declined.data["by"], declined.data["role"]) == ("ana@acme.test", "employee")
    # The series changes (SEQUENCE+1) and goes out again: same UID, fresh DTSTAMP, and the
    # declined meeting excluded, so the manager's calendar drops it too.
    assert series_of(rt, "ana@acme.test").sequence == 1
    new_key = invite_key(ana.id, 1, "boss@acme.test")
    (update,) = [m for m in invites_to(rt, "boss@acme.test") if m.idempotency_key == new_key]
    msg, cal = calendar_part(update.raw)
    assert msg["Subject"].startswith("Updated invitation: ")
    (event,) = list(cal.walk("VEVENT"))
    assert str(event["uid"]) == ana.uid and event["sequence"] == 1
    assert str(event["x-microsoft-cdo-appt-sequence"]) == "1"
    assert event.decoded("dtstamp") == rt.now()
    old_event = calendar_part(old_invite.raw)[1].walk("VEVENT")[0]
    assert old_event.decoded("dtstamp") < event.decoded("dtstamp")
    (exdate,) = event["exdate"].dts  # one EXDATE line with one date
    assert exdate.dt.astimezone(UTC) == second.recurrence_id
    # No agenda will be sent for the cancelled meeting.
    clock.advance(second.start_at - clock.now())
    run_due(rt)
    assert not [m for m in outbox(rt, "agenda") if m.occurrence_id == second.id]


def test_a_series_answer_does_not_override_an_answer_for_one_meeting(rt, org, clock):
    ana = series_of(rt, "ana@acme.test")
    first, second, *_ = occurrences(rt, "ana@acme.test")
    deliver(
        rt,
        reply_email(
            "ana@acme.test",
            "ana@acme.test",
            "TENTATIVE",
            ana.uid,
            dtstamp=rt.now(),
            recurrence_id=local_rid(second),
        ),
        "tentative-one",
    )
    clock.advance(dt.timedelta(minutes=1))
    deliver(
        rt,
        reply_email("ana@acme.test", "ana@acme.test", "ACCEPTED", ana.uid, dtstamp=rt.now(), n=2),
        "accept-all",
    )
    after = {o.id: o for o in occurrences(rt, "ana@acme.test")}
    assert after[second.id].responses["ana@acme.test"] == "TENTATIVE"
    assert after[first.id].responses["ana@acme.test"] == "ACCEPTED"


def test_the_manager_may_answer_too(rt, org):
    ana = series_of(rt, "ana@acme.test")
    inbound = deliver(
        rt,
        reply_email(
            "Bea Boss <BOSS@acme.test>", "boss@acme.test", "ACCEPTED", ana.uid, dtstamp=rt.now()
        ),
        "boss",
    )
    assert inbound.state == "recorded"
    assert all(
        o.responses
        == {
            "boss@acme.test": "ACCEPTED",
            "_sequence": {"boss@acme.test": [0, rt.now().isoformat()]},
        }
        for o in occurrences(rt, "ana@acme.test")
    )


@pytest.mark.parametrize(
    ("sender", "attendee", "uid", "reason"),
    [
        ("mallory@evil.test", "mallory@evil.test", None, "not a participant"),
        ("hr@acme.test", "hr@acme.test", None, "not a participant"),
        ("mallory@evil.test", "ana@acme.test", None, "attendee mismatch"),
        ("ana@acme.test", "boss@acme.test", None, "attendee mismatch"),
        ("ana@acme.test", "ana@acme.test", "checkin-999-999-999", "signed organizer address"),
    ],
)
def test_an_answer_that_must_not_count_is_quarantined_with_its_reason(
    rt, org, sender, attendee, uid, reason
):
    ana = series_of(rt, "ana@acme.test")
    raw = reply_email(sender, attendee, "DECLINED", uid or ana.uid, dtstamp=rt.now())
    inbound = deliver(rt, raw, "bad")
    assert inbound.state == "quarantined"
    assert reason in inbound.quarantine_reason
    assert all(
        o.responses is None and o.state == "invited" for o in occurrences(rt, "ana@acme.test")
    )
    assert audit_entries(rt, "occurrence.declined") == []


def test_an_invalid_reply_and_an_unplanned_occurrence_are_quarantined(rt, org):
    ana = series_of(rt, "ana@acme.test")
    two = reply_email(
        "ana@acme.test", "ana@acme.test", "ACCEPTED", ana.uid, dtstamp=rt.now()
    ).replace(b"ATTENDEE;", b"ATTENDEE;PARTSTAT=ACCEPTED:mailto:boss@acme.test\r\nATTENDEE;", 1)
    inbound = deliver(rt, two, "two-attendees")
    assert inbound.state == "quarantined"
    assert inbound.quarantine_reason.startswith("invalid calendar reply: ")
    assert "exactly one ATTENDEE" in inbound.quarantine_reason
    far = reply_email(
        "ana@acme.test",
        "ana@acme.test",
        "DECLINED",
        ana.uid,
        dtstamp=rt.now(),
        recurrence_id="RECURRENCE-ID:20270105T090000Z",
        n=2,
    )
    inbound = deliver(rt, far, "far")
    assert inbound.state == "quarantined" and "not planned" in inbound.quarantine_reason


def test_an_older_answer_is_ignored_and_an_equal_sequence_with_a_newer_dtstamp_applies(
    rt, org, clock
):
    ana = series_of(rt, "ana@acme.test")
    occ = occurrences(rt, "ana@acme.test")[0]
    t0 = rt.now()
    answers = [
        # (partstat, SEQUENCE, DTSTAMP): what arrives, in this order
        ("ACCEPTED", 1, t0 + dt.timedelta(minutes=2)),
        ("DECLINED", 0, t0 + dt.timedelta(minutes=9)),  # older SEQUENCE: ignored
        ("TENTATIVE", 1, t0 + dt.timedelta(minutes=1)),  # same SEQUENCE, older DTSTAMP: ignored
        ("TENTATIVE", 1, t0 + dt.timedelta(minutes=3)),  # same SEQUENCE, newer DTSTAMP: applies
    ]
    seen = []
    for n, (partstat, sequence, stamp) in enumerate(answers):
        raw = reply_email(
            "ana@acme.test",
            "ana@acme.test",
            partstat,
            ana.uid,
            sequence=sequence,
            dtstamp=stamp,
            recurrence_id=local_rid(occ),
            n=n,
        )
        inbound = deliver(rt, raw, f"answer-{n}")
        assert inbound.state == "recorded"
        (now,) = [o for o in occurrences(rt, "ana@acme.test") if o.id == occ.id]
        seen.append((now.responses["ana@acme.test"], now.state))
    assert seen == [
        ("ACCEPTED", "invited"),
        ("ACCEPTED", "invited"),
        ("ACCEPTED", "invited"),
        ("TENTATIVE", "invited"),
    ]
    assert [e.data["partstat"] for e in audit_entries(rt, "imip.reply")] == [
        "ACCEPTED",
        "DECLINED",
        "TENTATIVE",
        "TENTATIVE",
    ]
    # Nothing was cancelled, so the series did not change.
    assert series_of(rt, "ana@acme.test").sequence == 0
    with rt.factory() as session:
        assert (
            session.scalars(select(Task).where(Task.key == f"invite:series:{ana.id}:1")).all() == []
        )


def test_a_calendar_reply_for_someone_elses_event_takes_the_usual_route(rt, org):
    raw = reply_email(
        "ana@acme.test",
        "ana@acme.test",
        "ACCEPTED",
        "040000008200E00074C5B7@outlook.test",
        dtstamp=rt.now(),
    )
    inbound = deliver(rt, raw, "foreign")
    assert inbound.state == "quarantined"
    assert inbound.quarantine_reason == "no check-in reference: not a reply to a check-in prompt"


# --- the email's words -----------------------------------------------------------------------


def test_the_invite_template_renders_its_sample_escaped():
    rendered = render(PROJECT_ROOT / "templates", "invite", sample_context("invite"))
    assert rendered.subject == f"Invitation: 1:1 {MANAGER_NAME} / Ana Souza"
    assert "<script>" not in rendered.html and "&lt;script&gt;" in rendered.html
    assert f"{MANAGER_NAME} invites you to a recurring check-in." in rendered.text
    assert "Every 2 weeks on Tuesday, 10:00 (Europe/Berlin)" in rendered.text
    for method, updated, subject in (
        ("REQUEST", True, "Updated invitation: "),
        ("CANCEL", False, "Cancelled: "),
    ):
        context = sample_context("invite")
        context["invite"].update(method=method, updated=updated)
        assert render(PROJECT_ROOT / "templates", "invite", context).subject.startswith(subject)


@pytest.mark.parametrize(
    ("rrule", "expected"),
    [
        ("FREQ=WEEKLY;BYDAY=TU", "Every week on Tuesday, 10:00 (Europe/Berlin)"),
        ("FREQ=WEEKLY;INTERVAL=2;BYDAY=TU", "Every 2 weeks on Tuesday, 10:00 (Europe/Berlin)"),
        ("FREQ=MONTHLY;BYDAY=2TU", "Every month on the second Tuesday, 10:00 (Europe/Berlin)"),
        ("FREQ=DAILY", "Repeating (FREQ=DAILY) from Tuesday 10 March 2026, 10:00 (Europe/Berlin)"),
    ],
)
def test_describe_schedule(rrule, expected):
    assert describe_schedule(rrule, dt.datetime(2026, 3, 10, 10), "Europe/Berlin") == expected


def test_a_reply_that_does_not_reach_the_signed_organizer_is_quarantined(rt, org):
    """From can be forged; the ORGANIZER address of our invite cannot be guessed."""
    ana = series_of(rt, "ana@acme.test")
    raw = reply_email("ana@acme.test", "ana@acme.test", "DECLINED", ana.uid, dtstamp=rt.now())
    inbound = deliver(rt, raw, "unsigned", sign=False)
    assert inbound.state == "quarantined"
    assert "signed organizer address" in inbound.quarantine_reason
    kai = series_of(rt, "kai@acme.test")
    to_kai = raw.replace(
        f"To: {ORGANIZER}".encode(), f"To: {signed_organizer(rt, kai)}".encode(), 1
    ).replace(b"<reply-1-", b"<reply-9-")
    inbound = deliver(rt, to_kai, "other-series", sign=False)
    assert inbound.state == "quarantined"
    assert "organizer address of another series" in inbound.quarantine_reason
    assert all(o.state == "invited" for o in occurrences(rt, "ana@acme.test"))
