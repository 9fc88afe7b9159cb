"""The consistency report on a simulated organisation (SQLite and PostgreSQL).

Five weeks of a two-manager organisation: one report's check-ins are documented within hours,
one's two days late, one's never; one's are skipped; one's documented with an action item that
then goes past due; one PIP whose review is never documented. The expected figures are
computed here straight from the rows (and from the escalation ladder's own steps), not with
the report's code.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import statistics
from collections import defaultdict
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from automation.db import transaction
from automation.models import (
    ActionItem,
    CheckinSeries,
    ConversationRecord,
    Escalation,
    Occurrence,
    OutboundMessage,
    Person,
    Pip,
)
from automation.services.report import (
    CheckinCount,
    Delay,
    Facts,
    Overdue,
    PersonInfo,
    PipFact,
    aggregate,
    consistency_report,
    percentile,
    render_csv,
    render_html,
    write_report,
)
from tests.conftest import start_organization
from tests.test_loop import advance_until, deliver, reply_to

BOSS = "Bea <b>Boss</b>"
PEOPLE = f"""email,name,timezone,manager_email,hr_partner_email
boss@acme.test,{BOSS},America/New_York,,hr@acme.test
hr@acme.test,Hal Hr,Europe/London,boss@acme.test,hr@acme.test
ana@acme.test,Ana Souza,Europe/Berlin,boss@acme.test,hr@acme.test
kai@acme.test,Kai Tanaka,Asia/Tokyo,boss@acme.test,hr@acme.test
lea@acme.test,Lea Lead,Europe/Paris,boss@acme.test,hr@acme.test
max@acme.test,Max Meyer,Europe/Berlin,lea@acme.test,hr@acme.test
zoe@acme.test,Zoe Zhang,Asia/Tokyo,lea@acme.test,hr@acme.test
"""
WEEKS = 5


def _prompts(rt) -> list[tuple[OutboundMessage, str, str]]:  # type: ignore[no-untyped-def]
    """Every follow-up prompt with its employee's and manager's email."""
    manager = Person.__table__.alias("manager")
    with rt.factory() as session:
        rows = session.execute(
            select(OutboundMessage, Person.email, manager.c.email)
            .join(Occurrence, Occurrence.id == OutboundMessage.occurrence_id)
            .join(CheckinSeries, CheckinSeries.id == Occurrence.series_id)
            .join(Person, Person.id == CheckinSeries.employee_id)
            .join(manager, manager.c.id == CheckinSeries.manager_id)
            .where(OutboundMessage.kind == "followup")
            .order_by(OutboundMessage.id)
        ).all()
    return [(m, e, b) for m, e, b in rows]


def _simulate(rt, clock, org: int) -> None:  # type: ignore[no-untyped-def]
    from automation.config import PipPlan
    from automation.domain.cadence import LadderStep
    from automation.services.escalation import start_pip

    with transaction(rt.factory) as session:
        start_pip(
            rt,
            session,
            org,
            PipPlan(
                "max@acme.test",
                "30-day plan",
                0,
                30,
                (("Week 1 review", 7), ("Week 3 review", 21)),
                (LadderStep(2, "manager", "reminder"), LadderStep(5, "hr_partner", "escalation")),
            ),
            clock.now(),
        )
    handled: set[int] = set()
    end = clock.now() + dt.timedelta(weeks=WEEKS)
    while clock.now() < end:
        advance_until(rt, clock, clock.now() + dt.timedelta(hours=6))
        for prompt, employee, manager in _prompts(rt):
            if prompt.id in handled:
                continue
            if employee == "ana@acme.test":  # documented within hours
                body = "1. Good progress.\nRating: 4\n"
            elif employee == "kai@acme.test":  # two days late
                if clock.now() < prompt.created_at + dt.timedelta(days=2):
                    continue
                body = "1. Busy fortnight.\n"
            elif employee == "max@acme.test":
                body = "#skip\n"
            elif employee == "zoe@acme.test":  # an action item that will go past due
                body = "1. Fine.\nAction: Zoe to send the plan by Friday\n"
            else:  # hr, lea: never documented
                handled.add(prompt.id)
                continue
            handled.add(prompt.id)
            deliver(rt, reply_to(rt, prompt, manager, body), f"reply-{prompt.id}")
    # HR closes the PIP (written directly: the PIP lifecycle is another module's business).
    with transaction(rt.factory) as session:
        session.execute(update(Pip).values(state="closed", outcome="successful"))


def _expected(rt, now: dt.datetime) -> dict[str, dict[str, object]]:  # type: ignore[no-untyped-def]
    """Per manager email, from the rows, without the report's code."""
    with rt.factory() as session:
        people = {p.id: p for p in session.scalars(select(Person))}
        series = {s.id: s for s in session.scalars(select(CheckinSeries))}
        records = list(session.scalars(select(ConversationRecord)))
        first: dict[int, dt.datetime] = {}
        latest: dict[tuple[str, int], int] = {}
        for r in records:
            if r.subject_kind == "occurrence":
                first[r.subject_id] = min(first.get(r.subject_id, r.created_at), r.created_at)
            key = (r.subject_kind, r.subject_id)
            latest[key] = max(latest.get(key, 0), r.version)
        steps = {
            (e.subject_kind, e.subject_id)
            for e in session.scalars(select(Escalation).where(Escalation.step == 0))
        }
        out: dict[str, dict[str, object]] = defaultdict(
            lambda: defaultdict(int) | {"delays": [], "reports": 0}
        )
        for p in people.values():
            if p.manager_id:
                out[people[p.manager_id].email]["reports"] += 1  # type: ignore[operator]
        occurrence_manager = {}
        for o in session.scalars(select(Occurrence)):
            manager = people[series[o.series_id].manager_id]
            occurrence_manager[o.id] = manager
            if o.end_at > now or o.state == "cancelled":
                continue
            row = out[manager.email]
            row["due"] += 1  # type: ignore[operator]
            row["held"] += o.state == "held" or o.id in first  # type: ignore[operator]
            row["documented"] += o.id in first  # type: ignore[operator]
            row["skipped"] += o.state == "skipped"  # type: ignore[operator]
            if o.id in first:
                row["delays"].append((first[o.id] - o.end_at).total_seconds() / 3600)  # type: ignore[union-attr]
            # Overdue: the ladder's first step really ran and it is still undocumented.
            elif o.state != "skipped" and ("occurrence", o.id) in steps:
                row["overdue_checkins"] += 1  # type: ignore[operator]
        for pip in session.scalars(select(Pip)):
            row = out[people[pip.manager_id].email]
            row["pips"] += 1  # type: ignore[operator]
            row[f"pips_{pip.state}"] += 1  # type: ignore[operator]
            row[f"pip_outcome_{pip.outcome}"] += 1  # type: ignore[operator]
        from automation.models import PipReview

        for review in session.scalars(select(PipReview)):
            pip = session.get(Pip, review.pip_id)
            if review.documented_at is None and ("pip_review", review.id) in steps:
                out[people[pip.manager_id].email]["overdue_pip_reviews"] += 1  # type: ignore[operator]
        by_id = {r.id: r for r in records}
        for item in session.scalars(select(ActionItem)):
            record = by_id[item.record_id]
            if item.done or item.due_on is None:
                continue
            if record.version != latest[(record.subject_kind, record.subject_id)]:
                continue
            manager = occurrence_manager[record.subject_id]
            if item.due_on < now.astimezone(ZoneInfo(manager.timezone)).date():
                out[manager.email]["overdue_action_items"] += 1  # type: ignore[operator]
    return out


