"""Privacy: who may read an employee's records, legal holds, erasure and retention.

Reading: an employee's records are visible to their manager chain (manager, the manager's
manager, and up), their HR partner and the HR admins of ``config/privacy.toml``; nobody else,
the employee included (they get theirs through HR, as a subject access request).
:func:`check_reader` is the one place that decides, and every export names its reader in the
audit log.

Erasing: :func:`request_erasure` (a deletion request) and the retention sweep both end in
:func:`erase_person`, which removes a person's personal data and keeps the skeleton that the
organization's numbers and other people's records rest on: rows stay, with their times, ids
and states, while content goes (record bodies, answers, notes, action items, raw mail, subjects,
goals and their versions, development plans, agenda topics, warnings, comments, the reasons
given for reassigning their check-ins and PIP reviews, the person's name and address). Audit
entries that carry the person's content are blanked through :func:`automation.audit.redact`,
which appends one ``privacy.erased`` entry that says what was done, counted by kind, without
the content.

A legal hold on the person stops all of it: the request is kept as ``held``, the audit log says
so, and the daily sweep carries it out once the hold is released.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Text, cast, func, or_, select, update
from sqlalchemy.orm import Session, load_only

from automation import audit
from automation.config import PrivacyPolicy, load_privacy
from automation.models import (
    Acknowledgement,
    ActionItem,
    AgendaTopic,
    AuditEntry,
    CheckinSeries,
    ConsoleAccount,
    ConsoleSession,
    ConversationRecord,
    CorrectiveAction,
    DevelopmentItem,
    ErasureRequest,
    Goal,
    GoalVersion,
    InboundMessage,
    InboundState,
    LegalHold,
    Occurrence,
    OutboundMessage,
    OutboundState,
    Person,
    Pip,
    PipGoal,
    PipReview,
    Reassignment,
    Task,
    TaskState,
)
from automation.runtime import Runtime
from automation.services.tasks import create_task, handles

ERASED_NAME = "Erased person"


class PrivacyError(ValueError):
    """A privacy operation that cannot be done as asked; the message says why and what to do."""


class AccessDenied(PrivacyError):
    pass


def find_person(session: Session, organization_id: int, email: str) -> Person:
    person = session.scalar(
        select(Person).where(
            Person.organization_id == organization_id,
            func.lower(Person.email) == email.strip().lower(),
        )
    )
    if person is None:
        raise PrivacyError(f"no person with the address {email} in this organization")
    return person


def manager_chain(session: Session, person: Person) -> list[Person]:
    """The person's manager, their manager, and so on up (a reporting cycle stops it)."""
    chain: list[Person] = []
    seen = {person.id}
    current = person
    while current.manager_id is not None and current.manager_id not in seen:
        manager = session.get(Person, current.manager_id)
        if manager is None:
            break
        chain.append(manager)
        seen.add(manager.id)
        current = manager
    return chain


def check_reader(
    session: Session, policy: PrivacyPolicy, employee: Person, reader_email: str
) -> str:
    """Why ``reader_email`` may read ``employee``'s records; :class:`AccessDenied` if not."""
    reader = reader_email.strip().lower()
    if reader in policy.hr_admins:
        return "HR admin"
    if employee.hr_partner_id is not None:
        partner = session.get(Person, employee.hr_partner_id)
        if partner is not None and partner.email.lower() == reader:
            return "HR partner"
    for level, manager in enumerate(manager_chain(session, employee), start=1):
        if manager.email.lower() == reader and manager.active:
            return "manager" if level == 1 else f"manager chain (level {level})"
    raise AccessDenied(
        f"{reader_email} may not read the records of {employee.email}: records are visible to "
        "the employee's manager chain, their HR partner and the HR admins "
        "(hr_admins in config/privacy.toml)"
    )


# -- legal holds --------------------------------------------------------------------------


def active_hold(session: Session, organization_id: int, person_id: int) -> LegalHold | None:
    return session.scalar(
        select(LegalHold)
        .where(
            LegalHold.organization_id == organization_id,
            LegalHold.person_id == person_id,
            LegalHold.released_at.is_(None),
        )
        .order_by(LegalHold.id)
        .limit(1)
    )


