"""PIPs from templates, acknowledgements, warnings and the escalation ladder, end to end on
a real database and a simulated clock."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import zoneinfo
from pathlib import Path

import icalendar
import pytest
from sqlalchemy import select

from automation.config import load_goals, load_pip_templates, parse_pip_template
from automation.db import transaction
from automation.domain.commands import parse_warnings
from automation.emails import render
from automation.errors import ConfigError
from automation.models import (
    Acknowledgement,
    AuditEntry,
    CorrectiveAction,
    Escalation,
    InboundMessage,
    OutboundMessage,
    Pip,
    PipGoal,
    PipReview,
    Task,
    TaskState,
)
from automation.services import pips
from automation.services.escalation import subtract_business_days
from automation.services.loop import run_due
from automation.settings import PROJECT_ROOT
from automation.template_samples import SAMPLES
from tests.conftest import start_organization
from tests.test_loop import advance_until, deliver, outbox, reply_to

# A manager with a manager of their own, so the ladder can reach the manager's manager.
PEOPLE = """email,name,timezone,manager_email,hr_partner_email
ceo@acme.test,Cleo Chief,America/New_York,,hr@acme.test
boss@acme.test,Bea Boss,America/New_York,ceo@acme.test,hr@acme.test
hr@acme.test,Hal Hr,Europe/London,ceo@acme.test,hr@acme.test
ana@acme.test,Ana Souza,Europe/Berlin,boss@acme.test,hr@acme.test
"""

GOALS = """[[goal]]
goal = "Answer customer tickets on time"
success_criteria = "95% answered within 2 business days, four weeks running"
owner = "employee"
due = "2026-04-30"

