"""The whole check-in loop on a real database (SQLite and PostgreSQL), on a simulated clock."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import email.utils
from email.message import EmailMessage
from pathlib import Path

import icalendar
import pytest
from sqlalchemy import func, select

from automation import audit
from automation.db import transaction
from automation.models import (
    ActionItem,
    AuditEntry,
    CheckinSeries,
    ConversationRecord,
    Escalation,
    InboundMessage,
    Occurrence,
    OutboundMessage,
    Task,
    TaskState,
)
from automation.people import import_people_file
from automation.services.loop import run_due, tick
from tests.conftest import ACME_PEOPLE, advance_until, start_organization

PEOPLE = ACME_PEOPLE


@pytest.fixture
def org(rt, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path, PEOPLE)


def outbox(rt, kind: str | None = None) -> list[OutboundMessage]:
    with rt.factory() as session:
        query = select(OutboundMessage).order_by(OutboundMessage.id)
        if kind:
            query = query.where(OutboundMessage.kind == kind)
        return list(session.scalars(query))


def occurrences(rt, employee_email: str) -> list[Occurrence]:
    from automation.models import Person

    with rt.factory() as session:
        return list(
            session.scalars(
                select(Occurrence)
                .join(CheckinSeries, CheckinSeries.id == Occurrence.series_id)
                .join(Person, Person.id == CheckinSeries.employee_id)
                .where(Person.email == employee_email)
                .order_by(Occurrence.start_at)
            )
        )


def reply_to(
    rt,
    prompt: OutboundMessage,
    sender: str,
    body: str,
    *,
    to: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    original = email.message_from_bytes(prompt.raw, policy=email.policy.default)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to or str(original["Reply-To"])
    msg["Subject"] = "Re: " + str(original["Subject"])
    msg["Date"] = email.utils.format_datetime(rt.now())
    msg["Message-ID"] = email.utils.make_msgid(domain="client.test")
    msg["In-Reply-To"] = prompt.message_id
    for key, value in (headers or {}).items():
        msg[key] = value
    msg.set_content(body)
    return msg.as_bytes()


def deliver(rt, raw: bytes, name: str) -> None:
    rt.inbox.deliver(raw, name)
    run_due(rt)


def test_series_are_planned_and_written_as_valid_icalendar(rt, org):
    with rt.factory() as session:
        series = list(session.scalars(select(CheckinSeries)))
    assert len(series) == 3  # every report of the boss, incl. the HR partner
    cal_file = rt.settings.calendars / "ana@acme.test.ics"
    cal = icalendar.Calendar.from_ical(cal_file.read_bytes())
    events = list(cal.walk("VEVENT"))
    assert len(events) == 1
    event = events[0]
    assert str(event["uid"]).startswith(f"checkin-{org}-")
    assert event["rrule"]["FREQ"] == ["WEEKLY"] and event["rrule"]["INTERVAL"] == [2]
    assert event.decoded("dtstart").tzinfo.key == "Europe/Berlin"
    assert [str(t["tzid"]) for t in cal.walk("VTIMEZONE")] == ["Europe/Berlin"]
    assert str(event["organizer"]) == "mailto:boss@acme.test"
    assert {str(a) for a in event["attendee"]} == {"mailto:ana@acme.test", "mailto:boss@acme.test"}
    # The manager's feed holds all three series; the manager is never double-booked.
    boss = icalendar.Calendar.from_ical((rt.settings.calendars / "boss@acme.test.ics").read_bytes())
    assert len(list(boss.walk("VEVENT"))) == 3
    starts = [
        o.start_at
        for e in ("ana@acme.test", "kai@acme.test", "hr@acme.test")
        for o in occurrences(rt, e)
    ]
    assert len(starts) == len(set(starts))


def test_meetings_keep_their_local_hour_across_dst(rt, org, clock):
    advance_until(rt, clock, clock.now() + dt.timedelta(days=1))
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    with transaction(rt.factory) as session:
        from automation.services.planning import plan

        plan(rt, session, org, horizon_days=56)  # past 29 March, when Berlin springs forward
    occs = occurrences(rt, "ana@acme.test")
    assert any(o.start_at < dt.datetime(2026, 3, 29, tzinfo=dt.UTC) for o in occs)
    assert any(o.start_at > dt.datetime(2026, 3, 29, tzinfo=dt.UTC) for o in occs)
    local_times = {o.start_at.astimezone(berlin).time() for o in occs}
    utc_times = {o.start_at.time() for o in occs}
    assert len(local_times) == 1 and len(utc_times) == 2


def test_agenda_then_followup_then_reply_becomes_a_record(rt, org, clock):
    first = occurrences(rt, "ana@acme.test")[0]
    advance_until(rt, clock, first.start_at)
    agendas = [m for m in outbox(rt, "agenda") if m.occurrence_id == first.id]
    assert sorted(r for m in agendas for r in m.recipients) == ["ana@acme.test", "boss@acme.test"]
    advance_until(rt, clock, first.end_at + dt.timedelta(hours=1, minutes=1))
    (prompt,) = [m for m in outbox(rt, "followup") if m.occurrence_id == first.id]
    parsed = email.message_from_bytes(prompt.raw, policy=email.policy.default)
    assert str(parsed["Reply-To"]).startswith(f"checkin+{org}-o{first.id}-")
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert (rt.settings.outbox / "new").exists() and len(
        list((rt.settings.outbox / "new").iterdir())
    ) >= 3

    deliver(
        rt,
        reply_to(
            rt,
            prompt,
            "Bea Boss <boss@acme.test>",
            "1. Shipped the onboarding docs.\n2. Waiting on legal.\n"
            "Rating: 4\nAction: Ana to draft the plan by Friday\n",
        ),
        "reply-1",
    )
    with rt.factory() as session:
        (record,) = session.scalars(select(ConversationRecord))
        assert record.subject_id == first.id and record.version == 1
        assert record.rating == 4
        assert record.answers["1"].startswith("Shipped the onboarding docs")
        (item,) = session.scalars(select(ActionItem))
        assert "draft the plan" in item.text and item.due_on == dt.date(2026, 3, 6) + dt.timedelta(
            days=7 * ((first.start_at.date() - dt.date(2026, 3, 2)).days // 7)
        )
        source = session.get(InboundMessage, record.source_message_id)
        assert source.state == "recorded" and source.raw.startswith(b"From: Bea Boss")
        assert session.get(Occurrence, first.id).documented_at is not None
    (confirmation,) = outbox(rt, "confirmation")
    assert confirmation.recipients == ["boss@acme.test"]

    # Documented: the ladder stops. Ten business days later there is still no reminder.
    advance_until(rt, clock, first.end_at + dt.timedelta(days=14))
    with rt.factory() as session:
        steps = session.scalars(select(Escalation).where(Escalation.subject_id == first.id))
        assert list(steps) == []


def test_an_answer_sent_again_adds_a_version(rt, org, clock):
    first = occurrences(rt, "kai@acme.test")[0]
    advance_until(rt, clock, first.end_at + dt.timedelta(hours=2))
    (prompt,) = [m for m in outbox(rt, "followup") if m.occurrence_id == first.id]
    deliver(rt, reply_to(rt, prompt, "boss@acme.test", "1. Good week.\n"), "a")
    deliver(rt, reply_to(rt, prompt, "boss@acme.test", "1. Good week, and the demo landed.\n"), "b")
    with rt.factory() as session:
        records = list(
            session.scalars(select(ConversationRecord).order_by(ConversationRecord.version))
        )
    assert [r.version for r in records] == [1, 2]
    assert records[0].answers["1"] == "Good week."  # the first version is kept as it was


def test_replying_to_the_confirmation_corrects_the_record_as_a_new_version(rt, org, clock):
    first = occurrences(rt, "kai@acme.test")[0]
    advance_until(rt, clock, first.end_at + dt.timedelta(hours=2))
    (prompt,) = [m for m in outbox(rt, "followup") if m.occurrence_id == first.id]
    deliver(rt, reply_to(rt, prompt, "boss@acme.test", "1. Good week.\n4. 3\n"), "a")
    (confirmation,) = outbox(rt, "confirmation")
    deliver(rt, reply_to(rt, confirmation, "boss@acme.test", "1. Good week.\n4. 4\n"), "b")
    with rt.factory() as session:
        records = list(
            session.scalars(select(ConversationRecord).order_by(ConversationRecord.version))
        )
    assert [(r.subject_id, r.version, r.rating) for r in records] == [
        (first.id, 1, 3),
        (first.id, 2, 4),
    ]


def test_undocumented_checkin_reminds_then_escalates_once(rt, org, clock):
    first = occurrences(rt, "ana@acme.test")[0]
    advance_until(rt, clock, first.end_at + dt.timedelta(days=16))
    with rt.factory() as session:
        steps = list(
            session.scalars(
                select(Escalation)
                .where(Escalation.subject_kind == "occurrence", Escalation.subject_id == first.id)
                .order_by(Escalation.step)
            )
        )
    assert [(s.step, s.action) for s in steps] == [(0, "remind"), (1, "escalate")]
    # 3 and 7 business days after the meeting, in the manager's zone (New York, which
    # changes to summer time in between), skipping the weekend.
    from zoneinfo import ZoneInfo

    new_york = ZoneInfo("America/New_York")
    end_local = first.end_at.astimezone(new_york)
    due = [(end_local.replace(day=end_local.day + days)).astimezone(dt.UTC) for days in (3, 9)]
    assert due[0] <= steps[0].created_at < due[0] + dt.timedelta(hours=1)
    assert due[1] <= steps[1].created_at < due[1] + dt.timedelta(hours=1)
    reminders = [m for m in outbox(rt, "remind") if m.occurrence_id == first.id]
    escalations = [m for m in outbox(rt, "escalate") if m.occurrence_id == first.id]
    assert [m.recipients for m in reminders] == [["boss@acme.test"]]
    assert [m.recipients for m in escalations] == [["hr@acme.test"]]
    # The reminder sits in the prompt's thread.
    prompt = next(m for m in outbox(rt, "followup") if m.occurrence_id == first.id)
    assert f"In-Reply-To: {prompt.message_id}".encode() in reminders[0].raw


def test_stranger_and_forged_token_are_quarantined_and_create_nothing(rt, org, clock):
    first = occurrences(rt, "ana@acme.test")[0]
    advance_until(rt, clock, first.end_at + dt.timedelta(hours=2))
    (prompt,) = [m for m in outbox(rt, "followup") if m.occurrence_id == first.id]
    deliver(rt, reply_to(rt, prompt, "mallory@evil.test", "1. Ana is doing badly.\n"), "s")
    reply_address = email.message_from_bytes(prompt.raw, policy=email.policy.default)["Reply-To"]
    forged = str(reply_address).replace(f"-o{first.id}-", f"-o{first.id + 1}-")
    deliver(rt, reply_to(rt, prompt, "boss@acme.test", "1. Forged.\n", to=forged), "f")
    deliver(rt, b"\x00\xff garbage that is not an email at all", "g")
    with rt.factory() as session:
        inbound = list(session.scalars(select(InboundMessage).order_by(InboundMessage.id)))
        assert session.scalar(select(func.count()).select_from(ConversationRecord)) == 0
    reasons = [m.quarantine_reason for m in inbound]
    assert [m.state for m in inbound] == ["quarantined"] * 3
    assert "not a participant" in reasons[0]
    assert "forged" in reasons[1]
    assert reasons[2]
    assert inbound[2].raw == b"\x00\xff garbage that is not an email at all"


def test_tick_and_tasks_are_idempotent(rt, org, clock):
    first = occurrences(rt, "ana@acme.test")[0]
    advance_until(rt, clock, first.end_at + dt.timedelta(hours=2))
    files_before = sorted(p.name for p in (rt.settings.outbox / "new").iterdir())
    with rt.factory() as session:
        done = list(session.scalars(select(Task.id).where(Task.state == TaskState.DONE)))
    from automation.services.tasks import run_task

    assert {run_task(rt, task_id) for task_id in done} == {"not-claimed"}
    sent = []
    rt.enqueue = sent.append
    tick(rt)
    tick(rt)
    assert sent == []  # nothing was due, nothing was enqueued
    run_due(rt)
    assert sorted(p.name for p in (rt.settings.outbox / "new").iterdir()) == files_before
    with rt.factory() as session:
        keys = session.scalars(select(OutboundMessage.idempotency_key)).all()
    assert len(keys) == len(set(keys))


def test_crash_after_send_before_record_does_not_send_twice(rt, org, clock):
    """The provider accepted the message, then the worker died before marking it sent."""
    first = occurrences(rt, "ana@acme.test")[0]
    advance_until(rt, clock, first.start_at - dt.timedelta(hours=25))
    original_send = rt.sender.send
    calls = []

    def send_then_die(mail):
        original_send(mail)
        calls.append(mail.message_id)
        raise SystemExit("worker killed")  # not an Exception: nothing records the outcome

    rt.sender.send = send_then_die
    with pytest.raises(SystemExit):
        advance_until(rt, clock, first.start_at - dt.timedelta(hours=23))
    rt.sender.send = original_send
    files = len(list((rt.settings.outbox / "new").iterdir()))
    # The lease runs out; the task is claimed again and finds the earlier attempt.
    advance_until(rt, clock, clock.now() + dt.timedelta(seconds=rt.settings.lease_seconds + 60))
    with rt.factory() as session:
        message = session.scalar(
            select(OutboundMessage).where(OutboundMessage.message_id == calls[0])
        )
        task = session.scalar(select(Task).where(Task.key == f"send:{message.id}"))
    assert message.state == "sent" and task.result == "found-earlier-attempt"
    assert task.attempts == 2
    assert len(list((rt.settings.outbox / "new").iterdir())) >= files
    names = [p.name for p in (rt.settings.outbox / "new").iterdir()]
    assert len(names) == len(set(names))


def test_audit_log_is_hash_chained_and_append_only(rt, org):
    with rt.factory() as session:
        assert audit.verify_chain(session, org) == (True, None)
        count = session.scalar(select(func.count()).select_from(AuditEntry))
        assert count > 5
    from sqlalchemy.exc import DatabaseError

    with pytest.raises(DatabaseError, match="append-only"), rt.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE audit_log SET actor = 'someone else' WHERE seq = 2")
    with pytest.raises(DatabaseError, match="append-only"), rt.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_log WHERE seq = 2")


def test_pip_review_escalates_to_the_hr_partner(rt, org, clock):
    from automation.config import PipPlan
    from automation.domain.cadence import LadderStep
    from automation.services.escalation import start_pip

    plan = PipPlan(
        "ana@acme.test",
        "30-day plan",
        0,
        30,
        (("Week 1 review", 7),),
        (LadderStep(1, "manager", "reminder"), LadderStep(3, "hr_partner", "escalation")),
    )
    with transaction(rt.factory) as session:
        start_pip(rt, session, org, plan, clock.now())
    advance_until(rt, clock, clock.now() + dt.timedelta(days=14))
    prompts = outbox(rt, "pip_review")
    assert [m.recipients for m in prompts] == [["boss@acme.test"]]
    with rt.factory() as session:
        steps = list(
            session.scalars(
                select(Escalation)
                .where(Escalation.subject_kind == "pip_review")
                .order_by(Escalation.step)
            )
        )
    assert [s.action for s in steps] == ["remind", "escalate"]
    assert [m.recipients for m in outbox(rt, "escalate") if m.pip_review_id] == [["hr@acme.test"]]


def test_a_person_who_leaves_has_their_series_cancelled(rt, org, clock, tmp_path):
    advance_until(rt, clock, clock.now() + dt.timedelta(hours=2))

    def kai_agendas() -> int:
        return len([m for m in outbox(rt, "agenda") if "kai@acme.test" in m.recipients])

    before = kai_agendas()
    left = tmp_path / "left.csv"
    left.write_text(
        PEOPLE.replace(
            "kai@acme.test,Kai Tanaka,Asia/Tokyo,boss@acme.test,hr@acme.test",
            "kai@acme.test,Kai Tanaka,Asia/Tokyo,boss@acme.test,hr@acme.test,false",
        ).replace("hr_partner_email", "hr_partner_email,active")
    )
    with transaction(rt.factory) as session:
        import_people_file(session, org, left, rt.now())
        from automation.services.planning import plan

        plan(rt, session, org)
    advance_until(rt, clock, clock.now() + dt.timedelta(days=21))
    left_at = clock.now() - dt.timedelta(days=21)
    later = [o for o in occurrences(rt, "kai@acme.test") if o.start_at > left_at]
    assert later and all(o.state == "cancelled" for o in later)
    assert kai_agendas() == before  # no agenda for a cancelled meeting
    cal = icalendar.Calendar.from_ical((rt.settings.calendars / "kai@acme.test.ics").read_bytes())
    (event,) = cal.walk("VEVENT")
    assert str(event["status"]) == "CANCELLED" and int(event["sequence"]) == 1


def test_a_reply_piped_by_the_mta_is_recorded(rt, org, clock, settings):
    """`automation ingest-mail` in its own process, on the same database, as Postfix runs it."""
    import os
    import subprocess
    import sys

    first = occurrences(rt, "ana@acme.test")[0]
    advance_until(rt, clock, first.end_at + dt.timedelta(hours=2))
    (prompt,) = [m for m in outbox(rt, "followup") if m.occurrence_id == first.id]
    raw = reply_to(rt, prompt, "Bea Boss <boss@acme.test>", "1. Piped in.\nRating: 5\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATION_")}
    env.update(
        {
            "AUTOMATION_DATABASE_URL": settings.database_url,
            "AUTOMATION_DATA_DIR": str(settings.data_dir),
            "AUTOMATION_ORGANIZATION": settings.organization,
            "AUTOMATION_SECRET_KEY": settings.secret_key,
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "automation.cli", "ingest-mail"],
        input=raw,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert b"recorded v1" in result.stdout
    with rt.factory() as session:
        (record,) = session.scalars(select(ConversationRecord))
        source = session.get(InboundMessage, record.source_message_id)
    assert record.rating == 5 and source.source == "pipe" and source.raw == raw


def test_twenty_workers_dying_after_the_maildir_took_a_message_send_each_once(rt, clock, tmp_path):
    """The embedded transport under the same 20 deaths as the SMTP, Gmail and Graph ones."""
    import random

    from tests.test_smtp import KILLS, TEAM

    rng = random.Random(7)
    original, killed, dying = rt.sender.send, [], [False]

    def send_then_maybe_die(mail):
        sent = original(mail)
        if dying[0] and len(killed) < KILLS and rng.random() < 0.3:
            killed.append(mail.message_id)
            raise SystemExit("worker killed after the Maildir took the message")
        return sent

    rt.sender.send = send_then_maybe_die
    start_organization(rt, tmp_path, TEAM)
    dying[0] = True
    end = clock.now() + dt.timedelta(weeks=3)
    while clock.now() < end:
        clock.advance(dt.timedelta(hours=1))
        while True:
            try:
                run_due(rt)
                break
            except SystemExit:
                pass
    dying[0] = False
    clock.advance(dt.timedelta(seconds=rt.settings.lease_seconds + 60))
    run_due(rt)
    with rt.factory() as session:
        rows = list(session.scalars(select(OutboundMessage)))
    files = list((rt.settings.outbox / "new").iterdir())
    assert len(killed) == KILLS and len(rows) >= 3 * KILLS
    assert [r.message_id for r in rows if r.state != "sent"] == []  # 0 lost
    delivered = [email.message_from_bytes(f.read_bytes())["Message-ID"] for f in files]
    assert sorted(delivered) == sorted(r.message_id for r in rows)  # 0 duplicates
