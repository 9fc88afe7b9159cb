"""PIP reviews against the template's required documentation: what the prompts ask, when a
review counts as documented, HR partner reviewers, the wording of reminders before the due
time, and the confirmation of an acknowledgement. End to end on a real database and a
simulated clock, like tests/test_pips.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import email.utils
import re
import zoneinfo
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select

from automation.config import load_goals, parse_pip_template, read_toml
from automation.db import transaction
from automation.emails import render
from automation.errors import ConfigError
from automation.models import (
    Acknowledgement,
    AuditEntry,
    ConversationRecord,
    OutboundMessage,
    Person,
    Pip,
    PipReview,
)
from automation.services import pips
from automation.services.loop import run_due
from automation.settings import PROJECT_ROOT
from automation.template_samples import sample_context
from tests.conftest import start_organization
from tests.test_loop import advance_until, deliver, outbox
from tests.test_pips import GOALS, milestones, recipients, steps, templates

# As tests/test_pips.py, plus someone without an HR partner.
PEOPLE = """email,name,timezone,manager_email,hr_partner_email
ceo@acme.test,Cleo Chief,America/New_York,,hr@acme.test
boss@acme.test,Bea Boss,America/New_York,ceo@acme.test,hr@acme.test
hr@acme.test,Hal Hr,Europe/London,ceo@acme.test,hr@acme.test
ana@acme.test,Ana Souza,Europe/Berlin,boss@acme.test,hr@acme.test
dan@acme.test,Dan Nohr,Europe/Berlin,boss@acme.test,
"""
DOCUMENTATION = [
    "Goals and their measurable success criteria (still as agreed?)",
    "Support provided since the last review",
    "Progress against each goal, with evidence",
    "Outcome of this review (on track / at risk / not met)",
]
ALL_ANSWERS = (
    "1. Both goals still as agreed\n"
    "2. Pairing with Lee twice a week\n"
    "3. Tickets: 93% on time; status updates every Friday\n"
    "4. On track\n"
)
NUMBERED = re.compile(r"^(\d+)\. (.+)$", re.MULTILINE)


@pytest.fixture
def org(rt, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path, PEOPLE)


def start(rt, org, tmp_path, template="30-day", employee="ana@acme.test", **changes):  # type: ignore[no-untyped-def]
    """Start a PIP from a shipped template, changed by ``changes`` (e.g. reviewer=...)."""
    goals_file = tmp_path / "goals.toml"
    goals_file.write_text(GOALS)
    chosen = dataclasses.replace(templates(rt)[template], **changes)
    with transaction(rt.factory) as session:
        pip = pips.start_pip_from_template(
            rt, session, org, employee, chosen, load_goals(goals_file)
        )
        pip_id = pip.id
    run_due(rt)
    return pip_id


def text_of(message: OutboundMessage) -> str:
    parsed = email.message_from_bytes(message.raw, policy=email.policy.default)
    text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    return text.replace("\r\n", "\n")


def header(message: OutboundMessage, name: str) -> str:
    return str(email.message_from_bytes(message.raw, policy=email.policy.default)[name])


def prompt_of(rt, review_id: int) -> OutboundMessage:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return session.scalars(
            select(OutboundMessage).where(
                OutboundMessage.idempotency_key == f"pip_review:{review_id}"
            )
        ).one()


def reply(rt, prompt: OutboundMessage, sender: str, body: str) -> tuple[bytes, str]:  # type: ignore[no-untyped-def]
    """A reply to ``prompt`` (to its Reply-To), and the reply's Message-ID."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = header(prompt, "Reply-To")
    msg["Subject"] = "Re: " + prompt.subject
    msg["Date"] = email.utils.format_datetime(rt.now())
    msg["Message-ID"] = email.utils.make_msgid(domain="client.test")
    msg["In-Reply-To"] = prompt.message_id
    msg.set_content(body)
    return msg.as_bytes(), str(msg["Message-ID"])


def answer(rt, prompt: OutboundMessage, sender: str, body: str, name: str) -> None:  # type: ignore[no-untyped-def]
    deliver(rt, reply(rt, prompt, sender, body)[0], name)