def place_hold(
    session: Session, organization_id: int, email: str, reason: str, by: str, now: dt.datetime
) -> LegalHold:
    if not reason.strip():
        raise PrivacyError("a legal hold needs a reason (the matter or case it is for)")
    person = find_person(session, organization_id, email)
    hold = LegalHold(
        organization_id=organization_id,
        person_id=person.id,
        reason=reason.strip(),
        placed_by=by,
        placed_at=now,
    )
    session.add(hold)
    session.flush()
    audit.record(
        session,
        organization_id,
        actor=by,
        action="privacy.hold_placed",
        subject_kind="person",
        subject_id=person.id,
        at=now,
        data={"hold_id": hold.id},  # the reason names a matter: it stays in the hold row
    )
    return hold


def release_hold(
    session: Session, organization_id: int, email: str, by: str, now: dt.datetime
) -> list[LegalHold]:
    """Release every active hold on the person; held erasures run at the next sweep."""
    person = find_person(session, organization_id, email)
    holds = list(
        session.scalars(
            select(LegalHold).where(
                LegalHold.organization_id == organization_id,
                LegalHold.person_id == person.id,
                LegalHold.released_at.is_(None),
            )
        )
    )
    if not holds:
        raise PrivacyError(f"{person.email} has no active legal hold")
    for hold in holds:
        hold.released_at, hold.released_by = now, by
        audit.record(
            session,
            organization_id,
            actor=by,
            action="privacy.hold_released",
            subject_kind="person",
            subject_id=person.id,
            at=now,
            data={"hold_id": hold.id},
        )
    return holds


@dataclass(frozen=True)
class HoldRow:
    id: int
    person: str
    reason: str
    placed_by: str
    placed_at: dt.datetime
    released_at: dt.datetime | None


def list_holds(session: Session, organization_id: int, *, all_: bool = False) -> list[HoldRow]:
    query = (
        select(LegalHold, Person.email)
        .join(
            Person,
            (Person.organization_id == LegalHold.organization_id)
            & (Person.id == LegalHold.person_id),
        )
        .where(LegalHold.organization_id == organization_id)
        .order_by(LegalHold.id)
    )
    if not all_:
        query = query.where(LegalHold.released_at.is_(None))
    return [
        HoldRow(h.id, email, h.reason, h.placed_by, h.placed_at, h.released_at)
        for h, email in session.execute(query)
    ]


# -- erasure ------------------------------------------------------------------------------


def request_erasure(
    session: Session,
    organization_id: int,
    email: str,
    reference: str,
    by: str,
    now: dt.datetime,
) -> ErasureRequest:
    """Record a deletion request and carry it out now, unless a legal hold applies."""
    if not reference.strip():
        raise PrivacyError("a deletion request needs --reference (the ticket or letter it answers)")
    person = find_person(session, organization_id, email)
    if person.erased_at is not None:
        raise PrivacyError(f"{person.email}'s personal data was already erased")
    _check_erasable(session, person)
    request = ErasureRequest(
        organization_id=organization_id,
        person_id=person.id,
        reference=reference.strip(),
        requested_by=by,
        requested_at=now,
        state="pending",
    )
    session.add(request)
    session.flush()
    _carry_out(session, request, person, by, now)
    return request


def _check_erasable(session: Session, person: Person) -> None:
    if person.active:
        raise PrivacyError(
            f"{person.email} is still active: set active to false for them in the people file "
            "and import it (their check-ins end), then ask again"
        )
    pip = session.scalar(
        select(Pip.id).where(
            Pip.organization_id == person.organization_id,
            Pip.employee_id == person.id,
            Pip.state == "active",
        )
    )
    if pip is not None:
        raise PrivacyError(
            f"{person.email} has an active PIP ({pip}): close it first "
            "(automation pip close ... --outcome ended)"
        )


def _carry_out(
    session: Session, request: ErasureRequest, person: Person, by: str, now: dt.datetime
) -> None:
    hold = active_hold(session, request.organization_id, person.id)
    if hold is not None:
        request.state = "held"
        audit.record(
            session,
            request.organization_id,
            actor=by,
            action="privacy.erasure_held",
            subject_kind="person",
            subject_id=person.id,
            at=now,
            data={"request_id": request.id, "hold_id": hold.id},
        )
        return
    request.removed = erase_person(session, person, now, actor=by, request_id=request.id)
    request.state, request.completed_at = "done", now


