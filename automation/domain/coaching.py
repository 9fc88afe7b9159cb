"""Coaching prompts: guidance in the manager's agenda when the data calls for it.

HR describe the triggers once, in ``config/coaching.toml`` (one table per trigger: its
threshold and the suggestion text, "how to raise it, what to document"). A trigger left out of
the file, or with ``enabled = false``, never fires. The triggers:

``action_item_overdue``
    an open action item was past its due date at ``overdue_times`` check-ins or more (this
    one included; check-ins that did not take place do not count).
``skipped_in_a_row``
    the last ``count`` check-ins before this one were all skipped (and cancelled ones count
    too, unless ``count_cancelled = false``).
``rating_trend``
    the ratings of the last ``window`` rated check-ins never rise from one to the next and
    the last is at least ``min_drop`` below the first.
``goal_stale``
    an open goal (open, on track, at risk) has had no new version for ``weeks`` weeks or more.
``first_after_pip``
    a PIP is active, started on or before this check-in, and no check-in has taken place
    since it started.

The prompts are computed for the manager's agenda only (:func:`automation.domain.agenda.
build_agenda` never asks for them for the employee), each with the trigger's name, the facts
that made it fire and HR's words.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from automation.domain.agenda import (
    NOT_HELD,
    AgendaGoal,
    AgendaInput,
    AgendaItem,
    CoachingPrompt,
    PastCheckin,
)
from automation.errors import ConfigError, ConfigProblem

TRIGGERS = (
    "action_item_overdue",
    "skipped_in_a_row",
    "rating_trend",
    "goal_stale",
    "first_after_pip",
)
# Each trigger's thresholds: key -> (default, lowest allowed, highest allowed, what it is).
THRESHOLDS: dict[str, dict[str, tuple[int, int, int, str]]] = {
    "action_item_overdue": {"overdue_times": (2, 1, 52, "check-ins at which it was overdue")},
    "skipped_in_a_row": {"count": (3, 1, 52, "skipped check-ins in a row")},
    "rating_trend": {
        "window": (3, 2, 12, "rated check-ins looked at"),
        "min_drop": (1, 1, 4, "points the rating fell by, at least"),
    },
    "goal_stale": {"weeks": (4, 1, 104, "weeks without an update")},
    "first_after_pip": {},
}
_TEXT_KEYS = ("title", "suggestion", "document")
_FLAGS = {"enabled": True, "count_cancelled": True}


@dataclass(frozen=True)
class TriggerText:
    """HR's words for one trigger: a heading, how to raise it, what to document."""

    title: str
    suggestion: str
    document: str = ""


@dataclass(frozen=True)
class CoachingRules:
    """The enabled triggers (``texts``) and their thresholds."""

    texts: Mapping[str, TriggerText] = field(default_factory=dict)
    overdue_times: int = 2
    skipped_in_a_row: int = 3
    count_cancelled: bool = True
    rating_window: int = 3
    rating_min_drop: int = 1
    goal_stale_weeks: int = 4
    source_file: str = ""


def _prose(text: str) -> str:
    """HR's text as paragraphs: a single line break (TOML's wrapping) becomes a space."""
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def parse_coaching(data: Mapping[str, Any], file: str) -> CoachingRules:
    """Check ``config/coaching.toml``; every problem of the file in one ConfigError."""
    problems: list[ConfigProblem] = []

    def fail(where: str, problem: str, fix: str = "") -> None:
        problems.append(ConfigProblem(file, where, problem, fix))

    texts: dict[str, TriggerText] = {}
    values: dict[str, Any] = {}
    for name, table in data.items():
        if name not in TRIGGERS:
            fail(name, "unknown trigger", "one of " + ", ".join(TRIGGERS))
            continue
        if not isinstance(table, dict):
            fail(name, "expected a table", f"write it as [{name}]")
            continue
        allowed = set(_TEXT_KEYS) | {"enabled"} | set(THRESHOLDS[name])
        if name == "skipped_in_a_row":
            allowed.add("count_cancelled")
        for key in table:
            if key not in allowed:
                fail(f"{name}.{key}", "unknown key", ", ".join(sorted(allowed)))
        for key in ("enabled", "count_cancelled"):
            if key in table and not isinstance(table[key], bool):
                fail(f"{name}.{key}", f"expected true or false, got {table[key]!r}")
        for key, (default, low, high, what) in THRESHOLDS[name].items():
            value = table.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                fail(
                    f"{name}.{key}",
                    f"expected a whole number from {low} to {high} ({what}), got {value!r}",
                    f"e.g. {key} = {default}",
                )
            else:
                values[f"{name}.{key}"] = value
        if name == "skipped_in_a_row" and isinstance(table.get("count_cancelled"), bool):
            values["count_cancelled"] = table["count_cancelled"]
        if table.get("enabled", True) is False:
            continue
        text = {}
        for key in _TEXT_KEYS:
            value = table.get(key, "")
            if not isinstance(value, str) or (key != "document" and not value.strip()):
                fail(
                    f"{name}.{key}",
                    "missing or not text" if key != "document" else "expected text",
                    "HR's words for the manager: "
                    + {
                        "title": "a short heading",
                        "suggestion": "how to raise it in the meeting",
                        "document": "what to write down afterwards",
                    }[key],
                )
            else:
                text[key] = _prose(value)
        if len(text) == len(_TEXT_KEYS):
            texts[name] = TriggerText(**text)
    if problems:
        raise ConfigError(problems)
    return CoachingRules(
        texts=texts,
        overdue_times=values.get("action_item_overdue.overdue_times", 2),
        skipped_in_a_row=values.get("skipped_in_a_row.count", 3),
        count_cancelled=values.get("count_cancelled", True),
        rating_window=values.get("rating_trend.window", 3),
        rating_min_drop=values.get("rating_trend.min_drop", 1),
        goal_stale_weeks=values.get("goal_stale.weeks", 4),
        source_file=file,
    )


