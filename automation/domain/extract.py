"""Extraction: answers to the prompt's questions, a rating, action items and #commands.

Whatever fits no field goes to ``notes``, so nothing the person wrote is silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from automation.domain.quotes import (
    _first_marker,
    _is_quoted,
    _is_signature,
    _split_lines,
    _strip_blank,
    trim_reply,
)

# --------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class ActionItem:
    """A follow-up the person listed; owner and due date only when they were written."""

    text: str  # as written, without the "Action:" keyword
    owner: str | None  # "manager", "employee", a name or address as written, or None
    due: date | None


@dataclass(frozen=True)
class Command:
    """A ``#command`` line: acted on by the services, never recorded as an answer."""

    name: str  # "skip" | "done" | "cancel" | "reschedule"
    argument: str  # the text after the command, stripped


@dataclass(frozen=True)
class Extraction:
    """Everything found in a reply; ``body`` keeps all the person wrote, as evidence."""

    answers: dict[int, str]  # 1-based question number -> answer text
    rating: int | None  # 1..5
    action_items: tuple[ActionItem, ...]
    commands: tuple[Command, ...]
    notes: str  # every line of the person's text that went into no other field
    body: str  # all the person's own text


_COMMAND = re.compile(r"^#(skip|done|cancel|reschedule)\b(.*)$", re.IGNORECASE)
_NUMBERED = re.compile(r"^(?:q\s*(\d{1,2})\s*[.):]?|(\d{1,2})\s*[.):])(?:\s+|$)(.*)$", re.I)
_ACTION = re.compile(
    r"^(?:[-*•]\s*)?(?:action items?|action|ai|todo|to-do)\s*(?:\((?P<owner>[^)]*)\))?\s*:\s*"
    r"(?P<text>.+)$|^(?:[-*•]\s*)?\[ ?\]\s*(?P<box>.+)$",
    re.IGNORECASE,
)
_OWNER = re.compile(
    r"^(?P<who>I|me|[\w.+-]+@[\w-]+(?:\.[\w-]+)+|[A-Z][\w'.-]*(?:\s+[A-Z][\w'.-]*){0,2})"
    r"\s+(?:will\s|to\s+(?=[a-z]))"
)
_OUT_OF_5 = r"\s*(?:/\s*5|out of 5)"
_BARE_RATING = re.compile(
    rf"^(?:(?:overall\s+)?(?:rating|score|rated?)\s*[:=-]?\s*(\d+)(?:{_OUT_OF_5})?"
    rf"|(\d+){_OUT_OF_5})\s*[.!]?$",
    re.IGNORECASE,
)
_RATING = re.compile(
    r"\b(?:rating|score|rated)\s*[:=-]?\s*(\d+)\b|(?<![\d/])(\d+)\s*(?:/\s*5|out of 5)(?![\d/])",
    re.IGNORECASE,
)
_RATING_QUESTION = re.compile(r"\brat(?:e|ed|ing)\b|\b1\s*[-–]\s*5\b", re.IGNORECASE)
_WEEKDAYS = {
    "mon": 0, "monday": 0, "tue": 1, "tues": 1, "tuesday": 1, "wed": 2, "wednesday": 2,
    "thu": 3, "thur": 3, "thurs": 3, "thursday": 3, "fri": 4, "friday": 4, "sat": 5,
    "saturday": 5, "sun": 6, "sunday": 6,
}  # fmt: skip
_MONTH_NAMES = (
    "jan january,feb february,mar march,apr april,may,jun june,jul july,aug august,"
    "sep sept september,oct october,nov november,dec december"
)
_MONTHS = {
    name: number
    for number, names in enumerate(_MONTH_NAMES.split(","), start=1)
    for name in names.split()
}