def records(rt, review_id: int) -> list[ConversationRecord]:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return list(
            session.scalars(
                select(ConversationRecord)
                .where(
                    ConversationRecord.subject_kind == "pip_review",
                    ConversationRecord.subject_id == review_id,
                )
                .order_by(ConversationRecord.version)
            )
        )


def review_row(rt, review_id: int) -> PipReview:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        found = session.get(PipReview, review_id)
        assert found is not None
        return found


def confirmations(rt, review_id: int) -> list[OutboundMessage]:  # type: ignore[no-untyped-def]
    return [m for m in outbox(rt, "confirmation") if m.pip_review_id == review_id]


def first_review_prompted(rt, clock, pip_id: int) -> PipReview:  # type: ignore[no-untyped-def]
    review = milestones(rt, pip_id, "review")[0]
    advance_until(rt, clock, review.due_at + dt.timedelta(minutes=5))
    return review


# --- the documentation is kept with the PIP and asked at every review -------------------------


def test_start_keeps_the_templates_documentation_on_the_pip(rt, org, tmp_path):
    pip_id = start(rt, org, tmp_path, documentation=("Evidence", "Outcome"))
    with rt.factory() as session:
        pip = session.get(Pip, pip_id)
        started = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "pip.started")
        ).one()
    assert pip.documentation == ["Evidence", "Outcome"]
    assert pip.reviewer == "manager"
    assert started.data["documentation"] == ["Evidence", "Outcome"]
    assert started.data["reviewer"] == "manager"


def test_review_prompt_asks_the_documentation_and_lists_the_goals(rt, org, tmp_path, clock):
    custom = ("Evidence of progress on each goal", "Support given", "Outcome so far")
    pip_id = start(rt, org, tmp_path, documentation=custom)
    review = first_review_prompted(rt, clock, pip_id)
    prompt = prompt_of(rt, review.id)
    assert prompt.recipients == ["boss@acme.test"]
    text = text_of(prompt)
    # The questions are the template's, numbered, and nothing else is numbered like them.
    assert NUMBERED.findall(text) == [(str(i), q) for i, q in enumerate(custom, start=1)]
    html = email.message_from_bytes(prompt.raw, policy=email.policy.default).get_body(("html",))
    for i, question in enumerate(custom, start=1):
        assert f">{i}. {question}<" in html.get_content()  # type: ignore[union-attr]
    # The goals, with position, success criteria and due date, to answer "progress" against.
    assert "Goal 1: Answer customer tickets on time\n" in text
    assert "Success criteria: 95% answered within 2 business days, four weeks running\n" in text
    assert "Due: 2026-04-30\n" in text
    assert "Goal 2: Weekly written status update\n" in text
    assert "counts as documented once every question has an answer" in text
    # A weekly check-in keeps the short set, and lists the goals too.
    checkin = milestones(rt, pip_id, "checkin")[0]
    checkin_text = text_of(prompt_of(rt, checkin.id))
    assert NUMBERED.findall(checkin_text) == [
        (str(i), q) for i, q in enumerate(pips.PIP_QUESTIONS, start=1)
    ]
    assert "Goal 1: Answer customer tickets on time" in checkin_text
    assert "counts as documented once every question" not in checkin_text


def test_an_old_pip_without_documentation_asks_the_short_set_and_any_reply_documents(
    rt, org, tmp_path, clock
):
    pip_id = start(rt, org, tmp_path)
    with transaction(rt.factory) as session:
        session.get(Pip, pip_id).documentation = None  # a row from before migration 0006
    review = first_review_prompted(rt, clock, pip_id)
    prompt = prompt_of(rt, review.id)
    assert [q for _, q in NUMBERED.findall(text_of(prompt))] == list(pips.PIP_QUESTIONS)
    answer(rt, prompt, "boss@acme.test", "Went fine, more next week.", "old")
    assert review_row(rt, review.id).documented_at is not None


# --- documented only when every required item is answered -------------------------------------


