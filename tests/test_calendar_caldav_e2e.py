"""The service end to end on a real CalDAV server (Radicale): series written once as
UID-named resources in the manager's calendar, iMIP invitations to the employees (Radicale
does no RFC 6638 scheduling), and what another calendar app changes there read back by one
sync."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from pathlib import Path
from zoneinfo import ZoneInfo

import icalendar
import pytest
import recurring_ical_events
import requests
from sqlalchemy import select

from automation.db import transaction
from automation.models import CalendarLink, CheckinSeries, OutboundMessage, Person, Task, TaskState
from automation.services.calendars import sync_now
from automation.services.loop import run_due
from tests.conftest import ACME_PEOPLE, start_organization
from tests.fakes.radicale_server import RadicaleServer, radicale_fixture
from tests.test_loop import occurrences

radicale = radicale_fixture()

PEOPLE = ACME_PEOPLE
BOSS = "boss@acme.test"


@pytest.fixture
def settings(settings, radicale: RadicaleServer):  # type: ignore[no-untyped-def]
    # A calendar home per test: the Radicale server is shared by the module.
    return settings.with_(
        calendar_provider="caldav",
        caldav_url=radicale.url,
        caldav_username=radicale.username,
        caldav_password=radicale.password,
        caldav_calendar_path=f"{settings.data_dir.parent.name}-{{email}}/checkins/",
        planning_horizon_days=70,
    )


@pytest.fixture
def org(rt, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path, PEOPLE)


@pytest.fixture
def dav(radicale: RadicaleServer) -> requests.Session:
    session = requests.Session()
    session.auth = (radicale.username, radicale.password)
    return session


def _link(rt, employee: str) -> tuple[CheckinSeries, CalendarLink]:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        series = session.scalars(
            select(CheckinSeries)
            .join(Person, Person.id == CheckinSeries.employee_id)
            .where(Person.email == employee)
        ).one()
        link = session.scalars(
            select(CalendarLink).where(CalendarLink.series_id == series.id)
        ).one()
        return series, link


def _resource(radicale: RadicaleServer, dav: requests.Session, href: str) -> requests.Response:
    response = dav.get(radicale.url.rstrip("/") + href)
    assert response.status_code == 200, (href, response.status_code)
    return response


def test_series_are_resources_written_once_and_employees_get_imip(rt, org, radicale, dav):
    hrefs = set()
    for employee in ("ana@acme.test", "kai@acme.test", "hr@acme.test"):
        series, link = _link(rt, employee)
        body = _resource(radicale, dav, link.event_id).content
        (master,) = [c for c in icalendar.Calendar.from_ical(body).walk("VEVENT") if "rrule" in c]
        assert str(master["uid"]) == series.uid
        hrefs.add(link.event_id)
    assert len(hrefs) == 3
    with rt.factory() as session:
        invites = list(
            session.scalars(select(OutboundMessage).where(OutboundMessage.kind == "invite"))
        )
    # The organizer has the series in their own calendar: only the employees are emailed.
    assert sorted(r for m in invites for r in m.recipients) == [
        "ana@acme.test",
        "hr@acme.test",
        "kai@acme.test",
    ]
    etags = {h: _resource(radicale, dav, h).headers["ETag"] for h in hrefs}
    with transaction(rt.factory) as session:
        for task in session.scalars(select(Task).where(Task.kind == "invite")):
            task.state, task.due_at = TaskState.PENDING, rt.now()
    run_due(rt)
    run_due(rt)
    assert {h: _resource(radicale, dav, h).headers["ETag"] for h in hrefs} == etags
    with rt.factory() as session:
        again = session.scalars(select(OutboundMessage).where(OutboundMessage.kind == "invite"))
        assert len(list(again)) == 3
    # Ana's meetings, read back from the server and expanded, keep their Berlin wall time.
    series, link = _link(rt, "ana@acme.test")
    cal = icalendar.Calendar.from_ical(_resource(radicale, dav, link.event_id).content)
    berlin = ZoneInfo("Europe/Berlin")
    starts = [
        e.decoded("dtstart").astimezone(berlin)
        for e in recurring_ical_events.of(cal).between(rt.now(), rt.now() + dt.timedelta(days=70))
    ]
    wall = dt.datetime.fromisoformat(series.dtstart_local).time()
    assert len(starts) >= 3 and {s.time() for s in starts} == {wall}
    assert len({s.utcoffset() for s in starts}) == 2  # across the end of March


def test_a_move_and_a_decline_made_in_a_calendar_app_come_back_in_one_sync(rt, org, radicale, dav):
    series, link = _link(rt, "ana@acme.test")
    first, second = occurrences(rt, "ana@acme.test")[:2]
    response = _resource(radicale, dav, link.event_id)
    cal = icalendar.Calendar.from_ical(response.content)
    master = next(c for c in cal.walk("VEVENT") if "rrule" in c)
    berlin = ZoneInfo("Europe/Berlin")
    moved_to = first.start_at + dt.timedelta(hours=2)
    for occ, start, partstat in (
        (first, moved_to, "ACCEPTED"),
        (second, second.start_at, "DECLINED"),
    ):
        instance = icalendar.Event()
        for key in ("uid", "sequence", "summary", "organizer"):
            instance[key] = master[key]
        instance.add("dtstamp", rt.now())
        instance.add("recurrence-id", occ.recurrence_id.astimezone(berlin))
        instance.add("dtstart", start.astimezone(berlin))
        instance.add("dtend", (start + (occ.end_at - occ.start_at)).astimezone(berlin))
        for attendee in master.get("attendee", []):
            copy = icalendar.vCalAddress(str(attendee))
            copy.params.update(attendee.params)
            if str(attendee).lower() == "mailto:ana@acme.test":
                copy.params["PARTSTAT"] = partstat
            instance.add("attendee", copy)
        cal.add_component(instance)
    put = dav.put(
        radicale.url.rstrip("/") + link.event_id,
        data=cal.to_ical(),
        headers={"If-Match": response.headers["ETag"], "Content-Type": "text/calendar"},
    )
    assert put.status_code in (201, 204), put.status_code
    (status,) = sync_now(rt, org)
    assert "moved 1" in status.result and "cancelled 1" in status.result, status.result
    after = {o.id: o for o in occurrences(rt, "ana@acme.test")}
    assert after[first.id].start_at == moved_to
    assert after[first.id].responses["ana@acme.test"] == "ACCEPTED"
    assert after[second.id].state == "cancelled"
    (nothing,) = sync_now(rt, org)  # nothing changed since: no change applied twice
    assert "moved 0, cancelled 0, responses 0" in nothing.result


def test_the_invitation_email_carries_a_parsable_request(rt, org):
    with rt.factory() as session:
        (to_ana,) = [
            m
            for m in session.scalars(
                select(OutboundMessage).where(OutboundMessage.kind == "invite")
            )
            if m.recipients == ["ana@acme.test"]
        ]
    msg = email.message_from_bytes(to_ana.raw, policy=email.policy.default)
    (part,) = [p for p in msg.walk() if p.get_content_type() == "text/calendar"]
    assert part.get_param("method") == "REQUEST"
    cal = icalendar.Calendar.from_ical(part.get_content())
    assert str(cal["method"]) == "REQUEST"
