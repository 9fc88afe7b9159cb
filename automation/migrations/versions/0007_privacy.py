"""Privacy: legal holds, erasure requests, retention dates, and an audit chain whose entries'
content can be erased while the chain still verifies

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 12:30:00

The audit hash used to cover each entry's content directly, so no content could ever be
removed. It now covers ``content_sha256`` (the digest of the actor and data): an erasure may
blank an entry's content, and the chain, the link of every entry and the digest of every
entry not erased still verify. The existing chain is re-hashed in place; it is first checked
under the old rule, and an ``audit.rechained`` entry records the old head, the number of
entries and whether the old chain was intact (and where it broke), so a break found before the
upgrade is carried into the new chain, not washed out by it.

The database refuses DELETE on audit_log and every UPDATE except an erasure's: one that sets
``redacted_by`` once and leaves the sequence, time, action, subject and hashes as they were.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Kept here, not imported: a migration must not change when the application code does.
_ZERO = "0" * 64


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _utc(at: Any) -> dt.datetime:
    if isinstance(at, str):
        at = dt.datetime.fromisoformat(at)
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


def _old_hash(prev: str, row: Any, data: Any) -> str:
    body = _canonical(
        [
            row.seq,
            _utc(row.at).isoformat(),
            row.actor,
            row.action,
            row.subject_kind,
            row.subject_id,
            data,
        ]
    )
    return hashlib.sha256((prev + body).encode()).hexdigest()


def _content(actor: str, data: Any) -> str:
    return hashlib.sha256(_canonical([actor, data]).encode()).hexdigest()


def _new_hash(
    prev: str, seq: int, at: dt.datetime, action: str, kind: str, sid: Any, content: str
) -> str:
    body = _canonical([seq, _utc(at).isoformat(), action, kind, sid, content])
    return hashlib.sha256((prev + body).encode()).hexdigest()


_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_log_is_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND OLD.redacted_by IS NULL AND NEW.redacted_by IS NOT NULL
       AND NEW.id = OLD.id AND NEW.organization_id = OLD.organization_id
       AND NEW.seq = OLD.seq AND NEW.at = OLD.at AND NEW.action = OLD.action
       AND NEW.subject_kind = OLD.subject_kind
       AND NEW.subject_id IS NOT DISTINCT FROM OLD.subject_id
       AND NEW.prev_hash = OLD.prev_hash AND NEW.hash = OLD.hash
       AND NEW.content_sha256 = OLD.content_sha256 THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only';
END $$ LANGUAGE plpgsql
"""

_SQLITE_ERASURE_ONLY = (
    "OLD.redacted_by IS NULL AND NEW.redacted_by IS NOT NULL"
    " AND NEW.id = OLD.id AND NEW.organization_id = OLD.organization_id"
    " AND NEW.seq = OLD.seq AND NEW.at = OLD.at AND NEW.action = OLD.action"
    " AND NEW.subject_kind = OLD.subject_kind AND NEW.subject_id IS OLD.subject_id"
    " AND NEW.prev_hash = OLD.prev_hash AND NEW.hash = OLD.hash"
    " AND NEW.content_sha256 = OLD.content_sha256"
)


def _drop_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")


def _create_triggers(erasure_allowed: bool) -> None:
    if op.get_bind().dialect.name == "postgresql":
        if erasure_allowed:
            op.execute(_PG_FUNCTION)
        else:
            op.execute(
                "CREATE OR REPLACE FUNCTION audit_log_is_append_only() RETURNS trigger AS $$ "
                "BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$ LANGUAGE plpgsql"
            )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only()"
        )
    else:
        when = f" WHEN NOT ({_SQLITE_ERASURE_ONLY})" if erasure_allowed else ""
        op.execute(
            f"CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log{when} "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        )


_audit = sa.table(
    "audit_log",
    sa.column("id", sa.Integer),
    sa.column("organization_id", sa.Integer),
    sa.column("seq", sa.BigInteger),
    sa.column("at", sa.DateTime),
    sa.column("actor", sa.String),
    sa.column("action", sa.String),
    sa.column("subject_kind", sa.String),
    sa.column("subject_id", sa.Integer),
    sa.column("data", sa.JSON),
    sa.column("prev_hash", sa.String),
    sa.column("hash", sa.String),
    sa.column("content_sha256", sa.String),
)
_orgs = sa.table(
    "organizations",
    sa.column("id", sa.Integer),
    sa.column("audit_seq", sa.BigInteger),
    sa.column("audit_head", sa.String),
)