def _quantile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@pytest.fixture
def simulated(rt, clock, tmp_path: Path):  # type: ignore[no-untyped-def]
    org = start_organization(rt, tmp_path, PEOPLE)
    _simulate(rt, clock, org)
    with rt.factory() as session:
        report = consistency_report(
            session,
            org,
            as_of=clock.now(),
            business_weekdays=rt.settings.business_weekdays,
            holidays=rt.settings.holidays,
        )
    return org, report


def test_figures_match_the_rows(rt, clock, simulated):
    _, report = simulated
    expected = _expected(rt, clock.now())
    managers = {f.email: f for f in report.managers}
    assert set(managers) == {"boss@acme.test", "lea@acme.test"}
    # The scenario produced every kind of figure the report has.
    boss, lea = managers["boss@acme.test"], managers["lea@acme.test"]
    assert boss.documented > 0 and boss.overdue_checkins > 0 and boss.delay_p90_hours > 40
    assert lea.skipped > 0 and lea.overdue_action_items > 0 and lea.overdue_pip_reviews == 2
    for email, f in managers.items():
        want = expected[email]
        delays = want["delays"]
        assert f.direct_reports == want["reports"]
        assert (f.due, f.held_or_documented, f.documented, f.skipped) == (
            want["due"],
            want["held"],
            want["documented"],
            want["skipped"],
        ), email
        assert f.completion_pct == pytest.approx(100 * want["held"] / want["due"])
        assert f.documented_pct == pytest.approx(100 * want["documented"] / want["due"])
        assert f.delay_median_hours == pytest.approx(statistics.median(delays))
        assert f.delay_p90_hours == pytest.approx(_quantile(delays, 90))
        assert f.overdue_checkins == want["overdue_checkins"], email
        assert f.overdue_pip_reviews == want["overdue_pip_reviews"], email
        assert f.overdue_action_items == want["overdue_action_items"], email
        assert f.pips == want["pips"]
        assert f.pip_states == ({"closed": 1} if want["pips"] else {})
        assert f.pip_outcomes == ({"successful": 1} if want["pips"] else {})
    # The organisation's figures pool every meeting (percentiles over all delays, not of
    # the managers' percentiles).
    all_delays = [d for w in expected.values() for d in w["delays"]]
    assert report.org.due == sum(w["due"] for w in expected.values())
    assert report.org.delay_median_hours == pytest.approx(statistics.median(all_delays))
    assert report.org.delay_p90_hours == pytest.approx(_quantile(all_delays, 90))
    # Nobody moved teams here: per team equals per manager.
    assert [(t.email, t.due, t.documented) for t in report.teams] == [
        (m.email, m.due, m.documented) for m in report.managers
    ]


