"""The append-only, hash-chained audit log.

Each entry carries ``content_sha256``, the digest of its content (actor and data), and a hash
over the previous entry's hash, its own sequence, time, action, subject and that digest. Any
edit, deletion or reordering of history breaks :func:`verify`.

Hashing the content's digest rather than the content is what lets an erasure (a deletion
request, the retention period) remove an entry's content while the chain stays verifiable:
:func:`redact` blanks actor and data and marks the entry with the sequence of the
``privacy.erased`` entry that accounts for it, and :func:`verify` checks that every erased
entry is counted by such an entry. The database refuses DELETE on the table and every UPDATE
but that one (migration 0007).

Entries are queued on the session and appended when its transaction commits
(:func:`record`), so appends for one organization, serialised by locking its row
(PostgreSQL) or by SQLite's single writer, hold that lock only from the append to the commit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, insert, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from automation.models import AuditEntry, Organization

ERASED_ACTOR = "[erased]"
ERASED_DATA: dict[str, Any] = {"erased": True}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def content_digest(actor: str, data: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical([actor, data]).encode()).hexdigest()


def entry_hash(
    prev_hash: str,
    seq: int,
    at: dt.datetime,
    action: str,
    subject_kind: str,
    subject_id: int | None,
    content_sha256: str,
) -> str:
    body = _canonical(
        [seq, at.astimezone(dt.UTC).isoformat(), action, subject_kind, subject_id, content_sha256]
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def record(
    session: Session,
    organization_id: int,
    *,
    actor: str,
    action: str,
    subject_kind: str,
    subject_id: int | None,
    at: dt.datetime,
    data: dict[str, Any] | None = None,
) -> None:
    """Add one entry to the organization's chain when the caller's transaction commits.

    The entry is queued on the session and appended by the commit (:func:`_append_on_commit`):
    the chain's lock on the organization row is then held only for the append and the commit,
    not for the rest of the caller's work (rendering, provider calls), which is what let two
    worker processes run no faster than one. A rolled-back transaction or savepoint drops its
    entries with its other changes. Reading the audit log in the same session appends the
    queued entries first; :func:`record_now` appends at once and returns the entry.
    """
    _queue(
        session,
        organization_id,
        [
            {
                "actor": actor,
                "action": action,
                "subject_kind": subject_kind,
                "subject_id": subject_id,
                "data": data,
            }
        ],
        at,
    )


def record_now(
    session: Session,
    organization_id: int,
    *,
    actor: str,
    action: str,
    subject_kind: str,
    subject_id: int | None,
    at: dt.datetime,
    data: dict[str, Any] | None = None,
) -> AuditEntry:
    """:func:`record`, appended now (with any entries queued before it), for a caller that
    needs the entry's ``id`` or ``seq``; the organization row stays locked until commit."""
    record(
        session,
        organization_id,
        actor=actor,
        action=action,
        subject_kind=subject_kind,
        subject_id=subject_id,
        at=at,
        data=data,
    )
    return flush_pending(session)[-1]


def record_many(
    session: Session, organization_id: int, entries: list[dict[str, Any]], at: dt.datetime
) -> int:
    """Queue many entries at once (bulk planning); each dict has the keyword arguments of
    :func:`record` except ``at``. They are appended with one lock and one INSERT."""
    _queue(session, organization_id, entries, at)
    return len(entries)


_PENDING = "automation.audit.pending"


def _queue(
    session: Session, organization_id: int, entries: list[dict[str, Any]], at: dt.datetime
) -> None:
    if not entries:
        return
    # The innermost transaction: a savepoint rolled back takes the entries queued in it along.
    owner = session.get_nested_transaction() or session.get_transaction()
    pending = session.info.setdefault(_PENDING, [])
    pending.extend((owner, organization_id, at, e) for e in entries)


def flush_pending(session: Session) -> list[AuditEntry]:
    """Append the entries queued on this session now, in their order, organization by
    organization (by id, so two sessions lock organization rows in the same order)."""
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return []
    by_org: dict[int, list[tuple[dt.datetime, dict[str, Any]]]] = {}
    for _owner, org_id, at, e in pending:
        by_org.setdefault(org_id, []).append((at, e))
    appended: list[AuditEntry] = []
    for org_id in sorted(by_org):
        appended.extend(_append(session, org_id, by_org[org_id]))
    return appended