@dataclass
class _Subjects:
    """Everything that is about one person, by id."""

    series: set[int] = field(default_factory=set)
    occurrences: set[int] = field(default_factory=set)
    pips: set[int] = field(default_factory=set)
    reviews: set[int] = field(default_factory=set)
    records: set[int] = field(default_factory=set)
    warnings: set[int] = field(default_factory=set)
    acks: set[int] = field(default_factory=set)
    reassignments: set[int] = field(default_factory=set)
    inbound: set[int] = field(default_factory=set)
    outbound: set[int] = field(default_factory=set)
    goals: set[int] = field(default_factory=set)
    development: set[int] = field(default_factory=set)

    def audit_subjects(self, person_id: int) -> dict[str, set[int]]:
        return {
            "person": {person_id},
            "series": self.series,
            "occurrence": self.occurrences,
            "pip": self.pips,
            "pip_review": self.reviews,
            "corrective_action": self.warnings,
            "acknowledgement": self.acks,
            "inbound_message": self.inbound,
            "outbound_message": self.outbound,
            "goal": self.goals,
            "development_item": self.development,
        }


def _ids(session: Session, query: Any) -> set[int]:
    return set(session.scalars(query))


def _subjects(session: Session, person: Person) -> _Subjects:
    org, pid = person.organization_id, person.id
    s = _Subjects()
    s.series = _ids(
        session,
        select(CheckinSeries.id).where(
            CheckinSeries.organization_id == org, CheckinSeries.employee_id == pid
        ),
    )
    if s.series:
        s.occurrences = _ids(
            session,
            select(Occurrence.id).where(
                Occurrence.organization_id == org, Occurrence.series_id.in_(s.series)
            ),
        )
    s.pips = _ids(session, select(Pip.id).where(Pip.organization_id == org, Pip.employee_id == pid))
    if s.pips:
        s.reviews = _ids(
            session,
            select(PipReview.id).where(
                PipReview.organization_id == org, PipReview.pip_id.in_(s.pips)
            ),
        )
    s.records = _ids(
        session,
        select(ConversationRecord.id).where(
            ConversationRecord.organization_id == org,
            or_(
                (ConversationRecord.subject_kind == "occurrence")
                & ConversationRecord.subject_id.in_(s.occurrences or {-1}),
                (ConversationRecord.subject_kind == "pip_review")
                & ConversationRecord.subject_id.in_(s.reviews or {-1}),
            ),
        ),
    )
    # Who documented their check-ins and reviews instead of the manager, and why: the reason
    # ("on sick leave") is personal data; the rows (who, when) are the skeleton.
    s.reassignments = _ids(
        session,
        select(Reassignment.id).where(
            Reassignment.organization_id == org,
            or_(
                (Reassignment.subject_kind == "occurrence")
                & Reassignment.subject_id.in_(s.occurrences or {-1}),
                (Reassignment.subject_kind == "pip_review")
                & Reassignment.subject_id.in_(s.reviews or {-1}),
            ),
        ),
    )
    s.goals = _ids(
        session, select(Goal.id).where(Goal.organization_id == org, Goal.person_id == pid)
    )
    s.development = _ids(
        session,
        select(DevelopmentItem.id).where(
            DevelopmentItem.organization_id == org, DevelopmentItem.person_id == pid
        ),
    )
    s.warnings = _ids(
        session,
        select(CorrectiveAction.id).where(
            CorrectiveAction.organization_id == org, CorrectiveAction.employee_id == pid
        ),
    )
    s.acks = _ids(
        session,
        select(Acknowledgement.id).where(
            Acknowledgement.organization_id == org, Acknowledgement.person_id == pid
        ),
    )
    # Mail about their check-ins and reviews, and mail from them that never reached a record
    # of anyone. A manager's replies about their reports stay: they are those reports' sources.
    email = person.email.lower()
    s.inbound = _ids(
        session,
        select(InboundMessage.id).where(
            InboundMessage.organization_id == org,
            or_(
                InboundMessage.occurrence_id.in_(s.occurrences or {-1}),
                InboundMessage.pip_review_id.in_(s.reviews or {-1}),
                InboundMessage.id.in_(
                    select(CorrectiveAction.source_message_id).where(
                        CorrectiveAction.organization_id == org,
                        CorrectiveAction.id.in_(s.warnings or {-1}),
                    )
                ),
                InboundMessage.id.in_(
                    select(Acknowledgement.source_message_id).where(
                        Acknowledgement.organization_id == org,
                        Acknowledgement.id.in_(s.acks or {-1}),
                    )
                ),
                InboundMessage.occurrence_id.is_(None)
                & InboundMessage.pip_review_id.is_(None)
                & or_(
                    func.lower(InboundMessage.from_address) == email,
                    func.lower(InboundMessage.attributed_to) == email,
                ),
            ),
        ),
    )
    for row in session.execute(
        select(
            OutboundMessage.id,
            OutboundMessage.recipients,
            OutboundMessage.occurrence_id,
            OutboundMessage.pip_review_id,
        ).where(OutboundMessage.organization_id == org)
    ):
        if (
            row.occurrence_id in s.occurrences
            or row.pip_review_id in s.reviews
            or (
                row.occurrence_id is None
                and row.pip_review_id is None
                and email in {str(r).lower() for r in row.recipients or []}
            )
        ):
            s.outbound.add(row.id)
    return s


