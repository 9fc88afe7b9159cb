"""The database schema: SQLAlchemy 2.0 typed models.

Every row belongs to exactly one organization. References between rows are composite foreign
keys ``(organization_id, x_id) -> (organization_id, id)``, so the database itself refuses a row
that points into another organization; no join can cross tenants by accident.

Times are stored in UTC (``UTCDateTime`` returns aware datetimes on SQLite and PostgreSQL).
Work is a row with a state and a due time (``tasks``); the queue only carries task ids.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


def org_fk(column: str, table: str) -> ForeignKeyConstraint:
    """A reference that must stay inside the row's own organization."""
    return ForeignKeyConstraint(
        ["organization_id", column], [f"{table}.organization_id", f"{table}.id"]
    )


class OrgScoped:
    """Columns every tenant-owned table has."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)


class OccurrenceState(enum.StrEnum):
    PLANNED = "planned"
    INVITED = "invited"
    HELD = "held"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class TaskState(enum.StrEnum):
    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"


class OutboundState(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"
    HELD = "held"  # to an address flagged as failing: kept, not sent, until HR clears it


class InboundState(enum.StrEnum):
    RECEIVED = "received"
    RECORDED = "recorded"
    QUARANTINED = "quarantined"  # kept, never recorded; an operator may release it
    AUTO_REPLY = "auto_reply"  # a machine's answer (out of office, bulk): never a record
    BOUNCED = "bounced"  # a delivery failure report: the recipient's address is flagged
    DUPLICATE = "duplicate"  # the same Message-ID as an earlier message, other bytes


# Every state in which a message was kept without becoming a record, with its reason.
NOT_RECORDED = (
    InboundState.QUARANTINED,
    InboundState.AUTO_REPLY,
    InboundState.BOUNCED,
    InboundState.DUPLICATE,
)


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    audit_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    audit_head: Mapped[str] = mapped_column(String(64), default="0" * 64)
    created_at: Mapped[dt.datetime]


class Person(OrgScoped, Base):
    __tablename__ = "people"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "email"),
        org_fk("manager_id", "people"),
        org_fk("hr_partner_id", "people"),
    )
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    manager_id: Mapped[int | None]
    hr_partner_id: Mapped[int | None]
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Set when a delivery failure report names this address; a people import does not clear
    # it (a later successful delivery is not observable yet): HR clears it once fixed.
    mail_failing_since: Mapped[dt.datetime | None]
    mail_failing_reason: Mapped[str | None] = mapped_column(Text)
    # Soft bounces (4.x.x) since the last delivery that went through: three flag the address.
    mail_soft_bounces: Mapped[int | None]
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    # When they stopped being active (retention counts from here); cleared if they return.
    left_at: Mapped[dt.datetime | None]
    # When their personal data was erased (a deletion request or the retention period): the
    # row stays, with a placeholder name and address, so the records' skeleton still adds up.
    erased_at: Mapped[dt.datetime | None]
    # The role whose expectations apply (a config/roles/*.toml name), from the people file.
    role: Mapped[str | None] = mapped_column(String(100))


class Cadence(OrgScoped, Base):
    """A cadence as loaded from config/cadences/*.toml; ``definition`` is the checked data."""

    __tablename__ = "cadences"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "name"),
    )
    name: Mapped[str] = mapped_column(String(100))
    source_file: Mapped[str] = mapped_column(String(500))
    digest: Mapped[str] = mapped_column(String(64))
    definition: Mapped[dict[str, Any]]
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[dt.datetime]


class CheckinSeries(OrgScoped, Base):
    """A recurring 1:1 between a manager and a report, as one calendar series."""

    __tablename__ = "checkin_series"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "cadence_id", "employee_id"),
        UniqueConstraint("uid"),
        org_fk("cadence_id", "cadences"),
        org_fk("manager_id", "people"),
        org_fk("employee_id", "people"),
    )
    cadence_id: Mapped[int]
    manager_id: Mapped[int]
    employee_id: Mapped[int]
    uid: Mapped[str] = mapped_column(String(200))
    rrule: Mapped[str] = mapped_column(String(300))
    dtstart_local: Mapped[str] = mapped_column(String(19))  # ISO local wall time, in `timezone`
    timezone: Mapped[str] = mapped_column(String(64))
    duration_minutes: Mapped[int]
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    planned_until: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class Occurrence(OrgScoped, Base):
    __tablename__ = "occurrences"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("series_id", "recurrence_id"),
        org_fk("series_id", "checkin_series"),
    )
    series_id: Mapped[int]
    recurrence_id: Mapped[dt.datetime]  # the original start (RFC 5545 RECURRENCE-ID), UTC
    start_at: Mapped[dt.datetime]
    end_at: Mapped[dt.datetime]
    state: Mapped[str] = mapped_column(String(20), default=OccurrenceState.PLANNED)
    documented_at: Mapped[dt.datetime | None]
    # Attendee responses read back from the calendar: email (lower) -> RFC 5545 PARTSTAT.
    responses: Mapped[dict[str, Any] | None]
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class CalendarLink(OrgScoped, Base):
    """Where a series lives in a provider: the organizer's calendar and the provider's id.

    Written after each successful write; ``written_sequence`` lets a retried invite skip a
    write the provider already has, and the id lets later updates address the event.
    """

    __tablename__ = "calendar_links"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "series_id", "provider"),
        Index("ix_calendar_links_event", "organization_id", "provider", "event_id"),
        org_fk("series_id", "checkin_series"),
    )
    series_id: Mapped[int]
    provider: Mapped[str] = mapped_column(String(20))
    calendar: Mapped[str] = mapped_column(String(320))  # the organizer's address
    event_id: Mapped[str] = mapped_column(String(1024))
    written_sequence: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime]


class CalendarSync(OrgScoped, Base):
    """Sync state of one provider calendar: the cursor and its push channel.

    ``cursor`` is a Google syncToken, a Graph deltaLink or a CalDAV sync-token, committed
    together with the changes it covers. ``channel_*`` is the Google watch channel or the
    Graph subscription that pushes change notices; ``channel_secret`` is the random token
    (Google) or clientState (Graph) a notice must carry, compared in constant time.
    """

    __tablename__ = "calendar_syncs"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "provider", "calendar"),
        Index("ix_calendar_syncs_channel", "channel_id"),
    )
    provider: Mapped[str] = mapped_column(String(20))
    calendar: Mapped[str] = mapped_column(String(320))
    cursor: Mapped[str | None] = mapped_column(Text)
    synced_at: Mapped[dt.datetime | None]
    full_synced_at: Mapped[dt.datetime | None]
    channel_id: Mapped[str | None] = mapped_column(String(200))
    channel_secret: Mapped[str | None] = mapped_column(String(200))
    channel_resource: Mapped[str | None] = mapped_column(String(500))
    channel_expires_at: Mapped[dt.datetime | None]
    last_message_number: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime]


class Pip(OrgScoped, Base):
    __tablename__ = "pips"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        org_fk("employee_id", "people"),
        org_fk("manager_id", "people"),
    )
    employee_id: Mapped[int]
    manager_id: Mapped[int]
    title: Mapped[str] = mapped_column(String(200))
    started_on: Mapped[dt.datetime]
    ends_on: Mapped[dt.datetime]
    state: Mapped[str] = mapped_column(String(20), default="active")
    outcome: Mapped[str | None] = mapped_column(String(40))
    ladder: Mapped[list[Any]]
    created_at: Mapped[dt.datetime]
    # Set for PIPs started from a template (config/pips/*.toml); null for the demo's plans.
    template: Mapped[str | None] = mapped_column(String(100))
    reviewer: Mapped[str | None] = mapped_column(String(20))  # manager | hr_partner
    # The weekly check-ins as one calendar series (written through the calendar adapter).
    calendar_uid: Mapped[str | None] = mapped_column(String(200))
    calendar_sequence: Mapped[int | None]
    checkin_rrule: Mapped[str | None] = mapped_column(String(300))
    checkin_dtstart_local: Mapped[str | None] = mapped_column(String(19))
    checkin_timezone: Mapped[str | None] = mapped_column(String(64))
    checkin_duration_minutes: Mapped[int | None]
    extended_days: Mapped[int | None]
    closed_at: Mapped[dt.datetime | None]
    closing_note: Mapped[str | None] = mapped_column(Text)
    # What every review must document (the template's documentation.required, as numbered
    # questions), kept with the PIP so a later edit of the template does not change it.
    documentation: Mapped[list[Any] | None]
    # The provider's id of each calendar event of the PIP (the check-in series and the review
    # meetings), by UID: a rewrite addresses the event it made.
    calendar_ids: Mapped[dict[str, Any] | None]


class PipReview(OrgScoped, Base):
    __tablename__ = "pip_reviews"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("pip_id", "name"),
        org_fk("pip_id", "pips"),
    )
    pip_id: Mapped[int]
    name: Mapped[str] = mapped_column(String(100))
    due_at: Mapped[dt.datetime]
    documented_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]
    # review | checkin (a weekly PIP check-in); null on rows from before templates: review.
    kind: Mapped[str | None] = mapped_column(String(20))
    # The due time the PIP started with, kept when an extension shifts ``due_at``.
    original_due_at: Mapped[dt.datetime | None]


class PipGoal(OrgScoped, Base):
    """One goal of a PIP, with its measurable success criteria, as read from the goals file."""

    __tablename__ = "pip_goals"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("pip_id", "position"),
        org_fk("pip_id", "pips"),
        org_fk("owner_id", "people"),
    )
    pip_id: Mapped[int]
    position: Mapped[int]
    goal: Mapped[str] = mapped_column(Text)
    success_criteria: Mapped[str] = mapped_column(Text)
    owner: Mapped[str] = mapped_column(String(320))  # as written: employee, manager, an address
    owner_id: Mapped[int | None]
    due_on: Mapped[dt.date | None]
    created_at: Mapped[dt.datetime]


class CorrectiveAction(OrgScoped, Base):
    """A written warning or corrective action: a record of its own, acknowledged by reply.

    Started by HR (``automation warning create``) or by a manager's ``#warning`` in a reply to
    a check-in prompt; then ``occurrence_id`` and ``source_message_id`` say where it came from.
    """

    __tablename__ = "corrective_actions"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        org_fk("employee_id", "people"),
        org_fk("issued_by_id", "people"),
        org_fk("pip_id", "pips"),
        org_fk("occurrence_id", "occurrences"),
        org_fk("source_message_id", "inbound_messages"),
    )
    kind: Mapped[str] = mapped_column(String(30))  # written_warning | corrective_action
    employee_id: Mapped[int]
    issued_by_id: Mapped[int | None]  # the manager, when from a reply
    issued_by: Mapped[str] = mapped_column(String(320))  # who started it, as in the audit log
    reason: Mapped[str] = mapped_column(Text)
    expectation: Mapped[str] = mapped_column(Text, default="")
    consequence: Mapped[str] = mapped_column(Text, default="")
    pip_id: Mapped[int | None]
    occurrence_id: Mapped[int | None]
    source_message_id: Mapped[int | None]
    created_at: Mapped[dt.datetime]


class Acknowledgement(OrgScoped, Base):
    """A request that one person acknowledge something (a PIP's plan, a warning, an
    escalation step), and, once they reply, the acknowledgement with its source message.

    ``subject_kind`` is ``pip`` | ``corrective_action`` | ``escalation``. While
    ``acknowledged_at`` is empty the request escalates along ``ladder`` from ``due_at``.
    """

    __tablename__ = "acknowledgements"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "subject_kind", "subject_id", "person_id"),
        org_fk("person_id", "people"),
        org_fk("outbound_message_id", "outbound_messages"),
        org_fk("source_message_id", "inbound_messages"),
    )
    subject_kind: Mapped[str] = mapped_column(String(30))
    subject_id: Mapped[int]
    person_id: Mapped[int]
    requested_at: Mapped[dt.datetime]
    due_at: Mapped[dt.datetime]
    ladder: Mapped[list[Any]]
    outbound_message_id: Mapped[int | None]
    acknowledged_at: Mapped[dt.datetime | None]
    source_message_id: Mapped[int | None]
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime]


class OutboundMessage(OrgScoped, Base):
    """The outbox: one row per email we intend to send, keyed so it is sent exactly once."""

    __tablename__ = "outbound_messages"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "idempotency_key"),
        UniqueConstraint("message_id"),
        # Our email by Message-ID: ``message_id`` or the one the transport sent it under.
        Index("ix_outbound_messages_sent_message_id", "sent_message_id"),
        org_fk("occurrence_id", "occurrences"),
        org_fk("pip_review_id", "pip_reviews"),
    )
    idempotency_key: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40))
    message_id: Mapped[str] = mapped_column(String(300))
    recipients: Mapped[list[Any]]
    subject: Mapped[str] = mapped_column(Text)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    occurrence_id: Mapped[int | None]
    pip_review_id: Mapped[int | None]
    state: Mapped[str] = mapped_column(String(20), default=OutboundState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime]
    sent_at: Mapped[dt.datetime | None]
    # What the transport reported: its id, its thread (Gmail threadId, Graph conversationId,
    # so a reminder joins the prompt's thread) and the Message-ID it really sent under.
    provider_id: Mapped[str | None] = mapped_column(String(300))
    provider_thread: Mapped[str | None] = mapped_column(String(300))
    sent_message_id: Mapped[str | None] = mapped_column(String(998))
    transport: Mapped[str | None] = mapped_column(String(20))


class MailboxState(OrgScoped, Base):
    """Where reading a mailbox got to: an IMAP ``UIDVALIDITY:UID``, a Gmail historyId or a
    Graph deltaLink, stored after the messages it covers; and the push watch, if any."""

    __tablename__ = "mailbox_states"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "provider", "mailbox"),
    )
    provider: Mapped[str] = mapped_column(String(20))
    mailbox: Mapped[str] = mapped_column(String(320))
    cursor: Mapped[str | None] = mapped_column(Text)
    polled_at: Mapped[dt.datetime | None]
    full_synced_at: Mapped[dt.datetime | None]
    watch_expires_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime]


class InboundMessage(OrgScoped, Base):
    """Every inbound email, stored raw and unchanged before anything reads it."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "sha256"),
        Index("ix_inbound_messages_org_message_id", "organization_id", "message_id"),
        Index("ix_inbound_messages_state", "state"),  # the quarantine gauge, the retention sweep
        org_fk("occurrence_id", "occurrences"),
        org_fk("pip_review_id", "pip_reviews"),
    )
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int]
    source: Mapped[str] = mapped_column(String(40))
    message_id: Mapped[str | None] = mapped_column(String(998))
    from_address: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20), default=InboundState.RECEIVED)
    # Why it was not recorded (quarantined, auto_reply, bounced, duplicate).
    quarantine_reason: Mapped[str | None] = mapped_column(Text)
    occurrence_id: Mapped[int | None]
    pip_review_id: Mapped[int | None]
    # Set by an operator's release: the sender to check instead of From (`--as`), and when.
    attributed_to: Mapped[str | None] = mapped_column(String(320))
    released_at: Mapped[dt.datetime | None]
    received_at: Mapped[dt.datetime]
    processed_at: Mapped[dt.datetime | None]
    erased_at: Mapped[dt.datetime | None]  # raw bytes, sender and subject removed


class ConversationRecord(OrgScoped, Base):
    """A documented conversation. Corrections add a version; nothing is overwritten."""

    __tablename__ = "conversation_records"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "subject_kind", "subject_id", "version"),
        org_fk("source_message_id", "inbound_messages"),
        org_fk("author_id", "people"),
    )
    subject_kind: Mapped[str] = mapped_column(String(20))  # occurrence | pip_review
    subject_id: Mapped[int]
    version: Mapped[int]
    source_message_id: Mapped[int]
    author_id: Mapped[int]
    body: Mapped[str] = mapped_column(Text)
    answers: Mapped[dict[str, Any]]
    rating: Mapped[int | None]
    notes: Mapped[str] = mapped_column(Text, default="")
    commands: Mapped[list[Any]]
    created_at: Mapped[dt.datetime]
    erased_at: Mapped[dt.datetime | None]  # content removed by an erasure; the row remains


class ActionItem(OrgScoped, Base):
    __tablename__ = "action_items"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        # The agenda's carry-over reads a series' items through their records.
        Index("ix_action_items_record", "organization_id", "record_id"),
        org_fk("record_id", "conversation_records"),
        org_fk("owner_id", "people"),
    )
    record_id: Mapped[int]
    owner_id: Mapped[int | None]
    text: Mapped[str] = mapped_column(Text)
    due_on: Mapped[dt.date | None]
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime]


class Escalation(OrgScoped, Base):
    """One step of a ladder, sent. The unique key is what makes a step happen once."""

    __tablename__ = "escalations"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "subject_kind", "subject_id", "step"),
        org_fk("recipient_id", "people"),
        org_fk("outbound_message_id", "outbound_messages"),
    )
    subject_kind: Mapped[str] = mapped_column(String(20))
    subject_id: Mapped[int]
    step: Mapped[int]
    action: Mapped[str] = mapped_column(String(20))  # remind | escalate
    recipient_id: Mapped[int]
    outbound_message_id: Mapped[int | None]
    created_at: Mapped[dt.datetime]


class Reassignment(OrgScoped, Base):
    """Who documents a subject (a check-in or a PIP review) from now on, instead of its manager
    or reviewer: the manager is on leave, so their manager or the HR partner takes it over.
    Rows are only ever added; the latest of a subject wins (see
    :func:`automation.services.escalation.reassign`). ``by`` is the actor as the audit log
    names them (``console:<address>``)."""

    __tablename__ = "reassignments"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        Index("ix_reassignments_subject", "organization_id", "subject_kind", "subject_id"),
        org_fk("person_id", "people"),
    )
    subject_kind: Mapped[str] = mapped_column(String(20))
    subject_id: Mapped[int]
    person_id: Mapped[int]
    by: Mapped[str] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime]


class Task(OrgScoped, Base):
    """A unit of due work. The tick enqueues due ids; a worker claims one with a lease."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("organization_id", "key"),
        Index("ix_tasks_state_due", "state", "due_at"),
    )
    kind: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(200))
    subject_id: Mapped[int]
    due_at: Mapped[dt.datetime]
    state: Mapped[str] = mapped_column(String(20), default=TaskState.PENDING)
    lease_until: Mapped[dt.datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[str | None] = mapped_column(String(200))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class AuditEntry(OrgScoped, Base):
    """Append-only and hash-chained per organization; triggers refuse UPDATE and DELETE."""

    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("organization_id", "seq"),)
    seq: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[dt.datetime]
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(60))
    subject_kind: Mapped[str] = mapped_column(String(40))
    subject_id: Mapped[int | None]
    data: Mapped[dict[str, Any]]
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # sha256 of the entry's content (actor and data); the chain hashes this digest, so an
    # erasure can remove the content of an entry and the chain still verifies.
    content_sha256: Mapped[str] = mapped_column(String(64))
    # Set only by an erasure: the seq of its ``privacy.erased`` entry, which counts them.
    redacted_by: Mapped[int | None] = mapped_column(BigInteger)


class ConsoleAccount(OrgScoped, Base):
    """Someone who may sign in to the HR console: an HR admin, an HR partner or a manager
    (who sees only their reporting chain, through ``person_id``). Local accounts carry a
    scrypt ``password_hash``; OpenID Connect accounts an issuer and subject instead."""

    __tablename__ = "console_accounts"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "email"),
        org_fk("person_id", "people"),
    )
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    person_id: Mapped[int | None]
    password_hash: Mapped[str | None] = mapped_column(String(200))
    oidc_issuer: Mapped[str | None] = mapped_column(String(300))
    oidc_subject: Mapped[str | None] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_sign_ins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]
    last_sign_in_at: Mapped[dt.datetime | None]


class ConsoleSession(OrgScoped, Base):
    """A signed-in browser. Only the token's SHA-256 is stored: a copy of the table signs
    nobody in. ``csrf_token`` must come back with every change the browser asks for."""

    __tablename__ = "console_sessions"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("token_sha256"),
        org_fk("account_id", "console_accounts"),
    )
    account_id: Mapped[int]
    token_sha256: Mapped[str] = mapped_column(String(64))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime]
    last_seen_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]


class LegalHold(OrgScoped, Base):
    """A legal hold on one person's data: while it is active nothing of theirs is erased,
    neither by a deletion request nor by the retention period."""

    __tablename__ = "legal_holds"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        org_fk("person_id", "people"),
    )
    person_id: Mapped[int]
    reason: Mapped[str] = mapped_column(Text)
    placed_by: Mapped[str] = mapped_column(String(320))
    placed_at: Mapped[dt.datetime]
    released_by: Mapped[str | None] = mapped_column(String(320))
    released_at: Mapped[dt.datetime | None]


class ErasureRequest(OrgScoped, Base):
    """A request to erase one person's personal data (or the retention period's own).

    ``state`` is ``held`` while a legal hold stops it (it is carried out by the retention sweep
    once the hold is released) and ``done`` once carried out; ``removed`` counts what went,
    by kind, and never holds the content.
    """

    __tablename__ = "erasure_requests"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        org_fk("person_id", "people"),
    )
    person_id: Mapped[int]
    reference: Mapped[str] = mapped_column(String(200))  # the ticket or letter it answers
    requested_by: Mapped[str] = mapped_column(String(320))
    requested_at: Mapped[dt.datetime]
    state: Mapped[str] = mapped_column(String(20))
    completed_at: Mapped[dt.datetime | None]
    removed: Mapped[dict[str, Any] | None]


# --- goals, development plans and agendas (issue 8) ------------------------------------------


class GoalStatus(enum.StrEnum):
    OPEN = "open"
    ON_TRACK = "on_track"
    AT_RISK = "at_risk"
    DONE = "done"
    DROPPED = "dropped"


class Goal(OrgScoped, Base):
    """A person's goal: only its identity. What it says and how it stands are its versions
    (``goal_versions``), appended and never changed; the latest version is the current state.

    ``key`` is how imports and ``#goal`` replies find it again: the folded title it was created
    with, unless the goals file gives its own ``key`` (so a title can be reworded).
    """

    __tablename__ = "goals"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "person_id", "key"),
        org_fk("person_id", "people"),
        org_fk("pip_goal_id", "pip_goals"),
    )
    person_id: Mapped[int]
    key: Mapped[str] = mapped_column(String(200))
    pip_goal_id: Mapped[int | None]  # when it is (or carries on) a PIP's goal
    source: Mapped[str] = mapped_column(String(20))  # csv | reply | cli: how it was created
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[dt.datetime]


class GoalVersion(OrgScoped, Base):
    """One state of a goal. Every change (an import that differs, a ``#goal`` reply, the CLI)
    appends one; history is never updated in place (an erasure blanks the text, as it does a
    record's). ``source_message_id`` links a reply's version to the message it came from."""

    __tablename__ = "goal_versions"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "goal_id", "version"),
        org_fk("goal_id", "goals"),
        org_fk("owner_id", "people"),
        org_fk("source_message_id", "inbound_messages"),
    )
    goal_id: Mapped[int]
    version: Mapped[int]
    title: Mapped[str] = mapped_column(Text)
    success_criteria: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(320))  # as written: employee, manager, an address
    owner_id: Mapped[int | None]
    due_on: Mapped[dt.date | None]
    status: Mapped[str] = mapped_column(String(20), default=GoalStatus.OPEN)
    note: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(20))  # csv | reply | cli
    source_detail: Mapped[str | None] = mapped_column(String(500))  # file:line, operator
    source_message_id: Mapped[int | None]
    author: Mapped[str] = mapped_column(String(320))  # an address, "import", operator:<user>
    created_at: Mapped[dt.datetime]
    erased_at: Mapped[dt.datetime | None]


class DevelopmentItem(OrgScoped, Base):
    """One line of a person's development plan: a skill to build, support agreed, or a note
    from a career conversation; due for discussion on its agenda from ``discuss_by``. Linked
    to the record it was agreed in and to a goal or PIP goal, so growth and accountability
    share one timeline."""

    __tablename__ = "development_items"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        Index("ix_development_items_person", "organization_id", "person_id"),
        org_fk("person_id", "people"),
        org_fk("record_id", "conversation_records"),
        org_fk("pip_goal_id", "pip_goals"),
        org_fk("goal_id", "goals"),
    )
    person_id: Mapped[int]
    kind: Mapped[str] = mapped_column(String(20))  # skill | support | career_note
    text: Mapped[str] = mapped_column(Text)
    discuss_by: Mapped[dt.date | None]
    status: Mapped[str] = mapped_column(String(20), default="open")  # open | done | dropped
    record_id: Mapped[int | None]
    pip_goal_id: Mapped[int | None]
    goal_id: Mapped[int | None]
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]
    erased_at: Mapped[dt.datetime | None]


class AgendaTopic(OrgScoped, Base):
    """A topic someone added to a check-in's agenda (a ``+ topic`` line or free text in a reply
    to the agenda, or the CLI). ``position`` is its place in the source message, so the same
    message processed twice adds it once."""

    __tablename__ = "agenda_topics"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "source_message_id", "position"),
        Index("ix_agenda_topics_occurrence", "organization_id", "occurrence_id"),
        org_fk("occurrence_id", "occurrences"),
        org_fk("added_by_id", "people"),
        org_fk("source_message_id", "inbound_messages"),
    )
    occurrence_id: Mapped[int]
    added_by_id: Mapped[int]
    text: Mapped[str] = mapped_column(Text)
    source_message_id: Mapped[int | None]
    position: Mapped[int] = mapped_column(Integer, default=0)
    added_at: Mapped[dt.datetime]
    closed_at: Mapped[dt.datetime | None]  # set when closed explicitly; see domain.agenda
    erased_at: Mapped[dt.datetime | None]


class AgendaSnapshot(OrgScoped, Base):
    """What one agenda email showed: the numbering of its open action items (``items``: a list
    of ``{"number": n, "ids": [action item ids]}``), its topics and the coaching triggers that
    fired. ``#done 2`` in a later reply means item 2 of the manager's snapshot. ``sequence``
    1 is the agenda, 2 and up the updates sent when topics arrive late."""

    __tablename__ = "agenda_snapshots"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("organization_id", "occurrence_id", "role", "sequence"),
        org_fk("occurrence_id", "occurrences"),
        org_fk("recipient_id", "people"),
        org_fk("outbound_message_id", "outbound_messages"),
    )
    occurrence_id: Mapped[int]
    role: Mapped[str] = mapped_column(String(20))  # manager | employee
    recipient_id: Mapped[int]
    sequence: Mapped[int] = mapped_column(Integer, default=1)
    items: Mapped[list[Any]]
    topic_ids: Mapped[list[Any]]
    coaching: Mapped[list[Any]]  # the triggers that fired (manager's copy only)
    outbound_message_id: Mapped[int | None]
    built_at: Mapped[dt.datetime]


class OrganizationSecret(OrgScoped, Base):
    """One credential of one organization (an SMTP password, a Graph client secret, a Google
    service-account key), encrypted at rest with Fernet under a key from the environment
    (``AUTOMATION_SECRETS_KEYS``; see :mod:`automation.organizations`). ``key_id`` is a short
    fingerprint of the key that encrypted it, so a rotation can say what is still under an old
    key; the value itself is never stored, logged or audited in the clear."""

    __tablename__ = "organization_secrets"
    __table_args__ = (UniqueConstraint("organization_id", "name"),)
    name: Mapped[str] = mapped_column(String(100))
    ciphertext: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class ConsoleGrant(OrgScoped, Base):
    """A consultant's access to a client organization (fractional HR). The row belongs to the
    consultant account's own organization (``organization_id``, with ``account_id``), so that
    organization's scope sees who it granted; ``granted_organization_id`` is the client whose
    figures and queue the account may open in ``/console/clients``, each in that client's own
    scope. Revoking deletes the row; both organizations' audit logs keep the history."""

    __tablename__ = "console_grants"
    __table_args__ = (
        UniqueConstraint("organization_id", "id"),
        UniqueConstraint("account_id", "granted_organization_id"),
        org_fk("account_id", "console_accounts"),
    )
    account_id: Mapped[int]
    granted_organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    granted_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[dt.datetime]