[[goal]]
goal = "Weekly written status update"
success_criteria = "Sent every Friday by 17:00"
owner = "manager"
"""


@pytest.fixture
def org(rt, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path, PEOPLE)


def templates(rt):  # type: ignore[no-untyped-def]
    return load_pip_templates(rt.settings)


def start(rt, org: int, tmp_path: Path, template: str = "90-day") -> int:  # type: ignore[no-untyped-def]
    goals_file = tmp_path / "goals.toml"
    goals_file.write_text(GOALS)
    with transaction(rt.factory) as session:
        pip = pips.start_pip_from_template(
            rt, session, org, "ana@acme.test", templates(rt)[template], load_goals(goals_file)
        )
        pip_id = pip.id
    run_due(rt)
    return pip_id


def pip_calendar(rt, who: str, org: int):  # type: ignore[no-untyped-def]
    """(the PIP's weekly series, its review meetings by start) in ``who``'s calendar."""
    cal = icalendar.Calendar.from_ical((rt.settings.calendars / f"{who}.ics").read_bytes())
    events = [e for e in cal.walk("VEVENT") if str(e["uid"]).startswith(f"pip-{org}-")]
    series = [e for e in events if "-review-" not in str(e["uid"])]
    meetings = sorted((e for e in events if "-review-" in str(e["uid"])),
                      key=lambda e: e["dtstart"].dt)  # fmt: skip
    assert len(series) == 1
    return series[0], meetings


def _ics_uids(rt, who: str) -> list[str]:  # type: ignore[no-untyped-def]
    cal = icalendar.Calendar.from_ical((rt.settings.calendars / f"{who}.ics").read_bytes())
    return [str(e["uid"]) for e in cal.walk("VEVENT")]


def milestones(rt, pip_id: int, kind: str | None = None) -> list[PipReview]:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        query = select(PipReview).where(PipReview.pip_id == pip_id).order_by(PipReview.due_at)
        if kind:
            query = query.where(PipReview.kind == kind)
        return list(session.scalars(query))


def steps(rt, kind: str, subject_id: int) -> list[Escalation]:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        return list(
            session.scalars(
                select(Escalation)
                .where(Escalation.subject_kind == kind, Escalation.subject_id == subject_id)
                .order_by(Escalation.step)
            )
        )


def recipients(rt, message_id: int | None) -> list[str]:  # type: ignore[no-untyped-def]
    with rt.factory() as session:
        message = session.get(OutboundMessage, message_id)
        assert message is not None
        return list(message.recipients)


# --- configuration ----------------------------------------------------------------------------


def test_the_shipped_templates_load_with_their_ladders(rt):
    found = templates(rt)
    assert sorted(found) == ["30-day", "60-day", "90-day"]
    ninety = found["90-day"]
    assert ninety.duration_days == 90
    assert [n for n, _ in ninety.reviews] == ["Day 30 review", "Day 60 review", "Final review"]
    assert [s.after_business_days for s in ninety.ladder] == [-1, 0, 2, 4]
    assert [s.notify for s in ninety.ladder] == [
        "manager",
        "manager",
        "hr_partner",
        "managers_manager",
    ]
    assert len(ninety.documentation) == 4


def test_a_bad_template_names_file_field_and_fix():
    bad = {
        "name": "x",
        "title": "X",
        "duration_days": 30,
        "review": [{"name": "Late", "after_days": 40}],
        "documentation": {"required": ["Outcome"]},
        "escalation": [
            {"after_business_days": 2, "notify": "manager"},
            {"after_business_days": 1, "notify": "boss"},
        ],
    }
    with pytest.raises(ConfigError) as err:
        parse_pip_template(bad, "config/pips/x.toml", ["reminder", "escalation"])
    fields = {p.field for p in err.value.problems}
    assert {
        "review[0].after_days",
        "escalation[1].after_business_days",
        "escalation[1].notify",
    } <= (fields)
    assert all(p.file == "config/pips/x.toml" for p in err.value.problems)


def test_goals_file_as_csv_and_its_errors(tmp_path: Path):
    good = tmp_path / "goals.csv"
    good.write_text(
        "goal,success_criteria,owner,due\nShip X,Merged and deployed,employee,2026-04-01\n"
    )
    assert [(g.goal, g.due) for g in load_goals(good)] == [("Ship X", dt.date(2026, 4, 1))]
    bad = tmp_path / "bad.csv"
    bad.write_text("goal,success_criteria,owner,due\nShip X,,employee,soon\n")
    with pytest.raises(ConfigError) as err:
        load_goals(bad)
    assert {p.field for p in err.value.problems} == {"row[1].success_criteria", "row[1].due"}


def test_new_templates_render_with_their_samples():
    for name in ("pip_plan", "warning", "unacknowledged"):
        rendered = render(PROJECT_ROOT / "templates", name, SAMPLES[name])
        assert rendered.subject and "&lt;script&gt;" not in rendered.text
        assert "<script>" not in rendered.html  # the manager's name is escaped


def test_subtracting_business_days_skips_weekends_and_holidays():
    friday = dt.datetime(2026, 3, 6, 15, 0, tzinfo=dt.UTC)
    monday = dt.datetime(2026, 3, 9, 15, 0, tzinfo=dt.UTC)
    weekdays = frozenset(range(5))
    assert subtract_business_days(monday, 1, "UTC", weekdays, []) == friday
    assert subtract_business_days(monday, 1, "UTC", weekdays, [friday.date()]) == friday - (
        dt.timedelta(days=1)
    )


def test_warning_lines_are_parsed_with_expectation_and_consequence():
    text = (
        "Good talk overall.\n#warning Missed the March deadline without notice\n"
        "Expectation: flag risks two days ahead\nConsequence: a PIP\n\n"
        "#warning Late again | expectation: on time | consequence: HR review\n"
    )
    drafts = parse_warnings(text)
    assert [(d.reason, d.expectation, d.consequence) for d in drafts] == [
        ("Missed the March deadline without notice", "flag risks two days ahead", "a PIP"),
        ("Late again", "on time", "HR review"),
    ]
    assert parse_warnings("no warning here\n> #warning quoted? no, still a line") == []


# --- starting a PIP -----------------------------------------------------------------------------


def test_pip_start_creates_goals_checkins_reviews_invite_and_plan(rt, org, tmp_path, clock):
    pip_id = start(rt, org, tmp_path)
    with rt.factory() as session:
        pip = session.get(Pip, pip_id)
        goals = list(session.scalars(select(PipGoal).where(PipGoal.pip_id == pip_id)))
    assert pip.template == "90-day" and pip.ends_on - pip.started_on == dt.timedelta(days=90)
    assert [g.owner for g in goals] == ["employee", "manager"] and goals[1].owner_id is not None
    checkins = milestones(rt, pip_id, "checkin")
    reviews = milestones(rt, pip_id, "review")
    assert 12 <= len(checkins) <= 13
    gaps = {b.due_at - a.due_at for a, b in zip(checkins, checkins[1:], strict=False)}
    assert gaps <= {
        dt.timedelta(days=7),
        dt.timedelta(days=7, hours=1),
        dt.timedelta(days=6, hours=23),
    }
    assert [r.name for r in reviews] == ["Day 30 review", "Day 60 review", "Final review"]
    # The weekly check-ins are one series in both people's calendars, and each review is a
    # meeting of its own on a business day, right after the check-in slot, ending when the
    # review falls due.
    series, meetings = pip_calendar(rt, "ana@acme.test", org)
    assert series["rrule"]["COUNT"] == [len(checkins)]
    assert [str(m["summary"]) for m in meetings] == [f"PIP {r.name}: Ana Souza" for r in reviews]
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    slot_end = series["dtend"].dt.astimezone(berlin).time()
    for meeting, review in zip(meetings, reviews, strict=True):
        begins, end = meeting["dtstart"].dt, meeting["dtend"].dt
        assert end.astimezone(dt.UTC) == review.due_at
        assert begins.astimezone(berlin).time() == slot_end  # no overlap with the check-in
        assert begins.astimezone(berlin).weekday() < 5
        days = {"Day 30 review": 30, "Day 60 review": 60, "Final review": 90}[review.name]
        planned = (pip.started_on + dt.timedelta(days=days)).astimezone(berlin).date()
        assert dt.timedelta(0) <= planned - begins.date() < dt.timedelta(3)  # a weekend
    assert set(_ics_uids(rt, "boss@acme.test")) >= {str(m["uid"]) for m in meetings}
    # The plan goes to the employee from a signed address that acknowledges it.
    plans = outbox(rt, "pip_plan")
    assert [m.recipients for m in plans] == [["ana@acme.test"]]
    text = email.message_from_bytes(plans[0].raw, policy=email.policy.default)
    body = text.get_body(("plain",)).get_content()
    assert "Answer customer tickets on time" in body and "Day 60 review" in body
    assert "+" in str(text["Reply-To"]) and "-a" in str(text["Reply-To"])
    with rt.factory() as session:
        actions = set(session.scalars(select(AuditEntry.action)))
    assert {"pip.started", "pip.invited", "acknowledgement.requested"} <= actions


def test_a_second_active_pip_is_refused(rt, org, tmp_path):
    start(rt, org, tmp_path)
    with pytest.raises(pips.PipError, match="already has an active PIP"):
        start(rt, org, tmp_path)


# --- acknowledgement -----------------------------------------------------------------------------


def test_the_employees_reply_is_the_acknowledgement(rt, org, tmp_path, clock):
    pip_id = start(rt, org, tmp_path)
    plan = outbox(rt, "pip_plan")[0]
    # A stranger cannot acknowledge for her.
    deliver(rt, reply_to(rt, plan, "mallory@evil.test", "ok"), "stranger")
    deliver(rt, reply_to(rt, plan, "ana@acme.test", "Received. I will do my best."), "ana")
    with rt.factory() as session:
        ack = session.scalars(
            select(Acknowledgement).where(Acknowledgement.subject_kind == "pip")
        ).one()
        inbound = {m.from_address: m for m in session.scalars(select(InboundMessage))}
    assert ack.subject_id == pip_id and ack.acknowledged_at is not None
    assert ack.source_message_id == inbound["ana@acme.test"].id
    assert ack.comment and "do my best" in ack.comment
    assert inbound["mallory@evil.test"].state == "quarantined"
    assert "not the person asked to acknowledge" in inbound["mallory@evil.test"].quarantine_reason
    # Acknowledged in time: the acknowledgement ladder never sends anything.
    advance_until(rt, clock, clock.now() + dt.timedelta(days=10))
    assert steps(rt, "acknowledgement", ack.id) == []


def test_an_unanswered_acknowledgement_escalates_once_per_step(rt, org, tmp_path, clock):
    start(rt, org, tmp_path)
    with rt.factory() as session:
        ack = session.scalars(
            select(Acknowledgement).where(Acknowledgement.subject_kind == "pip")
        ).one()
    advance_until(rt, clock, clock.now() + dt.timedelta(days=12))
    run_due(rt)
    sent = steps(rt, "acknowledgement", ack.id)
    assert [(s.step, recipients(rt, s.outbound_message_id)) for s in sent] == [
        (0, ["ana@acme.test"]),
        (1, ["hr@acme.test"]),
    ]
    # The reminder to Ana carries the acknowledging address; her reply to it still counts.
    with rt.factory() as session:
        reminder = session.get(OutboundMessage, sent[0].outbound_message_id)
    deliver(rt, reply_to(rt, reminder, "ana@acme.test", "Acknowledged."), "late-ack")
    with rt.factory() as session:
        assert session.get(Acknowledgement, ack.id).acknowledged_at is not None


# --- the ladder for PIP reviews ---------------------------------------------------------------


def test_a_late_manager_walks_the_whole_ladder_once_and_it_stops_when_documented(
    rt, org, tmp_path, clock
):
    pip_id = start(rt, org, tmp_path)
    review = milestones(rt, pip_id, "review")[0]  # Day 30 review
    # Nobody documents anything; go to 8 days after the review was due.
    advance_until(rt, clock, review.due_at + dt.timedelta(days=8))
    sent = steps(rt, "pip_review", review.id)
    assert [s.step for s in sent] == [0, 1, 2, 3]
    assert [recipients(rt, s.outbound_message_id) for s in sent] == [
        ["boss@acme.test"],
        ["boss@acme.test"],
        ["hr@acme.test"],
        ["ceo@acme.test"],
    ]
    assert [s.action for s in sent] == ["remind", "remind", "escalate", "escalate"]
    assert sent[0].created_at < review.due_at <= sent[1].created_at  # before, then at due
    # The tick again (and again) sends nothing twice.
    before = len(outbox(rt))
    run_due(rt)
    run_due(rt)
    assert len(outbox(rt)) == before
    # Each step sent to a third party can be acknowledged by reply.
    with rt.factory() as session:
        hr_step = session.get(OutboundMessage, sent[2].outbound_message_id)
    deliver(rt, reply_to(rt, hr_step, "hr@acme.test", "Seen, talking to Bea."), "hr-ack")
    with rt.factory() as session:
        ack = session.scalars(
            select(Acknowledgement).where(
                Acknowledgement.subject_kind == "escalation",
                Acknowledgement.subject_id == sent[2].id,
            )
        ).one()
    assert ack.acknowledged_at is not None
    # The next review: the manager documents it at the due time; the later steps never come.
    second = milestones(rt, pip_id, "review")[1]
    advance_until(rt, clock, second.due_at + dt.timedelta(minutes=5))
    with rt.factory() as session:
        prompt = session.scalars(
            select(OutboundMessage).where(
                OutboundMessage.idempotency_key == f"pip_review:{second.id}"
            )
        ).one()
    answers = "1. As agreed\n2. Weekly pairing\n3. On track\n4. Outcome: on track"
    deliver(rt, reply_to(rt, prompt, "boss@acme.test", answers), "rev")
    advance_until(rt, clock, second.due_at + dt.timedelta(days=10))
    assert [s.step for s in steps(rt, "pip_review", second.id)] == [0, 1]
    with rt.factory() as session:
        assert session.get(PipReview, second.id).documented_at is not None


# --- extend and close -----------------------------------------------------------------------------


def test_extending_shifts_open_reviews_and_adds_checkins(rt, org, tmp_path, clock):
    pip_id = start(rt, org, tmp_path, "30-day")
    reviews_before = {r.name: r.due_at for r in milestones(rt, pip_id, "review")}
    checkins_before = len(milestones(rt, pip_id, "checkin"))
    with transaction(rt.factory) as session:
        pips.extend_pip(rt, session, org, "ana@acme.test", 14, reason="progress, not there yet")
    run_due(rt)
    reviews_after = {r.name: r for r in milestones(rt, pip_id, "review")}
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    for name, due in reviews_before.items():
        # Fourteen days later at the same wall time in Ana's zone (summer time began between).
        moved = reviews_after[name].due_at.astimezone(berlin)
        was = due.astimezone(berlin)
        assert (moved.date() - was.date(), moved.time()) == (dt.timedelta(days=14), was.time())
        assert reviews_after[name].original_due_at == due
    assert len(milestones(rt, pip_id, "checkin")) == checkins_before + 2
    final = reviews_after["Final review"]
    with rt.factory() as session:
        task = session.scalars(select(Task).where(Task.key == f"pip_review:{final.id}")).one()
        pip = session.get(Pip, pip_id)
    assert task.due_at == final.due_at
    assert pip.extended_days == 14 and pip.calendar_sequence == 1
    event, meetings = pip_calendar(rt, "ana@acme.test", org)
    assert event["rrule"]["COUNT"] == [checkins_before + 2] and int(event["sequence"]) == 1
    # The review meetings moved with their reviews (same uids, a higher sequence).
    assert [m["dtend"].dt.astimezone(dt.UTC) for m in meetings] == [
        r.due_at for r in sorted(reviews_after.values(), key=lambda r: r.due_at)
    ]
    assert {int(m["sequence"]) for m in meetings} == {1}


def test_closing_records_the_outcome_and_stops_the_milestones(rt, org, tmp_path, clock):
    pip_id = start(rt, org, tmp_path, "30-day")
    with (
        pytest.raises(pips.PipError, match="unknown outcome"),
        transaction(rt.factory) as session,
    ):
        pips.close_pip(rt, session, org, "ana@acme.test", "great")
    with transaction(rt.factory) as session:
        pips.close_pip(rt, session, org, "ana@acme.test", "successful", note="all goals met")
    with rt.factory() as session:
        pip = session.get(Pip, pip_id)
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "pip.closed")).one()
    assert (pip.state, pip.outcome, pip.closing_note) == ("closed", "successful", "all goals met")
    assert entry.data["outcome"] == "successful"
    run_due(rt)  # the calendar is rewritten: the series and the meetings ahead are cancelled
    series, meetings = pip_calendar(rt, "ana@acme.test", org)
    assert str(series["status"]) == "CANCELLED"
    assert meetings and {str(m["status"]) for m in meetings} == {"CANCELLED"}
    prompts_before = len(outbox(rt, "pip_review"))
    advance_until(rt, clock, clock.now() + dt.timedelta(days=35))
    assert len(outbox(rt, "pip_review")) == prompts_before
    with rt.factory() as session:
        assert not list(
            session.scalars(select(Escalation).where(Escalation.subject_kind == "pip_review"))
        )
    with rt.factory() as session:  # closed, or PostgreSQL's schema drop waits on it
        assert [s.id for s in pips.list_pips(session, org)] == [pip_id]


# --- warnings -------------------------------------------------------------------------------------


def _followup_for_ana(rt, clock):  # type: ignore[no-untyped-def]
    for _ in range(24 * 21):
        prompts = [m for m in outbox(rt, "followup") if m.recipients == ["boss@acme.test"]]
        for prompt in prompts:
            with rt.factory() as session:
                from automation.services.messages import load_checkin

                ctx = load_checkin(session, prompt.organization_id, prompt.occurrence_id)
                if ctx and ctx.employee.email == "ana@acme.test":
                    return prompt
        clock.advance(dt.timedelta(hours=1))
        run_due(rt)
    raise AssertionError("no follow-up prompt for Ana's check-in")


def test_warning_from_the_managers_reply_is_linked_to_the_checkin(rt, org, clock):
    prompt = _followup_for_ana(rt, clock)
    body = (
        "1. Good progress on the export.\n"
        "#warning Missed two customer deadlines without notice\n"
        "Expectation: flag any risk two days ahead\n"
        "Consequence: a performance improvement plan\n"
    )
    deliver(rt, reply_to(rt, prompt, "boss@acme.test", body), "warn")
    with rt.factory() as session:
        action = session.scalars(select(CorrectiveAction)).one()
        source = session.get(InboundMessage, action.source_message_id)
        ack = session.scalars(
            select(Acknowledgement).where(Acknowledgement.subject_kind == "corrective_action")
        ).one()
    assert action.occurrence_id == prompt.occurrence_id and source.state == "recorded"
    assert action.reason == "Missed two customer deadlines without notice"
    assert action.expectation == "flag any risk two days ahead"
    assert action.consequence == "a performance improvement plan"
    assert ack.subject_id == action.id and ack.acknowledged_at is None
    assert [m.recipients for m in outbox(rt, "warning")] == [["ana@acme.test"]]
    # Ana acknowledges the warning by replying to it.
    deliver(rt, reply_to(rt, outbox(rt, "warning")[0], "ana@acme.test", "Understood."), "ack")
    with rt.factory() as session:
        assert session.get(Acknowledgement, ack.id).acknowledged_at is not None


def test_a_strangers_warning_is_quarantined_and_an_employees_is_ignored(rt, org, clock):
    prompt = _followup_for_ana(rt, clock)
    deliver(rt, reply_to(rt, prompt, "mallory@evil.test", "#warning you are fired"), "evil")
    deliver(rt, reply_to(rt, prompt, "ana@acme.test", "#warning my manager is late"), "ana")
    with rt.factory() as session:
        assert list(session.scalars(select(CorrectiveAction))) == []
        states = {m.from_address: m.state for m in session.scalars(select(InboundMessage))}
        ignored = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "command.warning_ignored")
        ).all()
    assert states["mallory@evil.test"] == "quarantined"
    assert states["ana@acme.test"] == "recorded" and len(ignored) == 1


def test_hr_creates_a_warning_linked_to_the_active_pip(rt, org, tmp_path):
    pip_id = start(rt, org, tmp_path, "30-day")
    with transaction(rt.factory) as session:
        from automation.models import Person

        ana = session.scalars(select(Person).where(Person.email == "ana@acme.test")).one()
        pips.create_warning(
            rt,
            session,
            org,
            ana,
            reason="Repeated absence from the weekly check-in",
            expectation="Attend every check-in",
            consequence="The plan ends unsuccessfully",
            kind="corrective_action",
            actor="hr@acme.test",
        )
    run_due(rt)
    with rt.factory() as session:
        action = session.scalars(select(CorrectiveAction)).one()
        tasks = session.scalars(select(Task).where(Task.key.like("escalate:acknowledgement:%")))
        pending = [t for t in tasks if t.state == TaskState.PENDING]
    assert action.pip_id == pip_id and action.kind == "corrective_action"
    assert pending  # its acknowledgement ladder is waiting


# --- the command line -------------------------------------------------------------------------


def test_cli_pip_start_list_extend_close_and_warning(tmp_path: Path):
    from tests.test_cli import automation

    env = {"AUTOMATION_DATA_DIR": str(tmp_path / "data"), "AUTOMATION_SECRET_KEY": "t"}
    people = tmp_path / "people.csv"
    people.write_text(PEOPLE)
    assert automation("people", "import", str(people), env=env).returncode == 0
    goals = tmp_path / "goals.csv"
    goals.write_text("goal,success_criteria,owner,due\nShip X,Deployed to prod,employee,\n")
    started = automation(
        "pip", "start", "ana@acme.test", "--template", "60-day", "--goals", str(goals), env=env
    )
    assert started.returncode == 0, started.stderr
    assert b"started for ana@acme.test" in started.stdout
    unknown = automation(
        "pip", "start", "ana@acme.test", "--template", "7-day", "--goals", str(goals), env=env
    )
    assert unknown.returncode != 0 and b"no PIP template '7-day'" in unknown.stderr
    extended = automation("pip", "extend", "ana@acme.test", "--days", "30", env=env)
    assert extended.returncode == 0, extended.stderr
    warned = automation(
        "warning",
        "create",
        "ana@acme.test",
        "--reason",
        "Late",
        "--expectation",
        "On time",
        "--consequence",
        "Plan ends",
        env=env,
    )
    assert warned.returncode == 0, warned.stderr
    closed = automation("pip", "close", "ana@acme.test", "--outcome", "ended", env=env)
    assert closed.returncode == 0, closed.stderr
    listed = automation("pip", "list", "--json", env=env)
    import json

    [row] = json.loads(listed.stdout)
    assert (row["employee"], row["state"], row["outcome"]) == ("ana@acme.test", "closed", "ended")
    assert row["milestones"] > 13  # 60 days + 30 extension: 12-13 check-ins and 2 reviews


# --- the record that comes out of it ------------------------------------------------------------


def test_a_late_managers_pip_exports_as_a_complete_ordered_sourced_timeline(
    rt, org, tmp_path, clock
):
    """Issue 6's measure: a 90-day PIP walks the ladder with a late manager, stops when the
    review is documented, and the export reads as the whole story, in order, each statement
    tied to its source."""
    from automation.services.export import timeline, to_data

    pip_id = start(rt, org, tmp_path)
    plan = outbox(rt, "pip_plan")[0]
    deliver(rt, reply_to(rt, plan, "ana@acme.test", "Received and understood."), "ack")
    review = milestones(rt, pip_id, "review")[0]
    advance_until(rt, clock, review.due_at + dt.timedelta(days=8))  # nobody documents it
    with rt.factory() as session:
        prompt = session.scalars(
            select(OutboundMessage).where(
                OutboundMessage.idempotency_key == f"pip_review:{review.id}"
            )
        ).one()
    answers = "1. Goals agreed\n2. Pairing twice a week\n3. 80% on time\n4. At risk"
    deliver(rt, reply_to(rt, prompt, "boss@acme.test", answers), "late")
    advance_until(rt, clock, review.due_at + dt.timedelta(days=20))
    sent = steps(rt, "pip_review", review.id)
    assert [s.step for s in sent] == [0, 1, 2, 3]  # the ladder stopped once documented
    with rt.factory() as session:
        data = to_data(timeline(session, org, "ana@acme.test", "Europe/Berlin"))
        raws = {m.sha256: m.raw for m in session.scalars(select(InboundMessage))}
    events = data["events"]
    kinds = [e["kind"] for e in events]
    for needed in ("pip", "pip_review", "escalation", "record"):
        assert needed in kinds, needed
    assert any("acknowledg" in e["kind"] for e in events), sorted(set(kinds))
    assert any("goal" in e["kind"] for e in events), sorted(set(kinds))
    times = [e["time"] for e in events]
    assert times == sorted(times) and all(t.endswith(("+01:00", "+02:00")) for t in times)
    escalations = [e for e in events if e["kind"] == "escalation"]
    assert len(escalations) >= 4
    records = [e for e in events if e["kind"] == "record"]
    for event in records:  # every record names its source, and the source is the stored bytes
        inbound = [s for s in event["sources"] if s["kind"] == "inbound"]
        assert inbound and all(s["sha256"] in raws and s.get("verified") for s in inbound)
