"""Turning a command's free-text time ("Thu 14:00", "tomorrow 10am") into a wall time."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

_DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
_TIME = re.compile(r"\b(\d{1,2})(?:[:.h](\d{2}))?\s*(am|pm)?\b", re.IGNORECASE)
_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")


def parse_when(text: str, now_local: dt.datetime, default_time: dt.time) -> dt.datetime | None:
    """A naive local datetime after ``now_local`` named by ``text``, or None if not understood.

    Understands an ISO date, "today", "tomorrow" or a weekday name (the next one strictly
    after today), each optionally followed by a time ("14:00", "2pm", "9.30"). A time alone
    means the next time that time comes round.
    """
    lowered = text.strip().lower()
    rest = lowered
    day: dt.date | None = None
    if m := _DATE.search(lowered):
        try:
            day = dt.date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            return None
        rest = lowered.replace(m[0], " ")
    elif "tomorrow" in lowered:
        day = now_local.date() + dt.timedelta(days=1)
        rest = lowered.replace("tomorrow", " ")
    elif "today" in lowered:
        day = now_local.date()
        rest = lowered.replace("today", " ")
    else:
        for word in re.findall(r"[a-z]+", lowered):
            if word[:3] in _DAYS and (
                len(word) == 3
                or word.startswith(("mon", "tues", "wednes", "thurs", "fri", "satur", "sun"))
            ):
                ahead = (_DAYS[word[:3]] - now_local.weekday() - 1) % 7 + 1
                day = now_local.date() + dt.timedelta(days=ahead)
                rest = lowered.replace(word, " ")
                break
    at = default_time
    if m := _TIME.search(rest):
        hour, minute = int(m[1]), int(m[2] or 0)
        if m[3]:
            if hour > 12:
                return None
            hour = hour % 12 + (12 if m[3].lower() == "pm" else 0)
        if hour > 23 or minute > 59:
            return None
        at = dt.time(hour, minute)
    elif day is None:
        return None
    if day is None:
        day = now_local.date()
        if dt.datetime.combine(day, at) <= now_local:
            day += dt.timedelta(days=1)
    result = dt.datetime.combine(day, at)
    return result if result > now_local else None


# --- #warning ---------------------------------------------------------------------------------

_WARNING = re.compile(r"^\s*#warning\b[:\s]*(.*)$", re.IGNORECASE)
_WARNING_FIELD = re.compile(r"^\s*(expectation|consequence)\s*:\s*(.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class WarningDraft:
    """A manager's ``#warning <reason>`` line, with the ``Expectation:`` and
    ``Consequence:`` lines that follow it (or ``| expectation: … | consequence: …`` inline)."""

    reason: str
    expectation: str = ""
    consequence: str = ""


def parse_warnings(text: str) -> list[WarningDraft]:
    """Every ``#warning`` in the person's own text (quotes already trimmed)."""
    drafts: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if m := _WARNING.match(line):
            parts = [p.strip() for p in m[1].split("|")]
            current = {"reason": parts[0], "expectation": "", "consequence": ""}
            for part in parts[1:]:
                if f := _WARNING_FIELD.match(part):
                    current[f[1].lower()] = f[2].strip()
            drafts.append(current)
        elif current is not None and (f := _WARNING_FIELD.match(line)):
            current[f[1].lower()] = f[2].strip()
        elif not line.strip() or line.lstrip().startswith("#"):
            current = None
    return [WarningDraft(**d) for d in drafts if d["reason"]]