def _rechain(conn: sa.Connection) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for org in conn.execute(sa.select(_orgs)).all():
        rows = conn.execute(
            sa.select(_audit).where(_audit.c.organization_id == org.id).order_by(_audit.c.seq)
        ).all()
        old_prev, new_prev, expected, first_bad = _ZERO, _ZERO, 1, None
        for row in rows:
            data = row.data if row.data is not None else {}
            if first_bad is None and (
                row.seq != expected
                or row.prev_hash != old_prev
                or row.hash != _old_hash(old_prev, row, data)
            ):
                first_bad = expected if row.seq != expected else row.seq
            old_prev, expected = row.hash, row.seq + 1
            content = _content(row.actor, data)
            digest = _new_hash(
                new_prev, row.seq, row.at, row.action, row.subject_kind, row.subject_id, content
            )
            conn.execute(
                sa.update(_audit)
                .where(_audit.c.id == row.id)
                .values(prev_hash=new_prev, hash=digest, content_sha256=content)
            )
            new_prev = digest
        if not rows:
            continue
        if first_bad is None and (rows[-1].seq != org.audit_seq or old_prev != org.audit_head):
            # The log does not end at the head the organization row records: entries removed
            # from the end (or appended outside the chain).
            first_bad = min(rows[-1].seq, org.audit_seq) + 1
        seq = rows[-1].seq + 1
        data = {
            "previous_head": org.audit_head,
            "entries": len(rows),
            "previous_chain_intact": first_bad is None,
            "first_bad_entry": first_bad,
        }
        content = _content("migration", data)
        digest = _new_hash(new_prev, seq, now, "audit.rechained", "organization", org.id, content)
        conn.execute(
            sa.insert(_audit).values(
                organization_id=org.id,
                seq=seq,
                at=now.replace(tzinfo=None),
                actor="migration",
                action="audit.rechained",
                subject_kind="organization",
                subject_id=org.id,
                data=data,
                prev_hash=new_prev,
                hash=digest,
                content_sha256=content,
            )
        )
        conn.execute(
            sa.update(_orgs).where(_orgs.c.id == org.id).values(audit_seq=seq, audit_head=digest)
        )


def upgrade() -> None:
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.add_column(sa.Column("left_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("erased_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("conversation_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("erased_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("erased_at", sa.DateTime(), nullable=True))

    op.create_table(
        "legal_holds",
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("placed_by", sa.String(length=320), nullable=False),
        sa.Column("placed_at", sa.DateTime(), nullable=False),
        sa.Column("released_by", sa.String(length=320), nullable=True),
        sa.Column("released_at", sa.DateTime(), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "person_id"],
            ["people.organization_id", "people.id"],
            name=op.f("fk_legal_holds_organization_id_person_id_people"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_legal_holds_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legal_holds")),
        sa.UniqueConstraint(
            "organization_id", "id", name=op.f("uq_legal_holds_organization_id_id")
        ),
    )
    with op.batch_alter_table("legal_holds", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_legal_holds_organization_id"), ["organization_id"], unique=False
        )
    op.create_table(
        "erasure_requests",
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("reference", sa.String(length=200), nullable=False),
        sa.Column("requested_by", sa.String(length=320), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.Column("removed", sa.JSON(), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "person_id"],
            ["people.organization_id", "people.id"],
            name=op.f("fk_erasure_requests_organization_id_person_id_people"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_erasure_requests_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erasure_requests")),
        sa.UniqueConstraint(
            "organization_id", "id", name=op.f("uq_erasure_requests_organization_id_id")
        ),
    )
    with op.batch_alter_table("erasure_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_erasure_requests_organization_id"), ["organization_id"], unique=False
        )

    _drop_triggers()
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("content_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("redacted_by", sa.BigInteger(), nullable=True))
    _rechain(op.get_bind())
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.alter_column("content_sha256", existing_type=sa.String(length=64), nullable=False)
    _create_triggers(erasure_allowed=True)


def downgrade() -> None:
    """Back to the old hash rule: only possible while no entry has been erased."""
    conn = op.get_bind()
    erased = conn.execute(
        sa.text("SELECT count(*) FROM audit_log WHERE redacted_by IS NOT NULL")
    ).scalar_one()
    if erased:
        raise RuntimeError(
            f"{erased} audit entries had their content erased; the old hash rule cannot "
            "verify them, so this migration cannot be undone"
        )
    _drop_triggers()
    prev_by_org: dict[int, str] = {}
    for row in conn.execute(sa.select(_audit).order_by(_audit.c.organization_id, _audit.c.seq)):
        prev = prev_by_org.get(row.organization_id, _ZERO)
        digest = _old_hash(prev, row, row.data if row.data is not None else {})
        conn.execute(
            sa.update(_audit).where(_audit.c.id == row.id).values(prev_hash=prev, hash=digest)
        )
        prev_by_org[row.organization_id] = digest
    for org_id, head in prev_by_org.items():
        conn.execute(sa.update(_orgs).where(_orgs.c.id == org_id).values(audit_head=head))
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_column("redacted_by")
        batch_op.drop_column("content_sha256")
    _create_triggers(erasure_allowed=False)
    for table in ("erasure_requests", "legal_holds"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_organization_id"))
        op.drop_table(table)
    for table in ("inbound_messages", "conversation_records"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("erased_at")
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.drop_column("erased_at")
        batch_op.drop_column("left_at")
