"""The agenda's pure core: sections, carry-over, numbering, ages, every coaching trigger (when
it holds, when it does not, at its boundary), and the reply parsers for topics, #done and
#goal. No database."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from automation.domain.agenda import (
    EMPLOYEE,
    MANAGER,
    ActivePip,
    AgendaInput,
    DevelopmentState,
    GoalState,
    PastCheckin,
    PipGoalState,
    RecordedItem,
    RoleExpectations,
    TopicState,
    age,
    ago,
    build_agenda,
    fold,
    span,
)
from automation.domain.agenda_replies import (
    Closures,
    GoalCommand,
    goal_lines,
    parse_closures,
    parse_goal_command,
    parse_topics,
)
from automation.domain.coaching import (
    TRIGGERS,
    CoachingRules,
    TriggerText,
    parse_coaching,
)
from automation.errors import ConfigError

UTC = dt.UTC
# This check-in: Tuesday 14 April 2026, 09:00 UTC; the agenda is built the day before.
START = dt.datetime(2026, 4, 14, 9, 0, tzinfo=UTC)
NOW = START - dt.timedelta(days=1)
ALL = CoachingRules(texts={t: TriggerText(t.title(), f"raise {t}", f"note {t}") for t in TRIGGERS})


def at(days_before: float) -> dt.datetime:
    """A moment ``days_before`` days before this check-in."""
    return START - dt.timedelta(days=days_before)


def checkin(
    weeks_before: int, state: str = "held", rating: int | None = None, oid: int | None = None
) -> PastCheckin:
    start = at(7 * weeks_before)
    return PastCheckin(
        occurrence_id=oid or 1000 - weeks_before,
        start_at=start,
        date=start.date(),
        state=state,
        documented=state == "held",
        rating=rating,
    )


def item(
    id: int,
    text: str = "Send the plan",
    *,
    occurrence_id: int = 1,
    created: dt.datetime | None = None,
    due: dt.date | None = None,
    owner: str | None = "Ana",
) -> RecordedItem:
    return RecordedItem(id, occurrence_id, text, owner, due, created or at(30))


def make(**changes) -> AgendaInput:  # type: ignore[no-untyped-def]
    base = AgendaInput(
        occurrence_id=99,
        start_at=START,
        meeting_date=START.date(),
        manager="Bea",
        employee="Ana",
        questions=("How is it going?",),
    )
    return dataclasses.replace(base, **changes)


def triggers(inp: AgendaInput, rules: CoachingRules = ALL, now: dt.datetime = NOW) -> set[str]:
    return {p.trigger for p in build_agenda(inp, MANAGER, now, rules).coaching}


# --- ages -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "words"),
    [
        (1, "1 day"),
        (2, "2 days"),
        (13, "13 days"),
        (14, "2 weeks"),
        (20, "2 weeks"),
        (21, "3 weeks"),
        (62, "8 weeks"),
        (63, "2 months"),
        (400, "13 months"),
    ],
)
def test_span_is_coarse_as_people_say_it(days, words):
    assert span(days) == words


def test_age_and_ago():
    assert age(NOW - dt.timedelta(hours=3), NOW) == "new"
    assert age(NOW - dt.timedelta(days=1), NOW) == "open 1 day"
    assert age(NOW - dt.timedelta(days=21), NOW) == "open 3 weeks"
    assert age(NOW + dt.timedelta(days=1), NOW) == "new"  # clock skew never goes negative
    assert ago(NOW, NOW) == "updated today"
    assert ago(NOW - dt.timedelta(days=15), NOW) == "updated 2 weeks ago"


# --- sections and carry-over -----------------------------------------------------------------


def test_sections_come_in_order_and_empty_ones_are_left_out():
    inp = make(
        action_items=(item(1),),
        goals=(GoalState(1, "G", "c", "Ana", None, "open", 1, at(3)),),
        pip=ActivePip(1, "PIP", at(60), START + dt.timedelta(days=30)),
        development=(DevelopmentState(1, "skill", "Talk", START.date(), "open"),),
        topics=(TopicState(1, 99, START, False, "Budget", "Ana", "employee", at(1)),),
        past_checkins=tuple(checkin(w, "skipped") for w in (1, 2, 3)),
    )
    manager = build_agenda(inp, MANAGER, NOW, ALL)
    assert manager.sections() == [
        "coaching",
        "action_items",
        "goals",
        "pip",
        "development",
        "questions",
        "topics",
    ]
    assert build_agenda(inp, EMPLOYEE, NOW, ALL).sections()[0] == "action_items"
    assert build_agenda(make(questions=()), MANAGER, NOW, ALL).sections() == []


def test_recipient_must_be_manager_or_employee():
    with pytest.raises(ValueError, match="recipient"):
        build_agenda(make(), "hr", NOW)


def test_open_items_are_numbered_oldest_first_with_age_owner_and_due():
    inp = make(
        action_items=(
            item(7, "Second", created=at(7), due=START.date() + dt.timedelta(days=3)),
            item(3, "First", created=at(21), due=None, owner=None),
        )
    )
    agenda = build_agenda(inp, MANAGER, NOW)
    assert [(i.number, i.text, i.age) for i in agenda.action_items] == [
        (1, "First", "open 2 weeks"),
        (2, "Second", "open 6 days"),
    ]
    assert agenda.action_items[1].owner == "Ana" and not agenda.action_items[1].overdue
    assert agenda.numbering == ((1, (3,)), (2, (7,)))


def test_an_item_restated_in_a_corrected_record_is_one_item():
    """Versions 1 and 2 of the same check-in's record both list it: one item, numbered once,
    owner and due date from the latest version, age from the first."""
    first = item(1, "Send the plan.", created=at(21), due=dt.date(2026, 4, 20), owner="Ana")
    again = item(2, "send  the PLAN", created=at(20), due=dt.date(2026, 4, 24), owner="Bea")
    other_checkin = item(3, "Send the plan", occurrence_id=2, created=at(7))
    agenda = build_agenda(make(action_items=(first, again, other_checkin)), MANAGER, NOW)
    assert [(i.number, i.ids) for i in agenda.action_items] == [(1, (1, 2)), (2, (3,))]
    merged = agenda.action_items[0]
    assert merged.text == "send  the PLAN" and merged.owner == "Bea"
    assert merged.due == dt.date(2026, 4, 24) and merged.age == "open 2 weeks"


def test_erased_items_are_not_shown():
    agenda = build_agenda(make(action_items=(item(1, ""), item(2, "Kept"))), MANAGER, NOW)
    assert [i.text for i in agenda.action_items] == ["Kept"]


def test_closed_items_drop_off_and_an_update_keeps_the_numbers_it_gave():
    """The first agenda numbered 1, 2, 3. Item 2 was closed since; a new item arrived. The
    update keeps 1 and 3, leaves 2 out, and gives the new item 4."""
    sent = ((1, (10,)), (2, (11,)), (3, (12,)))
    rows = (
        item(10, "A", created=at(30)),
        item(12, "C", created=at(20)),
        item(13, "D", created=at(1)),
    )
    agenda = build_agenda(make(action_items=rows, numbering=sent), MANAGER, NOW)
    assert [(i.number, i.text) for i in agenda.action_items] == [(1, "A"), (3, "C"), (4, "D")]


def test_numbering_survives_a_new_version_of_a_numbered_item():
    sent = ((1, (10,)),)
    rows = (item(10, "A", created=at(30)), item(11, "a", created=at(2)))  # restated
    agenda = build_agenda(make(action_items=rows, numbering=sent), MANAGER, NOW)
    assert [(i.number, i.ids) for i in agenda.action_items] == [(1, (10, 11))]


def test_overdue_compares_the_due_date_with_the_meeting_date():
    meeting = START.date()
    agenda = build_agenda(
        make(
            action_items=(
                item(1, "due yesterday", due=meeting - dt.timedelta(days=1)),
                item(2, "due on the day", due=meeting),
                item(3, "no due date", due=None),
            )
        ),
        MANAGER,
        NOW,
    )
    assert [i.overdue for i in agenda.action_items] == [True, False, False]


def test_goals_show_open_ones_by_due_date_with_their_latest_status():
    goals = (
        GoalState(1, "Later", "c", "Ana", dt.date(2026, 9, 1), "at_risk", 3, at(10)),
        GoalState(2, "Sooner", "c", "Ana", dt.date(2026, 5, 1), "on_track", 1, at(1)),
        GoalState(3, "No date", "c", "Ana", None, "open", 1, at(1)),
        GoalState(4, "Done", "c", "Ana", None, "done", 2, at(1)),
        GoalState(5, "Dropped", "c", "Ana", None, "dropped", 2, at(1)),
    )
    agenda = build_agenda(make(goals=goals), EMPLOYEE, NOW)
    assert [(g.title, g.status, g.updated) for g in agenda.goals] == [
        ("Sooner", "on_track", "updated today"),
        ("Later", "at_risk", "updated 9 days ago"),
        ("No date", "open", "updated today"),
    ]


def test_development_items_appear_once_due_for_discussion():
    meeting = START.date()
    items = (
        DevelopmentState(1, "skill", "due today", meeting, "open"),
        DevelopmentState(2, "support", "due last month", meeting - dt.timedelta(days=30), "open"),
        DevelopmentState(3, "career_note", "due tomorrow", meeting + dt.timedelta(days=1), "open"),
        DevelopmentState(4, "skill", "no date", None, "open"),
        DevelopmentState(5, "skill", "done", meeting, "done"),
    )
    agenda = build_agenda(make(development=items), EMPLOYEE, NOW)
    assert [d.text for d in agenda.development] == ["due last month", "due today"]


def test_pip_goals_and_role_are_shown_to_both():
    pip = ActivePip(
        5, "90-day PIP", at(20), START + dt.timedelta(days=70),
        (PipGoalState(1, 1, "Tickets on time", "95%", "Ana", None),),
    )  # fmt: skip
    role = RoleExpectations("engineer", "Software engineer", ("Ships",), ("Reliability",))
    for recipient in (MANAGER, EMPLOYEE):
        agenda = build_agenda(make(pip=pip, role=role), recipient, NOW)
        assert agenda.pip == pip and agenda.role == role


def topic(tid: int, occurrence_id: int, start: dt.datetime, documented: bool, text: str = "T"):  # type: ignore[no-untyped-def]
    return TopicState(tid, occurrence_id, start, documented, text, "Ana", "employee", at(40 - tid))


def test_topics_of_this_check_in_and_of_earlier_undocumented_ones():
    topics = (
        topic(1, 99, START, False, "this one"),
        topic(2, 50, at(14), False, "skipped two weeks ago"),
        topic(3, 51, at(7), True, "discussed last week"),
        topic(4, 52, START + dt.timedelta(days=7), False, "next week's"),
    )
    agenda = build_agenda(make(topics=topics), EMPLOYEE, NOW)
    # In the order they were added: topic 1 before topic 2.
    assert [(t.text, t.carried_over) for t in agenda.topics] == [
        ("this one", False),
        ("skipped two weeks ago", True),
    ]
    assert agenda.topics_since(at(39)) == (agenda.topics[1],)


# --- coaching: never for the employee ---------------------------------------------------------


def everything_fires() -> AgendaInput:
    due = at(30).date()  # overdue at the check-in four weeks ago, and at this one
    return make(
        action_items=(item(1, created=at(40), due=due),),
        past_checkins=(
            checkin(6, rating=4),
            checkin(5, rating=3),
            checkin(4, rating=2),
            checkin(3, "skipped"),
            checkin(2, "skipped"),
            checkin(1, "cancelled"),
        ),
        goals=(GoalState(1, "Stale", "c", "Ana", None, "open", 1, NOW - dt.timedelta(weeks=6)),),
        pip=ActivePip(1, "PIP", at(10), START + dt.timedelta(days=80)),
    )


def test_every_trigger_can_fire_for_the_manager_and_none_for_the_employee():
    inp = everything_fires()
    manager = build_agenda(inp, MANAGER, NOW, ALL)
    assert [p.trigger for p in manager.coaching] == list(TRIGGERS)
    for prompt in manager.coaching:
        assert prompt.why and prompt.suggestion == f"raise {prompt.trigger}"
    employee = build_agenda(inp, EMPLOYEE, NOW, ALL)
    assert employee.coaching == ()
    assert "coaching" not in employee.sections()


def test_no_rules_or_a_disabled_trigger_means_no_prompt():
    inp = everything_fires()
    assert build_agenda(inp, MANAGER, NOW, None).coaching == ()
    only_two = CoachingRules(texts={k: ALL.texts[k] for k in ("rating_trend", "goal_stale")})
    assert triggers(inp, only_two) == {"rating_trend", "goal_stale"}


# --- action_item_overdue -----------------------------------------------------------------------


def test_overdue_twice_fires_at_the_second_check_in_past_due():
    due = at(10).date()  # due between last week's check-in (7 days ago) and the one before (14)
    inp = make(
        action_items=(item(1, created=at(30), due=due),),
        past_checkins=(checkin(2), checkin(1)),
    )
    agenda = build_agenda(inp, MANAGER, NOW, ALL)
    assert agenda.action_items[0].overdue_count == 2  # last week's and this one
    prompt = agenda.coaching[0]
    assert prompt.trigger == "action_item_overdue"
    assert prompt.why == (
        f"[1] Send the plan (Ana): due {due.day} Apr 2026, overdue at 2 check-ins",
    )


def test_overdue_once_does_not_fire():
    due = at(3).date()  # passed after last week's check-in: overdue at this one only
    inp = make(
        action_items=(item(1, created=at(30), due=due),), past_checkins=(checkin(2), checkin(1))
    )
    assert build_agenda(inp, MANAGER, NOW, ALL).action_items[0].overdue_count == 1
    assert "action_item_overdue" not in triggers(inp)


def test_due_on_the_day_of_a_check_in_was_not_overdue_at_it():
    due = at(7).date()  # due the day of last week's check-in: not yet overdue then
    inp = make(action_items=(item(1, created=at(30), due=due),), past_checkins=(checkin(1),))
    assert build_agenda(inp, MANAGER, NOW, ALL).action_items[0].overdue_count == 1
    assert "action_item_overdue" not in triggers(inp)
    day_later = make(
        action_items=(item(1, created=at(30), due=at(8).date()),), past_checkins=(checkin(1),)
    )
    assert "action_item_overdue" in triggers(day_later)


def test_check_ins_that_did_not_take_place_or_came_before_the_item_do_not_count():
    due = at(25).date()
    skipped = make(
        action_items=(item(1, created=at(30), due=due),),
        past_checkins=(checkin(2, "skipped"), checkin(1, "cancelled")),
    )
    assert "action_item_overdue" not in triggers(skipped)
    recorded_late = make(
        action_items=(item(1, created=at(3), due=due),),  # recorded after last week's check-in
        past_checkins=(checkin(1),),
    )
    assert "action_item_overdue" not in triggers(recorded_late)


def test_overdue_threshold_is_configurable():
    due = at(10).date()
    inp = make(
        action_items=(item(1, created=at(30), due=due),), past_checkins=(checkin(2), checkin(1))
    )
    assert "action_item_overdue" not in triggers(inp, dataclasses.replace(ALL, overdue_times=3))
    assert "action_item_overdue" in triggers(inp, dataclasses.replace(ALL, overdue_times=1))


# --- skipped_in_a_row --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("states", "fires"),
    [
        (("held", "skipped", "skipped", "skipped"), True),
        (("skipped", "skipped", "skipped", "skipped"), True),
        (("held", "held", "skipped", "skipped"), False),  # two is below three
        (("skipped", "skipped", "held", "skipped"), False),  # the run was broken
        (("skipped", "skipped", "skipped", "held"), False),  # the latest took place
        (("held", "cancelled", "skipped", "cancelled"), True),  # cancelled counts by default
        (("held", "skipped", "invited", "skipped"), False),  # an undocumented one is not skipped
    ],
)
def test_skipped_in_a_row(states, fires):
    past = tuple(checkin(len(states) - i, s) for i, s in enumerate(states))  # oldest first
    assert ("skipped_in_a_row" in triggers(make(past_checkins=past))) is fires


def test_cancelled_check_ins_can_be_left_out_of_the_count():
    past = tuple(checkin(w, s) for w, s in ((3, "skipped"), (2, "cancelled"), (1, "skipped")))
    rules = dataclasses.replace(ALL, count_cancelled=False)
    assert "skipped_in_a_row" in triggers(make(past_checkins=past))
    assert "skipped_in_a_row" not in triggers(make(past_checkins=past), rules)


def test_skipped_prompt_names_the_dates():
    past = tuple(checkin(w, "skipped") for w in (3, 2, 1))
    (prompt,) = build_agenda(make(past_checkins=past), MANAGER, NOW, ALL).coaching
    assert prompt.why == (
        "The last 3 check-ins did not take place: 24 Mar 2026 (skipped), 31 Mar 2026 (skipped), "
        "7 Apr 2026 (skipped)",
    )


# --- rating_trend ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratings", "fires"),
    [
        ((4, 3, 2), True),
        ((4, 4, 3), True),  # never rising, down by one
        ((5, 2, 3, 3, 2), True),  # only the last three count
        ((3, 3, 3), False),  # flat
        ((4, 3, 4), False),  # rose again
        ((2, 3, 4), False),
        ((4, 3), False),  # fewer than the window
        ((4, None, 3, None, 2), True),  # unrated check-ins are passed over
    ],
)
def test_rating_trend(ratings, fires):
    past = tuple(checkin(len(ratings) - i, rating=r) for i, r in enumerate(ratings))
    assert ("rating_trend" in triggers(make(past_checkins=past))) is fires


def test_rating_trend_minimum_drop_and_window():
    past = tuple(checkin(3 - i, rating=r) for i, r in enumerate((4, 4, 3)))
    assert "rating_trend" not in triggers(
        make(past_checkins=past), dataclasses.replace(ALL, rating_min_drop=2)
    )
    steep = tuple(checkin(3 - i, rating=r) for i, r in enumerate((4, 3, 2)))
    assert "rating_trend" in triggers(
        make(past_checkins=steep), dataclasses.replace(ALL, rating_min_drop=2)
    )
    two = tuple(checkin(2 - i, rating=r) for i, r in enumerate((4, 3)))
    assert "rating_trend" in triggers(
        make(past_checkins=two), dataclasses.replace(ALL, rating_window=2)
    )
    (prompt,) = build_agenda(make(past_checkins=steep), MANAGER, NOW, ALL).coaching
    assert prompt.why == ("Ratings of the last 3 rated check-ins: 4 → 3 → 2",)


# --- goal_stale --------------------------------------------------------------------------------


def goal(updated: dt.datetime, status: str = "on_track") -> GoalState:
    return GoalState(1, "Ship it", "c", "Ana", None, status, 2, updated)


def test_goal_stale_fires_at_exactly_n_weeks_and_not_a_second_before():
    four_weeks = NOW - dt.timedelta(weeks=4)
    assert "goal_stale" in triggers(make(goals=(goal(four_weeks),)))
    just_inside = four_weeks + dt.timedelta(seconds=1)
    assert "goal_stale" not in triggers(make(goals=(goal(just_inside),)))
    assert "goal_stale" not in triggers(
        make(goals=(goal(four_weeks),)), dataclasses.replace(ALL, goal_stale_weeks=5)
    )


def test_closed_goals_are_never_stale():
    old = NOW - dt.timedelta(weeks=20)
    for status in ("done", "dropped"):
        assert "goal_stale" not in triggers(make(goals=(goal(old, status),)))
    for status in ("open", "on_track", "at_risk"):
        assert "goal_stale" in triggers(make(goals=(goal(old, status),)))


def test_goal_stale_prompt_says_how_long():
    (prompt,) = build_agenda(
        make(goals=(goal(NOW - dt.timedelta(weeks=6)),)), MANAGER, NOW, ALL
    ).coaching
    assert prompt.why == ("Ship it (on track): no update for 6 weeks (last 2 Mar 2026)",)


# --- first_after_pip ---------------------------------------------------------------------------


def pip(started: dt.datetime) -> ActivePip:
    return ActivePip(1, "90-day PIP", started, started + dt.timedelta(days=90))


def test_first_check_in_after_a_pip_starts():
    assert "first_after_pip" in triggers(make(pip=pip(at(3)), past_checkins=(checkin(1),)))
    # Started at the very start of this check-in: still this one.
    assert "first_after_pip" in triggers(make(pip=pip(START)))


def test_not_the_first_once_a_check_in_took_place_since():
    since = make(pip=pip(at(10)), past_checkins=(checkin(1),))  # held 7 days ago, after the start
    assert "first_after_pip" not in triggers(since)
    same_moment = make(pip=pip(at(7)), past_checkins=(checkin(1),))
    assert "first_after_pip" not in triggers(same_moment)


def test_a_skipped_check_in_since_the_pip_does_not_count():
    inp = make(pip=pip(at(10)), past_checkins=(checkin(1, "skipped"),))
    assert "first_after_pip" in triggers(inp)


def test_no_prompt_without_a_pip_or_before_it_starts():
    assert "first_after_pip" not in triggers(make())
    later = make(pip=pip(START + dt.timedelta(minutes=1)))
    assert "first_after_pip" not in triggers(later)


# --- coaching.toml -----------------------------------------------------------------------------


TEXT = {"title": "T", "suggestion": "S", "document": "D"}


def test_parse_coaching_defaults_and_thresholds():
    rules = parse_coaching(
        {
            "goal_stale": {**TEXT, "weeks": 6},
            "skipped_in_a_row": {**TEXT, "count": 2, "count_cancelled": False},
            "rating_trend": {**TEXT, "enabled": False},
        },
        "c.toml",
    )
    assert set(rules.texts) == {"goal_stale", "skipped_in_a_row"}
    assert rules.goal_stale_weeks == 6 and rules.skipped_in_a_row == 2
    assert rules.count_cancelled is False and rules.overdue_times == 2


def test_parse_coaching_joins_wrapped_lines_and_keeps_paragraphs():
    rules = parse_coaching(
        {"goal_stale": {**TEXT, "suggestion": "one\ntwo\n\nthree  four\n"}}, "c.toml"
    )
    assert rules.texts["goal_stale"].suggestion == "one two\n\nthree four"


def test_parse_coaching_names_file_field_and_fix():
    with pytest.raises(ConfigError) as err:
        parse_coaching(
            {
                "goal_stale": {"title": "T", "weeks": 0, "colour": "red"},
                "skipped": {},
                "rating_trend": {**TEXT, "window": True, "enabled": "yes"},
                "first_after_pip": "no",
            },
            "config/coaching.toml",
        )
    text = str(err.value)
    assert "config/coaching.toml: goal_stale.weeks: expected a whole number from 1 to 104" in text
    assert "(fix: e.g. weeks = 4)" in text
    assert "goal_stale.colour: unknown key" in text
    assert "goal_stale.suggestion: missing or not text" in text
    assert "skipped: unknown trigger (fix: one of action_item_overdue" in text
    assert "rating_trend.window: expected a whole number from 2 to 12" in text
    assert "rating_trend.enabled: expected true or false" in text
    assert "first_after_pip: expected a table" in text


def test_the_shipped_coaching_file_enables_all_five_triggers():
    from automation.config import load_coaching
    from automation.settings import Settings

    rules = load_coaching(Settings())
    assert rules is not None and set(rules.texts) == set(TRIGGERS)
    assert rules.goal_stale_weeks == 4 and rules.skipped_in_a_row == 3


# --- reply parsers -----------------------------------------------------------------------------


def test_plus_lines_are_topics():
    text = "Hi Bea,\n\n+ Conference budget\n+1\n+promo timeline\n  +  conference BUDGET \n\nThanks"
    assert parse_topics(text) == ["Conference budget", "promo timeline"]


def test_free_text_paragraphs_are_topics_when_there_are_no_plus_lines():
    text = (
        "Hi Bea,\n\nCould we talk about the conference budget?\nIt is due soon.\n\n"
        "#skip\n\nAlso the on-call rota.\n\nThanks,\n"
    )
    assert parse_topics(text) == [
        "Could we talk about the conference budget? It is due soon.",
        "Also the on-call rota.",
    ]
    assert parse_topics(text, free_text=False) == []
    assert parse_topics("Thanks!") == []


def test_topics_are_capped():
    many = "\n".join(f"+ topic {i} " + "x" * 600 for i in range(20))
    topics = parse_topics(many)
    assert len(topics) == 10 and all(len(t) == 500 for t in topics)


@pytest.mark.parametrize(
    ("text", "closures"),
    [
        ("#done 2", Closures((2,))),
        ("#done 2, 4", Closures((2, 4))),
        ("#done 2 and 5", Closures((2, 5))),
        ("#done #2 #3", Closures((2, 3))),
        ("#done 2-4", Closures((2, 3, 4))),
        ("#DONE: 3.", Closures((3,))),
        ("Done: 3", Closures((3,))),
        ("done 2, 3", Closures((2, 3))),
        ("#done", Closures()),  # the check-in's own command
        ("Done with that, thanks", Closures()),
        ("done 2 things today", Closures()),
        ("#done Send the plan.", Closures((), ("Send the plan",))),
        ("Done: “send plan”", Closures((), ("send plan",))),
        ("#done 2\nDone: the budget\n#done 2", Closures((2,), ("the budget",))),
    ],
)
def test_parse_closures(text, closures):
    assert parse_closures(text) == closures


def test_closures_are_falsy_when_empty():
    assert not Closures() and Closures((1,)) and Closures((), ("x",))


TODAY = dt.date(2026, 3, 2)


@pytest.mark.parametrize(
    ("argument", "command"),
    [
        ("Ship the export", GoalCommand("Ship the export")),
        ("Ship the export by 2026-04-30", GoalCommand("Ship the export", dt.date(2026, 4, 30))),
        ("Ship it by 30 April at risk", GoalCommand("Ship it", dt.date(2026, 4, 30), "at_risk")),
        ("Ship it on track", GoalCommand("Ship it", None, "on_track")),
        ("Ship it (at-risk)", GoalCommand("Ship it", None, "at_risk")),
        ("Ship it: done", GoalCommand("Ship it", None, "done")),
        ("Ship it done by 2026-05-01", GoalCommand("Ship it", dt.date(2026, 5, 1), "done")),
        ("Ship it by end of June", GoalCommand("Ship it", dt.date(2026, 6, 30))),
        ("Ship it by Jan 15", GoalCommand("Ship it", dt.date(2027, 1, 15))),  # the next one
        ("Ship it by March 2", GoalCommand("Ship it", dt.date(2026, 3, 2))),  # today counts
        ("Stand by the team", GoalCommand("Stand by the team")),
        ("Keep the channel open", GoalCommand("Keep the channel open")),
        ("Keep it: open", GoalCommand("Keep it", None, "open")),
        ("Ship it by 2026-02-30", GoalCommand("Ship it by 2026-02-30")),  # no such date
        ("on track", GoalCommand("on track")),  # a status alone is a title
        ("", None),
    ],
)
def test_parse_goal_command(argument, command):
    assert parse_goal_command(argument, TODAY) == command


def test_goal_lines_finds_every_goal_command():
    text = "Rating: 4\n#goal Ship it on track\n  #GOAL: Hire two engineers by 2026-06-30\n"
    assert goal_lines(text) == ["Ship it on track", "Hire two engineers by 2026-06-30"]


def test_fold():
    assert fold("  Send  the Plan. ") == fold("send the plan")
