"""An employee's whole timeline, as evidence HR and counsel can read (DESIGN principle 5).

:func:`timeline` reads the database into plain data (:class:`Timeline`): every check-in, every
version of every conversation record with the raw message it came from, action items, PIPs and
their reviews, escalation steps, reassignments of who documents a check-in or review, the
emails sent about them, messages kept without a record, and the audit entries that cover them.
Every event cites its sources: the inbound message (id, SHA-256, the path of its raw copy in
the bundle), the outbound message, the audit seq. The renderers (:func:`render_json`,
:func:`render_html`, :func:`render_pdf`) and :func:`bundle` only format that data, so all
formats say the same thing.

Output is deterministic: nothing reads the clock. The timeline is stamped with the audit
chain's head (seq and hash) instead, so the same database gives byte-identical JSON, HTML and
bundle, and a reader can tell which state of the log an export shows.

Kinds that other models add (PIP goals, warnings, acknowledgements) are picked up by
:data:`OPTIONAL_KINDS`: each is an :class:`OptionalKind` that names a model class looked up in
:mod:`automation.models` by name, so the export includes those rows as soon as the model
exists, and skips the kind silently before. See :class:`OptionalKind` for how a row is tied to
the employee, which column gives its time and which its summary.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import LargeBinary, or_, select
from sqlalchemy.orm import Session

from automation import models
from automation.models import (
    ActionItem,
    AuditEntry,
    CheckinSeries,
    ConversationRecord,
    Escalation,
    InboundMessage,
    Occurrence,
    Organization,
    OutboundMessage,
    Person,
    Pip,
    PipReview,
    Reassignment,
)
from automation.services.escalation import reassigned_prompt_key
from automation.services.pips import reviewer_given

FORMATS = ("json", "html", "pdf")
# Ties in time sort by this order, then by the event's ref: a check-in comes before the
# email about it, the record before its action items, a reassignment before the prompt it sends.
# The event kinds: these, and those of OPTIONAL_KINDS (goal, goal_version, development_item,
# agenda_topic) after them.
KIND_ORDER = (
    "pip",
    "pip_goal",
    "checkin",
    "pip_review",
    "reassignment",
    "email_sent",
    "message_kept",
    "record",
    "action_item",
    "escalation",
    "warning",
    "acknowledgement",
)
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # every bundle member's timestamp: reproducible zips


class EmployeeNotFound(LookupError):
    pass


def source_path(sha256: str) -> str:
    """Where an inbound message's raw bytes are in the bundle."""
    return f"sources/{sha256}.eml"


def sent_path(sha256: str) -> str:
    """Where a sent message's raw bytes are in the bundle."""
    return f"sent/{sha256}.eml"


def invite_path(uid: str) -> str:
    return f"invites/{uid}.ics"


@dataclass(frozen=True)
class Source:
    """What a statement rests on. ``kind`` is ``inbound`` (a message received, stored raw),
    ``outbound`` (a message sent), ``audit`` (an entry of the hash-chained log) or ``invite``
    (a series' calendar). ``path`` is the file in the bundle, when there is one."""

    kind: str
    id: int | str
    sha256: str | None = None
    message_id: str | None = None
    path: str | None = None
    # For inbound messages: does the stored raw still hash to the stored sha256?
    verified: bool | None = None


@dataclass(frozen=True)
class Event:
    kind: str
    ref: str  # stable: "<kind>:<row id>"
    time: dt.datetime  # aware, in the timeline's zone
    summary: str
    details: dict[str, Any]
    sources: tuple[Source, ...] = ()


@dataclass(frozen=True)
class SeriesInfo:
    uid: str
    manager: str
    rrule: str
    timezone: str
    dtstart_local: str
    duration_minutes: int
    active: bool
    path: str


@dataclass(frozen=True)
class AuditInfo:
    seq: int
    at: dt.datetime
    actor: str
    action: str
    subject_kind: str
    subject_id: int | None
    data: dict[str, Any]
    hash: str


@dataclass
class Timeline:
    organization: str
    employee: dict[str, Any]
    timezone: str
    audit_seq: int  # the chain's head when exported: which state of the log this shows
    audit_head: str
    events: list[Event] = field(default_factory=list)
    series: list[SeriesInfo] = field(default_factory=list)
    audit: list[AuditInfo] = field(default_factory=list)
    # Raw bytes the bundle carries, by bundle path (not part of the JSON).
    files: dict[str, bytes] = field(default_factory=dict, repr=False)


