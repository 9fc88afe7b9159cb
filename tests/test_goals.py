"""Goals, development plans, topics, closed items and the agenda's bulk inputs, on SQLite and
PostgreSQL: every coaching trigger and the carry-over rules from rows in a real database, the
loader's constant number of queries, the goals import, the CLI."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json

import pytest
from sqlalchemy import event, select

from automation.config import load_cadences, load_coaching, load_roles, parse_role
from automation.db import make_engine, migrate, session_factory, transaction
from automation.domain.agenda import EMPLOYEE, MANAGER, build_agenda
from automation.domain.agenda_replies import Closures, parse_closures, parse_topics
from automation.domain.coaching import TRIGGERS
from automation.errors import ConfigError, ImportRejected
from automation.models import (
    ActionItem,
    AgendaSnapshot,
    AgendaTopic,
    AuditEntry,
    CheckinSeries,
    ConversationRecord,
    Goal,
    GoalVersion,
    InboundMessage,
    Occurrence,
    Person,
    Pip,
    PipGoal,
)
from automation.models import Cadence as CadenceRow
from automation.people import apply_people, ensure_organization, parse_people_csv
from automation.services import agendas, goals
from automation.settings import PROJECT_ROOT, Settings

UTC = dt.UTC
NOW = dt.datetime(2026, 4, 13, 9, 0, tzinfo=UTC)  # a Monday; the agenda is built now
TARGET = NOW + dt.timedelta(days=1)  # the check-in whose agenda is built: Tuesday 09:00 UTC
SETTINGS = Settings(config_dir=PROJECT_ROOT / "config", templates_dir=PROJECT_ROOT / "templates")
RULES = load_coaching(SETTINGS)
ROLES = load_roles(SETTINGS)


def week(k: int) -> dt.datetime:
    """The start of the check-in ``k`` weeks from the target one (negative: earlier)."""
    return TARGET + dt.timedelta(weeks=k)


@pytest.fixture
def db(database_url):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    migrate(engine)
    yield engine, session_factory(engine)
    engine.dispose()


@dataclasses.dataclass
class World:
    org: int
    people: dict[str, int]  # email -> id
    series: dict[str, int]  # employee email -> series id
    occurrences: dict[tuple[str, int], int]  # (employee email, week) -> occurrence id

    def target(self, email: str) -> int:
        return self.occurrences[email, 0]


def people_csv(employees: list[str], role: bool = True) -> str:
    header = "email,name,timezone,manager_email,hr_partner_email" + (",active,role" if role else "")
    lines = [header, "boss@acme.test,Bea Boss,America/New_York,,hr@acme.test"]
    lines.append("hr@acme.test,Hal Hr,Europe/London,boss@acme.test,hr@acme.test")
    lines[-2:] = [line + (",true," if role else "") for line in lines[-2:]]
    for i, email in enumerate(employees):
        name = email.split("@")[0].title() + " Person"
        extra = f",true,{'engineer' if i % 2 == 0 else 'support-lead'}" if role else ""
        lines.append(f"{email},{name},Europe/Berlin,boss@acme.test,hr@acme.test{extra}")
    return "\n".join(lines) + "\n"


def build_world(session, employees: list[str], weeks=range(-8, 2)) -> World:  # type: ignore[no-untyped-def]
    org = ensure_organization(session, "acme", "Acme", NOW - dt.timedelta(days=400)).id
    rows = parse_people_csv(people_csv(employees), "people.csv")
    apply_people(session, org, rows, NOW - dt.timedelta(days=400))
    people = {p.email: p.id for p in session.scalars(select(Person))}
    (cadence,) = load_cadences(SETTINGS)
    row = CadenceRow(
        organization_id=org,
        name=cadence.name,
        source_file="one-on-one.toml",
        digest="0" * 64,
        definition=cadence.as_dict(),
        active=True,
        updated_at=NOW,
    )
    session.add(row)
    session.flush()
    series: dict[str, int] = {}
    occurrences: dict[tuple[str, int], int] = {}
    for email in employees:
        s = CheckinSeries(
            organization_id=org,
            cadence_id=row.id,
            manager_id=people["boss@acme.test"],
            employee_id=people[email],
            uid=f"series-{email}",
            rrule="FREQ=WEEKLY",
            dtstart_local="2026-01-01T10:00:00",
            timezone="Europe/Berlin",
            duration_minutes=30,
            sequence=0,
            active=True,
            created_at=NOW,
            updated_at=NOW,
        )
        session.add(s)
        session.flush()
        series[email] = s.id
        for k in weeks:
            occ = Occurrence(
                organization_id=org,
                series_id=s.id,
                recurrence_id=week(k),
                start_at=week(k),
                end_at=week(k) + dt.timedelta(minutes=30),
                state="held" if k < 0 else "invited",
                created_at=NOW,
                updated_at=NOW,
            )
            session.add(occ)
            session.flush()
            occurrences[email, k] = occ.id
    return World(org, people, series, occurrences)


_messages = iter(range(1, 10**6))


def message(session, org: int, at: dt.datetime) -> InboundMessage:  # type: ignore[no-untyped-def]
    raw = f"Message-ID: <{next(_messages)}@test>\r\n\r\nhello".encode()
    msg = InboundMessage(
        organization_id=org,
        raw=raw,
        sha256=hashlib.sha256(raw).hexdigest(),
        size=len(raw),
        source="test",
        state="recorded",
        received_at=at,
    )
    session.add(msg)
    session.flush()
    return msg


def record(  # type: ignore[no-untyped-def]
    session,
    world: World,
    email: str,
    k: int,
    *,
    rating: int | None = None,
    items: tuple[tuple[str, dt.date | None], ...] = (),
    version: int = 1,
    author: str = "boss@acme.test",
) -> ConversationRecord:
    """A record of the check-in ``k`` weeks from the target, an hour after it."""
    at = week(k) + dt.timedelta(hours=1)
    occ = session.get(Occurrence, world.occurrences[email, k])
    occ.documented_at = occ.documented_at or at
    rec = ConversationRecord(
        organization_id=world.org,
        subject_kind="occurrence",
        subject_id=occ.id,
        version=version,
        source_message_id=message(session, world.org, at).id,
        author_id=world.people[author],
        body="",
        answers={},
        rating=rating,
        notes="",
        commands=[],
        created_at=at,
    )
    session.add(rec)
    session.flush()
    for text, due in items:
        session.add(
            ActionItem(
                organization_id=world.org,
                record_id=rec.id,
                owner_id=world.people[email],
                text=text,
                due_on=due,
                done=False,
                created_at=at,
            )
        )
    session.flush()
    return rec


def set_state(session, world: World, email: str, k: int, state: str) -> None:  # type: ignore[no-untyped-def]
    occ = session.get(Occurrence, world.occurrences[email, k])
    occ.state = state
    occ.documented_at = None


def add_goal(session, world, email, title, updated, status="on_track"):  # type: ignore[no-untyped-def]
    goal = Goal(
        organization_id=world.org,
        person_id=world.people[email],
        key=goals.goal_key(title),
        source="csv",
        created_by="import",
        created_at=updated,
    )
    session.add(goal)
    session.flush()
    session.add(
        GoalVersion(
            organization_id=world.org,
            goal_id=goal.id,
            version=1,
            title=title,
            success_criteria="measured",
            owner="employee",
            owner_id=world.people[email],
            status=status,
            note="",
            source="csv",
            author="import",
            created_at=updated,
        )
    )
    session.flush()
    return goal


def add_pip(session, world, email, started):  # type: ignore[no-untyped-def]
    pip = Pip(
        organization_id=world.org,
        employee_id=world.people[email],
        manager_id=world.people["boss@acme.test"],
        title="90-day performance improvement plan",
        started_on=started,
        ends_on=started + dt.timedelta(days=90),
        state="active",
        ladder=[],
        created_at=started,
    )
    session.add(pip)
    session.flush()
    session.add(
        PipGoal(
            organization_id=world.org,
            pip_id=pip.id,
            position=1,
            goal="Answer tickets on time",
            success_criteria="95% within 2 business days",
            owner="employee",
            owner_id=world.people[email],
            created_at=started,
        )
    )
    session.flush()
    return pip


def person(session, world: World, email: str) -> Person:  # type: ignore[no-untyped-def]
    return session.get(Person, world.people[email])


# --- every trigger, from real rows ------------------------------------------------------------


def test_each_coaching_trigger_fires_from_the_database_only_in_the_managers_agenda(db):
    """``ana`` has every trigger's condition; ``kai`` none of them."""
    _, factory = db
    with transaction(factory) as session:
        w = build_world(session, ["ana@acme.test", "kai@acme.test"])
        # Ratings 4, 3, 2 on the check-ins 8, 7 and 6 weeks ago; an item recorded 8 weeks ago,
        # due before the check-in 7 weeks ago: overdue at those 7, 6, 5, 4 weeks ago and now.
        due = (week(-7) - dt.timedelta(days=1)).date()
        record(session, w, "ana@acme.test", -8, rating=4, items=(("Send the plan", due),))
        record(session, w, "ana@acme.test", -7, rating=3)
        record(session, w, "ana@acme.test", -6, rating=2)
        record(session, w, "ana@acme.test", -5)
        record(session, w, "ana@acme.test", -4)
        for k in (-3, -2, -1):
            set_state(session, w, "ana@acme.test", k, "skipped")
        add_goal(session, w, "ana@acme.test", "Ship the export", NOW - dt.timedelta(weeks=5))
        add_pip(session, w, "ana@acme.test", week(-2))  # after the last held check-in
        # kai: steady ratings, an item not yet due, a goal updated last week, no PIP.
        for k in range(-8, 0):
            record(session, w, "kai@acme.test", k, rating=3)
        record(
            session, w, "kai@acme.test", -1, items=(("Book training", TARGET.date()),), version=2
        )
        add_goal(session, w, "kai@acme.test", "Hire", NOW - dt.timedelta(weeks=1))
    with factory() as session:
        inputs = agendas.agenda_inputs(
            session, w.org, [w.target("ana@acme.test"), w.target("kai@acme.test")], NOW, roles=ROLES
        )
    ana, kai = inputs[w.target("ana@acme.test")], inputs[w.target("kai@acme.test")]
    manager = build_agenda(ana, MANAGER, NOW, RULES)
    assert [p.trigger for p in manager.coaching] == list(TRIGGERS)
    why = {p.trigger: p.why for p in manager.coaching}
    assert why["action_item_overdue"] == (
        f"[1] Send the plan (Ana Person): due {due.day} Feb 2026, overdue at 5 check-ins",
    )
    assert why["rating_trend"] == ("Ratings of the last 3 rated check-ins: 4 → 3 → 2",)
    assert why["skipped_in_a_row"][0].startswith("The last 3 check-ins did not take place")
    assert build_agenda(ana, EMPLOYEE, NOW, RULES).coaching == ()
    assert build_agenda(kai, MANAGER, NOW, RULES).coaching == ()
    assert ana.role is not None and ana.role.name == "engineer"
    assert kai.role is not None and kai.role.name == "support-lead"