def _append(
    session: Session, organization_id: int, entries: list[tuple[dt.datetime, dict[str, Any]]]
) -> list[AuditEntry]:
    if session.get_bind().dialect.name == "postgresql":
        return _append_postgres(session, organization_id, entries)
    # SQLite has one writer: the transaction holds the database from its first write.
    rows = _chain(organization_id, *_head(session, organization_id), entries)
    ids = session.scalars(
        insert(AuditEntry).returning(AuditEntry.id, sort_by_parameter_order=True), rows
    ).all()
    session.execute(
        update(Organization)
        .where(Organization.id == organization_id)
        .values(audit_seq=rows[-1]["seq"], audit_head=rows[-1]["hash"])
    )
    return [AuditEntry(id=i, **r) for i, r in zip(ids, rows, strict=True)]


def _head(session: Session, organization_id: int) -> tuple[int, str]:
    seq, head = session.execute(
        select(Organization.audit_seq, Organization.audit_head).where(
            Organization.id == organization_id
        )
    ).one()
    return seq, head


def _chain(
    organization_id: int, seq: int, head: str, entries: list[tuple[dt.datetime, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The rows of ``entries`` chained onto the entry ``seq`` whose hash is ``head``."""
    rows: list[dict[str, Any]] = []
    for at, e in entries:
        seq += 1
        data = e.get("data") or {}
        content = content_digest(e["actor"], data)
        digest = entry_hash(head, seq, at, e["action"], e["subject_kind"], e["subject_id"], content)
        rows.append(
            {
                "organization_id": organization_id,
                "seq": seq,
                "at": at,
                "actor": e["actor"],
                "action": e["action"],
                "subject_kind": e["subject_kind"],
                "subject_id": e["subject_id"],
                "data": data,
                "prev_hash": head,
                "hash": digest,
                "content_sha256": content,
            }
        )
        head = digest
    return rows


# One statement moves the organization's head from the entry this transaction read to its
# last new entry and inserts the entries, or, when another transaction moved the head first,
# does neither. The row lock is taken by this UPDATE and held only for the COMMIT that follows:
# two round trips, where SELECT ... FOR UPDATE, INSERT, UPDATE, COMMIT held it for four (and a
# worker thread waits for the GIL between each, so every round trip held under the lock counts).
_APPEND_IF_HEAD = text(
    """
    WITH moved AS (
        UPDATE organizations SET audit_seq = :seq, audit_head = :head
        WHERE id = :org AND audit_seq = :read_seq AND audit_head = :read_head
        RETURNING id
    )
    INSERT INTO audit_log (organization_id, seq, at, actor, action, subject_kind, subject_id,
                           data, prev_hash, hash, content_sha256)
    SELECT moved.id, e.seq, e.at, e.actor, e.action, e.subject_kind, e.subject_id, e.data,
           e.prev_hash, e.hash, e.content_sha256
    FROM moved CROSS JOIN json_to_recordset(CAST(:entries AS json)) AS e(
        seq bigint, at timestamp, actor text, action text, subject_kind text,
        subject_id integer, data json, prev_hash text, hash text, content_sha256 text)
    ORDER BY e.seq
    RETURNING id, seq
    """
)


def _append_postgres(
    session: Session, organization_id: int, entries: list[tuple[dt.datetime, dict[str, Any]]]
) -> list[AuditEntry]:
    while True:
        # READ COMMITTED: the head as last committed (or as this transaction moved it).
        seq, head = _head(session, organization_id)
        rows = _chain(organization_id, seq, head, entries)
        payload = json.dumps(
            [
                {**r, "at": r["at"].astimezone(dt.UTC).replace(tzinfo=None).isoformat()}
                for r in rows
            ],
            default=str,
        )
        ids = dict(
            (s, i)
            for i, s in session.execute(
                _APPEND_IF_HEAD,
                {
                    "org": organization_id,
                    "read_seq": seq,
                    "read_head": head,
                    "seq": rows[-1]["seq"],
                    "head": rows[-1]["hash"],
                    "entries": payload,
                },
            )
        )
        if ids:
            # The ORM's copy of the organization, if loaded, learns its new head (looked up
            # by key: a planning session holds tens of thousands of objects).
            org = session.identity_map.get(identity_key(Organization, organization_id))
            if org is not None:
                session.expire(org, ["audit_seq", "audit_head"])
            return [AuditEntry(id=ids[r["seq"]], **r) for r in rows]
        # Another transaction appended after our read and committed: chain onto its head.


@event.listens_for(Session, "before_commit")
def _append_on_commit(session: Session) -> None:
    if session.get_nested_transaction() is not None or not session.info.get(_PENDING):
        return  # a savepoint's release: its entries wait for the real commit
    session.flush()  # the rest of the transaction's writes first, outside the chain's lock
    flush_pending(session)


@event.listens_for(Session, "after_soft_rollback")
def _drop_rolled_back(session: Session, previous_transaction: Any) -> None:
    pending = session.info.get(_PENDING)
    if not pending:
        return

    def inside(owner: Any) -> bool:
        while owner is not None:
            if owner is previous_transaction:
                return True
            owner = owner.parent
        return False

    pending[:] = [p for p in pending if not inside(p[0])]


@event.listens_for(Session, "after_transaction_end")
def _forget_uncommitted(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # a session closed without committing: nothing is appended
        session.info.pop(_PENDING, None)


@event.listens_for(Session, "do_orm_execute")
def _append_before_reading(state: Any) -> None:
    # Whoever reads or changes the audit log in this session sees its queued entries.
    if state.session.info.get(_PENDING) and any(m.class_ is AuditEntry for m in state.all_mappers):
        flush_pending(state.session)


def redact(
    session: Session,
    organization_id: int,
    entry_ids: Collection[int],
    *,
    actor: str,
    subject_kind: str,
    subject_id: int | None,
    at: dt.datetime,
    data: dict[str, Any],
) -> AuditEntry:
    """Erase the content of these entries and append the ``privacy.erased`` entry that
    accounts for them (``data`` plus the count), in the caller's transaction.

    ``data`` must say what was done without repeating what was removed.
    """
    flush_pending(session)
    erasure_seq = (
        1
        + session.execute(
            select(Organization.audit_seq)
            .where(Organization.id == organization_id)
            .with_for_update(key_share=True)
        ).scalar_one()
    )
    ids = sorted(set(entry_ids))
    erased = 0
    for start in range(0, len(ids), 500):
        erased += session.execute(
            update(AuditEntry)
            .where(
                AuditEntry.organization_id == organization_id,
                AuditEntry.id.in_(ids[start : start + 500]),
                AuditEntry.redacted_by.is_(None),
            )
            .values(actor=ERASED_ACTOR, data=ERASED_DATA, redacted_by=erasure_seq)
            .execution_options(synchronize_session=False)
        ).rowcount
    entry = record_now(
        session,
        organization_id,
        actor=actor,
        action="privacy.erased",
        subject_kind=subject_kind,
        subject_id=subject_id,
        at=at,
        data={**data, "audit_entries_erased": erased},
    )
    assert entry.seq == erasure_seq
    return entry


def verify_chain(session: Session, organization_id: int) -> tuple[bool, int | None]:
    """Return (True, None) if the chain is intact, else (False, seq of the first bad entry)."""
    check = verify(session, organization_id)
    return check.intact, check.seq


@dataclass(frozen=True)
class ChainCheck:
    """The result of :func:`verify` for one organization.

    ``problem`` is ``None`` when intact; else ``"altered"`` (entry ``seq``'s stored hash or
    link does not match its content), ``"missing"`` (entry ``seq`` is gone: a gap in the
    sequence, or the log ends before the organization's recorded head) or ``"unexpected"``
    (entry ``seq`` lies beyond the recorded head: appended outside :func:`record`).
    """

    organization_id: int
    organization: str
    entries: int
    problem: str | None = None
    seq: int | None = None
    detail: str = ""

    @property
    def intact(self) -> bool:
        return self.problem is None


def verify(session: Session, organization_id: int) -> ChainCheck:
    """Recompute one organization's chain from the first entry; name the first bad one.

    Besides each entry's own hash and its link to the previous one, the last entry must be the
    head the organization row records (``audit_seq``, ``audit_head``, written in the same
    transaction as every append), so removing the newest entries is caught too.
    """
    flush_pending(session)
    org = session.get(Organization, organization_id)
    assert org is not None
    prev, expected, count = "0" * 64, 1, 0

    def check(problem: str, seq: int, detail: str) -> ChainCheck:
        return ChainCheck(organization_id, org.slug, count, problem, seq, detail)

    rows = session.scalars(
        select(AuditEntry)
        .where(AuditEntry.organization_id == organization_id)
        .order_by(AuditEntry.seq)
        .execution_options(yield_per=1000)
    )
    # An erased entry names the ``privacy.erased`` entry that accounts for it; that entry, later
    # in the chain, must count exactly the entries that name it.
    erased_by: Counter[int] = Counter()
    first_erased: dict[int, int] = {}
    for e in rows:
        if e.seq > org.audit_seq:
            return check(
                "unexpected",
                e.seq,
                f"entry {e.seq} lies beyond the recorded head (entry {org.audit_seq})",
            )
        if e.seq != expected:
            gap = f"{expected}" if e.seq == expected + 1 else f"{expected}-{e.seq - 1}"
            return check("missing", expected, f"entry {gap} removed (the next entry is {e.seq})")
        if e.redacted_by is None:
            if content_digest(e.actor, e.data) != e.content_sha256:
                return check("altered", e.seq, f"entry {e.seq}'s content does not match its digest")
        elif e.redacted_by <= e.seq:
            return check(
                "altered",
                e.seq,
                f"entry {e.seq} is marked as erased by entry {e.redacted_by}, which is not later",
            )
        else:
            erased_by[e.redacted_by] += 1
            first_erased.setdefault(e.redacted_by, e.seq)
        digest = entry_hash(
            prev, e.seq, e.at, e.action, e.subject_kind, e.subject_id, e.content_sha256
        )
        if e.hash != digest:
            if e.prev_hash != prev and e.hash == entry_hash(
                e.prev_hash, e.seq, e.at, e.action, e.subject_kind, e.subject_id, e.content_sha256
            ):
                # This entry is whole and still links to the original hash of the one before:
                # that one was changed and given a fresh hash.
                return check(
                    "altered",
                    e.seq - 1,
                    f"entry {e.seq - 1} was changed and re-hashed (entry {e.seq} still links "
                    "to its original hash)",
                )
            return check("altered", e.seq, f"entry {e.seq}'s content does not match its hash")
        if e.prev_hash != prev:
            return check("altered", e.seq, f"entry {e.seq}'s link to entry {e.seq - 1} changed")
        if e.action == "privacy.erased" or e.seq in erased_by:
            claimed = (e.data or {}).get("audit_entries_erased", 0)
            found = erased_by.pop(e.seq, 0)
            if e.action != "privacy.erased" or found != claimed:
                return check(
                    "altered",
                    first_erased.get(e.seq, e.seq),
                    f"{found} entries are marked as erased by entry {e.seq}, which accounts "
                    f"for {claimed if e.action == 'privacy.erased' else 'none'}",
                )
        prev, expected, count = e.hash, expected + 1, count + 1
    if erased_by:
        seq = min(first_erased[s] for s in erased_by)
        return check(
            "altered",
            seq,
            f"entry {seq} is marked as erased by entry {min(erased_by)}, which does not exist",
        )
    if count < org.audit_seq:
        return check(
            "missing",
            expected,
            f"entries {expected}-{org.audit_seq} removed (the log ends at {count})"
            if expected < org.audit_seq
            else f"entry {expected} removed (the log ends at {count})",
        )
    if prev != org.audit_head:
        return check(
            "altered",
            count,
            f"the chain does not end in the recorded head hash: rewritten up to entry {count}",
        )
    return ChainCheck(organization_id, org.slug, count)


def verify_all(session: Session) -> list[ChainCheck]:
    """:func:`verify` for every organization, by id."""
    return [
        verify(session, org_id)
        for org_id in session.scalars(select(Organization.id).order_by(Organization.id))
    ]
