"""What people write back about an agenda: topics, closed items and goals. Pure parsing.

These read the person's own text (the quoted history and the closing already trimmed, as
:func:`automation.replies.extract_reply_text` or the extraction's ``body`` gives it):

- :func:`parse_topics`: ``+ topic`` lines; without any, each paragraph of free text is one.
- :func:`parse_closures`: ``#done 2``, ``#done 2, 4``, ``#done 2-4``, ``Done: 3`` close items by
  the number they had on the agenda; ``#done <text>`` / ``Done: <text>`` by their text. A bare
  ``#done`` is not a closure (it closes the check-in itself).
- :func:`goal_lines` and :func:`parse_goal_command`: ``#goal <title> [by DATE] [status]``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from automation.domain.agenda import GOAL_STATUSES, fold

MAX_TOPICS = 10
MAX_TOPIC_CHARS = 500

_PLUS = re.compile(r"^\s*\+\s*(?P<text>.*\S)\s*$")
_PLUS_ONE = re.compile(r"^\s*\+\s*\d+\s*[!.]*\s*$")  # "+1": agreement, not a topic
_COMMAND_LINE = re.compile(r"^\s*#\w")
_GREETING = re.compile(
    r"^(?:hi|hello|hey|dear|thanks|thank you|cheers|best|regards|kind regards|best regards|"
    r"many thanks|thx|ta)\b[\w\s,.!'-]{0,40}$",
    re.IGNORECASE,
)


def parse_topics(text: str, *, free_text: bool = True) -> list[str]:
    """The topics a reply to an agenda adds: its ``+`` lines; or, when it has none and
    ``free_text`` is true, each paragraph that is not a greeting, a sign-off or a command.
    At most :data:`MAX_TOPICS`, each cut to :data:`MAX_TOPIC_CHARS` characters."""
    lines = text.splitlines()
    found = [m["text"] for line in lines if (m := _PLUS.match(line)) and not _PLUS_ONE.match(line)]
    if not found and free_text:
        paragraph: list[str] = []
        for line in [*lines, ""]:
            stripped = line.strip()
            if stripped and not _COMMAND_LINE.match(stripped):
                paragraph.append(stripped)
                continue
            if paragraph:
                joined = " ".join(paragraph)
                if not _GREETING.match(joined):
                    found.append(joined)
                paragraph = []
    topics: list[str] = []
    for topic in found:
        cleaned = re.sub(r"\s+", " ", topic).strip()
        if cleaned and fold(cleaned) not in {fold(t) for t in topics}:
            topics.append(cleaned[:MAX_TOPIC_CHARS])
    return topics[:MAX_TOPICS]


@dataclass(frozen=True)
class Closures:
    """Action items a reply closes: by agenda number, and by (part of) their text."""

    numbers: tuple[int, ...] = ()
    texts: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.numbers or self.texts)


_DONE_COMMAND = re.compile(r"^\s*#done\b\s*[:\-]?\s*(?P<rest>.*?)\s*$", re.IGNORECASE)
_DONE_LABEL = re.compile(r"^\s*done\s*[:\-]\s*(?P<rest>.+?)\s*$", re.IGNORECASE)
_DONE_NUMBERS = re.compile(r"^\s*done\s+(?P<rest>#?\d.*?)\s*$", re.IGNORECASE)
_NUMBER_LIST = re.compile(
    r"^(?:items?\s*|nos?\.?\s*)?#?\d+(?:\s*-\s*#?\d+)?"
    r"(?:\s*(?:,|and|&|\s)\s*#?\d+(?:\s*-\s*#?\d+)?)*\s*\.?$",
    re.IGNORECASE,
)


def _numbers(rest: str) -> list[int]:
    out: list[int] = []
    for m in re.finditer(r"(\d+)(?:\s*-\s*#?(\d+))?", rest):
        low, high = int(m[1]), int(m[2] or m[1])
        if high < low or high - low > 50:  # "5-2", "1-999": take the first only
            high = low
        out.extend(range(low, high + 1))
    return out


def parse_closures(text: str) -> Closures:
    """Every ``#done N`` / ``Done: N`` / ``Done N`` / ``#done <text>`` / ``Done: <text>`` in
    the person's own text."""
    numbers: list[int] = []
    texts: list[str] = []
    for line in text.splitlines():
        by_text = _DONE_COMMAND.match(line) or _DONE_LABEL.match(line)
        m = by_text or _DONE_NUMBERS.match(line)
        if not m or not (rest := m["rest"].strip()):
            continue  # a bare "#done" closes the check-in itself, not an item
        if _NUMBER_LIST.match(rest):
            numbers.extend(n for n in _numbers(rest) if n not in numbers)
        elif by_text:
            texts.append(rest.strip(" \"'“”.").strip())
    return Closures(tuple(numbers), tuple(t for t in texts if t))