# --- carry-over: items closed in a record drop off, numbers are the manager's -----------------


def test_items_carry_over_until_closed_by_their_number_on_the_managers_agenda(db):
    _, factory = db
    ana = "ana@acme.test"
    with transaction(factory) as session:
        w = build_world(session, [ana])
        record(session, w, ana, -3, items=(("Draft the plan", None), ("Book training", None)))
        # A correction restates one item: still one item.
        record(session, w, ana, -3, items=(("draft the plan", None),), version=2)
        record(session, w, ana, -2, items=(("Share the roadmap", None),))
    with transaction(factory) as session:
        inputs = agendas.agenda_inputs(session, w.org, [w.target(ana)], NOW)
        first = build_agenda(inputs[w.target(ana)], MANAGER, NOW, RULES)
        assert [(i.number, i.text) for i in first.action_items] == [
            (1, "draft the plan"),
            (2, "Book training"),
            (3, "Share the roadmap"),
        ]
        agendas.record_agenda(session, w.org, first, person(session, w, "boss@acme.test"), NOW)
        # A record added after the agenda went out: a new item, numbered after the others.
        record(session, w, ana, -1, items=(("Fix the build", None),))
    # The manager's reply to this check-in's follow-up: "#done 2" and "Done: the plan".
    with transaction(factory) as session:
        done = agendas.close_items(
            session,
            w.org,
            w.target(ana),
            person(session, w, "boss@acme.test"),
            parse_closures("#done 2, 7\nDone: draft the plan\n#done 2"),
            NOW + dt.timedelta(days=1),
            record_id=None,
        )
    assert done == [
        "item 7: not on the agenda (its items: 1, 2, 3); nothing closed",
        "closed item 2 “Book training”",
        "closed item “draft the plan”",
    ]
    with transaction(factory) as session:
        again = agendas.close_items(
            session,
            w.org,
            w.target(ana),
            person(session, w, "boss@acme.test"),
            Closures((2,), ("nothing like this",)),
            NOW + dt.timedelta(days=1),
        )
        assert again == [
            "item 2 “Book training” was already closed",
            "“nothing like this”: no open item matches; nothing closed (close it by its "
            "number: #done 2)",
        ]
        closed = session.scalars(select(ActionItem).where(ActionItem.done.is_(True))).all()
        assert sorted(i.text for i in closed) == [
            "Book training",
            "Draft the plan",
            "draft the plan",
        ]
        audited = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "action_item.closed")
        ).all()
        assert len(audited) == 2
    # The next check-in's agenda: the closed items dropped off.
    with factory() as session:
        nxt = agendas.agenda_inputs(session, w.org, [w.occurrences[ana, 1]], NOW)
    later = build_agenda(nxt[w.occurrences[ana, 1]], MANAGER, NOW, RULES)
    assert [(i.number, i.text) for i in later.action_items] == [
        (1, "Share the roadmap"),
        (2, "Fix the build"),
    ]


