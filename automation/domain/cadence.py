"""Cadences as data: validation, recurrence in the employee's zone, slot finding, business days.

A cadence file (``config/cadences/*.toml``) is parsed by :func:`parse_cadence` into a frozen
:class:`Cadence`, or every problem is reported with its file and field. Recurrence is computed
on local wall time in the employee's IANA zone and only then converted to UTC, so a 10:00
meeting stays at 10:00 when the clocks change.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.rrule import rrulestr

from automation.errors import ConfigError, ConfigProblem

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_RRULE_DAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
_FREQUENCY = re.compile(r"^(weekly|monthly|every (\d+) weeks?)$")
NOTIFY = ("manager", "hr_partner", "managers_manager", "employee")


@dataclass(frozen=True)
class LadderStep:
    """One rung: after N business days without documentation, tell someone."""

    after_business_days: int
    notify: str
    template: str

    @property
    def action(self) -> str:
        return "remind" if self.notify == "manager" else "escalate"


@dataclass(frozen=True)
class Cadence:
    name: str
    frequency: str  # "weekly" | "every N weeks" | "monthly"
    interval_weeks: int  # 1 for weekly, N for every N weeks, 0 for monthly
    duration_minutes: int
    weekdays: tuple[int, ...]
    window_start: dt.time
    window_end: dt.time
    agenda_lead_hours: float
    followup_delay_hours: float
    questions: tuple[str, ...]
    ladder: tuple[LadderStep, ...]
    title: str = "1:1 {manager} / {employee}"
    reports_of: tuple[str, ...] = ()  # manager emails; empty means every manager
    exclude: tuple[str, ...] = ()
    description: str = ""
    source_file: str = ""

    def applies_to(self, employee_email: str, manager_email: str | None) -> bool:
        if manager_email is None or employee_email in self.exclude:
            return False
        return not self.reports_of or manager_email in self.reports_of

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["window_start"] = self.window_start.isoformat("minutes")
        data["window_end"] = self.window_end.isoformat("minutes")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cadence:
        data = dict(data)
        data["window_start"] = dt.time.fromisoformat(data["window_start"])
        data["window_end"] = dt.time.fromisoformat(data["window_end"])
        data["ladder"] = tuple(LadderStep(**s) for s in data["ladder"])
        for key in ("weekdays", "questions", "reports_of", "exclude"):
            data[key] = tuple(data[key])
        return cls(**data)


@dataclass
class _Reader:
    """Pulls typed fields out of a TOML table and collects every problem on the way."""

    file: str
    problems: list[ConfigProblem] = field(default_factory=list)

    def get(
        self,
        table: dict[str, Any],
        path: str,
        kind: type | tuple[type, ...],
        *,
        default: Any = ...,
        expected: str,
        fix: str = "",
    ) -> Any:
        node: Any = table
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is not ...:
                    return default
                self.problems.append(ConfigProblem(self.file, path, "missing", fix or expected))
                return None
            node = node[part]
        if not isinstance(node, kind) or isinstance(node, bool) and kind is not bool:
            self.fail(path, f"expected {expected}, got {node!r}", fix)
            return None
        return node

    def fail(self, path: str, problem: str, fix: str = "") -> None:
        self.problems.append(ConfigProblem(self.file, path, problem, fix))


def _parse_time(reader: _Reader, path: str, raw: str | None) -> dt.time | None:
    if raw is None:
        return None
    try:
        return dt.time.fromisoformat(raw)
    except ValueError:
        reader.fail(path, f'expected a time like "09:00", got {raw!r}')
        return None


KNOWN_KEYS = {
    "": {
        "name",
        "description",
        "title",
        "applies_to",
        "schedule",
        "agenda",
        "followup",
        "escalation",
    },
    "applies_to": {"reports_of", "exclude"},
    "schedule": {"frequency", "duration_minutes", "weekdays", "window_start", "window_end"},
    "agenda": {"lead_hours"},
    "followup": {"delay_hours", "questions"},
    "escalation": {"after_business_days", "notify", "template"},
}


def parse_cadence(data: dict[str, Any], file: str, templates: Iterable[str] = ()) -> Cadence:
    """Validate one cadence table; raise ConfigError listing every problem found."""
    r = _Reader(file)
    for section, known in KNOWN_KEYS.items():
        tables = [data] if not section else data.get(section, {})
        for table in tables if isinstance(tables, list) else [tables]:
            if not isinstance(table, dict):
                continue
            for key in table:
                if key not in known and not (section == "" and key in KNOWN_KEYS):
                    r.fail(
                        f"{section + '.' if section else ''}{key}",
                        "unknown field",
                        "known fields: " + ", ".join(sorted(known)),
                    )

    name = r.get(data, "name", str, expected='a short name such as "biweekly-1on1"')
    frequency = r.get(
        data, "schedule.frequency", str, expected='"weekly", "every N weeks" or "monthly"'
    )
    interval = 1
    if frequency is not None:
        match = _FREQUENCY.match(frequency.strip().lower())
        if not match:
            r.fail(
                "schedule.frequency",
                f'expected "weekly", "every N weeks" or "monthly", got {frequency!r}',
                'e.g. frequency = "every 2 weeks"',
            )
        elif match.group(1) == "monthly":
            interval = 0
        elif match.group(2):
            interval = int(match.group(2))
            if not 1 <= interval <= 12:
                r.fail("schedule.frequency", f"every {interval} weeks is outside 1..12")
    duration = r.get(
        data, "schedule.duration_minutes", int, default=30, expected="minutes as a whole number"
    )
    if duration is not None and not 5 <= duration <= 480:
        r.fail("schedule.duration_minutes", f"{duration} is outside 5..480")
    days_raw = r.get(
        data,
        "schedule.weekdays",
        list,
        default=["tue", "wed", "thu"],
        expected='a list like ["tue", "wed"]',
    )
    weekdays: list[int] = []
    for day in days_raw or []:
        key = str(day).strip().lower()[:3]
        if key not in WEEKDAYS:
            r.fail("schedule.weekdays", f"{day!r} is not a weekday", "use mon … sun")
        else:
            weekdays.append(WEEKDAYS.index(key))
    if days_raw is not None and not days_raw:
        r.fail("schedule.weekdays", "must name at least one day")
    start = _parse_time(
        r,
        "schedule.window_start",
        r.get(data, "schedule.window_start", str, default="09:00", expected='a time like "09:00"'),
    )
    end = _parse_time(
        r,
        "schedule.window_end",
        r.get(data, "schedule.window_end", str, default="17:00", expected='a time like "17:00"'),
    )
    if (
        start
        and end
        and duration
        and (
            dt.datetime.combine(dt.date.min, start) + dt.timedelta(minutes=duration)
            > dt.datetime.combine(dt.date.min, end)
        )
    ):
        r.fail(
            "schedule.window_end",
            f"the window {start:%H:%M}-{end:%H:%M} cannot fit a {duration}-minute meeting",
            "widen the window or shorten the meeting",
        )
    lead = r.get(data, "agenda.lead_hours", (int, float), default=24, expected="hours as a number")
    delay = r.get(
        data, "followup.delay_hours", (int, float), default=1, expected="hours as a number"
    )
    for path, value in (("agenda.lead_hours", lead), ("followup.delay_hours", delay)):
        if value is not None and not 0 <= value <= 24 * 14:
            r.fail(path, f"{value} is outside 0..336 hours")
    questions = r.get(
        data,
        "followup.questions",
        list,
        expected="a list of questions",
        fix='questions = ["What went well?", "What is blocking you?"]',
    )
    if questions is not None and (
        not questions or not all(isinstance(q, str) and q.strip() for q in questions)
    ):
        r.fail("followup.questions", "needs at least one non-empty question")
    ladder: list[LadderStep] = []
    steps = r.get(data, "escalation", list, default=[], expected="a list of [[escalation]] tables")
    known_templates = set(templates)
    previous = -1
    for i, step in enumerate(steps or []):
        where = f"escalation[{i}]"
        if not isinstance(step, dict):
            r.fail(where, "expected a table")
            continue
        after = r.get(step, "after_business_days", int, expected="business days as a whole number")
        notify = r.get(step, "notify", str, expected=" or ".join(NOTIFY))
        template = r.get(
            step,
            "template",
            str,
            default="reminder" if notify == "manager" else "escalation",
            expected="a template name",
        )
        if after is not None and after <= previous:
            r.fail(
                f"{where}.after_business_days",
                f"{after} must be later than the step before ({previous})",
                "list steps in increasing order",
            )
        if notify is not None and notify not in NOTIFY:
            r.fail(f"{where}.notify", f"unknown recipient {notify!r}", "use " + ", ".join(NOTIFY))
        if template and known_templates and template not in known_templates:
            r.fail(
                f"{where}.template",
                f"no template named {template!r}",
                "templates: " + ", ".join(sorted(known_templates)),
            )
        if after is not None and notify in NOTIFY and template:
            ladder.append(LadderStep(after, notify, template))
            previous = after
    applies = data.get("applies_to", {})
    reports_of = r.get(applies, "reports_of", list, default=[], expected="a list of emails")
    exclude = r.get(applies, "exclude", list, default=[], expected="a list of emails")
    if r.problems:
        raise ConfigError(r.problems)
    assert start is not None and end is not None  # a missing one was a problem above
    return Cadence(
        name=name,
        frequency=frequency.strip().lower(),
        interval_weeks=interval,
        duration_minutes=duration,
        weekdays=tuple(sorted(set(weekdays))),
        window_start=start,
        window_end=end,
        agenda_lead_hours=float(lead),
        followup_delay_hours=float(delay),
        questions=tuple(q.strip() for q in questions),
        ladder=tuple(ladder),
        title=data.get("title", Cadence.title),
        reports_of=tuple(e.lower() for e in reports_of),
        exclude=tuple(e.lower() for e in exclude),
        description=data.get("description", ""),
        source_file=file,
    )


# --- recurrence -------------------------------------------------------------------------


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA time zone {name!r}") from exc


def build_rrule(cadence: Cadence, first_local: dt.datetime) -> str:
    """The RFC 5545 RRULE for a series whose first meeting is ``first_local``."""
    day = _RRULE_DAYS[first_local.weekday()]
    if cadence.interval_weeks == 0:
        nth = min((first_local.day - 1) // 7 + 1, 4)
        return f"FREQ=MONTHLY;BYDAY={nth}{day}"
    if cadence.interval_weeks == 1:
        return f"FREQ=WEEKLY;BYDAY={day}"
    return f"FREQ=WEEKLY;INTERVAL={cadence.interval_weeks};BYDAY={day}"


def localize(naive: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """Attach ``tz`` to a wall time; a time inside a spring-forward gap moves past the gap."""
    aware = naive.replace(tzinfo=tz)
    roundtrip = aware.astimezone(dt.UTC).astimezone(tz)
    if roundtrip.replace(tzinfo=None) != naive:  # nonexistent wall time
        return roundtrip
    return aware


@dataclass(frozen=True)
class Instance:
    recurrence_id: dt.datetime  # UTC
    start: dt.datetime  # UTC
    end: dt.datetime  # UTC


def expand(
    rrule: str,
    dtstart_local: dt.datetime,
    tz_name: str,
    duration_minutes: int,
    window_from: dt.datetime,
    window_to: dt.datetime,
) -> list[Instance]:
    """Instances of a series that start in [window_from, window_to), in UTC.

    The rule runs on naive local wall time, so every instance keeps its local hour across DST.
    """
    tz = zone(tz_name)
    rule = rrulestr(rrule, dtstart=dtstart_local)
    lo = window_from.astimezone(tz).replace(tzinfo=None) - dt.timedelta(days=1)
    hi = window_to.astimezone(tz).replace(tzinfo=None) + dt.timedelta(days=1)
    out = []
    length = dt.timedelta(minutes=duration_minutes)
    for local in rule.between(lo, hi, inc=True):
        start = localize(local, tz).astimezone(dt.UTC)
        if window_from <= start < window_to:
            out.append(Instance(start, start, start + length))
    return out


Interval = tuple[dt.datetime, dt.datetime]


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, with overlapping and touching intervals joined (free/busy answers)."""
    out: list[Interval] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _overlaps(a: Interval, busy: Sequence[Interval]) -> bool:
    return any(a[0] < b[1] and b[0] < a[1] for b in busy)