# --- optional kinds --------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionalKind:
    """How rows of a model that may not exist yet become events.

    ``model`` is looked up with ``getattr(automation.models, model, None)``; when it is missing
    the kind is skipped. A row belongs to the employee when any of its ``links`` columns holds
    an id of the employee's scope (``employee_id``/``person_id``: the employee; ``pip_id``,
    ``pip_review_id``, ``occurrence_id``, ``record_id``: their PIPs, reviews, check-ins and
    records; ``warning_id``, ``pip_goal_id``/``goal_id``: rows of earlier optional kinds).
    Its time is the first non-null of ``time_columns``, its summary the first non-empty of
    ``summary_columns``; every other column (except binary ones) goes into ``details``. A
    ``source_message_id``/``inbound_message_id`` or ``outbound_message_id`` column becomes a
    source. ``subjects`` ties rows by a ``subject_kind``/``subject_id`` pair. A row of any kind
    with ``acknowledged_at`` set also yields an ``acknowledgement``
    event, for models that keep the acknowledgement on the row itself.
    """

    kind: str
    model: str
    scope: str  # the scope key its own ids are added to, for later kinds to link to
    links: tuple[str, ...] = (
        "employee_id",
        "person_id",
        "pip_id",
        "pip_review_id",
        "occurrence_id",
        "record_id",
        "warning_id",
        "pip_goal_id",
        "goal_id",
    )
    time_columns: tuple[str, ...] = ("issued_at", "at", "created_at")
    summary_columns: tuple[str, ...] = ("title", "summary", "text", "description", "reason")
    # Polymorphic links: (value of the row's subject_kind, scope its subject_id is in).
    subjects: tuple[tuple[str, str], ...] = ()
    # (link column, scope) pairs that replace the usual scope of a link for this kind: a goal
    # version's ``goal_id`` names a person's goal, not a PIP goal.
    link_scopes: tuple[tuple[str, str], ...] = ()


# Order matters: acknowledgements may point at warnings or goals, so those come first. The
# names and columns follow the models being added (PipGoal, CorrectiveAction, Acknowledgement).
OPTIONAL_KINDS: tuple[OptionalKind, ...] = (
    OptionalKind("pip_goal", "PipGoal", "pip_goal", summary_columns=("goal", "title", "text")),
    OptionalKind(
        "warning",
        "CorrectiveAction",
        "warning",
        summary_columns=("reason", "title", "summary", "text"),
    ),
    OptionalKind(
        "acknowledgement",
        "Acknowledgement",
        "acknowledgement",
        time_columns=("acknowledged_at", "requested_at", "at", "created_at"),
        summary_columns=("comment", "subject_kind"),
        subjects=(
            ("pip", "pip"),
            ("corrective_action", "warning"),
            ("warning", "warning"),
            ("escalation", "escalation"),
            ("pip_goal", "pip_goal"),
        ),
    ),
    # Goals (each version is an event: a status on a date, with its source), development
    # plans and agenda topics: growth and accountability in one timeline.
    OptionalKind("goal", "Goal", "goal", links=("person_id",), summary_columns=("key",)),
    OptionalKind(
        "goal_version",
        "GoalVersion",
        "goal_version",
        links=("goal_id",),
        link_scopes=(("goal_id", "goal"),),
        summary_columns=("title", "status"),
    ),
    OptionalKind(
        "development_item",
        "DevelopmentItem",
        "development_item",
        links=("person_id",),
        summary_columns=("text", "kind"),
    ),
    OptionalKind(
        "agenda_topic",
        "AgendaTopic",
        "agenda_topic",
        links=("occurrence_id",),
        time_columns=("added_at",),
        summary_columns=("text",),
    ),
)
_SCOPE_OF_LINK = {
    "employee_id": "person",
    "person_id": "person",
    "pip_id": "pip",
    "pip_review_id": "pip_review",
    "occurrence_id": "occurrence",
    "record_id": "record",
    "warning_id": "warning",
    "pip_goal_id": "pip_goal",
    "goal_id": "pip_goal",
}