@dataclass
class _Draft:
    answers: dict[int, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    actions: list[ActionItem] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    ratings: list[int] = field(default_factory=list)


def extract(text: str, questions: Sequence[str], sent_at: datetime | None = None) -> Extraction:
    """What the person said, from the full decoded body of their reply.

    Inline style (non-quoted text under quoted questions "> 1. ...") is tried first; otherwise
    the reply is top-posted: :func:`trim_reply`, then "1. ", "1) ", "Q1: ", "1: " start an
    answer that continues on the following lines up to a blank line or the next number (a
    later paragraph goes to notes). Every line is, in this order of precedence, a command, an
    action item, a bare rating ("Rating: 4", "4/5"), part of an answer, or a note.
    """
    draft = _Draft()
    slots = _inline_slots(_split_lines(text), questions)
    if slots is not None:
        for line, slot in slots:
            if not line.strip():
                if slot is not None and slot in draft.answers:
                    draft.answers[slot].append("")
            elif not _take(line, draft, sent_at):
                target = draft.answers.setdefault(slot, []) if slot else draft.notes
                target.append(line.strip())
        body = _join([line for line, _ in slots])
    else:
        body = trim_reply(text)
        current, gap = None, False
        for line in body.split("\n"):
            stripped = line.strip()
            numbered = _NUMBERED.match(stripped)
            number = int(numbered[1] or numbered[2]) if numbered else 0
            if not stripped:
                gap = True
            elif _take(stripped, draft, sent_at):
                current = None
            elif numbered and 1 <= number <= len(questions):
                current, gap = number, False
                answer = _without_question(numbered[3], questions[number - 1])
                draft.answers.setdefault(number, []).append(answer)
            elif current is not None and not gap:
                draft.answers[current].append(stripped)
            else:
                current = None
                draft.notes.append(stripped)
    answers = {n: _join(lines) for n, lines in sorted(draft.answers.items()) if _join(lines)}
    rating = draft.ratings[0] if draft.ratings else None
    for n, question in enumerate(questions, start=1):
        m = re.match(r"\s*([1-5])(?!\d)", answers.get(n, ""))
        if rating is None and m and _RATING_QUESTION.search(question):
            rating = int(m[1])
    return Extraction(
        answers=answers,
        rating=rating,
        action_items=tuple(draft.actions),
        commands=tuple(draft.commands),
        notes="\n".join(draft.notes),
        body=body,
    )


def _inline_slots(
    lines: list[str], questions: Sequence[str]
) -> list[tuple[str, int | None]] | None:
    """The person's own lines, each with the question it answers (None: not an answer), or
    None if this is not an inline reply. Quoted lines right under a quoted question continue
    the question; a quoted line after the answer has begun ends it. Attribution lines are
    dropped; a signature ends the person's text (above the first question it is skipped)."""
    marks = {}
    for i, line in enumerate(lines):
        if _is_quoted(line) and (n := _question_number(line.lstrip("> \t"), questions)):
            marks[i] = n
    if not marks:
        return None
    first = min(marks)
    if not any(line.strip() and not _is_quoted(line) for line in lines[first + 1 :]):
        return None
    skip: set[int] = set()
    marker = _first_marker(lines[:first])
    if marker is not None and marker.kind != "signature":
        skip = set(range(marker.start, marker.end))
    own: list[tuple[str, int | None]] = []
    slot, answered, in_signature = None, False, False
    for i, line in enumerate(lines):
        if i in marks:
            slot, answered, in_signature = marks[i], False, False
        elif _is_quoted(line):
            slot = None if answered else slot
        elif _is_signature(line):
            if i > first:
                break
            in_signature = True
        elif i not in skip and not in_signature:
            answered = answered or bool(line.strip())
            own.append((line, slot))
    return own


def _question_number(content: str, questions: Sequence[str]) -> int | None:
    """The question a quoted line asks: by its text first, then by its number."""
    numbered = _NUMBERED.match(content.strip())
    said = _normal(numbered[3] if numbered else content)
    for n, question in enumerate(questions, start=1):
        asked = _normal(question)
        if (
            asked
            and said
            and (said.startswith(asked) or (len(said) >= 12 and asked.startswith(said)))
        ):
            return n
    number = int(numbered[1] or numbered[2]) if numbered else 0
    return number if 1 <= number <= len(questions) else None


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _without_question(answer: str, question: str) -> str:
    """People often repeat the question before answering it ("1. What went well? The demo")."""
    asked = question.strip()
    if asked and answer.lower().startswith(asked.lower()):
        return answer[len(asked) :].strip()
    return answer


def _join(lines: list[str]) -> str:
    """Lines joined, blank runs collapsed to one blank line, blank ends stripped."""
    out: list[str] = []
    for line in lines:
        if line.strip() or (out and out[-1].strip()):
            out.append(line.rstrip())
    return "\n".join(_strip_blank(out))


def _take(line: str, draft: _Draft, sent_at: datetime | None) -> bool:
    """Record a command, action item or rating on ``line``; True if that consumed the line
    (a line that merely mentions a rating, "overall 4/5, good sprint", stays text)."""
    stripped = line.strip()
    if m := _COMMAND.match(stripped):
        draft.commands.append(Command(m[1].lower(), m[2].strip()))
        return True
    if item := _action_item(stripped, sent_at):
        draft.actions.append(item)
        return True
    if m := _BARE_RATING.match(stripped):
        value = int(m[1] or m[2])
        if 1 <= value <= 5:
            draft.ratings.append(value)
            return True
        return False  # out of range: not a rating, the line stays text
    for m in _RATING.finditer(stripped):
        value = int(m[1] or m[2])
        if 1 <= value <= 5:
            draft.ratings.append(value)
            break
    return False


def _action_item(line: str, sent_at: datetime | None) -> ActionItem | None:
    m = _ACTION.match(line)
    if m is None:
        return None
    text = (m["text"] or m["box"]).strip()
    owner = m["owner"].strip() if m["owner"] else None
    if owner is None and (who := _OWNER.match(text)):
        owner = who["who"]
    if owner is not None:
        lowered = owner.lower()
        owner = "manager" if lowered in ("i", "me", "myself") else owner
        owner = lowered if lowered in ("manager", "employee") else owner
    return ActionItem(text=text, owner=owner or None, due=_due(text, sent_at))


def _due(text: str, sent_at: datetime | None) -> date | None:
    """The date in "by <when>": an ISO date; with ``sent_at``, also "tomorrow", "today", a
    weekday (the next one strictly after the sending day) or "14 March"/"March 14" (the next
    such day on or after the sending day)."""
    for m in re.finditer(r"\bby\s+(?:(?:next|this)\s+)?", text, re.IGNORECASE):
        rest = text[m.end() :].lower()
        if iso := re.match(r"(\d{4})-(\d{2})-(\d{2})\b", rest):
            try:
                return date(int(iso[1]), int(iso[2]), int(iso[3]))
            except ValueError:
                continue
        if sent_at is None:
            continue
        sent = sent_at.date()
        word = re.match(r"[a-z]+", rest)
        if word and word[0] in ("today", "eod"):
            return sent
        if word and word[0] == "tomorrow":
            return sent + timedelta(days=1)
        if word and word[0] in _WEEKDAYS:
            return sent + timedelta(days=(_WEEKDAYS[word[0]] - sent.weekday() - 1) % 7 + 1)
        day_month = re.match(r"(\d{1,2})(?:st|nd|rd|th)?\s+([a-z]+)\b", rest)
        month_day = re.match(r"([a-z]+)\.?\s+(\d{1,2})(?:st|nd|rd|th)?\b", rest)
        if day_month and day_month[2] in _MONTHS:
            month, day = _MONTHS[day_month[2]], int(day_month[1])
        elif month_day and month_day[1] in _MONTHS:
            month, day = _MONTHS[month_day[1]], int(month_day[2])
        else:
            continue
        try:
            due = date(sent.year, month, day)
            return due if due >= sent else date(sent.year + 1, month, day)
        except ValueError:
            continue
    return None