def test_an_incomplete_reply_is_kept_names_what_is_missing_and_the_ladder_runs_on(
    rt, org, tmp_path, clock
):
    pip_id = start(rt, org, tmp_path)
    review = first_review_prompted(rt, clock, pip_id)
    prompt = prompt_of(rt, review.id)
    answer(rt, prompt, "boss@acme.test", "1. Still as agreed\n3. 93% on time\n", "part")
    [first] = records(rt, review.id)
    assert first.answers == {"1": "Still as agreed", "3": "93% on time"}
    assert review_row(rt, review.id).documented_at is None
    # One email to the reviewer, naming what is missing; it is the record's confirmation.
    [notice] = confirmations(rt, review.id)
    assert notice.recipients == ["boss@acme.test"]
    assert notice.idempotency_key == f"confirmation:record:{first.id}"
    assert "2 items still needed" in notice.subject
    text = text_of(notice)
    still = text[text.index("STILL NEEDED") : text.index("WHAT WAS RECORDED")]
    assert NUMBERED.findall(still) == [("2", DOCUMENTATION[1]), ("4", DOCUMENTATION[3])]
    with rt.factory() as session:
        created = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "record.created")
        ).one()
    assert created.data["missing"] == [2, 4] and created.data["documented"] is False
    # Still undocumented: the ladder goes on to the HR partner.
    advance_until(rt, clock, review.due_at + dt.timedelta(days=4))
    assert [s.step for s in steps(rt, "pip_review", review.id)] == [0, 1, 2]
    run_due(rt)
    assert len(confirmations(rt, review.id)) == 1  # once per record version, however often
    # A reply to the confirmation with just the missing items completes the record.
    answer(rt, notice, "boss@acme.test", "2. Pairing twice a week\n4. At risk\n", "rest")
    assert [r.version for r in records(rt, review.id)] == [1, 2]
    assert review_row(rt, review.id).documented_at is not None
    second = confirmations(rt, review.id)[-1]
    assert "STILL NEEDED" not in text_of(second) and "still needed" not in second.subject
    advance_until(rt, clock, review.due_at + dt.timedelta(days=10))
    assert [s.step for s in steps(rt, "pip_review", review.id)] == [0, 1, 2]  # stopped


def test_an_inline_reply_under_the_quoted_questions_documents_the_review(rt, org, tmp_path, clock):
    """The goals in the prompt are not taken for questions; answers typed under each quoted
    question are read against the template's items."""
    pip_id = start(rt, org, tmp_path)
    review = first_review_prompted(rt, clock, pip_id)
    prompt = prompt_of(rt, review.id)
    lines = []
    for line in text_of(prompt).splitlines():
        lines.append(f"> {line}" if line else ">")
        if match := re.match(r"^(\d)\. ", line):
            lines.append(f"Answer to item {match[1]}")
    body = "Notes inline.\n\nOn Tue, Bea wrote:\n" + "\n".join(lines) + "\n"
    answer(rt, prompt, "boss@acme.test", body, "inline")
    [record] = records(rt, review.id)
    assert record.answers == {str(n): f"Answer to item {n}" for n in range(1, 5)}
    assert review_row(rt, review.id).documented_at is not None
    assert "STILL NEEDED" not in text_of(confirmations(rt, review.id)[0])


def test_the_employees_reply_is_kept_but_does_not_document_the_review(rt, org, tmp_path, clock):
    pip_id = start(rt, org, tmp_path)
    review = first_review_prompted(rt, clock, pip_id)
    answer(rt, prompt_of(rt, review.id), "ana@acme.test", ALL_ANSWERS, "employee")
    [record] = records(rt, review.id)
    assert len(record.answers) == 4
    assert review_row(rt, review.id).documented_at is None
    [confirmation] = confirmations(rt, review.id)
    assert confirmation.recipients == ["ana@acme.test"]
    assert "STILL NEEDED" not in text_of(confirmation)  # not hers to complete


# --- an HR partner as the reviewer ---------------------------------------------------------------


