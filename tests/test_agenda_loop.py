"""Agendas in the loop, through real emails on SQLite and PostgreSQL: an employee's reply to the
agenda adds a topic (an update in the agenda's thread when the agenda is out), the next agenda
carries open items and topics, a manager's ``#done 1`` closes an item, and coaching prompts reach
the manager's copy only."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from pathlib import Path

import pytest
from sqlalchemy import select

from automation.models import ActionItem, AgendaTopic, InboundMessage, OutboundMessage
from tests.conftest import start_organization
from tests.test_loop import advance_until, deliver, occurrences, outbox, reply_to


@pytest.fixture
def org(rt, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path)


def text_of(message: OutboundMessage) -> str:
    parsed = email.message_from_bytes(message.raw, policy=email.policy.default)
    return parsed.get_body(("plain",)).get_content()


def agendas_of(rt, occurrence_id: int, recipient: str) -> list[OutboundMessage]:  # type: ignore[no-untyped-def]
    return [
        m
        for m in outbox(rt, "agenda")
        if m.occurrence_id == occurrence_id and m.recipients == [recipient]
    ]


def test_topics_updates_carry_over_and_closing_by_number(rt, org, clock):
    first, second = occurrences(rt, "ana@acme.test")[:2]

    # The agenda goes out a day ahead, with a Reply-To that takes topics.
    advance_until(rt, clock, first.start_at - dt.timedelta(hours=2))
    (to_ana,) = agendas_of(rt, first.id, "ana@acme.test")
    headers = email.message_from_bytes(to_ana.raw, policy=email.policy.default)
    assert str(headers["Reply-To"]).startswith(f"checkin+{org}-g{first.id}-")

    # Ana adds a topic before the meeting: recorded, and an update goes to both in the thread.
    deliver(
        rt,
        reply_to(rt, to_ana, "Ana Souza <ana@acme.test>", "+ Conference budget for May\n"),
        "topic-1",
    )
    with rt.factory() as session:
        (topic,) = session.scalars(select(AgendaTopic))
        assert topic.text == "Conference budget for May" and topic.occurrence_id == first.id
        source = session.scalars(select(InboundMessage)).one()
        assert source.state == "recorded" and source.occurrence_id == first.id
    for person in ("ana@acme.test", "boss@acme.test"):
        sent = agendas_of(rt, first.id, person)
        assert len(sent) == 2, person  # the agenda and one update
        agenda, update = sent
        parsed = email.message_from_bytes(update.raw, policy=email.policy.default)
        assert parsed["In-Reply-To"] == agenda.message_id
        assert str(parsed["Subject"]).startswith("Re: ")
        assert "Conference budget for May" in text_of(update)
        assert "Conference budget for May" not in text_of(agenda)

    # The same reply delivered again changes nothing and sends nothing.
    deliver(
        rt,
        reply_to(rt, to_ana, "Ana Souza <ana@acme.test>", "+ Conference budget for May\n"),
        "topic-1-again",
    )
    assert len(agendas_of(rt, first.id, "ana@acme.test")) == 2

    # A stranger's reply to the agenda is quarantined and adds nothing.
    deliver(rt, reply_to(rt, to_ana, "mallory@evil.test", "+ Give Mallory a raise\n"), "evil")
    with rt.factory() as session:
        assert [t.text for t in session.scalars(select(AgendaTopic))] == [topic.text]

    # The manager documents the check-in with two action items.
    advance_until(rt, clock, first.end_at + dt.timedelta(hours=1, minutes=1))
    (prompt,) = [m for m in outbox(rt, "followup") if m.occurrence_id == first.id]
    deliver(
        rt,
        reply_to(
            rt,
            prompt,
            "Bea Boss <boss@acme.test>",
            "1. Good week.\nAction: Ana to draft the hiring plan\n"
            "Action: Bea to book the offsite\n",
        ),
        "record-1",
    )

    # The next agenda carries both items, numbered, to both people.
    advance_until(rt, clock, second.start_at - dt.timedelta(hours=2))
    (boss_next,) = agendas_of(rt, second.id, "boss@acme.test")
    body = text_of(boss_next)
    assert "draft the hiring plan" in body and "book the offsite" in body
    numbered = {
        line.split(" - ", 1)[0].strip(): line for line in body.splitlines() if " - " in line
    }
    assert {"1", "2"} <= set(numbered)
    (ana_next,) = agendas_of(rt, second.id, "ana@acme.test")
    assert "draft the hiring plan" in text_of(ana_next)

    # "#done 1" in the manager's next record closes item 1 of that agenda, not the check-in
    # command's meaning; the other item stays open and is on the agenda after.
    closed_text = "draft the hiring plan" if "hiring" in numbered["1"] else "book the offsite"
    kept_text = (
        "book the offsite" if closed_text == "draft the hiring plan" else "draft the hiring plan"
    )
    advance_until(rt, clock, second.end_at + dt.timedelta(hours=1, minutes=1))
    (prompt2,) = [m for m in outbox(rt, "followup") if m.occurrence_id == second.id]
    deliver(rt, reply_to(rt, prompt2, "boss@acme.test", "1. Fine.\n#done 1\n"), "record-2")
    with rt.factory() as session:
        items = {i.text: i.done for i in session.scalars(select(ActionItem))}
    assert any(closed_text in text and done for text, done in items.items())
    assert any(kept_text in text and not done for text, done in items.items())
    (confirmation,) = [m for m in outbox(rt, "confirmation") if m.occurrence_id == second.id] or [
        None
    ]
    assert confirmation is not None and "closed item 1" in text_of(confirmation)

    third = occurrences(rt, "ana@acme.test")[2]  # planned as the horizon moves on
    advance_until(rt, clock, third.start_at - dt.timedelta(hours=2))
    (boss_third,) = agendas_of(rt, third.id, "boss@acme.test")
    assert kept_text in text_of(boss_third) and closed_text not in text_of(boss_third)


def test_coaching_reaches_the_managers_copy_only(rt, org, clock):
    """Three check-ins in a row skipped: the fourth agenda's manager copy says so, the
    employee's does not."""
    for n in range(3):
        occ = occurrences(rt, "kai@acme.test")[n]
        advance_until(rt, clock, occ.end_at + dt.timedelta(hours=1, minutes=1))
        (prompt,) = [m for m in outbox(rt, "followup") if m.occurrence_id == occ.id]
        deliver(rt, reply_to(rt, prompt, "boss@acme.test", "#skip\n"), f"skip-{occ.id}")
    fourth = occurrences(rt, "kai@acme.test")[3]
    advance_until(rt, clock, fourth.start_at - dt.timedelta(hours=2))
    (boss,) = agendas_of(rt, fourth.id, "boss@acme.test")
    (kai,) = agendas_of(rt, fourth.id, "kai@acme.test")
    assert "skipped" in text_of(boss).lower()
    assert "coaching" in text_of(boss).lower() or "for you" in text_of(boss).lower()
    assert "skipped" not in text_of(kai).lower()