def _chunks(ids: set[int], size: int = 500) -> list[list[int]]:
    ordered = sorted(ids)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def _update(session: Session, model: Any, ids: set[int], **values: Any) -> int:
    changed = 0
    for chunk in _chunks(ids):
        changed += session.execute(
            update(model)
            .where(model.id.in_(chunk))
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
    return changed


def _task_subject(task: Task) -> tuple[str, int] | None:
    """The (kind, id) a task is about, from its key ("escalate:pip_review:7:2")."""
    parts = task.key.split(":")
    if len(parts) >= 3 and parts[2].isdigit():
        return parts[1], int(parts[2])
    if task.kind == "pip_review":
        return "pip_review", task.subject_id
    if task.kind in ("pip_invite", "pip_plan"):
        return "pip", task.subject_id
    return None


def erase_person(
    session: Session, person: Person, now: dt.datetime, *, actor: str, request_id: int | None
) -> dict[str, int]:
    """Remove the person's personal data (see the module's docstring); return the counts."""
    org = person.organization_id
    s = _subjects(session, person)
    removed: Counter[str] = Counter()
    removed["records"] = _update(
        session,
        ConversationRecord,
        s.records,
        body="",
        answers={},
        notes="",
        commands=[],
        rating=None,
        erased_at=now,
    )
    removed["action_items"] = 0
    for chunk in _chunks(s.records):
        removed["action_items"] += session.execute(
            update(ActionItem)
            .where(ActionItem.organization_id == org, ActionItem.record_id.in_(chunk))
            .values(text="")
            .execution_options(synchronize_session=False)
        ).rowcount
    removed["received_mail"] = _update(
        session,
        InboundMessage,
        s.inbound,
        raw=b"",
        subject=None,
        from_address=None,
        attributed_to=None,
        erased_at=now,
    )
    # Mail not sent yet will not be: there is nobody to send it to.
    for chunk in _chunks(s.outbound):
        session.execute(
            update(OutboundMessage)
            .where(OutboundMessage.id.in_(chunk), OutboundMessage.state == OutboundState.QUEUED)
            .values(state=OutboundState.FAILED, last_error="erased before it was sent")
            .execution_options(synchronize_session=False)
        )
    removed["sent_mail"] = _update(
        session, OutboundMessage, s.outbound, raw=b"", subject="", recipients=[]
    )
    removed["pip_goals"] = 0
    for chunk in _chunks(s.pips):
        removed["pip_goals"] += session.execute(
            update(PipGoal)
            .where(PipGoal.organization_id == org, PipGoal.pip_id.in_(chunk))
            .values(goal="", success_criteria="", owner="")
            .execution_options(synchronize_session=False)
        ).rowcount
    _update(session, Pip, s.pips, closing_note=None)
    # Goals keep their versions (how many, when, which status) and lose what they said; the
    # key is the title folded, so it goes too.
    removed["goals"] = len(s.goals)
    for goal_id in sorted(s.goals):
        session.execute(
            update(Goal)
            .where(Goal.organization_id == org, Goal.id == goal_id)
            .values(key=f"erased-{goal_id}")
            .execution_options(synchronize_session=False)
        )
    for chunk in _chunks(s.goals):
        session.execute(
            update(GoalVersion)
            .where(GoalVersion.organization_id == org, GoalVersion.goal_id.in_(chunk))
            .values(title="", success_criteria="", owner="", note="", erased_at=now)
            .execution_options(synchronize_session=False)
        )
    removed["development_items"] = _update(
        session, DevelopmentItem, s.development, text="", erased_at=now
    )
    removed["agenda_topics"] = 0
    for chunk in _chunks(s.occurrences):
        removed["agenda_topics"] += session.execute(
            update(AgendaTopic)
            .where(AgendaTopic.organization_id == org, AgendaTopic.occurrence_id.in_(chunk))
            .values(text="", erased_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
    removed["warnings"] = _update(
        session, CorrectiveAction, s.warnings, reason="", expectation="", consequence=""
    )
    removed["acknowledgements"] = _update(session, Acknowledgement, s.acks, comment=None)
    removed["reassignments"] = _update(session, Reassignment, s.reassignments, reason="")
    _update(session, Occurrence, s.occurrences, responses=None)
    # Work still pending about them (escalations of past check-ins) has nobody to be about.
    about = s.audit_subjects(person.id)
    cancelled = 0
    for task in session.scalars(
        select(Task).where(Task.organization_id == org, Task.state == TaskState.PENDING)
    ):
        subject = _task_subject(task)
        if subject is not None and subject[1] in about.get(subject[0], ()):
            task.state, task.result, task.updated_at = TaskState.DONE, "erased", now
            cancelled += 1
    removed["pending_tasks"] = cancelled
    # Their console account (tied to them, or under their address) goes with its sessions.
    removed["console_accounts"] = 0
    for account in session.scalars(
        select(ConsoleAccount).where(
            ConsoleAccount.organization_id == org,
            or_(
                ConsoleAccount.person_id == person.id,
                ConsoleAccount.email == person.email.lower(),
            ),
        )
    ):
        account.email = f"erased-account-{account.id}@invalid"
        account.name = ERASED_NAME
        account.password_hash = account.oidc_issuer = account.oidc_subject = None
        account.active = False
        session.execute(
            update(ConsoleSession)
            .where(
                ConsoleSession.organization_id == org,
                ConsoleSession.account_id == account.id,
                ConsoleSession.revoked_at.is_(None),
            )
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        removed["console_accounts"] += 1

    entries = _audit_entries_about(session, person, about)
    person.name = ERASED_NAME
    person.email = f"erased-{person.id}@invalid"
    person.mail_failing_reason = None
    person.active = False
    person.erased_at = now
    person.updated_at = now
    session.flush()
    audit.redact(
        session,
        org,
        entries,
        actor=actor,
        subject_kind="person",
        subject_id=person.id,
        at=now,
        data={
            "request_id": request_id,
            "reason": "deletion request" if request_id is not None else "retention period",
            "removed": dict(removed),
        },
    )
    return dict(removed)


def _audit_entries_about(session: Session, person: Person, about: dict[str, set[int]]) -> set[int]:
    """Audit entries with the person's content: theirs (as actor), naming their address, or
    about one of their subjects. Entries of the privacy trail itself are never erased: they
    hold no content, and they are what shows an erasure happened."""
    org, email = person.organization_id, person.email.lower()
    keep = AuditEntry.action.like("privacy.%")
    found = _ids(
        session,
        select(AuditEntry.id).where(
            AuditEntry.organization_id == org,
            AuditEntry.redacted_by.is_(None),
            ~keep,
            or_(
                func.lower(AuditEntry.actor) == email,
                func.lower(cast(AuditEntry.data, Text)).contains(email, autoescape=True),
            ),
        ),
    )
    for kind, ids in about.items():
        for chunk in _chunks(ids):
            found |= _ids(
                session,
                select(AuditEntry.id).where(
                    AuditEntry.organization_id == org,
                    AuditEntry.redacted_by.is_(None),
                    ~keep,
                    AuditEntry.subject_kind == kind,
                    AuditEntry.subject_id.in_(chunk),
                ),
            )
    return found


# -- retention ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepResult:
    people_erased: int
    held_requests_done: int
    unrecorded_mail_erased: int
    sent_mail_erased: int
    skipped_for_holds: int


def _held_people(session: Session, organization_id: int) -> set[int]:
    return _ids(
        session,
        select(LegalHold.person_id).where(
            LegalHold.organization_id == organization_id, LegalHold.released_at.is_(None)
        ),
    )


def sweep(
    session: Session, organization_id: int, policy: PrivacyPolicy, now: dt.datetime
) -> SweepResult:
    """Apply the retention periods and carry out deletion requests whose hold was released.

    People on legal hold are skipped, and so is mail that is theirs (from them or about their
    check-ins). Run daily by the ``retention`` task; safe to run at any time and repeatedly.
    """
    held = _held_people(session, organization_id)
    skipped = 0
    done = 0
    for request in session.scalars(
        select(ErasureRequest).where(
            ErasureRequest.organization_id == organization_id, ErasureRequest.state == "held"
        )
    ).all():
        if request.person_id in held:
            skipped += 1
            continue
        person = session.get(Person, request.person_id)
        assert person is not None
        _carry_out(session, request, person, "retention", now)
        done += 1

    cutoff = now - dt.timedelta(days=round(365.25 * policy.years_after_leaving))
    erased = 0
    for person in session.scalars(
        select(Person).where(
            Person.organization_id == organization_id,
            Person.active.is_(False),
            Person.erased_at.is_(None),
            Person.left_at.is_not(None),
            Person.left_at < cutoff,
        )
    ).all():
        if person.id in held:
            skipped += 1
            continue
        erase_person(session, person, now, actor="retention", request_id=None)
        erased += 1

    held_addresses = {
        e.lower()
        for e in session.scalars(
            select(Person.email).where(
                Person.organization_id == organization_id, Person.id.in_(held or {-1})
            )
        )
    }
    held_occurrences = _ids(
        session,
        select(Occurrence.id)
        .join(
            CheckinSeries,
            (CheckinSeries.organization_id == Occurrence.organization_id)
            & (CheckinSeries.id == Occurrence.series_id),
        )
        .where(
            Occurrence.organization_id == organization_id,
            CheckinSeries.employee_id.in_(held or {-1}),
        ),
    )
    unrecorded = 0
    mail_cutoff = now - dt.timedelta(days=policy.unrecorded_mail_days)
    for message in session.scalars(
        select(InboundMessage)
        .options(
            load_only(
                InboundMessage.id,
                InboundMessage.from_address,
                InboundMessage.attributed_to,
                InboundMessage.occurrence_id,
            )
        )
        .where(
            InboundMessage.organization_id == organization_id,
            InboundMessage.state.in_(
                (
                    InboundState.QUARANTINED,
                    InboundState.AUTO_REPLY,
                    InboundState.BOUNCED,
                    InboundState.DUPLICATE,
                )
            ),
            InboundMessage.erased_at.is_(None),
            InboundMessage.received_at < mail_cutoff,
        )
    ).all():
        if (
            (message.from_address or "").lower() in held_addresses
            or (message.attributed_to or "").lower() in held_addresses
            or message.occurrence_id in held_occurrences
        ):
            skipped += 1
            continue
        message.raw, message.subject, message.from_address = b"", None, None
        message.attributed_to, message.erased_at = None, now
        unrecorded += 1

    sent = 0
    sent_cutoff = now - dt.timedelta(days=policy.sent_mail_days)
    for message in session.scalars(
        select(OutboundMessage)
        .options(
            load_only(OutboundMessage.id, OutboundMessage.recipients, OutboundMessage.occurrence_id)
        )
        .where(
            OutboundMessage.organization_id == organization_id,
            OutboundMessage.state == OutboundState.SENT,
            OutboundMessage.sent_at < sent_cutoff,
            func.length(OutboundMessage.raw) > 0,
        )
    ).all():
        if message.occurrence_id in held_occurrences or held_addresses & {
            str(r).lower() for r in message.recipients or []
        }:
            skipped += 1
            continue
        message.raw = b""
        sent += 1
    if unrecorded or sent:
        audit.record(
            session,
            organization_id,
            actor="retention",
            action="privacy.mail_expired",
            subject_kind="organization",
            subject_id=organization_id,
            at=now,
            data={"unrecorded_mail": unrecorded, "sent_mail": sent},
        )
    return SweepResult(erased, done, unrecorded, sent, skipped)


@handles("retention")
def run_retention(rt: Runtime, session: Session, task: Task) -> str:
    """The daily sweep; it schedules tomorrow's (one retention task per organization a day)."""
    now = rt.now()
    result = sweep(session, task.organization_id, load_privacy(rt.settings), now)
    tomorrow = now + dt.timedelta(days=1)
    create_task(
        session,
        task.organization_id,
        "retention",
        f"retention:{tomorrow.date().isoformat()}",
        task.organization_id,
        tomorrow,
        now,
    )
    return (
        f"people {result.people_erased} held-requests {result.held_requests_done} "
        f"unrecorded-mail {result.unrecorded_mail_erased} sent-mail {result.sent_mail_erased} "
        f"held {result.skipped_for_holds}"
    )