def choose_slot(
    cadence: Cadence,
    tz_name: str,
    not_before: dt.datetime,
    busy: Sequence[Interval],
    horizon_days: int = 28,
) -> tuple[dt.datetime, str]:
    """The first start inside the cadence window whose instances over the horizon are all free.

    ``busy`` holds UTC intervals of both people (existing meetings, all-day events, time off).
    Returns the first local start (naive, in ``tz_name``) and its RRULE. Candidates are tried
    week offset first (so a biweekly manager's reports alternate weeks), then weekday, then
    time of day in half-hour steps. When nothing is free the first candidate is used: a
    conflict is better than no check-in, and the calendar shows it.
    """
    tz = zone(tz_name)
    local_now = not_before.astimezone(tz).replace(tzinfo=None)
    week_start = (local_now - dt.timedelta(days=local_now.weekday())).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    step = dt.timedelta(minutes=30)
    length = dt.timedelta(minutes=cadence.duration_minutes)
    horizon_end = not_before + dt.timedelta(days=horizon_days)
    first: tuple[dt.datetime, str] | None = None
    weeks = max(cadence.interval_weeks, 1) + 1
    for week in range(weeks):
        for weekday in cadence.weekdays:
            day = week_start + dt.timedelta(weeks=week, days=weekday)
            slot = dt.datetime.combine(day.date(), cadence.window_start)
            last = dt.datetime.combine(day.date(), cadence.window_end) - length
            while slot <= last:
                if localize(slot, tz) > not_before:
                    rule = build_rrule(cadence, slot)
                    instances = expand(
                        rule,
                        slot,
                        tz_name,
                        cadence.duration_minutes,
                        not_before,
                        max(horizon_end, not_before + length),
                    )
                    if first is None:
                        first = (slot, rule)
                    if not any(_overlaps((i.start, i.end), busy) for i in instances):
                        return slot, rule
                slot += step
    assert first is not None, "a validated cadence always has a candidate"
    return first


# --- business days ------------------------------------------------------------------------


def add_business_days(
    moment: dt.datetime,
    days: int,
    tz_name: str,
    business_weekdays: frozenset[int],
    holidays: Iterable[dt.date],
) -> dt.datetime:
    """``moment`` moved forward by ``days`` business days in ``tz_name``, same wall time, UTC.

    Weekends and holidays are skipped; a result never lands on a closed day.
    """
    tz = zone(tz_name)
    closed = set(holidays)
    local = moment.astimezone(tz).replace(tzinfo=None)

    def is_open(d: dt.date) -> bool:
        return d.weekday() in business_weekdays and d not in closed

    day = local.date()
    remaining = days
    while remaining > 0 or not is_open(day):
        day += dt.timedelta(days=1)
        if is_open(day):
            remaining -= 1
    return localize(dt.datetime.combine(day, local.time()), tz).astimezone(dt.UTC)
