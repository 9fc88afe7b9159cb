"""The console's overdue queue: listing, acknowledging and reassigning, who may do what, CSRF."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from sqlalchemy import func, select

from automation.clock import SimulatedClock
from automation.db import transaction
from automation.models import (
    Acknowledgement,
    AuditEntry,
    CheckinSeries,
    Occurrence,
    OutboundMessage,
    Person,
    Reassignment,
)
from tests.conftest import advance_until
from tests.console_support import Console, console  # noqa: F401


def advance(console: Console, clock: SimulatedClock, until: dt.datetime) -> None:  # noqa: F811
    advance_until(console.rt, clock, until, dt.timedelta(hours=3))


def first_checkin(console: Console, employee: str) -> Occurrence:  # noqa: F811
    with console.rt.factory() as session:
        found = session.scalars(
            select(Occurrence)
            .join(CheckinSeries, CheckinSeries.id == Occurrence.series_id)
            .join(Person, Person.id == CheckinSeries.employee_id)
            .where(Person.email == employee)
            .order_by(Occurrence.start_at)
        ).first()
        assert found is not None
        return found


def row_of(page: str, occurrence: Occurrence) -> str:
    match = re.search(rf'<tr id="occurrence-{occurrence.id}">(.*?)</tr>', page, re.S)
    assert match, page
    return match.group(1)


def audits(console: Console, action: str) -> list[AuditEntry]:  # noqa: F811
    with console.rt.factory() as session:
        return list(
            session.scalars(
                select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.seq)
            )
        )


def count(console: Console, model: type) -> int:  # noqa: F811
    with console.rt.factory() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_the_queue_shows_the_overdue_checkin_with_days_overdue(
    console: Console,  # noqa: F811
    clock: SimulatedClock,
) -> None:
    away = console.client.get("/console/queue", follow_redirects=False)
    assert away.status_code == 303 and away.headers["location"].startswith("/console/sign-in")
    ana = first_checkin(console, "ana@acme.test")
    advance(console, clock, ana.end_at + dt.timedelta(days=4, hours=5))
    console.sign_in("hr@acme.test", role="hr_partner")
    page = console.client.get("/console/queue")
    assert page.status_code == 200
    row = row_of(page.text, ana)
    days = (clock.now() - ana.end_at).days
    assert days >= 4
    assert f"<strong>{days} days</strong>" in row
    assert "Ana Souza" in row and "Bea Boss" in row
    assert "<div>1. remind → Bea Boss <span" in row  # step 1, sent to the manager
    assert "<div>2. escalate → Hal Hr</div>" in row  # the next step, to the HR partner
    assert 'action="/console/queue/reassign"' in row
    assert "the remaining reminders and escalation steps still go out" in page.text
    # Most overdue first: the rows are in the order of their due times.
    ids = [int(i) for i in re.findall(r'<tr id="occurrence-(\d+)">', page.text)]
    with console.rt.factory() as session:
        ends = [session.get(Occurrence, i).end_at for i in ids]  # type: ignore[union-attr]
    assert ends == sorted(ends) and ana.id in ids


def test_acknowledging_writes_the_audit_entry_and_closes_the_open_acknowledgement(
    console: Console,  # noqa: F811
    clock: SimulatedClock,
) -> None:
    ana = first_checkin(console, "ana@acme.test")
    advance(console, clock, ana.end_at + dt.timedelta(days=12))
    csrf = console.sign_in("hr@acme.test", role="hr_partner")
    row = row_of(console.client.get("/console/queue").text, ana)
    assert re.search(r'class="open-acks">\s*<div>Hal Hr', row)
    assert 'action="/console/queue/acknowledge"' in row
    done = console.client.post(
        "/console/queue/acknowledge",
        data={"csrf": csrf, "kind": "occurrence", "id": str(ana.id), "note": "Talking to Bea"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/console/queue?notice=queue-acknowledged"
    (entry,) = audits(console, "escalation.acknowledged")
    assert entry.actor == "console:hr@acme.test"
    assert entry.subject_kind == "occurrence" and entry.subject_id == ana.id
    hr_id = console.person("hr@acme.test").id
    with console.rt.factory() as session:
        (ack,) = session.scalars(
            select(Acknowledgement).where(Acknowledgement.id.in_(entry.data["acknowledgement_ids"]))
        )
        assert ack.acknowledged_at is not None and ack.comment == "Talking to Bea"
        assert ack.person_id == hr_id
    page = console.client.get(done.headers["location"]).text
    assert "Acknowledged. It is still undocumented" in page
    row = row_of(page, ana)
    assert re.search(r'class="open-acks">\s*<span class="muted">none</span>\s*</td>', row)
    assert 'action="/console/queue/acknowledge"' not in row
    # Still overdue and undocumented: the row stays in the queue.
    assert first_checkin(console, "ana@acme.test").documented_at is None


def test_reassigning_from_the_queue(console: Console, clock: SimulatedClock) -> None:  # noqa: F811
    ana = first_checkin(console, "ana@acme.test")
    advance(console, clock, ana.end_at + dt.timedelta(hours=2))
    csrf = console.sign_in("admin@acme.test", role="hr_admin")
    ceo, employee = console.person("ceo@acme.test"), console.person("ana@acme.test")
    row = row_of(console.client.get("/console/queue").text, ana)
    assert f'<option value="{ceo.id}">Cleo Chief &lt;ceo@acme.test&gt;</option>' in row
    assert f'<option value="{employee.id}">' not in row  # not the employee themselves
    refused = console.client.post(
        "/console/queue/reassign",
        data={"csrf": csrf, "kind": "occurrence", "id": str(ana.id), "person": str(employee.id)},
    )
    assert refused.status_code == 400 and "cannot document their own" in refused.text
    assert count(console, Reassignment) == 0
    moved = console.client.post(
        "/console/queue/reassign",
        data={
            "csrf": csrf,
            "kind": "occurrence",
            "id": str(ana.id),
            "person": str(ceo.id),
            "reason": "Bea is on leave",
        },  # fmt: skip
        follow_redirects=False,
    )
    assert moved.status_code == 303
    assert moved.headers["location"] == "/console/queue?notice=queue-reassigned"
    (entry,) = audits(console, "escalation.reassigned")
    assert entry.actor == "console:admin@acme.test"
    assert entry.data["from"] == "boss@acme.test" and entry.data["to"] == "ceo@acme.test"
    assert entry.data["reason"] == "Bea is on leave"
    with console.rt.factory() as session:
        prompt = session.scalars(
            select(OutboundMessage).where(OutboundMessage.idempotency_key.like("reassigned:%"))
        ).one()
    assert prompt.recipients == ["ceo@acme.test"] and prompt.occurrence_id == ana.id
    row = row_of(console.client.get("/console/queue").text, ana)
    assert re.search(r"Cleo Chief <span class=\"tag\">reassigned</span>", row)


def test_a_pip_review_row_offers_reassign_and_reassigns_it(
    console: Console,  # noqa: F811
    clock: SimulatedClock,
    tmp_path: Path,
) -> None:
    from tests.test_pip_reviews import start
    from tests.test_pips import milestones

    pip_id = start(console.rt, console.org, tmp_path)
    review = milestones(console.rt, pip_id, "review")[0]
    advance(console, clock, review.due_at + dt.timedelta(hours=2))
    csrf = console.sign_in("admin@acme.test", role="hr_admin")
    ceo = console.person("ceo@acme.test")

    def row() -> str:
        page = console.client.get("/console/queue").text
        match = re.search(rf'<tr id="pip_review-{review.id}">(.*?)</tr>', page, re.S)
        assert match, page
        return match.group(1)

    before = row()
    assert "PIP review \u201cDay 15 review\u201d" in before and "Bea Boss" in before
    assert 'action="/console/queue/reassign"' in before
    assert '<input type="hidden" name="kind" value="pip_review">' in before
    assert f'<option value="{ceo.id}">Cleo Chief &lt;ceo@acme.test&gt;</option>' in before
    moved = console.client.post(
        "/console/queue/reassign",
        data={"csrf": csrf, "kind": "pip_review", "id": str(review.id), "person": str(ceo.id),
              "reason": "Bea is on leave"},
        follow_redirects=False,
    )  # fmt: skip
    assert moved.status_code == 303
    assert moved.headers["location"] == "/console/queue?notice=queue-reassigned"
    (entry,) = audits(console, "escalation.reassigned")
    assert entry.subject_kind == "pip_review" and entry.subject_id == review.id
    assert entry.actor == "console:admin@acme.test" and entry.data["to"] == "ceo@acme.test"
    with console.rt.factory() as session:
        prompt = session.scalars(
            select(OutboundMessage).where(OutboundMessage.idempotency_key.like("reassigned:%"))
        ).one()
    assert prompt.recipients == ["ceo@acme.test"] and prompt.pip_review_id == review.id
    assert re.search(r"Cleo Chief <span class=\"tag\">reassigned</span>", row())


def test_a_manager_sees_and_acts_only_on_their_chain(
    console: Console,  # noqa: F811
    clock: SimulatedClock,
) -> None:
    zoe = first_checkin(console, "zoe@acme.test")
    ana = first_checkin(console, "ana@acme.test")
    advance(console, clock, max(zoe.end_at, ana.end_at) + dt.timedelta(days=12))
    csrf = console.sign_in("boss@acme.test", role="manager")
    page = console.client.get("/console/queue")
    assert page.status_code == 200
    assert "Ana Souza" in page.text and "Kai Tanaka" in page.text
    # Nobody outside the chain, not even in the reassignment picker.
    assert "Zoe Elsewhere" not in page.text and "Max Other" not in page.text
    assert f'id="occurrence-{zoe.id}"' not in page.text
    assert "Cleo Chief" in page.text and "Hal Hr" in page.text  # their manager, the HR partner
    max_id = console.person("max@acme.test").id
    ceo_id = console.person("ceo@acme.test").id
    for path, extra in (
        ("/console/queue/acknowledge", {"note": "x"}),
        ("/console/queue/reassign", {"person": str(ceo_id)}),
    ):
        outside = console.client.post(
            path, data={"csrf": csrf, "kind": "occurrence", "id": str(zoe.id), **extra}
        )
        assert outside.status_code == 404, path
    # Nor may they hand their own report's check-in to someone outside what they see.
    hidden = console.client.post(
        "/console/queue/reassign",
        data={"csrf": csrf, "kind": "occurrence", "id": str(ana.id), "person": str(max_id)},
    )
    assert hidden.status_code == 404
    assert audits(console, "escalation.acknowledged") == []
    assert audits(console, "escalation.reassigned") == []
    # Within the chain they may.
    ok = console.client.post(
        "/console/queue/acknowledge",
        data={"csrf": csrf, "kind": "occurrence", "id": str(ana.id)},
        follow_redirects=False,
    )
    assert ok.status_code == 303
    (entry,) = audits(console, "escalation.acknowledged")
    assert entry.actor == "console:boss@acme.test" and entry.subject_id == ana.id


def test_a_forged_form_changes_nothing(console: Console, clock: SimulatedClock) -> None:  # noqa: F811
    ana = first_checkin(console, "ana@acme.test")
    advance(console, clock, ana.end_at + dt.timedelta(days=12))
    console.sign_in("hr@acme.test", role="hr_admin")
    ceo_id = console.person("ceo@acme.test").id
    for data in (
        {"csrf": "forged", "kind": "occurrence", "id": str(ana.id)},
        {"kind": "occurrence", "id": str(ana.id)},
    ):
        for path, extra in (
            ("/console/queue/acknowledge", {"note": "x"}),
            ("/console/queue/reassign", {"person": str(ceo_id)}),
        ):
            forged = console.client.post(path, data={**data, **extra})
            assert forged.status_code == 403, (path, data)
    assert count(console, Reassignment) == 0
    assert audits(console, "escalation.acknowledged") == []
    assert audits(console, "escalation.reassigned") == []
    with console.rt.factory() as session:
        acks = session.scalars(select(Acknowledgement)).all()
        assert acks and all(a.acknowledged_at is None for a in acks)


def test_names_are_escaped(console: Console, clock: SimulatedClock) -> None:  # noqa: F811
    ana = first_checkin(console, "ana@acme.test")
    advance(console, clock, ana.end_at + dt.timedelta(hours=2))
    with transaction(console.rt.factory) as session:
        person = session.scalar(select(Person).where(Person.email == "ana@acme.test"))
        assert person is not None
        person.name = "Ana <script>alert(1)</script>"
    console.sign_in("hr@acme.test", role="hr_partner")
    page = console.client.get("/console/queue").text
    assert "Ana &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page


def test_nothing_to_acknowledge_and_unknown_items(console: Console, clock: SimulatedClock) -> None:  # noqa: F811
    ana = first_checkin(console, "ana@acme.test")
    advance(console, clock, ana.end_at + dt.timedelta(hours=2))  # no escalation step sent yet
    csrf = console.sign_in("hr@acme.test", role="hr_partner")
    row = row_of(console.client.get("/console/queue").text, ana)
    assert 'action="/console/queue/acknowledge"' not in row
    nothing = console.client.post(
        "/console/queue/acknowledge",
        data={"csrf": csrf, "kind": "occurrence", "id": str(ana.id)},
        follow_redirects=False,
    )
    assert nothing.headers["location"] == "/console/queue?notice=queue-nothing-to-acknowledge"
    assert audits(console, "escalation.acknowledged") == []
    for data in (
        {"kind": "occurrence", "id": "999999"},
        {"kind": "person", "id": str(ana.id)},
        {"kind": "occurrence", "id": "x"},
    ):
        missing = console.client.post("/console/queue/acknowledge", data={"csrf": csrf, **data})
        assert missing.status_code == 404, data
