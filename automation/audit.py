"""The append-only, hash-chained audit log.

Each entry's hash covers the previous entry's hash and the entry's own canonical JSON, so any
edit, deletion or reordering of history breaks :func:`verify_chain`. Appends for one
organization are serialised by locking its row (PostgreSQL) or by SQLite's single writer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
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