def test_templates_accept_an_hr_partner_reviewer_and_refuse_others():
    data = read_toml(PROJECT_ROOT / "config" / "pips" / "30-day.toml")
    assert parse_pip_template({**data, "reviewer": "hr_partner"}, "x.toml").reviewer == (
        "hr_partner"
    )
    with pytest.raises(ConfigError) as err:
        parse_pip_template({**data, "reviewer": "ceo"}, "x.toml")
    assert [p.field for p in err.value.problems] == ["reviewer"]


def test_an_hr_partner_reviewer_needs_an_hr_partner_on_record(rt, org, tmp_path):
    with pytest.raises(pips.PipError, match="no HR partner on record"):
        start(rt, org, tmp_path, employee="dan@acme.test", reviewer="hr_partner")


def test_the_hr_partner_reviews_and_the_manager_may_add(rt, org, tmp_path, clock):
    pip_id = start(rt, org, tmp_path, reviewer="hr_partner")
    review = milestones(rt, pip_id, "review")[0]
    advance_until(rt, clock, review.due_at + dt.timedelta(days=8))
    # The review prompt goes to the HR partner; the weekly check-ins stay with the manager.
    prompt = prompt_of(rt, review.id)
    assert prompt.recipients == ["hr@acme.test"]
    assert "Hi Hal Hr," in text_of(prompt)
    checkin = milestones(rt, pip_id, "checkin")[0]
    assert prompt_of(rt, checkin.id).recipients == ["boss@acme.test"]
    # The "manager" steps remind the reviewer; the "hr_partner" step would be the reviewer
    # again and is skipped; the manager's manager is told.
    sent = steps(rt, "pip_review", review.id)
    assert [(s.step, recipients(rt, s.outbound_message_id)) for s in sent] == [
        (0, ["hr@acme.test"]),
        (1, ["hr@acme.test"]),
        (3, ["ceo@acme.test"]),
    ]
    with rt.factory() as session:
        skipped = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "escalation.skipped")
        ).all()
        reminder = session.get(OutboundMessage, sent[1].outbound_message_id)
        to_ceo = session.get(OutboundMessage, sent[2].outbound_message_id)
    assert [e.data["step"] for e in skipped if e.subject_id == review.id] == [2]
    # The reminder at the due time is in the prompt's thread and can document the review.
    assert header(reminder, "In-Reply-To") == prompt.message_id
    assert header(reminder, "Reply-To") == header(prompt, "Reply-To")
    assert "Hal Hr documents it by replying" in " ".join(text_of(to_ceo).split())
    # The manager's notes are kept, but do not document an HR partner's review.
    answer(rt, prompt, "boss@acme.test", ALL_ANSWERS, "manager")
    assert review_row(rt, review.id).documented_at is None
    answer(rt, prompt, "hr@acme.test", ALL_ANSWERS, "hr")
    assert review_row(rt, review.id).documented_at is not None
    with rt.factory() as session:
        authors = [session.get(Person, r.author_id).email for r in records(rt, review.id)]
    assert authors == ["boss@acme.test", "hr@acme.test"]
    # A check-in of the same PIP is still documented by the manager's reply.
    answer(rt, prompt_of(rt, checkin.id), "boss@acme.test", "1. Fine\n", "checkin")
    assert review_row(rt, checkin.id).documented_at is not None


# --- reminders before the due time say "due on" ---------------------------------------------------


def test_reminder_wording_before_and_after_the_due_time(rt, org, tmp_path, clock):
    pip_id = start(rt, org, tmp_path)
    review = milestones(rt, pip_id, "review")[0]
    advance_until(rt, clock, review.due_at + dt.timedelta(days=1))
    before, at_due = steps(rt, "pip_review", review.id)[:2]
    with rt.factory() as session:
        early = session.get(OutboundMessage, before.outbound_message_id)
        late = session.get(OutboundMessage, at_due.outbound_message_id)
    assert before.created_at < review.due_at <= at_due.created_at
    # The review's due time for Bea, in her zone (the meeting's end: a Tuesday in March).
    local = review.due_at.astimezone(zoneinfo.ZoneInfo("America/New_York"))
    due = f"{local:%A %d %B %Y, %H:%M} (America/New_York)"
    assert due.startswith("Tuesday 17 March 2026, ")
    early_text = " ".join(text_of(early).split())
    assert f"is due on {due}." in early_text and f"Due on: {due}" in early_text
    assert "overdue" not in early_text.lower() and "haven't received" not in early_text
    assert early.subject.endswith(f"is due on {due}")
    late_text = " ".join(text_of(late).split())
    assert f"Overdue since: {due}" in late_text and "is due on" not in late_text