def test_an_update_of_a_sent_agenda_keeps_its_numbers(db):
    _, factory = db
    ana = "ana@acme.test"
    with transaction(factory) as session:
        w = build_world(session, [ana])
        record(session, w, ana, -2, items=(("A", None), ("B", None), ("C", None)))
        inputs = agendas.agenda_inputs(session, w.org, [w.target(ana)], NOW)
        sent = build_agenda(inputs[w.target(ana)], MANAGER, NOW)
        boss = person(session, w, "boss@acme.test")
        agendas.record_agenda(session, w.org, sent, boss, NOW)
        assert agendas.record_agenda(session, w.org, sent, boss, NOW).sequence == 1  # once
        assert agendas.next_sequence(session, w.org, w.target(ana), MANAGER) == 2
        agendas.close_items(session, w.org, w.target(ana), boss, Closures((1,)), NOW)
        record(session, w, ana, -1, items=(("D", None),))
    with factory() as session:
        inputs = agendas.agenda_inputs(session, w.org, [w.target(ana)], NOW)
    update = build_agenda(inputs[w.target(ana)], MANAGER, NOW)
    assert [(i.number, i.text) for i in update.action_items] == [(2, "B"), (3, "C"), (4, "D")]


def test_numbers_without_a_kept_agenda_are_the_current_ones(db):
    """An agenda sent before agendas were kept: #done counts as it would show now."""
    _, factory = db
    ana = "ana@acme.test"
    with transaction(factory) as session:
        w = build_world(session, [ana])
        record(session, w, ana, -2, items=(("A", None), ("B", None)))
        done = agendas.close_items(
            session, w.org, w.target(ana), person(session, w, "boss@acme.test"), Closures((2,)), NOW
        )
    assert done == ["closed item 2 “B”"]