# --- the triggers (each pure, each tested on its own) ---------------------------------------


def _day(d: dt.date) -> str:
    return f"{d.day} {d:%b %Y}"


def overdue_items(items: Sequence[AgendaItem], rules: CoachingRules) -> list[AgendaItem]:
    return [i for i in items if i.due is not None and i.overdue_count >= rules.overdue_times]


def skipped_run(past: Sequence[PastCheckin], rules: CoachingRules) -> list[PastCheckin]:
    """The check-ins that did not take place, counting back from the latest before this one;
    as long as the trigger's threshold or longer, else empty."""
    states = NOT_HELD if rules.count_cancelled else ("skipped",)
    run: list[PastCheckin] = []
    for checkin in sorted(past, key=lambda c: c.start_at, reverse=True):
        if checkin.state not in states:
            break
        run.append(checkin)
    return run[::-1] if len(run) >= rules.skipped_in_a_row else []


def falling_ratings(past: Sequence[PastCheckin], rules: CoachingRules) -> list[int]:
    """The last ``window`` ratings when they fall (never rising, down by ``min_drop`` or
    more from first to last), else empty."""
    ratings = [c.rating for c in sorted(past, key=lambda c: c.start_at) if c.rating is not None]
    window = ratings[-rules.rating_window :]
    if len(window) < rules.rating_window:
        return []
    never_rising = all(b <= a for a, b in zip(window, window[1:], strict=False))
    return window if never_rising and window[0] - window[-1] >= rules.rating_min_drop else []


def stale_goals(
    goals: Sequence[AgendaGoal], now: dt.datetime, rules: CoachingRules
) -> list[AgendaGoal]:
    limit = dt.timedelta(weeks=rules.goal_stale_weeks)
    return [g for g in goals if now - g.updated_at >= limit]


def first_after_pip(inp: AgendaInput) -> bool:
    pip = inp.pip
    if pip is None or pip.started_at > inp.start_at:
        return False
    return not any(
        c.state not in NOT_HELD and pip.started_at <= c.start_at < inp.start_at
        for c in inp.past_checkins
    )


def prompts(
    inp: AgendaInput,
    items: Sequence[AgendaItem],
    goals: Sequence[AgendaGoal],
    now: dt.datetime,
    rules: CoachingRules,
) -> tuple[CoachingPrompt, ...]:
    """Every enabled trigger that holds, in :data:`TRIGGERS` order, with why it fired."""
    found: dict[str, tuple[str, ...]] = {}
    if "action_item_overdue" in rules.texts and (late := overdue_items(items, rules)):
        found["action_item_overdue"] = tuple(
            f"[{i.number}] {i.text}"
            + (f" ({i.owner})" if i.owner else "")
            + f": due {_day(i.due)}, overdue at {i.overdue_count} check-ins"
            for i in late
            if i.due is not None
        )
    if "skipped_in_a_row" in rules.texts and (run := skipped_run(inp.past_checkins, rules)):
        found["skipped_in_a_row"] = (
            f"The last {len(run)} check-ins did not take place: "
            + ", ".join(f"{_day(c.date)} ({c.state})" for c in run),
        )
    if "rating_trend" in rules.texts and (ratings := falling_ratings(inp.past_checkins, rules)):
        found["rating_trend"] = (
            f"Ratings of the last {len(ratings)} rated check-ins: "
            + " → ".join(str(r) for r in ratings),
        )
    if "goal_stale" in rules.texts and (stale := stale_goals(goals, now, rules)):
        found["goal_stale"] = tuple(
            f"{g.title} ({g.status.replace('_', ' ')}): no update for "
            f"{(now - g.updated_at).days // 7} weeks (last {_day(g.updated_at.date())})"
            for g in stale
        )
    if "first_after_pip" in rules.texts and first_after_pip(inp):
        assert inp.pip is not None
        found["first_after_pip"] = (
            f"{inp.pip.title} started on {_day(inp.pip.started_at.date())}; this is the "
            "first check-in since",
        )
    return tuple(
        CoachingPrompt(
            trigger=name,
            title=rules.texts[name].title,
            why=found[name],
            suggestion=rules.texts[name].suggestion,
            document=rules.texts[name].document,
        )
        for name in TRIGGERS
        if name in found
    )
