"""Reassigning who documents a check-in or a PIP review, acknowledging its escalation, and the
overdue queue, at the service level, through the real ladder and the real inbound path."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import email.utils
from email.message import EmailMessage
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, inspect, select

from automation.clock import SimulatedClock
from automation.db import make_engine, migrate, transaction
from automation.domain.cadence import LadderStep
from automation.models import (
    Acknowledgement,
    AuditEntry,
    Base,
    CheckinSeries,
    ConversationRecord,
    Escalation,
    InboundMessage,
    Occurrence,
    OutboundMessage,
    Person,
    PipReview,
    Reassignment,
)
from automation.models import Cadence as CadenceRow
from automation.runtime import Runtime
from automation.services import escalation
from automation.services.escalation import QueueError
from automation.services.loop import run_due
from tests.conftest import advance_until, start_organization
from tests.console_support import PEOPLE


@pytest.fixture
def org(rt: Runtime, tmp_path: Path) -> int:
    return start_organization(rt, tmp_path, PEOPLE)


def advance(rt: Runtime, clock: SimulatedClock, until: dt.datetime, step_hours: int = 3) -> None:
    """Move the clock in steps, running what falls due at each, as the tick would."""
    advance_until(rt, clock, until, dt.timedelta(hours=step_hours))


def person(rt: Runtime, org: int, address: str) -> Person:
    with rt.factory() as session:
        found = session.scalar(
            select(Person).where(Person.organization_id == org, Person.email == address)
        )
        assert found is not None
        return found


def first_checkin(rt: Runtime, employee: str) -> Occurrence:
    with rt.factory() as session:
        return session.scalars(
            select(Occurrence)
            .join(CheckinSeries, CheckinSeries.id == Occurrence.series_id)
            .join(Person, Person.id == CheckinSeries.employee_id)
            .where(Person.email == employee)
            .order_by(Occurrence.start_at)
        ).first()  # type: ignore[return-value]


def outbox(rt: Runtime, occurrence_id: int) -> list[OutboundMessage]:
    with rt.factory() as session:
        return list(
            session.scalars(
                select(OutboundMessage)
                .where(OutboundMessage.occurrence_id == occurrence_id)
                .order_by(OutboundMessage.id)
            )
        )


def steps(rt: Runtime, occurrence_id: int) -> list[tuple[int, str, str]]:
    with rt.factory() as session:
        rows = session.execute(
            select(Escalation.step, Escalation.action, Person.email)
            .join(Person, Person.id == Escalation.recipient_id)
            .where(Escalation.subject_kind == "occurrence", Escalation.subject_id == occurrence_id)
            .order_by(Escalation.step)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def audits(rt: Runtime, action: str) -> list[AuditEntry]:
    with rt.factory() as session:
        return list(
            session.scalars(
                select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)
            )
        )


def reply(rt: Runtime, prompt: OutboundMessage, sender: str, body: str) -> bytes:
    original = email.message_from_bytes(prompt.raw, policy=email.policy.default)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = str(original["Reply-To"])
    msg["Subject"] = "Re: " + str(original["Subject"])
    msg["Date"] = email.utils.format_datetime(rt.now())
    msg["Message-ID"] = email.utils.make_msgid(domain="client.test")
    msg["In-Reply-To"] = prompt.message_id
    msg.set_content(body)
    return msg.as_bytes()


def deliver(rt: Runtime, raw: bytes, name: str) -> InboundMessage:
    rt.inbox.deliver(raw, name)
    run_due(rt)
    with rt.factory() as session:
        found = session.scalars(select(InboundMessage).order_by(InboundMessage.id.desc())).first()
        assert found is not None
        return found


def reassign(rt: Runtime, org: int, occ: Occurrence, to: str, reason: str = "") -> Reassignment:
    with transaction(rt.factory) as session:
        return escalation.reassign(
            rt, session, org, "occurrence", occ.id, person(rt, org, to).id,
            actor="console:hr@acme.test", reason=reason,
        )  # fmt: skip


def test_reassigning_sends_the_prompt_and_the_next_steps_to_the_new_person(
    rt: Runtime, org: int, clock: SimulatedClock
) -> None:
    occ = first_checkin(rt, "ana@acme.test")
    advance(rt, clock, occ.end_at + dt.timedelta(hours=2))
    (followup,) = [m for m in outbox(rt, occ.id) if m.kind == "followup"]
    assert followup.recipients == ["boss@acme.test"]

    row = reassign(rt, org, occ, "ceo@acme.test", reason="Bea is on leave")

    prompt = [m for m in outbox(rt, occ.id) if m.idempotency_key.startswith("reassigned:")]
    assert [m.recipients for m in prompt] == [["ceo@acme.test"]]
    parsed = email.message_from_bytes(prompt[0].raw, policy=email.policy.default)
    # The reply address documents this check-in, like the manager's prompt's.
    assert str(parsed["Reply-To"]).startswith(f"checkin+{org}-o{occ.id}-")
    (entry,) = audits(rt, "escalation.reassigned")
    assert entry.actor == "console:hr@acme.test"
    assert entry.subject_kind == "occurrence" and entry.subject_id == occ.id
    assert entry.data == {
        "reassignment_id": row.id,
        "from": "boss@acme.test",
        "to": "ceo@acme.test",
        "reason": "Bea is on leave",
    }
    with rt.factory() as session:
        subject = escalation.load_subject(session, org, "occurrence", occ.id)
        assert subject is not None and subject.responsible.email == "ceo@acme.test"
        assert subject.label.startswith("Bea Boss's check-in with Ana Souza")

    advance(rt, clock, occ.end_at + dt.timedelta(days=16))
    # The reminder goes to the new documenter, not the manager; the HR partner is told as before.
    assert steps(rt, occ.id) == [(0, "remind", "ceo@acme.test"), (1, "escalate", "hr@acme.test")]
    (reminder,) = [m for m in outbox(rt, occ.id) if m.kind == "remind"]
    assert f"In-Reply-To: {prompt[0].message_id}".encode() in reminder.raw  # in their thread
    text = email.message_from_bytes(reminder.raw, policy=email.policy.default)
    assert "Bea Boss's check-in with Ana Souza" in text.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    (escalated,) = [m for m in outbox(rt, occ.id) if m.kind == "escalate"]
    body = email.message_from_bytes(escalated.raw, policy=email.policy.default)
    assert "Cleo Chief documents it" in body.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_a_reply_from_the_new_documenter_documents_the_checkin(
    rt: Runtime, org: int, clock: SimulatedClock
) -> None:
    occ = first_checkin(rt, "ana@acme.test")
    advance(rt, clock, occ.end_at + dt.timedelta(hours=2))
    reassign(rt, org, occ, "ceo@acme.test")
    (prompt,) = [m for m in outbox(rt, occ.id) if m.idempotency_key.startswith("reassigned:")]

    stranger = deliver(rt, reply(rt, prompt, "Max Other <max@acme.test>", "1. Fine.\n"), "max")
    assert stranger.state == "quarantined"
    assert "not a participant" in (stranger.quarantine_reason or "")
    outsider = deliver(rt, reply(rt, prompt, "mallory@evil.test", "1. Fine.\n"), "mallory")
    assert outsider.state == "quarantined"
    assert first_checkin(rt, "ana@acme.test").documented_at is None

    recorded = deliver(
        rt, reply(rt, prompt, "Cleo Chief <ceo@acme.test>", "1. Covered for Bea.\nRating: 4\n"), "c"
    )
    assert recorded.state == "recorded"
    assert first_checkin(rt, "ana@acme.test").documented_at is not None
    with rt.factory() as session:
        (record,) = session.scalars(
            select(ConversationRecord).where(ConversationRecord.subject_id == occ.id)
        ).all()
        author = session.get(Person, record.author_id)
        assert author is not None and author.email == "ceo@acme.test"
        assert record.rating == 4
    # Documented: the ladder stops, no reminder goes to anyone.
    advance(rt, clock, occ.end_at + dt.timedelta(days=16))
    assert steps(rt, occ.id) == []


def test_reassigning_to_the_hr_partner_skips_telling_them_about_their_own_work(
    rt: Runtime, org: int, clock: SimulatedClock
) -> None:
    occ = first_checkin(rt, "ana@acme.test")
    advance(rt, clock, occ.end_at + dt.timedelta(hours=2))
    reassign(rt, org, occ, "hr@acme.test")
    advance(rt, clock, occ.end_at + dt.timedelta(days=16))
    assert steps(rt, occ.id) == [(0, "remind", "hr@acme.test")]
    (skipped,) = audits(rt, "escalation.skipped")
    assert skipped.data["reason"] == "the hr_partner is the documenter, reminded by the other steps"


def test_the_latest_reassignment_wins_and_back_to_the_manager_is_the_plain_prompt(
    rt: Runtime, org: int, clock: SimulatedClock
) -> None:
    occ = first_checkin(rt, "ana@acme.test")
    advance(rt, clock, occ.end_at + dt.timedelta(hours=2))
    reassign(rt, org, occ, "ceo@acme.test")
    reassign(rt, org, occ, "hr@acme.test")
    with rt.factory() as session:
        subject = escalation.load_subject(session, org, "occurrence", occ.id)
        assert subject is not None and subject.responsible.email == "hr@acme.test"
    reassign(rt, org, occ, "boss@acme.test", reason="back from leave")
    with rt.factory() as session:
        subject = escalation.load_subject(session, org, "occurrence", occ.id)
        assert subject is not None and subject.documenter is None
        assert subject.prompt_key == f"followup:occurrence:{occ.id}"
        assert session.query(Reassignment).count() == 3  # appended, never changed
    assert [e.data["to"] for e in audits(rt, "escalation.reassigned")] == [
        "ceo@acme.test",
        "hr@acme.test",
        "boss@acme.test",
    ]


def test_who_cannot_be_chosen_and_what_cannot_be_reassigned(
    rt: Runtime, org: int, clock: SimulatedClock
) -> None:
    occ = first_checkin(rt, "ana@acme.test")
    advance(rt, clock, occ.end_at + dt.timedelta(hours=2))
    with transaction(rt.factory) as session:
        gone = session.scalar(select(Person).where(Person.email == "max@acme.test"))
        assert gone is not None
        gone.active = False
    for target, message in (
        ("ana@acme.test", "employee"),
        ("boss@acme.test", "documents it already"),
        ("max@acme.test", "active person"),
    ):
        with pytest.raises(QueueError, match=message):
            reassign(rt, org, occ, target)
    ceo_id = person(rt, org, "ceo@acme.test").id
    with (
        pytest.raises(QueueError, match="Only check-ins and PIP reviews"),
        transaction(rt.factory) as session,
    ):
        escalation.reassign(rt, session, org, "acknowledgement", 1, ceo_id, actor="t")
    with pytest.raises(QueueError, match="No such PIP review"), transaction(rt.factory) as session:
        escalation.reassign(rt, session, org, "pip_review", 999999, ceo_id, actor="t")
    with transaction(rt.factory) as session:
        session.get(Occurrence, occ.id).documented_at = rt.now()  # type: ignore[union-attr]
    with pytest.raises(QueueError, match="documented already"):
        reassign(rt, org, occ, "ceo@acme.test")
    assert audits(rt, "escalation.reassigned") == []


def test_acknowledging_closes_the_steps_requests_but_the_ladder_runs_on(
    rt: Runtime, org: int, clock: SimulatedClock
) -> None:
    # A third step (the manager's manager, after 10 business days), to see it still go out.
    with transaction(rt.factory) as session:
        for cadence in session.scalars(select(CadenceRow)):
            definition = dict(cadence.definition)
            definition["ladder"] = [
                *definition["ladder"],
                {"after_business_days": 10, "notify": "managers_manager", "template": "escalation"},
            ]
            cadence.definition = definition
    occ = first_checkin(rt, "ana@acme.test")
    advance(rt, clock, occ.end_at + dt.timedelta(days=12))
    assert [s[:2] for s in steps(rt, occ.id)] == [(0, "remind"), (1, "escalate")]
    with transaction(rt.factory) as session:
        queue = escalation.overdue_queue(session, org, rt.now())
        item = next(i for i in queue.items if i.kind == "occurrence" and i.id == occ.id)
        assert [a.person.email for a in item.open_acknowledgements] == ["hr@acme.test"]
        assert item.next_step is not None and item.next_step.step == 2
        assert item.next_step.to is not None and item.next_step.to.email == "ceo@acme.test"
        closed = escalation.acknowledge_escalation(
            rt, session, org, "occurrence", occ.id, actor="console:hr@acme.test", note="On it."
        )
    assert len(closed) == 1
    with rt.factory() as session:
        ack = session.get(Acknowledgement, closed[0].id)
        assert ack is not None and ack.acknowledged_at == rt.now() and ack.comment == "On it."
    (entry,) = audits(rt, "escalation.acknowledged")
    assert entry.actor == "console:hr@acme.test" and entry.subject_id == occ.id
    assert entry.data["steps"] == [1] and entry.data["note"] is True
    # A second time there is nothing open; nothing more is written.
    with transaction(rt.factory) as session:
        assert (
            escalation.acknowledge_escalation(
                rt, session, org, "occurrence", occ.id, actor="console:hr@acme.test"
            )
            == []
        )
    assert len(audits(rt, "escalation.acknowledged")) == 1
    # Not documented: the next step still goes out.
    assert first_checkin(rt, "ana@acme.test").documented_at is None
    advance(rt, clock, occ.end_at + dt.timedelta(days=18))
    assert steps(rt, occ.id)[2] == (2, "escalate", "ceo@acme.test")


def test_the_queue_lists_overdue_checkins_most_overdue_first_for_whom_one_may_see(
    rt: Runtime, org: int, clock: SimulatedClock
) -> None:
    ana = first_checkin(rt, "ana@acme.test")
    advance(rt, clock, ana.end_at + dt.timedelta(days=10))
    boss, ana_id = person(rt, org, "boss@acme.test"), person(rt, org, "ana@acme.test").id
    kai_id = person(rt, org, "kai@acme.test").id
    with rt.factory() as session:
        everyone = escalation.overdue_queue(session, org, rt.now())
        chain = escalation.overdue_queue(session, org, rt.now(), {ana_id, kai_id})
    assert [(i.due_at) for i in everyone.items] == sorted(i.due_at for i in everyone.items)
    assert {i.employee.email for i in everyone.items} >= {"ana@acme.test", "zoe@acme.test"}
    assert {i.employee.email for i in chain.items} == {"ana@acme.test", "kai@acme.test"}
    item = next(i for i in chain.items if i.id == ana.id)
    assert item.kind == "occurrence" and item.responsible.id == boss.id
    assert item.days_overdue == (rt.now() - ana.end_at).days >= 10
    assert [(s.step, s.action, s.to.email) for s in item.sent] == [
        (0, "remind", "boss@acme.test"),
        (1, "escalate", "hr@acme.test"),
    ]
    assert item.next_step is None  # the ladder has two steps, both sent
    assert [a.person.email for a in item.open_acknowledgements] == ["hr@acme.test"]
    # Documented ones leave the queue.
    with transaction(rt.factory) as session:
        session.get(Occurrence, ana.id).documented_at = rt.now()  # type: ignore[union-attr]
    with rt.factory() as session:
        after = escalation.overdue_queue(session, org, rt.now(), {ana_id, kai_id})
    assert ana.id not in {i.id for i in after.items if i.kind == "occurrence"}


def test_the_queue_takes_the_same_few_queries_for_one_item_or_many(
    rt: Runtime, org: int, clock: SimulatedClock
) -> None:
    advance(rt, clock, clock.now() + dt.timedelta(days=24))
    ana_id = person(rt, org, "ana@acme.test").id
    selects: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    event.listen(rt.engine, "before_cursor_execute", count)
    try:
        with rt.factory() as session:
            one = escalation.overdue_queue(session, org, rt.now(), {ana_id}, limit=1)
        few = len(selects)
        selects.clear()
        with rt.factory() as session:
            many = escalation.overdue_queue(session, org, rt.now())
        lots = len(selects)
    finally:
        event.remove(rt.engine, "before_cursor_execute", count)
    assert len(one.items) == 1 and one.more
    assert len(many.items) >= 8
    # One query per table whatever the length (people in two rounds), never one per item.
    assert few <= 11 and lots <= 11, (few, lots)


def test_migration_0013_adds_the_reassignments_table(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine, "0012")
        assert "reassignments" not in inspect(engine).get_table_names()
        migrate(engine, "0013")
        found = inspect(engine)
        assert "reassignments" in found.get_table_names()
        assert {c["name"] for c in found.get_columns("reassignments")} == {
            "id", "organization_id", "subject_kind", "subject_id", "person_id", "by", "reason",
            "created_at",
        }  # fmt: skip
        assert "ix_reassignments_subject" in {i["name"] for i in found.get_indexes("reassignments")}
        migrate(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        # Only this table's differences: other tables are other migrations' business.
        assert [d for d in diff if "reassignments" in repr(d)] == []
    finally:
        engine.dispose()


def test_the_queue_lists_pip_milestones_and_unanswered_acknowledgement_requests(
    rt: Runtime, org: int, clock: SimulatedClock, tmp_path: Path
) -> None:
    from tests.test_pip_reviews import start

    start(rt, org, tmp_path, reviewer="hr_partner")
    advance(rt, clock, clock.now() + dt.timedelta(days=10), step_hours=6)
    ana_id = person(rt, org, "ana@acme.test").id
    zoe_id = person(rt, org, "zoe@acme.test").id
    with rt.factory() as session:
        queue = escalation.overdue_queue(session, org, rt.now(), {ana_id})
        elsewhere = escalation.overdue_queue(session, org, rt.now(), {zoe_id})
    kinds = {i.kind for i in queue.items}
    assert kinds == {"occurrence", "pip_review", "acknowledgement"}
    (request,) = [i for i in queue.items if i.kind == "acknowledgement"]
    assert request.what.startswith("Acknowledgement of the 30-day performance improvement plan")
    assert (
        request.responsible.email == "ana@acme.test" and request.manager.email == "boss@acme.test"
    )
    assert request.days_overdue >= 1 and not request.reassignable
    checkins = [i for i in queue.items if i.kind == "pip_review"]
    assert checkins and all(i.what.startswith("PIP check-in") for i in checkins)
    # The weekly PIP check-ins are the manager's even when the reviews are the HR partner's.
    assert {i.responsible.email for i in checkins} == {"boss@acme.test"}
    assert all(i.sent for i in checkins)
    assert not {i.kind for i in elsewhere.items} & {"pip_review", "acknowledgement"}


# --- PIP reviews ----------------------------------------------------------------------------

# Remind the reviewer at the due time and two business days later, then tell the HR partner:
# the second reminder is the "next ladder step" of a review reassigned once it is overdue.
PIP_LADDER = (
    LadderStep(0, "manager", "reminder"),
    LadderStep(2, "manager", "reminder"),
    LadderStep(4, "hr_partner", "escalation"),
)


def reassign_review(
    rt: Runtime, org: int, review_id: int, to: str, reason: str = ""
) -> Reassignment:
    with transaction(rt.factory) as session:
        return escalation.reassign(
            rt, session, org, "pip_review", review_id, person(rt, org, to).id,
            actor="console:hr@acme.test", reason=reason,
        )  # fmt: skip


def review_outbox(rt: Runtime, review_id: int) -> list[OutboundMessage]:
    with rt.factory() as session:
        return list(
            session.scalars(
                select(OutboundMessage)
                .where(OutboundMessage.pip_review_id == review_id)
                .order_by(OutboundMessage.id)
            )
        )


def review_steps(rt: Runtime, review_id: int) -> list[tuple[int, str]]:
    with rt.factory() as session:
        rows = session.execute(
            select(Escalation.step, Person.email)
            .join(Person, Person.id == Escalation.recipient_id)
            .where(Escalation.subject_kind == "pip_review", Escalation.subject_id == review_id)
            .order_by(Escalation.step)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def plain(message: OutboundMessage) -> str:
    parsed = email.message_from_bytes(message.raw, policy=email.policy.default)
    return " ".join(parsed.get_body(("plain",)).get_content().split())  # type: ignore[union-attr]


def test_an_overdue_pip_review_reassigned_is_prompted_reminded_and_documented_by_the_new_person(
    rt: Runtime, org: int, clock: SimulatedClock, tmp_path: Path
) -> None:
    from tests.test_pip_reviews import ALL_ANSWERS, start
    from tests.test_pips import milestones

    pip_id = start(rt, org, tmp_path, ladder=PIP_LADDER)
    review = milestones(rt, pip_id, "review")[0]
    advance(rt, clock, review.due_at + dt.timedelta(hours=2))
    (original,) = [m for m in review_outbox(rt, review.id) if m.kind == "pip_review"]
    assert original.recipients == ["boss@acme.test"]
    assert review_steps(rt, review.id) == [(0, "boss@acme.test")]

    row = reassign_review(rt, org, review.id, "ceo@acme.test", reason="Bea is on sick leave")

    # The new reviewer gets the review email at once: its questions, the reply address that
    # documents the review (the same as the manager's), worded for someone not the manager.
    (prompt,) = [m for m in review_outbox(rt, review.id) if m.idempotency_key.startswith("re")]
    assert prompt.idempotency_key == f"reassigned:pip_review:{review.id}:{row.id}"
    assert prompt.kind == "pip_review" and prompt.recipients == ["ceo@acme.test"]
    headers = email.message_from_bytes(prompt.raw, policy=email.policy.default)
    first = email.message_from_bytes(original.raw, policy=email.policy.default)
    assert str(headers["Reply-To"]) == str(first["Reply-To"])
    text = plain(prompt)
    assert text.startswith("Hi Cleo Chief,") and "Day 15 review of Ana Souza's" in text
    assert "1. Goals and their measurable success criteria (still as agreed?)" in text
    assert "4. Outcome of this review (on track / at risk / not met)" in text
    assert "share the agreed actions with Ana Souza and Bea Boss" in text
    (entry,) = audits(rt, "escalation.reassigned")
    assert entry.subject_kind == "pip_review" and entry.subject_id == review.id
    assert entry.data == {
        "reassignment_id": row.id,
        "from": "boss@acme.test",
        "to": "ceo@acme.test",
        "reason": "Bea is on sick leave",
    }
    with rt.factory() as session:
        subject = escalation.load_subject(session, org, "pip_review", review.id)
        assert subject is not None and subject.responsible.email == "ceo@acme.test"
        assert subject.prompt_key == prompt.idempotency_key
        (item,) = [
            i
            for i in escalation.overdue_queue(session, org, rt.now()).items
            if i.kind == "pip_review" and i.id == review.id
        ]
        assert item.reassignable and item.reassigned
        assert item.responsible.email == "ceo@acme.test"
        assert item.next_step is not None and item.next_step.to is not None
        assert (item.next_step.step, item.next_step.to.email) == (1, "ceo@acme.test")

    # The next ladder step reminds the new reviewer, in their thread, with the reply address
    # that documents the review.
    advance(rt, clock, review.due_at + dt.timedelta(days=3))
    assert review_steps(rt, review.id) == [(0, "boss@acme.test"), (1, "ceo@acme.test")]
    reminder = [m for m in review_outbox(rt, review.id) if m.kind == "remind"][-1]
    assert reminder.recipients == ["ceo@acme.test"]
    parsed = email.message_from_bytes(reminder.raw, policy=email.policy.default)
    assert str(parsed["In-Reply-To"]) == prompt.message_id
    assert str(parsed["Reply-To"]) == str(headers["Reply-To"])

    # Someone unrelated is still refused; nothing is documented by them.
    stranger = deliver(rt, reply(rt, prompt, "Max Other <max@acme.test>", ALL_ANSWERS), "max")
    assert stranger.state == "quarantined"
    assert "not a participant of this PIP review" in (stranger.quarantine_reason or "")
    with rt.factory() as session:
        assert session.get(PipReview, review.id).documented_at is None  # type: ignore[union-attr]

    recorded = deliver(rt, reply(rt, prompt, "Cleo Chief <ceo@acme.test>", ALL_ANSWERS), "ceo")
    assert recorded.state == "recorded"
    with rt.factory() as session:
        done = session.get(PipReview, review.id)
        assert done is not None and done.documented_at is not None
        (record,) = session.scalars(
            select(ConversationRecord).where(
                ConversationRecord.subject_kind == "pip_review",
                ConversationRecord.subject_id == review.id,
            )
        ).all()
        author = session.get(Person, record.author_id)
        assert author is not None and author.email == "ceo@acme.test"
        assert len(record.answers) == 4
        queue = escalation.overdue_queue(session, org, rt.now())
        assert review.id not in {i.id for i in queue.items if i.kind == "pip_review"}
    # Documented: the ladder stops (the HR partner's step never goes out).
    advance(rt, clock, review.due_at + dt.timedelta(days=10))
    assert review_steps(rt, review.id) == [(0, "boss@acme.test"), (1, "ceo@acme.test")]


def test_a_pip_review_reassigned_to_someone_who_leaves_goes_back_to_its_reviewer(
    rt: Runtime, org: int, tmp_path: Path
) -> None:
    from tests.test_pip_reviews import start
    from tests.test_pips import milestones

    pip_id = start(rt, org, tmp_path, reviewer="hr_partner")
    review = milestones(rt, pip_id, "review")[0]
    checkin = milestones(rt, pip_id, "checkin")[0]
    with pytest.raises(QueueError, match="Hal Hr documents it already"):
        reassign_review(rt, org, review.id, "hr@acme.test")
    with pytest.raises(QueueError, match="cannot document their own PIP review"):
        reassign_review(rt, org, review.id, "ana@acme.test")
    # An HR partner's review to the manager: they document it now. A weekly check-in (the
    # manager's) can move too.
    reassign_review(rt, org, review.id, "boss@acme.test")
    moved = reassign_review(rt, org, checkin.id, "ceo@acme.test")
    with rt.factory() as session:
        subject = escalation.load_subject(session, org, "pip_review", review.id)
        assert subject is not None and subject.documenter is None
        assert subject.responsible.email == "boss@acme.test"
        subject = escalation.load_subject(session, org, "pip_review", checkin.id)
        assert subject is not None and subject.responsible.email == "ceo@acme.test"
        assert subject.prompt_key == f"reassigned:pip_review:{checkin.id}:{moved.id}"
    # Cleo leaves: the check-in is the manager's again rather than nobody's.
    with transaction(rt.factory) as session:
        session.get(Person, moved.person_id).active = False  # type: ignore[union-attr]
    with rt.factory() as session:
        subject = escalation.load_subject(session, org, "pip_review", checkin.id)
        assert subject is not None and subject.responsible.email == "boss@acme.test"
        assert subject.prompt_key == f"pip_review:{checkin.id}"
    with transaction(rt.factory) as session:
        session.get(PipReview, review.id).documented_at = rt.now()  # type: ignore[union-attr]
    with pytest.raises(QueueError, match="documented already, or its PIP is closed"):
        reassign_review(rt, org, review.id, "ceo@acme.test")
