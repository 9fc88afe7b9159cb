"""The service end to end against the Microsoft Graph fake: series created in one $batch
and linked by Graph's ids (Graph gives back no UID of ours in delta), then a decline and a
move in Outlook reach the occurrences through one delta round, found by those links."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from automation.db import transaction
from automation.models import CalendarLink, CheckinSeries, Person, Task, TaskState
from automation.services.calendars import sync_now
from automation.services.loop import run_due
from tests.conftest import ACME_PEOPLE, start_organization
from tests.fakes.graph import GraphFake
from tests.test_loop import occurrences

PEOPLE = ACME_PEOPLE
ANA = "ana@acme.test"


@pytest.fixture
def fake(monkeypatch) -> Iterator[GraphFake]:  # type: ignore[no-untyped-def]
    with GraphFake(validate_subscriptions=False) as server:
        # Production builds the adapter from settings; only the fake's CA comes from here.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_file))
        yield server


@pytest.fixture
def settings(settings, fake):  # type: ignore[no-untyped-def]
    return settings.with_(
        calendar_provider="graph",
        graph_tenant_id=fake.tenant,
        graph_client_id=fake.client_id,
        graph_client_secret=fake.client_secret,
        graph_base_url=fake.base_url,
        graph_authority_host=fake.authority_host,
        planning_horizon_days=70,
    )


@pytest.fixture
def org(rt, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path, PEOPLE)


def _link(rt, employee: str) -> CalendarLink:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        series = session.scalars(
            select(CheckinSeries)
            .join(Person, Person.id == CheckinSeries.employee_id)
            .where(Person.email == employee)
        ).one()
        return session.scalars(
            select(CalendarLink).where(CalendarLink.series_id == series.id)
        ).one()


def test_series_go_out_in_one_batch_once_and_changes_come_back_by_link(rt, org, fake):
    # Three creates in one $batch (the batches before it are planning's getSchedule calls,
    # two 42-day windows per pair).
    assert fake.inner_ops["events.create"] == 3 and fake.batch_sizes[-1] == 3
    masters = [e for e in fake.events("boss@acme.test") if e.get("type") == "seriesMaster"]
    assert len(masters) == 3
    with transaction(rt.factory) as session:
        for task in session.scalars(select(Task).where(Task.kind == "invite")):
            task.state, task.due_at = TaskState.PENDING, rt.now()
    run_due(rt)
    masters = [e for e in fake.events("boss@acme.test") if e.get("type") == "seriesMaster"]
    assert len(masters) == 3 and fake.inner_ops["events.create"] == 3  # nothing written again

    link = _link(rt, "ana@acme.test")
    first, second = occurrences(rt, "ana@acme.test")[:2]
    moved_to = first.start_at + dt.timedelta(hours=1)
    fake.move_instance(link.event_id, first.recurrence_id, moved_to)
    fake.respond(link.event_id, "ana@acme.test", "declined", second.recurrence_id)
    (status,) = sync_now(rt, org)
    assert "moved 1" in status.result and "cancelled 1" in status.result, status.result
    after = {o.id: o for o in occurrences(rt, "ana@acme.test")}
    assert after[first.id].start_at == moved_to
    assert after[second.id].state == "cancelled"
    assert after[second.id].responses["ana@acme.test"] == "DECLINED"

    # Graph drops the delta state: one fresh round, nothing applied twice.
    fake.invalidate_delta("gone")
    (again,) = sync_now(rt, org)
    assert "moved 0, cancelled 0, responses 0" in again.result, again.result


def test_a_pips_series_and_review_meetings_are_updated_in_place_when_it_is_extended(
    rt, org, fake, tmp_path
):
    """Graph answers a create with its own id; a rewrite without it would make a second
    event. The PIP keeps each event's id, so extending it PATCHes the same events."""
    from automation.config import load_goals, load_pip_templates
    from automation.models import Pip
    from automation.services import pips
    from tests.test_pips import GOALS

    goals = tmp_path / "goals.toml"
    goals.write_text(GOALS)
    with transaction(rt.factory) as session:
        pip_id = pips.start_pip_from_template(
            rt, session, org, ANA, load_pip_templates(rt.settings)["30-day"], load_goals(goals)
        ).id
    run_due(rt)
    creates = fake.inner_ops["events.create"]

    def pip_events() -> list[dict]:
        return [e for e in fake.events("boss@acme.test") if "PIP" in e.get("subject", "")]

    before = pip_events()
    with rt.factory() as session:
        ids = session.get(Pip, pip_id).calendar_ids
    assert len(before) == len(ids) >= 2  # the weekly series and each review meeting
    assert {e["id"] for e in before} == set(ids.values())
    with transaction(rt.factory) as session:
        pips.extend_pip(rt, session, org, ANA, 14)
    run_due(rt)
    after = pip_events()
    assert fake.inner_ops["events.create"] == creates  # updated, not created again
    assert {e["id"] for e in after} == {e["id"] for e in before}
    moved = {e["id"]: e["start"]["dateTime"] for e in after if "review" in e["subject"]}
    assert moved and all(
        moved[e["id"]] != e["start"]["dateTime"] for e in before if e["id"] in moved
    )