# --- topics ------------------------------------------------------------------------------------


def test_topics_added_before_the_meeting_and_late_ones(db):
    _, factory = db
    ana = "ana@acme.test"
    with transaction(factory) as session:
        w = build_world(session, [ana])
        employee = person(session, w, ana)
        msg = message(session, w.org, NOW)
        topics = parse_topics("Hi Bea,\n\n+ Conference budget\n+ On-call rota\n\nThanks")
        added = agendas.add_topics(session, w.org, w.target(ana), employee, topics, NOW, msg.id)
        assert added.occurrence_id == w.target(ana) and len(added.topic_ids) == 2
        assert not added.late and added.moved_from is None
        # The same message processed again, and the same topic from the manager: nothing new.
        again = agendas.add_topics(session, w.org, w.target(ana), employee, topics, NOW, msg.id)
        assert again.topic_ids == ()
        boss = person(session, w, "boss@acme.test")
        dup = agendas.add_topics(session, w.org, w.target(ana), boss, ["conference budget"], NOW)
        assert dup.topic_ids == () and dup.duplicates == ("conference budget",)
        inputs = agendas.agenda_inputs(session, w.org, [w.target(ana)], NOW)
        agenda = build_agenda(inputs[w.target(ana)], EMPLOYEE, NOW)
        assert [(t.text, t.added_by_role) for t in agenda.topics] == [
            ("Conference budget", "employee"),
            ("On-call rota", "employee"),
        ]
        agendas.record_agenda(session, w.org, agenda, employee, NOW)
        # After the agenda went out: late, an update is due.
        late = agendas.add_topics(
            session, w.org, w.target(ana), boss, ["Promotion timeline"], NOW + dt.timedelta(hours=2)
        )
        assert late.late and late.occurrence_id == w.target(ana)
        inputs = agendas.agenda_inputs(session, w.org, [w.target(ana)], NOW)
        update = build_agenda(inputs[w.target(ana)], MANAGER, NOW + dt.timedelta(hours=2))
        assert [t.text for t in update.topics_since(NOW)] == ["Promotion timeline"]
        # Once the meeting has begun, a topic goes to the next check-in.
        after = agendas.add_topics(
            session, w.org, w.target(ana), employee, ["Next time: the offsite"], TARGET
        )
        assert after.occurrence_id == w.occurrences[ana, 1]
        assert after.moved_from == w.target(ana) and not after.late
        audited = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "agenda.topics_added")
        ).all()
        assert len(audited) == 3


def test_topics_of_a_check_in_that_did_not_take_place_carry_over(db):
    _, factory = db
    ana = "ana@acme.test"
    with transaction(factory) as session:
        w = build_world(session, [ana])
        employee = person(session, w, ana)
        earlier = NOW - dt.timedelta(weeks=2, days=1)
        for k, text in ((-2, "Skipped topic"), (-1, "Discussed topic")):
            session.add(
                AgendaTopic(
                    organization_id=w.org,
                    occurrence_id=w.occurrences[ana, k],
                    added_by_id=employee.id,
                    text=text,
                    position=0,
                    added_at=earlier,
                )
            )
        set_state(session, w, ana, -2, "skipped")
        record(session, w, ana, -1)
    with factory() as session:
        inputs = agendas.agenda_inputs(session, w.org, [w.target(ana)], NOW)
    agenda = build_agenda(inputs[w.target(ana)], EMPLOYEE, NOW)
    assert [(t.text, t.carried_over) for t in agenda.topics] == [("Skipped topic", True)]


# --- the bulk loader ---------------------------------------------------------------------------


