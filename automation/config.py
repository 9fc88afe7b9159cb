"""Loading HR configuration from ``config/``: cadences, PIP plans, and the whole-tree check."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from automation.domain.agenda import RoleExpectations
from automation.domain.cadence import Cadence, LadderStep, parse_cadence
from automation.domain.coaching import CoachingRules, parse_coaching
from automation.emails import check_templates, template_names
from automation.errors import ConfigError, ConfigProblem
from automation.settings import Settings, load_settings


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            ConfigProblem(
                str(path), "(file)", f"not valid TOML: {exc}", "correct the syntax at that line"
            )
        ) from None
    except OSError as exc:
        raise ConfigError(ConfigProblem(str(path), "(file)", f"cannot read: {exc}")) from None


def load_cadences(settings: Settings) -> list[Cadence]:
    """Every ``config/cadences/*.toml``, validated; all problems of all files in one error."""
    folder = settings.config_dir / "cadences"
    templates = template_names(settings.templates_dir)
    cadences: list[Cadence] = []
    problems: list[ConfigProblem] = []
    seen: dict[str, str] = {}
    for path in sorted(folder.glob("*.toml")):
        try:
            cadence = parse_cadence(read_toml(path), str(path), templates)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if cadence.name in seen:
            problems.append(
                ConfigProblem(
                    str(path),
                    "name",
                    f"{cadence.name!r} is already used by {seen[cadence.name]}",
                    "give each cadence its own name",
                )
            )
        seen[cadence.name] = str(path)
        cadences.append(cadence)
    if problems:
        raise ConfigError(problems)
    return cadences


@dataclass(frozen=True)
class PipPlan:
    """A PIP to start, as described in a ``pips.toml`` file."""

    employee: str
    title: str
    start_offset_days: int
    duration_days: int
    reviews: tuple[tuple[str, int], ...]  # (name, days after start)
    ladder: tuple[LadderStep, ...]


def load_pip_plans(path: Path, templates: list[str] | None = None) -> list[PipPlan]:
    if not path.exists():
        return []
    data = read_toml(path)
    plans: list[PipPlan] = []
    problems: list[ConfigProblem] = []
    for i, item in enumerate(data.get("pip", [])):
        where = f"pip[{i}]"
        try:
            # The ladder is validated by the same rules as a cadence's.
            fake = {
                "name": "pip",
                "schedule": {"frequency": "weekly"},
                "followup": {"questions": ["-"]},
                "escalation": item.get("escalation", []),
            }
            ladder = parse_cadence(fake, str(path), templates or ()).ladder
        except ConfigError as exc:
            problems.extend(
                ConfigProblem(p.file, f"{where}.{p.field}", p.problem, p.fix) for p in exc.problems
            )
            continue
        reviews = []
        for j, review in enumerate(item.get("reviews", [])):
            if (
                not isinstance(review, dict)
                or not isinstance(review.get("after_days"), int)
                or not isinstance(review.get("name"), str)
            ):
                problems.append(
                    ConfigProblem(
                        str(path),
                        f"{where}.reviews[{j}]",
                        'expected { name = "…", after_days = N }',
                    )
                )
                continue
            reviews.append((review["name"], review["after_days"]))
        for key in ("employee", "title"):
            if not isinstance(item.get(key), str):
                problems.append(ConfigProblem(str(path), f"{where}.{key}", "missing or not text"))
        duration = item.get("duration_days", 30)
        if not isinstance(duration, int) or duration <= 0:
            problems.append(
                ConfigProblem(
                    str(path),
                    f"{where}.duration_days",
                    "expected a positive whole number",
                    "e.g. 30, 60, 90",
                )
            )
        if problems:
            continue
        plans.append(
            PipPlan(
                item["employee"].lower(),
                item["title"],
                int(item.get("start_offset_days", 0)),
                duration,
                tuple(reviews),
                ladder,
            )
        )
    if problems:
        raise ConfigError(problems)
    return plans


# --- PIP templates (config/pips/*.toml) and goals files ------------------------------------

PIPS_FOLDER = "pips"
REVIEWERS = ("manager", "hr_partner")  # who documents the reviews (check-ins: the manager)
_PIP_KEYS = {
    "name",
    "title",
    "description",
    "duration_days",
    "reviewer",
    "checkins",
    "review",
    "documentation",
    "escalation",
    "acknowledgement",
}
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class PipTemplate:
    """A PIP template: duration, weekly check-ins, review milestones, what each review must
    document, who reviews, and the ladders (business days from the due time; negative = before).
    """

    name: str
    title: str
    duration_days: int
    reviewer: str
    checkin_weekdays: tuple[int, ...]
    checkin_window: tuple[str, str]  # "HH:MM" in the employee's zone
    checkin_minutes: int
    reviews: tuple[tuple[str, int], ...]  # (name, days after start)
    documentation: tuple[str, ...]  # what each review must document, asked as questions
    ladder: tuple[LadderStep, ...]  # for reviews and check-ins not documented
    acknowledgement_days: int  # business days the employee has to acknowledge the plan
    acknowledgement_ladder: tuple[LadderStep, ...]
    source_file: str = ""


def _ladder(
    steps: Any, file: str, where: str, templates: list[str], problems: list[ConfigProblem]
) -> tuple[LadderStep, ...]:
    """A ladder whose offsets may be negative (a reminder before the due time), in order."""
    from automation.domain.cadence import NOTIFY

    if not isinstance(steps, list) or not all(isinstance(x, dict) for x in steps):
        problems.append(
            ConfigProblem(
                file, where, "expected an array of tables", f"write each step as [[{where}]]"
            )
        )
        return ()
    out: list[LadderStep] = []
    for i, step in enumerate(steps):
        at = f"{where}[{i}]"
        after, notify = step.get("after_business_days"), step.get("notify")
        template = step.get("template", "reminder" if notify == "manager" else "escalation")
        ok = True
        for key in step:
            if key not in ("after_business_days", "notify", "template"):
                problems.append(
                    ConfigProblem(
                        file, f"{at}.{key}", "unknown key", "after_business_days, notify, template"
                    )
                )
                ok = False
        if not isinstance(after, int) or isinstance(after, bool):
            problems.append(
                ConfigProblem(
                    file,
                    f"{at}.after_business_days",
                    f"expected a whole number, got {after!r}",
                    "business days after the due time; negative for a reminder before it",
                )
            )
            ok = False
        elif out and after < out[-1].after_business_days:
            problems.append(
                ConfigProblem(
                    file,
                    f"{at}.after_business_days",
                    f"{after} comes before the previous step's {out[-1].after_business_days}",
                    "list the steps in the order they happen",
                )
            )
            ok = False
        if notify not in NOTIFY:
            problems.append(
                ConfigProblem(
                    file,
                    f"{at}.notify",
                    f"unknown recipient {notify!r}",
                    "use " + ", ".join(NOTIFY),
                )
            )
            ok = False
        if not isinstance(template, str) or (templates and template not in templates):
            problems.append(
                ConfigProblem(
                    file,
                    f"{at}.template",
                    f"no email template {template!r}",
                    "one of " + ", ".join(templates),
                )
            )
            ok = False
        if ok:
            out.append(LadderStep(after, notify, template))
    return tuple(out)


def parse_pip_template(
    data: dict[str, Any], file: str, templates: list[str] | tuple[str, ...] = ()
) -> PipTemplate:
    """Check one PIP template; every problem of the file in one ConfigError."""
    problems: list[ConfigProblem] = []
    names = list(templates)

    def fail(field: str, problem: str, fix: str = "") -> None:
        problems.append(ConfigProblem(file, field, problem, fix))

    for key in data:
        if key not in _PIP_KEYS:
            fail(key, "unknown key", "one of " + ", ".join(sorted(_PIP_KEYS)))
    name, title = data.get("name"), data.get("title")
    if not isinstance(name, str) or not name.strip():
        fail("name", "missing or not text", 'e.g. name = "90-day"')
    if not isinstance(title, str) or not title.strip():
        fail("title", "missing or not text", 'e.g. title = "90-day performance improvement plan"')
    duration = data.get("duration_days")
    if not isinstance(duration, int) or isinstance(duration, bool) or duration <= 0:
        fail("duration_days", f"expected a positive whole number, got {duration!r}", "30, 60, 90")
        duration = 0
    reviewer = data.get("reviewer", "manager")
    if reviewer not in REVIEWERS:
        fail("reviewer", f"unsupported reviewer {reviewer!r}", "use " + ", ".join(REVIEWERS))
    checkins = data.get("checkins", {})
    weekdays: list[int] = []
    window = ("09:00", "17:00")
    minutes = 30
    if not isinstance(checkins, dict):
        fail("checkins", "expected a table", "[checkins] with weekdays, window_start, …")
    else:
        for key in checkins:
            if key not in ("frequency", "weekdays", "window_start", "window_end", "minutes"):
                fail(
                    f"checkins.{key}",
                    "unknown key",
                    "frequency, weekdays, window_start, window_end, minutes",
                )
        if checkins.get("frequency", "weekly") != "weekly":
            fail("checkins.frequency", "PIP check-ins are weekly", 'frequency = "weekly"')
        for day in checkins.get("weekdays", ["tue", "wed", "thu"]):
            if not isinstance(day, str) or day.lower()[:3] not in _WEEKDAYS:
                fail("checkins.weekdays", f"unknown weekday {day!r}", "mon … sun")
            else:
                weekdays.append(_WEEKDAYS.index(day.lower()[:3]))
        window = (checkins.get("window_start", "09:00"), checkins.get("window_end", "17:00"))
        for key, value in zip(("window_start", "window_end"), window, strict=True):
            if not isinstance(value, str) or not re.fullmatch(r"\d{2}:\d{2}", value):
                fail(f"checkins.{key}", f"expected HH:MM, got {value!r}", 'e.g. "09:00"')
        minutes = checkins.get("minutes", 30)
        if not isinstance(minutes, int) or not 5 <= minutes <= 240:
            fail("checkins.minutes", f"expected 5 to 240, got {minutes!r}", "e.g. 30")
            minutes = 30
    reviews: list[tuple[str, int]] = []
    raw_reviews = data.get("review", [])
    if not isinstance(raw_reviews, list) or not raw_reviews:
        fail(
            "review",
            "at least one review milestone is needed",
            '[[review]] name = "…", after_days = N',
        )
        raw_reviews = []
    for i, review in enumerate(raw_reviews):
        ok_name = isinstance(review, dict) and isinstance(review.get("name"), str)
        days = review.get("after_days") if isinstance(review, dict) else None
        if not ok_name or not isinstance(days, int) or isinstance(days, bool) or days <= 0:
            fail(
                f"review[{i}]",
                "expected name (text) and after_days (days after the start, > 0)",
                'name = "Day 30 review", after_days = 30',
            )
            continue
        if duration and days > duration:
            fail(
                f"review[{i}].after_days",
                f"{days} is after the plan's end (day {duration})",
                "move the review inside the plan",
            )
            continue
        reviews.append((review["name"], days))
    if len({n for n, _ in reviews}) != len(reviews):
        fail("review", "two reviews share a name", "give each review its own name")
    documentation = (
        data.get("documentation", {}).get("required", [])
        if isinstance(data.get("documentation", {}), dict)
        else None
    )
    if (
        not isinstance(documentation, list)
        or not documentation
        or not all(isinstance(x, str) and x.strip() for x in documentation)
    ):
        fail(
            "documentation.required",
            "expected a non-empty list of what each review documents",
            'e.g. required = ["Progress against each goal", "Support provided", "Outcome"]',
        )
        documentation = []
    ladder = _ladder(data.get("escalation", []), file, "escalation", names, problems)
    if not ladder:
        fail(
            "escalation",
            "a PIP needs an escalation ladder",
            '[[escalation]] after_business_days = 0, notify = "manager"',
        )
    ack = data.get("acknowledgement", {})
    ack_days = ack.get("within_business_days", 3) if isinstance(ack, dict) else None
    if not isinstance(ack_days, int) or isinstance(ack_days, bool) or ack_days < 0:
        fail(
            "acknowledgement.within_business_days",
            f"expected a whole number >= 0, got {ack_days!r}",
            "e.g. 3",
        )
        ack_days = 3
    ack_ladder = _ladder(
        ack.get("escalation", []) if isinstance(ack, dict) else [],
        file,
        "acknowledgement.escalation",
        names,
        problems,
    )
    if problems:
        raise ConfigError(problems)
    return PipTemplate(
        name=str(name).strip(),
        title=str(title).strip(),
        duration_days=duration,
        reviewer=reviewer,
        checkin_weekdays=tuple(sorted(set(weekdays))),
        checkin_window=window,
        checkin_minutes=minutes,
        reviews=tuple(sorted(reviews, key=lambda r: r[1])),
        documentation=tuple(documentation),
        ladder=ladder,
        acknowledgement_days=ack_days,
        acknowledgement_ladder=ack_ladder,
        source_file=file,
    )


def load_pip_templates(settings: Settings) -> dict[str, PipTemplate]:
    """Every ``config/pips/*.toml`` by name; all problems of all files in one error."""
    templates = template_names(settings.templates_dir)
    out: dict[str, PipTemplate] = {}
    problems: list[ConfigProblem] = []
    for path in sorted((settings.config_dir / PIPS_FOLDER).glob("*.toml")):
        try:
            tpl = parse_pip_template(read_toml(path), str(path), templates)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if tpl.name in out:
            problems.append(
                ConfigProblem(
                    str(path),
                    "name",
                    f"{tpl.name!r} is already used by {out[tpl.name].source_file}",
                    "give each template its own name",
                )
            )
            continue
        out[tpl.name] = tpl
    if problems:
        raise ConfigError(problems)
    return out


@dataclass(frozen=True)
class GoalSpec:
    """One line of a goals file."""

    goal: str
    success_criteria: str
    owner: str  # employee | manager | an address
    due: dt.date | None


_GOAL_FIELDS = ("goal", "success_criteria", "owner", "due")


def load_goals(path: Path) -> list[GoalSpec]:
    """A goals file: TOML (``[[goal]]`` tables) or CSV (header goal,success_criteria,owner,due).

    Every goal needs measurable success criteria; ``owner`` defaults to the employee and
    ``due`` is an ISO date or empty.
    """
    file = str(path)
    rows: list[dict[str, Any]]
    if path.suffix.lower() == ".csv":
        try:
            with path.open(encoding="utf-8-sig", newline="") as fh:
                reader = csv.DictReader(fh)
                missing = [
                    f for f in ("goal", "success_criteria") if f not in (reader.fieldnames or [])
                ]
                if missing:
                    raise ConfigError(
                        ConfigProblem(
                            file,
                            "(header)",
                            "missing column(s) " + ", ".join(missing),
                            "header: " + ",".join(_GOAL_FIELDS),
                        )
                    )
                rows = [dict(r) for r in reader]
        except OSError as exc:
            raise ConfigError(ConfigProblem(file, "(file)", f"cannot read: {exc}")) from None
        where = "row"
    else:
        data = read_toml(path)
        rows = data.get("goal", [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ConfigError(
                ConfigProblem(
                    file,
                    "goal",
                    "expected an array of tables",
                    '[[goal]] goal = "…", success_criteria = "…"',
                )
            )
        where = "goal"
    problems: list[ConfigProblem] = []
    goals: list[GoalSpec] = []
    for i, row in enumerate(rows):
        at = f"{where}[{i + 1 if where == 'row' else i}]"
        goal = str(row.get("goal") or "").strip()
        criteria = str(row.get("success_criteria") or "").strip()
        owner = str(row.get("owner") or "employee").strip().lower()
        due_raw = row.get("due")
        if not goal:
            problems.append(
                ConfigProblem(file, f"{at}.goal", "empty", "say what is to be achieved")
            )
        if not criteria:
            problems.append(
                ConfigProblem(
                    file,
                    f"{at}.success_criteria",
                    "empty",
                    "a measurable criterion, e.g. 'all tickets answered within 2 business days'",
                )
            )
        due: dt.date | None = None
        if isinstance(due_raw, dt.date):
            due = due_raw
        elif due_raw not in (None, ""):
            try:
                due = dt.date.fromisoformat(str(due_raw).strip())
            except ValueError:
                problems.append(
                    ConfigProblem(file, f"{at}.due", f"not a date: {due_raw!r}", "YYYY-MM-DD")
                )
        goals.append(GoalSpec(goal, criteria, owner, due))
    if not rows:
        problems.append(ConfigProblem(file, where, "no goals", "a PIP needs at least one goal"))
    if problems:
        raise ConfigError(problems)
    return goals


# --- delegates ----------------------------------------------------------------------------

DELEGATES_FILE = "delegates.toml"
_ADDRESS = re.compile(r"^[^@\s<>(),;:\"]+@[^@\s<>(),;:\"]+\.[^@\s<>(),;:\"]+$")
_DELEGATE_EXAMPLE = '[[delegate]]\nfor = "manager@example.com"\ndelegate = "assistant@example.com"'

Delegates = dict[str, frozenset[str]]  # manager's address -> addresses that may write for them


def load_delegates(settings: Settings) -> Delegates:
    """``config/delegates.toml``: who may document a manager's check-ins on their behalf.

    A missing file means no delegates. Each ``[[delegate]]`` names the manager (``for``) and
    the delegate's address; a manager may have several delegates. Addresses are compared in
    lower case. Every problem in the file is reported at once.
    """
    path = settings.config_dir / DELEGATES_FILE
    if not path.exists():
        return {}
    data = read_toml(path)
    problems: list[ConfigProblem] = []
    file = str(path)
    for key in data:
        if key != "delegate":
            problems.append(
                ConfigProblem(
                    file, key, "unknown key", f"only [[delegate]] tables, e.g. {_DELEGATE_EXAMPLE}"
                )
            )
    entries = data.get("delegate", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        problems.append(
            ConfigProblem(
                file,
                "delegate",
                "expected an array of tables ([[delegate]])",
                f"write each as {_DELEGATE_EXAMPLE}",
            )
        )
        raise ConfigError(problems)
    out: dict[str, set[str]] = {}
    for i, entry in enumerate(entries):
        where = f"delegate[{i}]"
        addresses: dict[str, str] = {}
        for key in entry:
            if key not in ("for", "delegate"):
                problems.append(
                    ConfigProblem(
                        file, f"{where}.{key}", "unknown key", "each entry has `for` and `delegate`"
                    )
                )
        for key, role in (("for", "the manager's"), ("delegate", "the delegate's")):
            value = entry.get(key)
            if value is None:
                problems.append(
                    ConfigProblem(
                        file,
                        f"{where}.{key}",
                        "missing",
                        f'add {key} = "…" with {role} email address',
                    )
                )
            elif not isinstance(value, str) or not _ADDRESS.match(value.strip()):
                problems.append(
                    ConfigProblem(
                        file,
                        f"{where}.{key}",
                        f"expected an email address, got {value!r}",
                        'a bare address, e.g. "assistant@example.com"',
                    )
                )
            else:
                addresses[key] = value.strip().lower()
        if len(addresses) == 2:
            if addresses["for"] == addresses["delegate"]:
                problems.append(
                    ConfigProblem(
                        file,
                        f"{where}.delegate",
                        f"{addresses['for']} cannot be their own delegate",
                        "name another person, or remove the entry",
                    )
                )
                continue
            out.setdefault(addresses["for"], set()).add(addresses["delegate"])
    if problems:
        raise ConfigError(problems)
    return {manager: frozenset(found) for manager, found in out.items()}


PRIVACY_FILE = "privacy.toml"
_RETENTION_KEYS = {
    "years_after_leaving": (6, "years", 1, 100),
    "unrecorded_mail_days": (90, "days", 1, 36_500),
    "sent_mail_days": (730, "days", 1, 36_500),
}


@dataclass(frozen=True)
class PrivacyPolicy:
    """``config/privacy.toml``: who may read records besides the manager chain and the HR
    partner, and how long personal data is kept (a legal hold suspends all of it)."""

    hr_admins: frozenset[str] = frozenset()
    years_after_leaving: int = 6  # a person's records, mail and goals, from when they left
    unrecorded_mail_days: int = 90  # raw mail that never became a record
    sent_mail_days: int = 730  # the bodies of emails sent; the row (who, when, why) stays


def load_privacy(settings: Settings) -> PrivacyPolicy:
    """Read ``config/privacy.toml``; a missing file means the defaults and no HR admins."""
    path = settings.config_dir / PRIVACY_FILE
    if not path.exists():
        return PrivacyPolicy()
    data = read_toml(path)
    file = str(path)
    problems: list[ConfigProblem] = []
    for key in data:
        if key not in ("hr_admins", "retention"):
            problems.append(
                ConfigProblem(file, key, "unknown key", "only hr_admins and [retention]")
            )
    admins = data.get("hr_admins", [])
    if not isinstance(admins, list):
        admins = [admins]
    found: set[str] = set()
    for i, address in enumerate(admins):
        if not isinstance(address, str) or not _ADDRESS.match(address.strip()):
            problems.append(
                ConfigProblem(
                    file,
                    f"hr_admins[{i}]",
                    f"expected an email address, got {address!r}",
                    'a list of bare addresses, e.g. hr_admins = ["hr@example.com"]',
                )
            )
        else:
            found.add(address.strip().lower())
    retention = data.get("retention", {})
    values: dict[str, int] = {}
    if not isinstance(retention, dict):
        problems.append(
            ConfigProblem(file, "retention", "expected a table", "write it as [retention]")
        )
        retention = {}
    for key, value in retention.items():
        if key not in _RETENTION_KEYS:
            problems.append(
                ConfigProblem(
                    file, f"retention.{key}", "unknown key", ", ".join(sorted(_RETENTION_KEYS))
                )
            )
            continue
        _, unit, low, high = _RETENTION_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            problems.append(
                ConfigProblem(
                    file,
                    f"retention.{key}",
                    f"expected a whole number of {unit} from {low} to {high}, got {value!r}",
                    f"e.g. {key} = {_RETENTION_KEYS[key][0]}",
                )
            )
        else:
            values[key] = value
    if problems:
        raise ConfigError(problems)
    return PrivacyPolicy(hr_admins=frozenset(found), **values)


# --- roles (config/roles/*.toml) and coaching prompts (config/coaching.toml) -----------------

ROLES_FOLDER = "roles"
COACHING_FILE = "coaching.toml"
ROLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,99}$")
_ROLE_KEYS = ("name", "title", "description", "success_criteria", "priorities")
_ROLE_EXAMPLE = {
    "title": 'title = "Software engineer"',
    "success_criteria": 'success_criteria = ["Ships agreed work on time", "…"]',
    "priorities": 'priorities = ["Reliability of the billing service", "…"]',
}


def parse_role(data: dict[str, Any], file: str, default_name: str) -> RoleExpectations:
    """Check one role file; every problem of the file in one ConfigError. ``name`` defaults
    to the file's name (without .toml); it is what the people file's ``role`` column says."""
    problems: list[ConfigProblem] = []

    def fail(field: str, problem: str, fix: str = "") -> None:
        problems.append(ConfigProblem(file, field, problem, fix))

    for key in data:
        if key not in _ROLE_KEYS:
            fail(key, "unknown key", "one of " + ", ".join(_ROLE_KEYS))
    name = data.get("name", default_name)
    if not isinstance(name, str) or not ROLE_NAME.match(name):
        fail(
            "name",
            f"expected a short lower-case name (letters, digits, - or _), got {name!r}",
            f'e.g. name = "{default_name if ROLE_NAME.match(default_name) else "engineer"}"',
        )
    title = data.get("title")
    if not isinstance(title, str) or not title.strip():
        fail("title", "missing or not text", _ROLE_EXAMPLE["title"])
    description = data.get("description", "")
    if not isinstance(description, str):
        fail("description", "expected text", 'description = "…"')
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("success_criteria", "priorities"):
        value = data.get(key)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(x, str) and x.strip() for x in value)
        ):
            fail(
                key,
                "expected a non-empty list of text" + ("" if value is None else f", got {value!r}"),
                _ROLE_EXAMPLE[key],
            )
        else:
            lists[key] = tuple(x.strip() for x in value)
    if problems:
        raise ConfigError(problems)
    return RoleExpectations(
        name=str(name),
        title=str(title).strip(),
        success_criteria=lists["success_criteria"],
        priorities=lists["priorities"],
        description=str(description).strip(),
        source_file=file,
    )


def load_roles(settings: Settings) -> dict[str, RoleExpectations]:
    """Every ``config/roles/*.toml`` by name (none if the folder is missing); all problems of
    all files in one error."""
    out: dict[str, RoleExpectations] = {}
    problems: list[ConfigProblem] = []
    for path in sorted((settings.config_dir / ROLES_FOLDER).glob("*.toml")):
        try:
            role = parse_role(read_toml(path), str(path), path.stem)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if role.name in out:
            problems.append(
                ConfigProblem(
                    str(path),
                    "name",
                    f"{role.name!r} is already used by {out[role.name].source_file}",
                    "give each role its own name",
                )
            )
            continue
        out[role.name] = role
    if problems:
        raise ConfigError(problems)
    return out


def load_coaching(settings: Settings) -> CoachingRules | None:
    """``config/coaching.toml``, checked; None (no coaching prompts) if there is no file."""
    path = settings.config_dir / COACHING_FILE
    if not path.exists():
        return None
    return parse_coaching(read_toml(path), str(path))


def check_all(config_file: Path | None = None) -> tuple[Settings | None, list[ConfigProblem]]:
    """Validate settings, every cadence and every template; never stops at the first problem."""
    problems: list[ConfigProblem] = []
    try:
        settings = load_settings(config_file)
    except ConfigError as exc:
        return None, exc.problems
    if not (settings.config_dir / "cadences").is_dir():
        problems.append(
            ConfigProblem(
                str(settings.config_dir / "cadences"),
                "(folder)",
                "missing",
                "create it with at least one cadence .toml",
            )
        )
    else:
        try:
            load_cadences(settings)
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.extend(check_templates(settings.templates_dir))
    for loader in (load_delegates, load_privacy, load_roles, load_coaching):
        try:
            loader(settings)
        except ConfigError as exc:
            problems.extend(exc.problems)
    try:
        load_pip_plans(
            settings.config_dir / "example" / "pips.toml", template_names(settings.templates_dir)
        )
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        load_pip_templates(settings)
    except ConfigError as exc:
        problems.extend(exc.problems)
    return settings, problems


# --- editing configuration files (the HR console) -------------------------------------------
#
# The console edits ``config/cadences/*.toml`` and ``config/pips/*.toml`` as text. A text is
# checked by the very parsers the loaders above use, before anything is written, and every
# problem keeps the line of the text it points at, so an editor can show it in place.

CADENCES_FOLDER = "cadences"
# A file the console may create or edit: a short lower-case name, never a path.
EDITABLE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def editable_name(name: str) -> bool:
    """True for a file name (without ``.toml``) the console may write: no dots, no slashes."""
    return EDITABLE_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class LocatedProblem:
    """A problem of a text being edited, with the line of the text it is about (None when
    the text does not say: a missing key, a clash with another file)."""

    problem: ConfigProblem
    line: int | None


@dataclass(frozen=True)
class CheckedText:
    """A configuration text as the service would load it: what it parses to (None when it
    has problems) and every problem found."""

    value: Any  # Cadence | PipTemplate | None
    problems: tuple[LocatedProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


class _Parser(Protocol):
    def __call__(self, data: dict[str, Any], file: str, templates: list[str], /) -> Any: ...


def check_cadence_text(settings: Settings, file_name: str, text: str) -> CheckedText:
    """``text`` as ``config/cadences/<file_name>`` would be loaded by :func:`load_cadences`:
    parsed by :func:`parse_cadence`, and its name not used by another cadence file."""
    return _check_text(
        settings, CADENCES_FOLDER, file_name, text, parse_cadence, "give each cadence its own name"
    )


def check_pip_template_text(settings: Settings, file_name: str, text: str) -> CheckedText:
    """``text`` as ``config/pips/<file_name>`` would be loaded by :func:`load_pip_templates`."""
    return _check_text(
        settings,
        PIPS_FOLDER,
        file_name,
        text,
        parse_pip_template,
        "give each template its own name",
    )


def _check_text(
    settings: Settings, folder: str, file_name: str, text: str, parse: _Parser, clash_fix: str
) -> CheckedText:
    path = settings.config_dir / folder / file_name
    problems: list[ConfigProblem] = []
    value = None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Worded as read_toml words it, so the console says what `config check` says.
        problems.append(
            ConfigProblem(
                str(path), "(file)", f"not valid TOML: {exc}", "correct the syntax at that line"
            )
        )
    else:
        try:
            value = parse(data, str(path), template_names(settings.templates_dir))
        except ConfigError as exc:
            problems.extend(exc.problems)
        else:
            other = _name_used_by(settings.config_dir / folder, file_name, value.name)
            if other is not None:
                problems.append(
                    ConfigProblem(
                        str(path), "name", f"{value.name!r} is already used by {other}", clash_fix
                    )
                )
    located = tuple(LocatedProblem(p, toml_line(text, p)) for p in problems)
    return CheckedText(None if problems else value, located)


def _name_used_by(folder: Path, file_name: str, name: str) -> str | None:
    """The other file of ``folder`` whose ``name`` is ``name`` (the clash the loaders refuse);
    a file that cannot be read clashes with nothing here (its own check reports it)."""
    for other in sorted(folder.glob("*.toml")):
        if other.name == file_name:
            continue
        try:
            found = read_toml(other).get("name")
        except ConfigError:
            continue
        if isinstance(found, str) and found.strip() == name.strip():
            return str(other)
    return None


_TOML_AT_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_TOML_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?$")
_TOML_BARE_OR_QUOTED = r"(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
_TOML_KEY = re.compile(rf"^\s*({_TOML_BARE_OR_QUOTED}(?:\s*\.\s*{_TOML_BARE_OR_QUOTED})*)\s*=")


def _toml_key_parts(dotted: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.findall(_TOML_BARE_OR_QUOTED, dotted)]


def toml_field_lines(text: str) -> dict[str, int]:
    """Where each table and key of a TOML text starts, by the field paths problems use:
    ``schedule.frequency``, ``escalation[1].notify``, ``acknowledgement.escalation[0]``.

    A line scanner, not a parser: it serves to point at a line, and a line it cannot place
    (a key inside a multi-line string) is simply not found.
    """
    found: dict[str, int] = {}
    table = ""
    arrays: dict[str, int] = {}  # array-of-tables path (as resolved) -> its last index
    in_string: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if in_string is not None:
            if line.count(in_string) % 2:
                in_string = None
            continue
        header = _TOML_HEADER.match(line)
        if header:
            parts = _toml_key_parts(header.group(2))
            resolved = ""
            for i, part in enumerate(parts):
                resolved = f"{resolved}.{part}" if resolved else part
                if i == len(parts) - 1 and header.group(1) == "[[":
                    # A new element of an array of tables: the next index, counted per parent
                    # element (``[[a.b]]`` under the second ``[[a]]`` starts again at 0).
                    arrays[resolved] = arrays.get(resolved, -1) + 1
                    found.setdefault(resolved, number)
                    resolved = f"{resolved}[{arrays[resolved]}]"
                elif resolved in arrays:
                    resolved = f"{resolved}[{arrays[resolved]}]"
            table = resolved
            found.setdefault(table, number)
            continue
        key = _TOML_KEY.match(line)
        if key:
            path = (
                ".".join([table, *_toml_key_parts(key.group(1))])
                if table
                else ".".join(_toml_key_parts(key.group(1)))
            )
            found.setdefault(path, number)
            rest = line[key.end() :]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2:
                    in_string = quote
    return found


def toml_line(text: str, problem: ConfigProblem) -> int | None:
    """The line of ``text`` a problem is about: the TOML error's own line, else the line of
    its field, else of the nearest enclosing table; None when the text does not show it."""
    at = _TOML_AT_LINE.search(problem.problem)
    if at:
        return int(at.group(1))
    lines = toml_field_lines(text)
    field = problem.field
    while field:
        if field in lines:
            return lines[field]
        shorter = re.sub(r"(\[\d+\]|\.[^.\[\]]+)$", "", field)
        if shorter == field:
            break
        field = shorter
    # A field named without its table (``reports_of`` for ``applies_to.reports_of``).
    ends = [n for path, n in lines.items() if path.endswith("." + problem.field)]
    return ends[0] if len(ends) == 1 else None


def text_sha256(text: str) -> str:
    """What the audit log records of a saved text: its SHA-256, never the content."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_text_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader sees the old file or the new one, never
    a part: a temporary file in the same folder (hidden, ending in ``.tmp``, so no loader's
    ``*.toml`` glob picks it up), flushed to disk, then renamed over it."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o777)
        else:
            os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