def _plain(value: Any) -> Any:
    """A JSON-ready copy: datetimes as ISO 8601, enums as values, bytes dropped."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --- building --------------------------------------------------------------------------------


class _Builder:
    def __init__(self, session: Session, organization_id: int, tz: ZoneInfo) -> None:
        self.session, self.org, self.tz = session, organization_id, tz
        self.events: list[Event] = []
        self.files: dict[str, bytes] = {}
        self.scope: dict[str, set[int]] = {}
        self.audit_by_subject: dict[tuple[str, int | None], list[AuditEntry]] = {}
        self.inbound: dict[int, InboundMessage] = {}

    def local(self, moment: dt.datetime) -> dt.datetime:
        return moment.astimezone(self.tz)

    def add(self, kind: str, ref: str, time: dt.datetime, summary: str, details: dict[str, Any],
            sources: Iterable[Source] = ()) -> None:  # fmt: skip
        self.events.append(
            Event(kind, ref, self.local(time), summary, _plain(details), tuple(sources))
        )

    def inbound_source(self, message_id: int) -> Source:
        message = self.inbound.get(message_id) or self.session.get(InboundMessage, message_id)
        assert message is not None and message.organization_id == self.org
        self.inbound[message_id] = message
        path = source_path(message.sha256)
        self.files[path] = message.raw
        return Source(
            "inbound",
            message.id,
            sha256=message.sha256,
            message_id=message.message_id,
            path=path,
            verified=hashlib.sha256(message.raw).hexdigest() == message.sha256,
        )

    def outbound_source(self, message: OutboundMessage) -> Source:
        digest = hashlib.sha256(message.raw).hexdigest()
        path = sent_path(digest)
        self.files[path] = message.raw
        return Source("outbound", message.id, sha256=digest, message_id=message.message_id,
                      path=path)  # fmt: skip

    def audit_sources(self, kind: str, subject_id: int | None, match: Any = None) -> list[Source]:
        return [
            Source("audit", e.seq, sha256=e.hash)
            for e in self.audit_by_subject.get((kind, subject_id), [])
            if match is None or match(e)
        ]


def _person_label(people: dict[int, Person], person_id: int | None) -> str | None:
    person = people.get(person_id) if person_id is not None else None
    return f"{person.name} <{person.email}>" if person else None


def timeline(
    session: Session, organization_id: int, employee_email: str, tz: str | ZoneInfo
) -> Timeline:
    """Everything on record about one employee, sorted by time, times in ``tz``."""
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    org = session.get(Organization, organization_id)
    assert org is not None
    employee = session.scalar(
        select(Person).where(
            Person.organization_id == organization_id,
            Person.email == employee_email.strip().lower(),
        )
    )
    if employee is None:
        raise EmployeeNotFound(f"no person {employee_email!r} in organization {org.slug!r}")
    b = _Builder(session, organization_id, zone)
    people = {
        p.id: p for p in session.scalars(select(Person).where(Person.organization_id == org.id))
    }

    def ids(model: Any, *where: Any) -> list[Any]:
        return list(
            session.scalars(
                select(model).where(model.organization_id == org.id, *where).order_by(model.id)
            )
        )

    series = ids(CheckinSeries, CheckinSeries.employee_id == employee.id)
    occurrences = (
        ids(Occurrence, Occurrence.series_id.in_([s.id for s in series])) if series else []
    )
    pips = ids(Pip, Pip.employee_id == employee.id)
    reviews = ids(PipReview, PipReview.pip_id.in_([p.id for p in pips])) if pips else []
    occ_ids, review_ids = [o.id for o in occurrences], [r.id for r in reviews]
    subject_filter = [
        *(
            [(ConversationRecord.subject_kind == "occurrence")
             & ConversationRecord.subject_id.in_(occ_ids)] if occ_ids else []
        ),
        *(
            [(ConversationRecord.subject_kind == "pip_review")
             & ConversationRecord.subject_id.in_(review_ids)] if review_ids else []
        ),
    ]  # fmt: skip
    records = ids(ConversationRecord, or_(*subject_filter)) if subject_filter else []
    record_ids = [r.id for r in records]
    items = ids(ActionItem, ActionItem.record_id.in_(record_ids)) if record_ids else []
    escalation_filter = [
        *(
            [(Escalation.subject_kind == "occurrence") & Escalation.subject_id.in_(occ_ids)]
            if occ_ids
            else []
        ),
        *(
            [(Escalation.subject_kind == "pip_review") & Escalation.subject_id.in_(review_ids)]
            if review_ids
            else []
        ),
    ]
    escalations = ids(Escalation, or_(*escalation_filter)) if escalation_filter else []
    reassignment_filter = [
        *(
            [(Reassignment.subject_kind == "occurrence") & Reassignment.subject_id.in_(occ_ids)]
            if occ_ids
            else []
        ),
        *(
            [(Reassignment.subject_kind == "pip_review") & Reassignment.subject_id.in_(review_ids)]
            if review_ids
            else []
        ),
    ]
    reassignments = ids(Reassignment, or_(*reassignment_filter)) if reassignment_filter else []
    link_filter = [
        *([OutboundMessage.occurrence_id.in_(occ_ids)] if occ_ids else []),
        *([OutboundMessage.pip_review_id.in_(review_ids)] if review_ids else []),
    ]
    outbound = ids(OutboundMessage, or_(*link_filter)) if link_filter else []
    inbound_filter = [
        *([InboundMessage.occurrence_id.in_(occ_ids)] if occ_ids else []),
        *([InboundMessage.pip_review_id.in_(review_ids)] if review_ids else []),
    ]
    inbound = ids(InboundMessage, or_(*inbound_filter)) if inbound_filter else []
    record_sources = {r.source_message_id for r in records}

    b.scope = {
        "person": {employee.id},
        "occurrence": set(occ_ids),
        "pip": {p.id for p in pips},
        "pip_review": set(review_ids),
        "record": set(record_ids),
        "escalation": {e.id for e in escalations},
    }
    subjects = {
        ("person", employee.id),
        *(("series", s.id) for s in series),
        *(("occurrence", i) for i in occ_ids),
        *(("pip", p.id) for p in pips),
        *(("pip_review", i) for i in review_ids),
        *(("outbound_message", m.id) for m in outbound),
        *(("inbound_message", m.id) for m in inbound),
    }
    audit_rows = [
        e
        for e in session.scalars(
            select(AuditEntry)
            .where(
                AuditEntry.organization_id == org.id,
                AuditEntry.subject_kind.in_({k for k, _ in subjects}),
            )
            .order_by(AuditEntry.seq)
        )
        if (e.subject_kind, e.subject_id) in subjects
    ]
    for e in audit_rows:
        b.audit_by_subject.setdefault((e.subject_kind, e.subject_id), []).append(e)

    series_by_id = {s.id: s for s in series}
    for occ in occurrences:
        s = series_by_id[occ.series_id]
        b.add(
            "checkin",
            f"checkin:{occ.id}",
            occ.start_at,
            f"Check-in with {people[s.manager_id].name} ({occ.state})",
            {
                "occurrence_id": occ.id,
                "series_uid": s.uid,
                "state": occ.state,
                "start": b.local(occ.start_at),
                "end": b.local(occ.end_at),
                "originally": b.local(occ.recurrence_id),
                "documented_at": b.local(occ.documented_at) if occ.documented_at else None,
                "responses": occ.responses or {},
            },
            [
                Source("invite", s.uid, path=invite_path(s.uid)),
                *b.audit_sources(
                    "occurrence",
                    occ.id,
                    lambda e: not e.action.startswith(("record.", "escalation.")),
                ),
            ],
        )
    for pip in pips:
        b.add(
            "pip",
            f"pip:{pip.id}",
            pip.started_on,
            f"PIP started: {pip.title}",
            {
                "pip_id": pip.id,
                "title": pip.title,
                "manager": _person_label(people, pip.manager_id),
                "ends_on": b.local(pip.ends_on),
                "state": pip.state,
                "outcome": pip.outcome,
                "ladder": pip.ladder,
            },
            b.audit_sources("pip", pip.id),
        )
    pip_titles = {p.id: p.title for p in pips}
    for review in reviews:
        b.add(
            "pip_review",
            f"pip_review:{review.id}",
            review.due_at,
            f"PIP review due: {review.name} ({pip_titles[review.pip_id]})"
            + ("" if review.documented_at else ", not documented"),
            {
                "pip_review_id": review.id,
                "pip_id": review.pip_id,
                "name": review.name,
                "due_at": b.local(review.due_at),
                "documented_at": b.local(review.documented_at) if review.documented_at else None,
            },
            b.audit_sources(
                "pip_review",
                review.id,
                lambda e: not e.action.startswith(("record.", "escalation.")),
            ),
        )
    versions: dict[tuple[str, int], int] = {}
    for r in records:
        versions[(r.subject_kind, r.subject_id)] = max(
            versions.get((r.subject_kind, r.subject_id), 0), r.version
        )
    for r in records:
        latest = versions[(r.subject_kind, r.subject_id)]
        b.add(
            "record",
            f"record:{r.id}",
            r.created_at,
            f"Record v{r.version} of {r.subject_kind.replace('_', ' ')} {r.subject_id} by "
            f"{people[r.author_id].name}"
            + (" (corrected by a later version)" if r.version < latest else ""),
            {
                "record_id": r.id,
                "subject_kind": r.subject_kind,
                "subject_id": r.subject_id,
                "version": r.version,
                "latest_version": latest,
                "author": _person_label(people, r.author_id),
                "answers": dict(sorted(r.answers.items(), key=lambda kv: (len(kv[0]), kv[0]))),
                "rating": r.rating,
                "notes": r.notes,
                "commands": r.commands,
                "body": r.body,
            },
            [
                b.inbound_source(r.source_message_id),
                *b.audit_sources(
                    r.subject_kind,
                    r.subject_id,
                    lambda e, rid=r.id: (
                        e.action == "record.created" and e.data.get("record_id") == rid
                    ),
                ),
            ],
        )
    records_by_id = {r.id: r for r in records}
    for item in items:
        record = records_by_id[item.record_id]
        b.add(
            "action_item",
            f"action_item:{item.id}",
            item.created_at,
            f"Action item: {item.text}",
            {
                "action_item_id": item.id,
                "record_id": item.record_id,
                "record_version": record.version,
                "owner": _person_label(people, item.owner_id),
                "due_on": item.due_on,
                "done": item.done,
                "text": item.text,
            },
            [b.inbound_source(record.source_message_id)],
        )
    outbound_by_id = {m.id: m for m in outbound}
    for step in escalations:
        message = outbound_by_id.get(step.outbound_message_id or -1)
        if message is None and step.outbound_message_id is not None:
            message = session.get(OutboundMessage, step.outbound_message_id)
        b.add(
            "escalation",
            f"escalation:{step.id}",
            step.created_at,
            f"{step.action.capitalize()} (step {step.step + 1}) to "
            f"{people[step.recipient_id].name}: {step.subject_kind.replace('_', ' ')} "
            f"{step.subject_id} undocumented",
            {
                "escalation_id": step.id,
                "subject_kind": step.subject_kind,
                "subject_id": step.subject_id,
                "step": step.step,
                "action": step.action,
                "recipient": _person_label(people, step.recipient_id),
            },
            [
                *([b.outbound_source(message)] if message is not None else []),
                *b.audit_sources(
                    step.subject_kind,
                    step.subject_id,
                    lambda e, s=step: (
                        e.action == f"escalation.{s.action}" and e.data.get("step") == s.step
                    ),
                ),
            ],
        )
    # Who documents a check-in or review instead of its manager (or the reviewer the PIP
    # names), moved in the console's overdue queue: from whom to whom, by whom, why (blank once
    # an erasure removed the reason). "From" is as the audit entry of the move recorded it;
    # without it (erased), the previous move's person, else the manager or the planned reviewer.
    occurrences_by_id = {o.id: o for o in occurrences}
    reviews_by_id = {r.id: r for r in reviews}
    pips_by_id = {p.id: p for p in pips}
    by_email = {p.email.lower(): p for p in people.values()}
    outbound_by_key = {m.idempotency_key: m for m in outbound}
    moved_to: dict[tuple[str, int], int] = {}
    for row in reassignments:  # in id order: each subject's moves in the order they were made
        subject = (row.subject_kind, row.subject_id)
        entries = [
            e
            for e in b.audit_by_subject.get(subject, [])
            if e.action == "escalation.reassigned" and e.data.get("reassignment_id") == row.id
        ]
        recorded = entries[0].data.get("from") if entries else None
        before = by_email.get(recorded.lower()) if isinstance(recorded, str) else None
        if before is None and recorded is None:
            if subject in moved_to:
                before = people.get(moved_to[subject])
            elif row.subject_kind == "occurrence":
                occ = occurrences_by_id[row.subject_id]
                before = people.get(series_by_id[occ.series_id].manager_id)
            else:
                review = reviews_by_id[row.subject_id]
                before = reviewer_given(session, pips_by_id[review.pip_id], review, None)
        moved_to[subject] = row.person_id
        after = people.get(row.person_id)
        noun = "check-in" if row.subject_kind == "occurrence" else "PIP review"
        prompt = outbound_by_key.get(reassigned_prompt_key(*subject, row.id))
        b.add(
            "reassignment",
            f"reassignment:{row.id}",
            row.created_at,
            f"Reassigned {noun} {row.subject_id} from "
            f"{before.name if before else recorded or 'unknown'} to "
            f"{after.name if after else 'unknown'} by {row.by}"
            + (f": {row.reason}" if row.reason else ""),
            {
                "reassignment_id": row.id,
                "subject_kind": row.subject_kind,
                "subject_id": row.subject_id,
                "from": _person_label(people, before.id) if before else recorded,
                "to": _person_label(people, row.person_id),
                "by": row.by,
                "reason": row.reason or None,
            },
            [
                *([b.outbound_source(prompt)] if prompt is not None else []),
                *(Source("audit", e.seq, sha256=e.hash) for e in entries),
            ],
        )
    for message in outbound:
        if message.kind in ("remind", "escalate"):
            continue  # shown with their escalation step
        b.add(
            "email_sent",
            f"email_sent:{message.id}",
            message.sent_at or message.created_at,
            f"Email ({message.kind}) to {', '.join(message.recipients)}: {message.subject}",
            {
                "outbound_message_id": message.id,
                "kind": message.kind,
                "state": message.state,
                "to": message.recipients,
                "subject": message.subject,
                "queued_at": b.local(message.created_at),
                "sent_at": b.local(message.sent_at) if message.sent_at else None,
                "occurrence_id": message.occurrence_id,
                "pip_review_id": message.pip_review_id,
            },
            [b.outbound_source(message), *b.audit_sources("outbound_message", message.id)],
        )
    for message in inbound:
        if message.id in record_sources:
            continue  # shown as the source of its record(s)
        b.add(
            "message_kept",
            f"message_kept:{message.id}",
            message.received_at,
            f"Message from {message.from_address or 'unknown sender'} kept without a record "
            f"({message.state})",
            {
                "inbound_message_id": message.id,
                "state": message.state,
                "reason": message.quarantine_reason,
                "from": message.from_address,
                "subject": message.subject,
                "received_at": b.local(message.received_at),
                "attributed_to": message.attributed_to,
            },
            [b.inbound_source(message.id), *b.audit_sources("inbound_message", message.id)],
        )
    _optional_kinds(b)

    order = {k: i for i, k in enumerate(KIND_ORDER)}
    b.events.sort(
        key=lambda e: (e.time.astimezone(dt.UTC), order.get(e.kind, len(order)), e.kind, e.ref)
    )
    manager = people.get(employee.manager_id) if employee.manager_id else None
    partner = people.get(employee.hr_partner_id) if employee.hr_partner_id else None
    return Timeline(
        organization=org.name,
        employee={
            "email": employee.email,
            "name": employee.name,
            "timezone": employee.timezone,
            "active": employee.active,
            "manager": f"{manager.name} <{manager.email}>" if manager else None,
            "hr_partner": f"{partner.name} <{partner.email}>" if partner else None,
        },
        timezone=zone.key,
        audit_seq=org.audit_seq,
        audit_head=org.audit_head,
        events=b.events,
        series=[
            SeriesInfo(
                s.uid,
                _person_label(people, s.manager_id) or "",
                s.rrule,
                s.timezone,
                s.dtstart_local,
                s.duration_minutes,
                s.active,
                invite_path(s.uid),
            )
            for s in series
        ],
        audit=[
            AuditInfo(
                e.seq,
                b.local(e.at),
                e.actor,
                e.action,
                e.subject_kind,
                e.subject_id,
                _plain(e.data),
                e.hash,
            )  # fmt: skip
            for e in audit_rows
        ],
        files=b.files,
    )


def _columns(model: Any) -> list[Any]:
    return list(model.__table__.columns)


def _optional_kinds(b: _Builder) -> None:
    """Add the rows of every :data:`OPTIONAL_KINDS` model that exists (see OptionalKind)."""
    for spec in OPTIONAL_KINDS:
        model = getattr(models, spec.model, None)
        if model is None or not hasattr(model, "__table__"):
            continue
        names = {c.name for c in _columns(model)}
        scope_of = {**_SCOPE_OF_LINK, **dict(spec.link_scopes)}
        conditions = [
            getattr(model, link).in_(sorted(b.scope[scope_of[link]]))
            for link in spec.links
            if link in names and b.scope.get(scope_of[link])
        ]
        if {"subject_kind", "subject_id"} <= names:
            conditions += [
                (model.subject_kind == kind) & model.subject_id.in_(sorted(b.scope[scope]))
                for kind, scope in spec.subjects
                if b.scope.get(scope)
            ]
        if not conditions:
            b.scope[spec.scope] = set()
            continue
        where = [or_(*conditions)]
        if "organization_id" in names:
            where.append(model.organization_id == b.org)
        rows = list(b.session.scalars(select(model).where(*where).order_by(model.id)))
        b.scope[spec.scope] = {row.id for row in rows}
        for row in rows:
            _optional_event(b, spec, model, row)


def _optional_event(b: _Builder, spec: OptionalKind, model: Any, row: Any) -> None:
    columns = _columns(model)
    details = {
        c.name: getattr(row, c.key)
        for c in columns
        if not isinstance(c.type, LargeBinary) and c.name != "organization_id"
    }
    time = next(
        (details[c] for c in spec.time_columns if isinstance(details.get(c), dt.datetime)), None
    )
    if time is None:
        return  # nothing to place it on the timeline with
    summary = next((str(details[c]) for c in spec.summary_columns if details.get(c)), "")
    label = spec.kind.replace("_", " ")
    sources: list[Source] = []
    for column in ("source_message_id", "inbound_message_id"):
        if details.get(column) is not None:
            sources.append(b.inbound_source(details[column]))
    if details.get("outbound_message_id") is not None:
        message = b.session.get(OutboundMessage, details["outbound_message_id"])
        if message is not None:
            sources.append(b.outbound_source(message))
    sources += b.audit_sources(spec.kind, row.id)
    details = {k: b.local(v) if isinstance(v, dt.datetime) else v for k, v in details.items()}
    b.add(
        spec.kind,
        f"{spec.kind}:{row.id}",
        time,
        f"{label.capitalize()}: {summary}" if summary else label.capitalize(),
        details,
        sources,
    )
    acknowledged = details.get("acknowledged_at")
    if spec.kind != "acknowledgement" and isinstance(acknowledged, dt.datetime):
        by = details.get("acknowledged_by") or details.get("acknowledged_by_id")
        b.add(
            "acknowledgement",
            f"acknowledgement:{spec.kind}:{row.id}",
            acknowledged,
            f"Acknowledgement of {label} {row.id}" + (f" by {by}" if by else ""),
            {"of": f"{spec.kind}:{row.id}", "acknowledged_at": acknowledged, "by": by},
            sources,
        )


# --- rendering -------------------------------------------------------------------------------


def to_data(tl: Timeline) -> dict[str, Any]:
    """The timeline as JSON-ready data: what the JSON export and the bundle's
    timeline.json contain, and what the HTML and PDF show."""

    def source(s: Source) -> dict[str, Any]:
        return {k: v for k, v in asdict(s).items() if v is not None}

    return {
        "format": "checkin-automation/employee-timeline/1",
        "organization": tl.organization,
        "employee": tl.employee,
        "timezone": tl.timezone,
        "as_of_audit": {"seq": tl.audit_seq, "head": tl.audit_head},
        "series": [asdict(s) for s in tl.series],
        "events": [
            {
                "kind": e.kind,
                "ref": e.ref,
                "time": e.time.isoformat(),
                "summary": e.summary,
                "details": _plain(e.details),
                "sources": [source(s) for s in e.sources],
            }
            for e in tl.events
        ],
        "audit": [{**asdict(a), "at": a.at.isoformat()} for a in tl.audit],
    }


def render_json(tl: Timeline) -> bytes:
    return (json.dumps(to_data(tl), indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode()


def _display(iso: str) -> str:
    moment = dt.datetime.fromisoformat(iso)
    return f"{moment:%a %Y-%m-%d %H:%M} ({moment:%Z}, UTC{moment:%z})"


def _view(tl: Timeline) -> dict[str, Any]:
    data = to_data(tl)
    for event in data["events"]:
        event["when"] = _display(event["time"])
        event["answers"] = event["details"].get("answers") or {}
        event["body"] = event["details"].get("body") or ""
        event["sources"] = [
            {k: s.get(k) for k in ("kind", "id", "sha256", "message_id", "path", "verified")}
            for s in event["sources"]
        ]
        event["detail_rows"] = [
            (key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
            for key, value in event["details"].items()
            if key not in ("body", "answers") and value not in (None, "", [], {})
        ]
    for entry in data["audit"]:
        entry["when"] = _display(entry["at"])
    return data


def render_html(tl: Timeline, templates_dir: Path) -> bytes:
    """The timeline through templates/report/export.html, in the emails' sandbox (autoescape:
    a reply that contains markup shows as text)."""
    from automation.emails import environment

    template = environment(templates_dir).get_template("report/export.html")
    return template.render(t=_view(tl)).encode()


_PDF_REPLACEMENTS = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-",
     "\u2026": "...", "\u00a0": " ", "\u2022": "*"}
)  # fmt: skip


def _latin1(text: str) -> str:
    """Without a Unicode font the PDF uses the built-in Helvetica, which covers Latin-1:
    other characters are shown as '?'; the JSON and HTML keep the text exactly."""
    return text.translate(_PDF_REPLACEMENTS).encode("latin-1", "replace").decode("latin-1")


# A Unicode TrueType family for PDFs: names and replies in any Latin, Greek or Cyrillic
# script (and Arabic, Hebrew, ...) print as written. AUTOMATION_PDF_FONT names a regular .ttf
# of your own (its -Bold and -Oblique/-Italic siblings are used when present); else DejaVu
# Sans where Debian/Ubuntu (fonts-dejavu-core), Fedora or Homebrew put it.
PDF_FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),
    Path("/opt/homebrew/share/fonts/DejaVuSans.ttf"),
)


def pdf_font() -> dict[str, Path] | None:
    """The font files by fpdf style ("", "B", "I"), or None for the Latin-1 fallback."""
    import os

    configured = os.environ.get("AUTOMATION_PDF_FONT")
    candidates = (Path(configured),) if configured else PDF_FONT_CANDIDATES
    for regular in candidates:
        if regular.is_file():
            files = {"": regular}
            for style, suffixes in (("B", ("-Bold",)), ("I", ("-Oblique", "-Italic"))):
                for suffix in suffixes:
                    sibling = regular.with_name(regular.stem + suffix + regular.suffix)
                    if sibling.is_file():
                        files[style] = sibling
                        break
            return files
    return None


def render_pdf(tl: Timeline, font: dict[str, Path] | None | bool = True) -> bytes:
    """The timeline as an A4 PDF; byte-identical for the same timeline and font.
    ``font``: True finds one (:func:`pdf_font`), None forces the Latin-1 fallback."""
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    files = pdf_font() if font is True else font or None
    data = _view(tl)
    pdf = FPDF(format="A4")
    pdf.set_creation_date(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))  # reproducible bytes
    family, plain = "Helvetica", _latin1
    if files:
        family = "Unicode"
        for style in ("", "B", "I"):
            pdf.add_font(family, style, str(files.get(style, files[""])))

        def plain(text: str) -> str:
            return text

    pdf.set_title(plain(f"{tl.employee['name']}: timeline"))
    pdf.set_producer("checkin-automation")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    width = pdf.epw

    def line(text: str, size: float = 9, style: str = "", indent: float = 0) -> None:
        pdf.set_font(family, style, size)
        pdf.set_x(pdf.l_margin + indent)
        pdf.multi_cell(width - indent, size * 0.5, plain(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    employee = data["employee"]
    line(f"{employee['name']} <{employee['email']}>", 15, "B")
    line(f"{data['organization']}: the whole timeline, times in {data['timezone']}")
    line(
        f"Manager: {employee['manager'] or '-'}   HR partner: {employee['hr_partner'] or '-'}   "
        f"Own time zone: {employee['timezone']}"
    )
    line(f"As of audit entry {data['as_of_audit']['seq']}, head {data['as_of_audit']['head']}")
    pdf.ln(3)
    for event in data["events"]:
        line(f"{event['when']}  [{event['kind']}]", 9, "B")
        line(event["summary"], 9, "", 4)
        for number, answer in event["answers"].items():
            line(f"{number}. {answer}", 9, "", 8)
        for key, value in event["detail_rows"]:
            line(f"{key}: {value}", 8, "", 8)
        for s in event["sources"]:
            cite = f"{s['kind']} {s['id']}"
            if s.get("sha256"):
                cite += f" sha256 {s['sha256']}"
            if s.get("path"):
                cite += f" -> {s['path']}"
            line(f"source: {cite}", 7, "I", 8)
        pdf.ln(1.5)
    return bytes(pdf.output())


def render(tl: Timeline, fmt: str, templates_dir: Path) -> bytes:
    if fmt == "json":
        return render_json(tl)
    if fmt == "html":
        return render_html(tl, templates_dir)
    if fmt == "pdf":
        return render_pdf(tl)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


# --- the bundle ------------------------------------------------------------------------------


def invites(
    rt: Any,
    session: Session,
    organization_id: int,
    tl: Timeline,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, bytes]:
    """Each series' calendar (.ics), as the embedded provider writes it; DTSTAMP is the
    series' last change, so the same database gives the same bytes. ``progress`` is told
    ``(series done, series)`` after each."""
    from automation.domain.ical import series_calendar
    from automation.services.planning import series_event

    out: dict[str, bytes] = {}
    for info in tl.series:
        series = session.scalar(
            select(CheckinSeries).where(
                CheckinSeries.organization_id == organization_id, CheckinSeries.uid == info.uid
            )
        )
        assert series is not None
        event = series_event(rt, session, series)
        out[info.path] = series_calendar(event, series.updated_at).to_ical()
        if progress is not None:
            progress(len(out), len(tl.series))
    return out


def bundle(
    tl: Timeline,
    extra: dict[str, bytes],
    formats: dict[str, bytes] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> bytes:
    """A zip: timeline.json, the raw sources (sources/<sha256>.eml), the sent messages
    (sent/<sha256>.eml), the invites (invites/<uid>.ics), any rendered ``formats``
    (timeline.html, ...), and MANIFEST.txt with the path, size and SHA-256 of each.
    ``progress`` is told ``(files written, files)`` as each goes into the zip."""
    files = {**tl.files, **extra, "timeline.json": render_json(tl), **(formats or {})}
    manifest = ["# path\tsize\tsha256"]
    for path in sorted(files):
        data = files[path]
        manifest.append(f"{path}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}")
    files["MANIFEST.txt"] = ("\n".join(manifest) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for done, path in enumerate(sorted(files), start=1):
            info = zipfile.ZipInfo(path, ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, files[path])
            if progress is not None:
                progress(done, len(files))
    return buffer.getvalue()


def parse_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}: expected an IANA name") from exc
