"""The append-only, hash-chained audit log.

Each entry's hash covers the previous entry's hash and the entry's own canonical JSON, so any
edit, deletion or reordering of history breaks :func:`verify_chain`. Appends for one
organization are serialised by locking its row (PostgreSQL) or by SQLite's single writer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from automation.models import AuditEntry, Organization


def entry_hash(
    prev_hash: str,
    seq: int,
    at: dt.datetime,
    actor: str,
    action: str,
    subject_kind: str,
    subject_id: int | None,
    data: dict[str, Any],
) -> str:
    body = json.dumps(
        [seq, at.astimezone(dt.UTC).isoformat(), actor, action, subject_kind, subject_id, data],
        sort_keys=True,
        separators=(",", ":"),
        default=str,
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
) -> AuditEntry:
    """Append one entry to the organization's chain, in the caller's transaction."""
    org = session.execute(
        select(Organization).where(Organization.id == organization_id).with_for_update()
    ).scalar_one()
    data = data or {}
    seq = org.audit_seq + 1
    digest = entry_hash(org.audit_head, seq, at, actor, action, subject_kind, subject_id, data)
    entry = AuditEntry(
        organization_id=organization_id,
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        subject_kind=subject_kind,
        subject_id=subject_id,
        data=data,
        prev_hash=org.audit_head,
        hash=digest,
    )
    org.audit_seq = seq
    org.audit_head = digest
    session.add(entry)
    return entry


def record_many(
    session: Session, organization_id: int, entries: list[dict[str, Any]], at: dt.datetime
) -> int:
    """Append many entries at once (bulk planning); each dict has the keyword arguments of
    :func:`record` except ``at``. One lock and one INSERT instead of one per entry."""
    if not entries:
        return 0
    org = session.execute(
        select(Organization).where(Organization.id == organization_id).with_for_update()
    ).scalar_one()
    rows = []
    seq, head = org.audit_seq, org.audit_head
    for e in entries:
        seq += 1
        data = e.get("data") or {}
        digest = entry_hash(
            head, seq, at, e["actor"], e["action"], e["subject_kind"], e["subject_id"], data
        )
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
            }
        )
        head = digest
    session.execute(insert(AuditEntry), rows)
    org.audit_seq, org.audit_head = seq, head
    return len(rows)


def verify_chain(session: Session, organization_id: int) -> tuple[bool, int | None]:
    """Return (True, None) if the chain is intact, else (False, seq of the first bad entry)."""
    prev = "0" * 64
    expected_seq = 1
    rows = session.scalars(
        select(AuditEntry)
        .where(AuditEntry.organization_id == organization_id)
        .order_by(AuditEntry.seq)
    )
    for e in rows:
        digest = entry_hash(
            prev, e.seq, e.at, e.actor, e.action, e.subject_kind, e.subject_id, e.data
        )
        if e.seq != expected_seq or e.prev_hash != prev or e.hash != digest:
            return False, e.seq
        prev = e.hash
        expected_seq += 1
    return True, None


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
        digest = entry_hash(
            prev, e.seq, e.at, e.actor, e.action, e.subject_kind, e.subject_id, e.data
        )
        if e.hash != digest:
            if e.prev_hash != prev and e.hash == entry_hash(
                e.prev_hash, e.seq, e.at, e.actor, e.action, e.subject_kind, e.subject_id, e.data
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
        prev, expected, count = e.hash, expected + 1, count + 1
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