def test_agenda_inputs_costs_the_same_number_of_queries_for_1_and_50_check_ins(db):
    engine, factory = db
    emails = [f"e{i:02d}@acme.test" for i in range(50)]
    with transaction(factory) as session:
        w = build_world(session, emails, weeks=range(-4, 1))
        for i, email in enumerate(emails):
            record(session, w, email, -2, rating=3, items=(("Item", None),))
            record(session, w, email, -1, rating=2, items=(("Other", None),))
            add_goal(session, w, email, f"Goal {i}", NOW - dt.timedelta(weeks=i % 8))
            goals.add_development_item(
                session, w.org, email, "skill", "Talk", NOW, actor="t", discuss_by=NOW.date()
            )
            agendas.add_topics(
                session, w.org, w.target(email), person(session, w, email), ["T"], NOW
            )
            if i % 10 == 0:
                add_pip(session, w, email, week(-1))
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT"):  # not SQLite's BEGIN IMMEDIATE
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with factory() as session:
            one = agendas.agenda_inputs(session, w.org, [w.target(emails[0])], NOW, roles=ROLES)
        single = len(statements)
        statements.clear()
        with factory() as session:
            many = agendas.agenda_inputs(
                session, w.org, [w.target(e) for e in emails], NOW, roles=ROLES
            )
        fifty = len(statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert single == fifty <= 8, (single, fifty)
    assert len(one) == 1 and len(many) == 50
    sample = many[w.target(emails[10])]
    assert [i.text for i in sample.action_items] == ["Item", "Other"]
    assert [c.rating for c in sample.past_checkins] == [None, None, 3, 2]
    assert len(sample.goals) == 1 and len(sample.development) == 1 and len(sample.topics) == 1
    assert sample.pip is not None and [g.goal for g in sample.pip.goals] == [
        "Answer tickets on time"
    ]
    assert many[w.target(emails[11])].pip is None
    assert sample.questions and sample.manager == "Bea Boss"
    for email in emails:  # nothing of one person's leaks into another's
        inp = many[w.target(email)]
        assert {g.title for g in inp.goals} == {f"Goal {emails.index(email)}"}


def test_agenda_inputs_skips_unknown_and_foreign_ids(db):
    _, factory = db
    with transaction(factory) as session:
        w = build_world(session, ["ana@acme.test"])
    with factory() as session:
        assert agendas.agenda_inputs(session, w.org, [], NOW) == {}
        assert agendas.agenda_inputs(session, w.org + 1, [w.target("ana@acme.test")], NOW) == {}
        assert agendas.agenda_inputs(session, w.org, [999_999], NOW) == {}


def test_agenda_context_renders_in_the_agenda_template(db):
    from automation.emails import render

    _, factory = db
    ana = "ana@acme.test"
    with transaction(factory) as session:
        w = build_world(session, [ana])
        record(
            session,
            w,
            ana,
            -4,
            items=(("Send the plan", (week(-4) + dt.timedelta(days=2)).date()),),
        )
        for k in (-3, -2, -1):
            set_state(session, w, ana, k, "skipped")
        add_goal(session, w, ana, "Ship the export", NOW - dt.timedelta(weeks=1))
        agendas.add_topics(session, w.org, w.target(ana), person(session, w, ana), ["Budget"], NOW)
        inputs = agendas.agenda_inputs(session, w.org, [w.target(ana)], NOW, roles=ROLES)
    base = {
        "org": {"name": "Acme"},
        "preferences_url": "https://x/preferences",
        "manager": {"name": "Bea Boss", "email": "boss@acme.test"},
        "employee": {"name": "Ana Person", "email": ana},
        "occurrence": {"title": "1:1", "when": "Tuesday", "duration_minutes": 30},
        "questions": ["How is it going?"],
    }
    texts = {}
    for role, address in ((MANAGER, "boss@acme.test"), (EMPLOYEE, ana)):
        agenda = build_agenda(inputs[w.target(ana)], role, NOW, RULES)
        context = {
            **base,
            "recipient": {"name": role, "email": address},
            **agendas.agenda_context(agenda, "Europe/Berlin"),
        }
        texts[role] = render(PROJECT_ROOT / "templates", "agenda", context)
    manager, employee = texts[MANAGER], texts[EMPLOYEE]
    assert "1 - Send the plan (Ana Person, by " in manager.text and "overdue" in manager.text
    assert "Several check-ins in a row did not happen" in manager.text
    assert "Several check-ins in a row did not happen" in manager.html
    for part in (employee.text, employee.html):
        assert "coaching" not in part.lower() and "did not happen" not in part
    assert "- Ship the export: on track" in employee.text
    assert "Budget (Ana Person, " in employee.text
    assert "Priorities for the role (Software engineer)" in employee.text
    # Even an employee's context that holds prompts shows none.
    leaked = {**base, "recipient": {"name": "Ana", "email": ana}}
    leaked.update(
        agendas.agenda_context(build_agenda(inputs[w.target(ana)], MANAGER, NOW, RULES), "UTC")
    )
    shown = render(PROJECT_ROOT / "templates", "agenda", leaked)
    assert "did not happen" not in shown.text and "did not happen" not in shown.html


# --- goals: import, set, reply -----------------------------------------------------------------

GOALS_CSV = """employee_email,title,success_criteria,owner,due,status
ana@acme.test,Ship the invoice export,Used by 20 customers,employee,2026-04-30,on_track
ana@acme.test,Lead the design review,Design approved,manager,,
kai@acme.test,Hire two engineers,Both signed,boss@acme.test,2026-06-30,open
"""


def test_goals_import_is_idempotent_and_versions_changes(db, tmp_path):
    _, factory = db
    path = tmp_path / "goals.csv"
    path.write_text(GOALS_CSV)
    with transaction(factory) as session:
        w = build_world(session, ["ana@acme.test", "kai@acme.test"])
        result = goals.import_goals_file(session, w.org, path, NOW)
    assert result == goals.GoalImportResult(created=3, updated=0, unchanged=0)
    with transaction(factory) as session:
        again = goals.import_goals_file(session, w.org, path, NOW + dt.timedelta(days=1))
    assert again == goals.GoalImportResult(created=0, updated=0, unchanged=3)
    path.write_text(GOALS_CSV.replace("2026-04-30,on_track", "2026-05-15,at_risk"))
    with transaction(factory) as session:
        changed = goals.import_goals_file(session, w.org, path, NOW + dt.timedelta(days=2))
    assert changed == goals.GoalImportResult(created=0, updated=1, unchanged=2)
    with factory() as session:
        listed = goals.list_goals(session, w.org, "ana@acme.test")
        assert [(g.title, g.status, g.version, g.due) for g in listed] == [
            ("Ship the invoice export", "at_risk", 2, "2026-05-15"),
            ("Lead the design review", "open", 1, None),
        ]
        history = goals.goal_history(session, w.org, listed[0].id)
        assert [(v.version, v.status, v.source) for v in history] == [
            (1, "on_track", "goals.csv:2"),
            (2, "at_risk", "goals.csv:2"),
        ]
        assert listed[1].owner == "manager"
        versions = session.scalars(select(GoalVersion)).all()
        assert len(versions) == 4  # three created, one changed; nothing rewritten
        actions = [
            a.action
            for a in session.scalars(select(AuditEntry).where(AuditEntry.subject_kind == "goal"))
        ]
        assert actions.count("goal.created") == 3 and actions.count("goal.updated") == 1


def test_goals_import_names_file_line_and_field_and_applies_nothing(db, tmp_path):
    _, factory = db
    path = tmp_path / "bad.csv"
    path.write_text(
        "employee_email,title,success_criteria,due,status,colour\n"
        "ana@acme.test,Ship it,Used,2026-13-01,on track,red\n"
    )
    with transaction(factory) as session:
        w = build_world(session, ["ana@acme.test"])
    with pytest.raises(ImportRejected) as err, transaction(factory) as session:
        goals.import_goals_file(session, w.org, path, NOW)
    assert f"{path}: 1 problem(s)" in str(err.value)
    assert "row 1: colour: unknown column" in str(err.value)
    path.write_text(
        "employee_email,title,success_criteria,owner,due,status\n"
        "ana@acme.test,Ship it,Used,employee,2026-13-01,on track\n"
        "nobody@acme.test,,,,,\n"
        "ana@acme.test,Ship it,Used,someone@else.test,,maybe\n"
        "ana@acme.test,Good,Fine,,,\n"
    )
    with pytest.raises(ImportRejected) as err, transaction(factory) as session:
        goals.import_goals_file(session, w.org, path, NOW)
    text = str(err.value)
    assert "row 2: due: '2026-13-01' is not a date" in text
    assert "row 3: employee_email: nobody with the address nobody@acme.test" in text
    assert "row 3: title: empty" in text and "row 3: success_criteria: empty" in text
    assert "row 4: status: 'maybe' is not a status" in text
    assert "row 4: owner: 'someone@else.test' is neither employee, manager" in text
    with factory() as session:
        assert session.scalars(select(Goal)).all() == []  # the good row was not applied either


def test_goal_commands_in_replies(db):
    _, factory = db
    ana = "ana@acme.test"
    with transaction(factory) as session:
        w = build_world(session, [ana])
        boss, employee = person(session, w, "boss@acme.test"), person(session, w, ana)
        add_goal(session, w, ana, "Ship the invoice export", NOW - dt.timedelta(weeks=6))
        add_goal(session, w, ana, "Ship the billing export", NOW - dt.timedelta(weeks=6))
        msg = message(session, w.org, NOW)
        text = (
            "Good session.\n#goal Ship the invoice export at risk\n"
            "#goal Hire two engineers by 30 June\n#goal ship the\n#goal \n"
        )
        done = goals.apply_goal_command(session, w.org, boss, employee, text, NOW, msg.id)
        assert done == [
            "goal “Ship the invoice export”: at risk (was on track)",
            "goal “Hire two engineers” added (open, due 30 June 2026)",
            "#goal “ship the” matches several goals (“Ship the invoice export”; “Ship the "
            "billing export”): nothing changed; write more of the title",
            "#goal ignored: no title (write #goal <title> [by DATE] [status])",
        ]
        # The same message again adds nothing; another reply restating the status is an update.
        assert goals.apply_goal_command(session, w.org, boss, employee, text, NOW, msg.id)[0] == (
            "goal “Ship the invoice export”: already recorded from this message"
        )
        later = message(session, w.org, NOW)
        assert goals.apply_goal_command(
            session, w.org, employee, employee, "#goal billing on track", NOW, later.id
        ) == ["goal “Ship the billing export”: still on track"]
        inputs = agendas.agenda_inputs(session, w.org, [w.target(ana)], NOW)
    inp = inputs[w.target(ana)]
    assert {(g.title, g.status, g.version) for g in inp.goals} == {
        ("Ship the invoice export", "at_risk", 2),
        ("Ship the billing export", "on_track", 2),
        ("Hire two engineers", "open", 1),
    }
    # Every goal was updated just now: none is stale.
    assert "goal_stale" not in {p.trigger for p in build_agenda(inp, MANAGER, NOW, RULES).coaching}


def test_set_goal_and_development_plan(db):
    _, factory = db
    ana = "ana@acme.test"
    with transaction(factory) as session:
        w = build_world(session, [ana])
        made = goals.set_goal(
            session, w.org, ana, "Ship it", NOW, actor="op", due=dt.date(2026, 5, 1)
        )
        assert made.created and made.version == 1 and made.status == "open"
        same = goals.set_goal(session, w.org, ana, "ship it", NOW, actor="op")
        assert not same.changed and same.version == 1
        moved = goals.set_goal(
            session, w.org, ana, None, NOW, actor="op", goal_id=made.goal_id, status="on track"
        )
        assert moved.changed and moved.version == 2 and moved.status == "on_track"
        with pytest.raises(goals.GoalError, match="not a status"):
            goals.set_goal(session, w.org, ana, "Ship it", NOW, actor="op", status="meh")
        with pytest.raises(goals.GoalError, match="nobody with the address"):
            goals.set_goal(session, w.org, "x@acme.test", "Ship it", NOW, actor="op")
        item = goals.add_development_item(
            session, w.org, ana, "support", "Pairing with Lee", NOW, actor="op",
            discuss_by=TARGET.date(), goal_id=made.goal_id,
        )  # fmt: skip
        goals.add_development_item(
            session, w.org, ana, "career_note", "Wants to lead", NOW, actor="op"
        )
        with pytest.raises(goals.GoalError, match="not a kind"):
            goals.add_development_item(session, w.org, ana, "hobby", "x", NOW, actor="op")
        assert [r.text for r in goals.list_development(session, w.org, ana)] == [
            "Pairing with Lee",
            "Wants to lead",
        ]
        inputs = agendas.agenda_inputs(session, w.org, [w.target(ana)], NOW)
        agenda = build_agenda(inputs[w.target(ana)], EMPLOYEE, NOW)
        assert [d.text for d in agenda.development] == ["Pairing with Lee"]  # the other is undated
        goals.set_development_status(session, w.org, item.id, "done", NOW, actor="op")
        assert [r.text for r in goals.list_development(session, w.org, ana)] == ["Wants to lead"]


# --- people's role, role files -----------------------------------------------------------------


def test_people_import_sets_the_role_and_keeps_it_when_the_column_is_absent(db):
    _, factory = db
    with transaction(factory) as session:
        w = build_world(session, ["ana@acme.test"])
        assert person(session, w, "ana@acme.test").role == "engineer"
        without = parse_people_csv(people_csv(["ana@acme.test"], role=False), "p.csv")
        result = apply_people(session, w.org, without, NOW)
        assert result.updated == 0 and person(session, w, "ana@acme.test").role == "engineer"
        changed = people_csv(["ana@acme.test"]).replace(",engineer", ",")
        result = apply_people(session, w.org, parse_people_csv(changed, "p.csv"), NOW)
        assert result.updated == 1 and person(session, w, "ana@acme.test").role is None
    with pytest.raises(ImportRejected, match="row 4: role: 'Senior Engineer!' is not a role name"):
        parse_people_csv(
            people_csv(["ana@acme.test"]).replace(",engineer", ",Senior Engineer!"), "p"
        )


def test_role_files_are_validated():
    assert set(ROLES) == {"engineer", "account-executive", "support-lead"}
    assert ROLES["engineer"].priorities and ROLES["support-lead"].success_criteria
    with pytest.raises(ConfigError) as err:
        parse_role(
            {"name": "Sales Rep", "success_criteria": [], "priorities": "close", "level": 3},
            "config/roles/sales.toml",
            "sales",
        )
    text = str(err.value)
    assert "config/roles/sales.toml: name: expected a short lower-case name" in text
    assert '(fix: e.g. name = "sales")' in text
    assert "config/roles/sales.toml: title: missing or not text" in text
    assert "success_criteria: expected a non-empty list of text" in text
    assert "priorities: expected a non-empty list of text, got 'close'" in text
    assert "level: unknown key" in text


# --- the CLI -----------------------------------------------------------------------------------


def test_goals_and_roles_commands(tmp_path, monkeypatch, capsys):
    from automation.cli import main

    monkeypatch.setenv("AUTOMATION_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AUTOMATION_SECRET_KEY", "t")
    people = tmp_path / "people.csv"
    people.write_text(people_csv(["ana@acme.test", "kai@acme.test"]).replace("support-lead", "cfo"))
    assert main(["people", "import", str(people)]) == 0
    goals_file = tmp_path / "goals.csv"
    goals_file.write_text(GOALS_CSV)
    capsys.readouterr()
    assert main(["goals", "import", str(goals_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "organization": "default", "created": 3, "updated": 0, "unchanged": 0,
    }  # fmt: skip
    assert (
        main(["goals", "set", "ana@acme.test", "Lead the design review", "--status", "done"]) == 0
    )
    assert "updated: done, version 2" in capsys.readouterr().out
    assert main(["goals", "list", "ana@acme.test", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [g["title"] for g in listed] == ["Ship the invoice export"]
    assert main(["goals", "show", str(listed[0]["id"])]) == 0
    assert "v1" in capsys.readouterr().out
    assert main(["goals", "import", str(tmp_path / "missing.csv")]) == 65
    assert main(["development", "add", "ana@acme.test", "--kind", "skill", "--text", "Talks"]) == 0
    assert main(["development", "list", "--json"]) == 0
    assert [d["text"] for d in json.loads(capsys.readouterr().out.splitlines()[-1])] == ["Talks"]
    # kai's role "cfo" has no file: named, with the fix, exit 65.
    assert main(["roles", "check", "--json"]) == 65
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert report["roles"]["engineer"]["people"] == 1 and report["without_role"] == 2
    assert report["unknown"] == {"cfo": {"people": 1, "e.g.": "kai@acme.test"}}
    assert main(["roles", "check"]) == 65
    assert (
        "unknown role 'cfo' on 1 person(s), e.g. kai@acme.test (fix: add config/roles/cfo.toml"
        in (capsys.readouterr().err)
    )


def test_snapshot_rows_keep_the_numbering(db):
    _, factory = db
    ana = "ana@acme.test"
    with transaction(factory) as session:
        w = build_world(session, [ana])
        record(session, w, ana, -4, items=(("A", None),))
        for k in (-3, -2, -1):
            set_state(session, w, ana, k, "skipped")
        inputs = agendas.agenda_inputs(session, w.org, [w.target(ana)], NOW)
        agenda = build_agenda(inputs[w.target(ana)], MANAGER, NOW, RULES)
        snap = agendas.record_agenda(
            session, w.org, agenda, person(session, w, "boss@acme.test"), NOW
        )
    with factory() as session:
        stored = session.get(AgendaSnapshot, snap.id)
        assert stored.items == [{"number": 1, "ids": list(agenda.action_items[0].ids)}]
        assert stored.coaching == ["skipped_in_a_row"] and stored.role == MANAGER


def test_erasure_removes_goals_development_and_topics_and_keeps_the_skeleton(db):
    from automation.services.privacy import erase_person

    _, factory = db
    ana = "ana@acme.test"
    with transaction(factory) as session:
        w = build_world(session, [ana, "kai@acme.test"])
        employee = person(session, w, ana)
        made = goals.set_goal(
            session, w.org, ana, "Ship it", NOW, actor="op", success_criteria="20 users"
        )
        goals.set_goal(session, w.org, ana, "Ship it", NOW, actor="op", status="at_risk")
        goals.set_goal(session, w.org, "kai@acme.test", "Hire", NOW, actor="op")
        goals.add_development_item(session, w.org, ana, "skill", "Speaking", NOW, actor="op")
        agendas.add_topics(session, w.org, w.target(ana), employee, ["My health"], NOW)
        employee.active = False
        removed = erase_person(session, employee, NOW, actor="hr", request_id=None)
    assert removed["goals"] == 1 and removed["development_items"] == 1
    assert removed["agenda_topics"] == 1
    with factory() as session:
        versions = session.scalars(
            select(GoalVersion).where(GoalVersion.goal_id == made.goal_id)
        ).all()
        assert [(v.version, v.title, v.success_criteria, v.status) for v in versions] == [
            (1, "", "", "open"),
            (2, "", "", "at_risk"),
        ]
        assert session.get(Goal, made.goal_id).key == f"erased-{made.goal_id}"
        assert [t.text for t in session.scalars(select(AgendaTopic))] == [""]
        assert [g.title for g in goals.list_goals(session, w.org, "kai@acme.test")] == ["Hire"]
        entries = session.scalars(
            select(AuditEntry).where(
                AuditEntry.subject_kind == "goal", AuditEntry.subject_id == made.goal_id
            )
        ).all()
        assert entries and all(e.redacted_by is not None for e in entries)


def test_the_timeline_export_shows_goal_versions_development_and_topics(db):
    from automation.services.export import timeline

    _, factory = db
    ana = "ana@acme.test"
    with transaction(factory) as session:
        w = build_world(session, [ana, "kai@acme.test"])
        goals.set_goal(session, w.org, ana, "Ship it", NOW, actor="op")
        goals.set_goal(session, w.org, ana, "Ship it", NOW, actor="op", status="at_risk")
        goals.set_goal(session, w.org, "kai@acme.test", "Not hers", NOW, actor="op")
        goals.add_development_item(session, w.org, ana, "skill", "Speaking", NOW, actor="op")
        agendas.add_topics(session, w.org, w.target(ana), person(session, w, ana), ["Budget"], NOW)
    with factory() as session:
        events = timeline(session, w.org, ana, "Europe/Berlin").events
    summaries = [(e.kind, e.summary) for e in events if e.kind not in ("checkin",)]
    assert ("goal_version", "Goal version: Ship it") in summaries
    assert sum(1 for kind, _ in summaries if kind == "goal_version") == 2
    assert ("development_item", "Development item: Speaking") in summaries
    assert ("agenda_topic", "Agenda topic: Budget") in summaries
    assert not any("Not hers" in s for _, s in summaries)