# --- #goal ----------------------------------------------------------------------------------

_GOAL = re.compile(r"^\s*#goal\b[:\s]*(?P<rest>.*?)\s*$", re.IGNORECASE)
_STATUS_WORDS = {
    "open": "open",
    "on track": "on_track",
    "on-track": "on_track",
    "on_track": "on_track",
    "ontrack": "on_track",
    "at risk": "at_risk",
    "at-risk": "at_risk",
    "at_risk": "at_risk",
    "done": "done",
    "achieved": "done",
    "complete": "done",
    "completed": "done",
    "dropped": "dropped",
}
# Words that end many titles ("Keep the channel open"): a status only after a separator.
_NEEDS_SEPARATOR = ("open",)
_STATUS_TAIL = re.compile(
    r"[\s,;:(\[—–-]*(?:status\s*[:=]?\s*)?(?P<status>"
    + "|".join(sorted((re.escape(w) for w in _STATUS_WORDS), key=len, reverse=True))
    + r")[\s)\].!]*$",
    re.IGNORECASE,
)
_MONTHS = {
    m: i
    for i, names in enumerate(
        (
            "jan january",
            "feb february",
            "mar march",
            "apr april",
            "may",
            "jun june",
            "jul july",
            "aug august",
            "sep sept september",
            "oct october",
            "nov november",
            "dec december",
        ),
        start=1,
    )
    for m in names.split()
}
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DUE_TAIL = re.compile(
    r"[\s,;:(\[—–-]*\b(?:by|due(?:\s+on|\s+by)?|until)\s+(?P<date>"
    r"\d{4}-\d{2}-\d{2}"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:{_MONTH})\.?(?:\s+\d{{4}})?"
    rf"|(?:{_MONTH})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"
    rf"|end\s+of\s+(?:{_MONTH})(?:\s+\d{{4}})?"
    r")[\s)\].!]*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class GoalCommand:
    """``#goal <title> [by DATE] [status]``: only what was written is set."""

    title: str
    due: dt.date | None = None
    status: str | None = None


def goal_lines(text: str) -> list[str]:
    """The argument of each ``#goal`` line of the person's own text."""
    return [m["rest"] for line in text.splitlines() if (m := _GOAL.match(line))]


def _date(text: str, today: dt.date) -> dt.date | None:
    text = text.strip().lower().rstrip(".")
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            return None
    year: int | None = None
    if m := re.search(r"(\d{4})$", text):
        year = int(m[1])
        text = text[: m.start()].rstrip(" ,")
    end_of = text.startswith("end of")
    words = re.findall(r"[a-z]+|\d+", text.removeprefix("end of"))
    month = next((_MONTHS[w] for w in words if w in _MONTHS), None)
    days = [int(w) for w in words if w.isdigit()]
    if month is None or (not end_of and not days):
        return None
    for candidate_year in [year] if year else [today.year, today.year + 1]:
        try:
            if end_of:
                following = dt.date(candidate_year + (month == 12), month % 12 + 1, 1)
                found = following - dt.timedelta(days=1)
            else:
                found = dt.date(candidate_year, month, days[0])
        except ValueError:
            return None
        if year or found >= today:
            return found
    return None


def parse_goal_command(argument: str, today: dt.date) -> GoalCommand | None:
    """``Ship the billing export by 30 April at risk`` -> title, due date and status.

    A date without a year is the next one on or after ``today``. None if no title is left.
    """
    rest = argument.strip()
    status: str | None = None
    due: dt.date | None = None
    for _ in range(2):  # the status and the date, in either order
        m = _STATUS_TAIL.search(rest)
        if (
            status is None
            and m
            and m.start() > 0
            and (
                _STATUS_WORDS[m["status"].lower()] not in _NEEDS_SEPARATOR
                or re.search(r"[,;:(\[—–-]|status", rest[m.start() : m.start("status")], re.I)
            )
        ):
            status = _STATUS_WORDS[m["status"].lower()]
            rest = rest[: m.start()]
            continue
        if due is None and (m := _DUE_TAIL.search(rest)) and m.start() > 0:
            found = _date(m["date"], today)
            if found is not None:
                due = found
                rest = rest[: m.start()]
                continue
        break
    title = rest.strip(" \t,;:—–-\"'“”")
    if not title:
        return None
    assert status is None or status in GOAL_STATUSES
    return GoalCommand(title=title, due=due, status=status)
