"""The pure core of scheduling: cadence validation, recurrence across DST, slots, business days."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from automation.domain.cadence import (
    Cadence,
    add_business_days,
    build_rrule,
    choose_slot,
    expand,
    parse_cadence,
)
from automation.domain.commands import parse_when
from automation.errors import ConfigError

UTC = dt.UTC
VALID = {
    "name": "biweekly",
    "schedule": {
        "frequency": "every 2 weeks",
        "duration_minutes": 30,
        "weekdays": ["tue", "wed"],
        "window_start": "09:00",
        "window_end": "11:00",
    },
    "agenda": {"lead_hours": 24},
    "followup": {"delay_hours": 1, "questions": ["How is it going?", "Rate it 1-5"]},
    "escalation": [
        {"after_business_days": 3, "notify": "manager"},
        {"after_business_days": 7, "notify": "hr_partner"},
    ],
}


def cadence(**schedule) -> Cadence:
    data = {**VALID, "schedule": {**VALID["schedule"], **schedule}}
    return parse_cadence(data, "cadences/test.toml")


def test_a_valid_cadence_parses_and_round_trips():
    c = cadence()
    assert c.interval_weeks == 2 and c.weekdays == (1, 2)
    assert [s.action for s in c.ladder] == ["remind", "escalate"]
    assert Cadence.from_dict(c.as_dict()) == c


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"schedule": {"frequency": "fortnightly"}}, "schedule.frequency", "every N weeks"),
        (
            {"schedule": {"frequency": "weekly", "weekdays": ["tue", "caturday"]}},
            "schedule.weekdays",
            "not a weekday",
        ),
        (
            {"schedule": {"frequency": "weekly", "window_start": "25:00"}},
            "schedule.window_start",
            "09:00",
        ),
        (
            {"schedule": {"frequency": "weekly", "window_start": "09:00", "window_end": "09:15"}},
            "schedule.window_end",
            "cannot fit",
        ),
        ({"followup": {"questions": []}}, "followup.questions", "at least one"),
        (
            {
                "escalation": [
                    {"after_business_days": 7, "notify": "manager"},
                    {"after_business_days": 3, "notify": "hr_partner"},
                ]
            },
            "escalation[1].after_business_days",
            "later than",
        ),
        (
            {"escalation": [{"after_business_days": 3, "notify": "ceo"}]},
            "escalation[0].notify",
            "unknown recipient",
        ),
        ({"shedule": {}}, "shedule", "unknown field"),
    ],
)
def test_every_problem_names_file_field_and_fix(change, field, words):
    data = {**VALID, **change}
    with pytest.raises(ConfigError) as err:
        parse_cadence(data, "cadences/test.toml")
    problem = next(p for p in err.value.problems if p.field == field)
    assert problem.file == "cadences/test.toml"
    assert words in str(problem)


def test_all_problems_are_reported_at_once():
    data = {"schedule": {"frequency": "daily", "duration_minutes": "30"}}
    with pytest.raises(ConfigError) as err:
        parse_cadence(data, "x.toml")
    fields = {p.field for p in err.value.problems}
    assert {
        "name",
        "schedule.frequency",
        "schedule.duration_minutes",
        "followup.questions",
    } <= fields


def test_unknown_template_is_named():
    data = {
        **VALID,
        "escalation": [{"after_business_days": 3, "notify": "manager", "template": "nag"}],
    }
    with pytest.raises(ConfigError, match="no template named 'nag'"):
        parse_cadence(data, "x.toml", templates=["reminder", "escalation"])


def test_recurrence_keeps_local_time_across_both_dst_changes():
    # New York springs forward on 8 March 2026, Berlin on 29 March, and back in autumn.
    for tz_name, switch in (
        ("America/New_York", dt.datetime(2026, 3, 8, tzinfo=UTC)),
        ("Europe/Berlin", dt.datetime(2026, 10, 25, tzinfo=UTC)),
    ):
        start_local = (
            dt.datetime(2026, 3, 3, 10, 0)
            if "York" in tz_name
            else dt.datetime(2026, 10, 13, 10, 0)
        )
        out = expand(
            "FREQ=WEEKLY;BYDAY=TU",
            start_local,
            tz_name,
            30,
            switch - dt.timedelta(days=10),
            switch + dt.timedelta(days=20),
        )
        tz = ZoneInfo(tz_name)
        assert {i.start.astimezone(tz).strftime("%H:%M") for i in out} == {"10:00"}
        assert len({i.start.strftime("%H:%M") for i in out}) == 2  # the UTC hour moves
        assert all(i.end - i.start == dt.timedelta(minutes=30) for i in out)


def test_a_wall_time_inside_the_spring_gap_moves_forward():
    out = expand(
        "FREQ=DAILY",
        dt.datetime(2026, 3, 28, 2, 30),
        "Europe/Berlin",
        30,
        dt.datetime(2026, 3, 27, tzinfo=UTC),
        dt.datetime(2026, 3, 31, tzinfo=UTC),
    )
    berlin = ZoneInfo("Europe/Berlin")
    times = [i.start.astimezone(berlin).strftime("%d %H:%M") for i in out]
    assert times == ["28 02:30", "29 03:30", "30 02:30"]


def test_monthly_rule_uses_the_nth_weekday():
    c = parse_cadence({**VALID, "schedule": {**VALID["schedule"], "frequency": "monthly"}}, "x")
    assert build_rrule(c, dt.datetime(2026, 3, 17, 10)) == "FREQ=MONTHLY;BYDAY=3TU"


def test_choose_slot_avoids_busy_time_for_all_instances():
    c = cadence(frequency="weekly")
    now = dt.datetime(2026, 3, 2, 6, 0, tzinfo=UTC)  # Monday
    first, _ = choose_slot(c, "Europe/Berlin", now, [])
    assert first == dt.datetime(2026, 3, 3, 9, 0)  # Tuesday, start of the window
    # Busy on the *third* Tuesday at 09:00 Berlin: the whole weekly slot is unusable.
    busy = [
        (dt.datetime(2026, 3, 17, 8, 0, tzinfo=UTC), dt.datetime(2026, 3, 17, 8, 30, tzinfo=UTC))
    ]
    second, rule = choose_slot(c, "Europe/Berlin", now, busy)
    assert second == dt.datetime(2026, 3, 3, 9, 30) and rule == "FREQ=WEEKLY;BYDAY=TU"


def test_choose_slot_spreads_biweekly_series_over_alternate_weeks():
    c = cadence(window_end="09:30", weekdays=["tue"])
    now = dt.datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    first, rule = choose_slot(c, "UTC", now, [])
    taken = [
        (i.start, i.end) for i in expand(rule, first, "UTC", 30, now, now + dt.timedelta(days=28))
    ]
    second, _ = choose_slot(c, "UTC", now, taken)
    assert (first, second) == (dt.datetime(2026, 3, 3, 9), dt.datetime(2026, 3, 10, 9))


def test_business_days_skip_weekends_and_holidays_in_the_persons_zone():
    week = frozenset(range(5))
    friday_evening = dt.datetime(2026, 3, 6, 16, 0, tzinfo=UTC)  # Fri 17:00 in Berlin
    due = add_business_days(friday_evening, 3, "Europe/Berlin", week, [])
    assert due == dt.datetime(2026, 3, 11, 16, 0, tzinfo=UTC)  # Wed 17:00 Berlin
    due = add_business_days(friday_evening, 3, "Europe/Berlin", week, [dt.date(2026, 3, 10)])
    assert due == dt.datetime(2026, 3, 12, 16, 0, tzinfo=UTC)
    # Late Friday in New York is already Saturday in Tokyo: the zone decides the day.
    late = dt.datetime(2026, 3, 6, 22, 0, tzinfo=UTC)

    def local_day(days: int, tz: str) -> dt.date:
        return add_business_days(late, days, tz, week, []).astimezone(ZoneInfo(tz)).date()

    assert local_day(1, "Asia/Tokyo") == dt.date(2026, 3, 9)  # Sat 07:00 -> Mon
    assert local_day(1, "America/New_York") == dt.date(2026, 3, 9)  # Fri 17:00 -> Mon
    assert local_day(0, "Asia/Tokyo") == dt.date(2026, 3, 9)  # a weekend moves to Monday
    assert local_day(0, "America/New_York") == dt.date(2026, 3, 6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Thu 14:00", dt.datetime(2026, 3, 5, 14, 0)),
        ("thursday 2pm", dt.datetime(2026, 3, 5, 14, 0)),
        ("tomorrow", dt.datetime(2026, 3, 5, 10, 0)),
        ("2026-03-20 9.30", dt.datetime(2026, 3, 20, 9, 30)),
        ("Wed", dt.datetime(2026, 3, 11, 10, 0)),  # the next Wednesday, not today
        ("16:00", dt.datetime(2026, 3, 5, 16, 0)),  # already past today
        ("whenever suits", None),
        ("Thu 25:00", None),
    ],
)
def test_parse_when(text, expected):
    now = dt.datetime(2026, 3, 4, 17, 0)  # Wednesday evening
    assert parse_when(text, now, dt.time(10, 0)) == expected


def test_merge_intervals_joins_overlapping_and_touching_busy_times():
    from automation.domain.cadence import merge_intervals

    t = [dt.datetime(2026, 3, 2, h, tzinfo=dt.UTC) for h in range(12)]
    merged = merge_intervals(
        [(t[5], t[7]), (t[1], t[3]), (t[2], t[4]), (t[4], t[5]), (t[9], t[10])]
    )
    assert merged == [(t[1], t[7]), (t[9], t[10])]
    assert merge_intervals([]) == []
