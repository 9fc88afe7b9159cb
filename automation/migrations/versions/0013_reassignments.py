"""Reassignments: who documents a check-in or PIP review instead of its manager

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-10 10:00:00

``reassignments`` moves the responsibility for documenting a subject (a check-in or a PIP
review) to another person, e.g. while the manager is on leave. Rows are only added; the
latest of a subject wins, so the history of who was responsible, who moved it and why stays
readable. Like ``conversation_records`` (see 0010), no trigger refuses UPDATE or DELETE: an
erasure must be able to blank a reason in place. The index serves "the latest row of this
subject", read each time a subject's ladder step or reply is handled.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reassignments",
        sa.Column("subject_kind", sa.String(length=20), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("by", sa.String(length=320), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_reassignments_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "person_id"],
            ["people.organization_id", "people.id"],
            name=op.f("fk_reassignments_organization_id_person_id_people"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reassignments")),
        sa.UniqueConstraint(
            "organization_id", "id", name=op.f("uq_reassignments_organization_id_id")
        ),
    )
    with op.batch_alter_table("reassignments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_reassignments_organization_id"), ["organization_id"], unique=False
        )
        batch_op.create_index(
            "ix_reassignments_subject",
            ["organization_id", "subject_kind", "subject_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("reassignments", schema=None) as batch_op:
        batch_op.drop_index("ix_reassignments_subject")
        batch_op.drop_index(batch_op.f("ix_reassignments_organization_id"))
    op.drop_table("reassignments")
