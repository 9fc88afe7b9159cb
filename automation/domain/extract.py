"""Extraction: answers to the prompt's questions, a rating, action items and #commands.

Whatever fits no field goes to ``notes``, so nothing the person wrote is silently dropped.
Only what is not their message goes: the quoted history and the closing (signature,
sign-off with its name/contact block, legal disclaimer), see :mod:`automation.domain.quotes`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from automation.domain.quotes import (
    MAX_REPLY_CHARS,
    _closing_start,
    _first_marker,
    _is_quoted,
    _is_signature,
    _is_signoff,
    _sender_names,
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
# "Actions:" (and the same heading in our languages) over a bulleted or numbered list.
_ACTION_HEADING = re.compile(
    r"^(?:action items?|actions?|next steps|to-?dos?|follow-?ups?|aktionen|maßnahmen|"
    r"massnahmen|nächste schritte|aufgaben|prochaines étapes|acciones|próximos pasos|tareas|"
    r"acties|actiepunten|vervolgstappen|ações|acções|próximos passos|azioni|prossimi passi|"
    r"åtgärder|nästa steg|att göra|działania|zadania|następne kroki|действия|задачи|"
    r"следующие шаги|アクション(?:アイテム)?|対応事項|todo|行动项|待办事项|后续步骤)"
    r"\s*[:：]?$",
    re.IGNORECASE,
)
_LIST_ITEM = re.compile(r"^(?:[-*•–]|\d{1,2}[.)])\s+(.+)$")
_OUT_OF_5 = r"\s*(?:/\s*5|out of 5|von 5|sur 5|de 5|van 5|di 5|av 5|na 5|из 5)"
# "Rating: 4" in our languages; as a whole line only ("Note : 4" is French, "Note: 4 people"
# is not), a mention inside a sentence counts in English or as "4/5" only.
_RATING_WORDS = (
    r"rating|score|rated?|bewertung|note|évaluation|puntuación|calificación|nota|"
    r"beoordeling|cijfer|voto|valutazione|betyg|ocena|оценка|評価|评分|評分"
)
_BARE_RATING = re.compile(
    rf"^(?:(?:overall\s+)?(?:{_RATING_WORDS})\s*[:：=-]?\s*(\d+)(?:{_OUT_OF_5})?"
    rf"|(\d+){_OUT_OF_5})\s*[.!]?$",
    re.IGNORECASE,
)
_RATING = re.compile(
    rf"\b(?:rating|score|rated)\s*[:=-]?\s*(\d+)\b|(?<![\d/])(\d+)(?:{_OUT_OF_5})(?![\d/])",
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
    section: str | None = None  # under an "Actions:" heading: "open", then "items"

    def blank(self) -> None:
        """A blank line ends the list under an "Actions:" heading (once it has items)."""
        if self.section == "items":
            self.section = None


def extract(
    text: str,
    questions: Sequence[str],
    sent_at: datetime | None = None,
    sender: str | None = None,
) -> Extraction:
    """What the person said, from the full decoded body of their reply.

    Inline style is tried first: non-quoted text under quoted questions ("> 1. ..."), or
    answers typed into the unquoted history under an Outlook header block. Otherwise the
    reply is top-posted: :func:`trim_reply`, then "1. ", "1) ", "Q1: ", "1: " start an
    answer that continues on the following lines up to a blank line or the next number (a
    later paragraph goes to notes). Every line is, in this order of precedence, a command, an
    action item, a bare rating ("Rating: 4", "4/5"), part of an answer, or a note.

    ``sent_at`` (aware, in the sender's zone: the Date header keeps its offset) resolves
    relative due dates; ``sender`` (the From display name) lets a closing that is just the
    person's name go with the signature.
    """
    draft = _Draft()
    text = text[:MAX_REPLY_CHARS]
    lines = _split_lines(text)
    names = _sender_names(sender)
    slots = _inline_slots(lines, questions, names)
    if slots is None:
        slots = _history_slots(lines, questions, sender)
    if slots is not None:
        for line, slot in slots:
            if not line.strip():
                draft.blank()
                if slot is not None and slot in draft.answers:
                    draft.answers[slot].append("")
            elif not _take(line, draft, sent_at):
                target = draft.answers.setdefault(slot, []) if slot else draft.notes
                target.append(line.strip())
        body = _join([line for line, _ in slots])
    else:
        body = trim_reply(text, sender)
        current, gap = None, False
        for line in body.split("\n"):
            stripped = line.strip()
            numbered = _NUMBERED.match(stripped)
            number = int(numbered[1] or numbered[2]) if numbered else 0
            if not stripped:
                gap = True
                draft.blank()
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
    lines: list[str], questions: Sequence[str], names: frozenset[str] = frozenset()
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
    return _without_closing(own, names)


def _without_closing(
    own: list[tuple[str, int | None]], names: frozenset[str]
) -> list[tuple[str, int | None]]:
    """The person's lines without the sign-off, contact block or disclaimer that ends them."""
    text = [line for line, _ in own]
    cut = _closing_start(text, 0, len(text), names)
    if cut == len(text) or not any(line.strip() for line in text[:cut]):
        return own
    if own[cut][1] is not None and not _is_signoff(text[cut].strip().lower()):
        return own  # a name alone under a question is the answer ("Who follows up?" "Bea")
    return own[:cut]


def _history_slots(
    lines: list[str], questions: Sequence[str], sender: str | None
) -> list[tuple[str, int | None]] | None:
    """Answers typed into unquoted history (Outlook: the original under a header block, the
    person's answers in colour under each question), or None. The person's lines are what is
    above the header, then under each question the lines up to the next question (after the
    last one, up to the first blank line). A question wrapped over lines stays a question."""
    if not questions:
        return None
    marker = _first_marker(lines)
    if marker is None or marker.kind == "signature":
        return None
    asked: list[tuple[int, int, int]] = []  # (first line, line after the question, number)
    i = marker.end
    while i < len(lines):
        line = lines[i].strip()
        n = _question_number(line, questions, by_number=False) if line else None
        if n is None:
            i += 1
            continue
        numbered = _NUMBERED.match(line)
        j, said = i + 1, _normal(numbered[3] if numbered else line)
        asked_text = _normal(questions[n - 1])
        while j < len(lines) and lines[j].strip() and len(said) < len(asked_text):
            longer = f"{said} {_normal(lines[j])}".strip()
            if not asked_text.startswith(longer):
                break
            said, j = longer, j + 1
        asked.append((i, j, n))
        i = j
    answers: list[tuple[str, int | None]] = []
    for k, (_, after, n) in enumerate(asked):
        if k + 1 < len(asked):
            block = _strip_blank(lines[after : asked[k + 1][0]])
        else:  # after the last question only what is right under it: then comes the footer
            end = after
            while end < len(lines) and lines[end].strip():
                end += 1
            block = lines[after:end]
        if any(_is_quoted(line) or _is_signature(line) for line in block):
            return None  # a quoted or signed original: not answers typed into it
        answers += [(line, n) for line in block]
    # Someone answered between the questions: a pristine original has them one under the
    # other, and what follows the last one may be the prompt's own footer.
    last = asked[-1][2] if asked else None
    if not any(line.strip() and n != last for line, n in answers):
        return None
    top = trim_reply("\n".join(lines[: marker.start]), sender)
    return [(line, None) for line in top.split("\n")] + answers


def _question_number(content: str, questions: Sequence[str], by_number: bool = True) -> int | None:
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
    number = int(numbered[1] or numbered[2]) if numbered and by_number else 0
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
    if _ACTION_HEADING.match(stripped):
        draft.section = "open"
        return True
    if draft.section is not None:
        if listed := _LIST_ITEM.match(stripped):
            text = listed[1].strip()
            draft.actions.append(_action_item(text, sent_at) or _item(text, None, sent_at))
            draft.section = "items"
            return True
        draft.section = None
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
    return _item(text, m["owner"].strip() if m["owner"] else None, sent_at)


def _item(text: str, owner: str | None, sent_at: datetime | None) -> ActionItem:
    """An action item; the owner as written in "(owner):", else "Name to …", "I will …"."""
    if owner is None and (who := _OWNER.match(text)):
        owner = who["who"]
    if owner is not None:
        lowered = owner.lower()
        owner = "manager" if lowered in ("i", "me", "myself") else owner
        owner = lowered if lowered in ("manager", "employee") else owner
    return ActionItem(text=text, owner=owner or None, due=_due(text, sent_at))


def _due(text: str, sent_at: datetime | None) -> date | None:
    """The date in "by <when>" (or "due <when>", "before <when>"): an ISO date; with
    ``sent_at``, also relative dates, on the calendar of the sender's zone (the aware
    ``sent_at`` keeps the Date header's offset, so its ``date()`` is the sender's day):

    * "today", "tonight", "EOD", "end of day"; "tomorrow";
    * a weekday, "next Friday", "this Friday": the next such day strictly after the sending
      day ("by Friday" sent on a Friday is a week later);
    * "next week": the Monday after the sending week; "end of (the) week", "EOW": that
      week's Friday (the next one, sent at a weekend); "end of next week": the Friday after;
    * "end of (the) month", "EOM", "month end": the month's last day; "next month": the 1st
      of the next month; "end of next month": its last day;
    * "14 March", "March 14th": the next such day on or after the sending day.
    """
    for m in _BY.finditer(text):
        rest = text[m.end() :].lower()
        if iso := re.match(r"(\d{4})-(\d{2})-(\d{2})\b", rest):
            try:
                return date(int(iso[1]), int(iso[2]), int(iso[3]))
            except ValueError:
                continue
        if sent_at is None:
            continue
        if (due := _relative_due(rest, sent_at.date())) is not None:
            return due
    return None


_BY = re.compile(r"\b(?:by|due(?:\s+(?:by|on))?|before|no later than)\s+(?:the\s+)?", re.I)
_PERIOD_END = re.compile(r"(?:the\s+)?end\s+of\s+(?:the\s+)?(this\s+|next\s+)?(day|week|month)\b")


def _relative_due(rest: str, sent: date) -> date | None:
    """``rest`` (lower-cased, just after "by") as a date relative to the sending day."""
    if end := _PERIOD_END.match(rest):
        return _period_end(end[2], sent, bool(end[1] and end[1].startswith("next")))
    word = re.match(r"[a-z]+", rest)
    first = word[0] if word else ""
    if first in ("today", "tonight", "eod"):
        return sent
    if first == "eow":
        return _period_end("week", sent, False)
    if first == "eom" or rest.startswith("month end"):
        return _period_end("month", sent, False)
    if first == "tomorrow":
        return sent + timedelta(days=1)
    if first in ("next", "this"):
        rest = rest[len(first) :].lstrip()
        if rest.startswith("week") and first == "next":
            return sent + timedelta(days=7 - sent.weekday())
        if rest.startswith("month") and first == "next":
            return date(sent.year + sent.month // 12, sent.month % 12 + 1, 1)
        word = re.match(r"[a-z]+", rest)
        first = word[0] if word else ""
    if first in _WEEKDAYS:
        return sent + timedelta(days=(_WEEKDAYS[first] - sent.weekday() - 1) % 7 + 1)
    day_month = re.match(r"(\d{1,2})(?:st|nd|rd|th)?\.?\s+(?:of\s+)?([a-z]+)\b", rest)
    month_day = re.match(r"([a-z]+)\.?\s+(\d{1,2})(?:st|nd|rd|th)?\b", rest)
    if day_month and day_month[2] in _MONTHS:
        month, day = _MONTHS[day_month[2]], int(day_month[1])
    elif month_day and month_day[1] in _MONTHS:
        month, day = _MONTHS[month_day[1]], int(month_day[2])
    else:
        return None
    try:
        due = date(sent.year, month, day)
        return due if due >= sent else date(sent.year + 1, month, day)
    except ValueError:
        return None


def _period_end(period: str, sent: date, following: bool) -> date:
    """The last day of the sending day's (or the following) day, working week or month."""
    if period == "day":
        return sent + timedelta(days=1) if following else sent
    if period == "week":
        friday = sent + timedelta(days=(4 - sent.weekday()) % 7)
        return friday + timedelta(days=7) if following else friday
    year, month = sent.year, sent.month + following
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    following_first = date(year + month // 12, month % 12 + 1, 1)
    return following_first - timedelta(days=1)