def test_html_has_a_chart_per_figure_and_escapes_names(rt, simulated, tmp_path):
    _, report = simulated
    html = render_html(report, rt.settings.templates_dir)
    assert html.count("<svg") == 6 and html.count("</svg>") == 6
    assert "<b>Boss</b>" not in html
    assert "Bea &lt;b&gt;Boss&lt;/b&gt;" in html
    assert "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    # Deterministic: the same data gives the same bytes.
    first = write_report(report, tmp_path / "a", rt.settings.templates_dir)
    second = write_report(report, tmp_path / "b", rt.settings.templates_dir)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_csv_parses_and_carries_the_same_numbers(simulated):
    _, report = simulated
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert [r["manager_email"] for r in rows] == [f.email for f in report.managers]
    for row, f in zip(rows, report.managers, strict=True):
        assert row["manager_name"] == f.name
        for column in ("due", "held_or_documented", "documented", "skipped", "pips"):
            assert int(row[column]) == getattr(f, column)
        for column in ("overdue_checkins", "overdue_pip_reviews", "overdue_action_items"):
            assert int(row[column]) == getattr(f, column)
        for column in ("completion_pct", "documented_pct", "delay_median_hours", "delay_p90_hours"):
            assert float(row[column]) == pytest.approx(getattr(f, column), abs=0.005)
        assert int(row["pips_closed"]) == f.pip_states.get("closed", 0)
        assert int(row["pip_outcome_successful"]) == f.pip_outcomes.get("successful", 0)


def test_period_limits_the_meetings(rt, clock, simulated):
    org, report = simulated
    cut = clock.now() - dt.timedelta(weeks=2)
    with rt.factory() as session:
        recent = consistency_report(session, org, as_of=clock.now(), period_from=cut)
        due = sum(
            1
            for o in session.scalars(select(Occurrence))
            if cut <= o.end_at <= clock.now() and o.state != "cancelled"
        )
    assert recent.org.due == due < report.org.due


# --- the pure part ------------------------------------------------------------------------


def test_percentile_interpolates_between_ranks():
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.9) == 7.0
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([10, 0, 20, 30, 40, 50, 60, 70, 80, 90], 0.9) == pytest.approx(81)


def test_teams_follow_the_current_manager_and_names_stay_data():
    people = {
        1: PersonInfo(1, '=HYPERLINK("x")', "a@x.test", "UTC", None, True),
        2: PersonInfo(2, "Bo", "b@x.test", "UTC", None, True),
        3: PersonInfo(3, "Cy", "c@x.test", "UTC", 2, True),  # moved from 1 to 2
    }
    now = dt.datetime(2026, 4, 1, tzinfo=dt.UTC)
    facts = Facts(
        "Org",
        now,
        None,
        None,
        people,
        checkins=[CheckinCount(1, 2, "held", True, 3), CheckinCount(1, 2, "invited", False, 1)],
        delays=[Delay(1, 2, 1.0), Delay(1, 2, 2.0), Delay(1, 2, 30.0)],
        overdue=[Overdue("checkin", 1, 2)],
        pips=[PipFact(2, 2, "active", None)],
    )
    report = aggregate(facts)
    by_manager = {f.key: f for f in report.managers}
    by_team = {f.key: f for f in report.teams}
    assert by_manager[1].due == 4 and by_manager[1].documented == 3
    assert by_manager[1].direct_reports == 0 and by_team[2].direct_reports == 1
    assert by_team[2].due == 4 and by_team[2].overdue_checkins == 1 and by_team[2].pips == 1
    assert 1 not in by_team
    assert by_manager[1].delay_median_hours == 2.0
    # A name a spreadsheet would run as a formula is written as text.
    (row,) = [
        r
        for r in csv.DictReader(io.StringIO(render_csv(report)))
        if r["manager_email"] == "a@x.test"
    ]
    assert row["manager_name"] == '\'=HYPERLINK("x")'
    assert aggregate(facts) == report