def test_reminder_template_variants():
    context = sample_context("reminder")
    overdue = render(PROJECT_ROOT / "templates", "reminder", context)
    assert "Overdue since: " + context["item"]["due"] in overdue.text
    context["item"].update(upcoming=True)
    context["days_overdue"] = 0
    upcoming = render(PROJECT_ROOT / "templates", "reminder", context)
    assert f"is due on {context['item']['due']}." in upcoming.text
    for part in (upcoming.subject, upcoming.text, upcoming.html):
        assert "verdue" not in part


# --- the acknowledgement is confirmed once --------------------------------------------------------


def test_an_acknowledgement_is_confirmed_once_in_the_thread(rt, org, tmp_path, clock):
    start(rt, org, tmp_path)
    plan = outbox(rt, "pip_plan")[0]
    raw, message_id = reply(rt, plan, "ana@acme.test", "Received.\nI would like help with X.")
    deliver(rt, raw, "ack")
    [confirmation] = outbox(rt, "acknowledged")
    with rt.factory() as session:
        ack = session.scalars(
            select(Acknowledgement).where(Acknowledgement.subject_kind == "pip")
        ).one()
    assert confirmation.recipients == ["ana@acme.test"]
    assert confirmation.idempotency_key == f"acknowledged:{ack.id}"
    assert header(confirmation, "In-Reply-To") == message_id
    assert confirmation.subject == f"Re: {plan.subject}"
    text = text_of(confirmation)
    assert "acknowledgement of the 30-day performance improvement plan starting 02 March 2026" in (
        " ".join(text.split())
    )
    assert "Acknowledged: Monday 02 March 2026, 07:00 (Europe/Berlin)" in text
    assert "  I would like help with X.\n" in text
    # Another reply is kept and changes nothing: no second confirmation.
    deliver(rt, reply(rt, plan, "ana@acme.test", "Again.")[0], "again")
    deliver(rt, reply(rt, confirmation, "ana@acme.test", "Thanks.")[0], "thanks")
    assert len(outbox(rt, "acknowledged")) == 1


def test_an_escalation_step_acknowledged_by_hr_is_confirmed_with_what_it_was(
    rt, org, tmp_path, clock
):
    pip_id = start(rt, org, tmp_path)
    review = milestones(rt, pip_id, "review")[0]
    advance_until(rt, clock, review.due_at + dt.timedelta(days=4))
    to_hr = next(s for s in steps(rt, "pip_review", review.id) if s.step == 2)
    with rt.factory() as session:
        step_mail = session.get(OutboundMessage, to_hr.outbound_message_id)
    deliver(rt, reply(rt, step_mail, "hr@acme.test", "")[0], "hr-ack")
    [confirmation] = outbox(rt, "acknowledged")
    text = " ".join(text_of(confirmation).split())
    assert confirmation.recipients == ["hr@acme.test"]
    assert (
        "acknowledgement of the notice that the PIP review \u201cDay 15 review\u201d for Ana "
        "Souza was not documented yet (step 3) is recorded" in text
    )
    assert "Comment: none" in text
    with rt.factory() as session:
        ack = session.scalars(
            select(Acknowledgement).where(
                Acknowledgement.subject_kind == "escalation",
                Acknowledgement.subject_id == to_hr.id,
            )
        ).one()
    assert ack.acknowledged_at is not None
    assert confirmation.idempotency_key == f"acknowledged:{ack.id}"
