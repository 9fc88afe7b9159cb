"""inbound trust: failing addresses, operator release, Message-ID lookups

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 10:00:00

Only nullable columns and an index are added, so SQLite does them with ALTER TABLE in place
(no batch copy of tables that others reference). The new inbound states (auto_reply, bounced,
duplicate) are values of the existing ``state`` column and need no schema change.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mail_failing_since", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("mail_failing_reason", sa.Text(), nullable=True))

    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attributed_to", sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column("released_at", sa.DateTime(), nullable=True))
        batch_op.create_index(
            "ix_inbound_messages_org_message_id", ["organization_id", "message_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_inbound_messages_org_message_id")
        batch_op.drop_column("released_at")
        batch_op.drop_column("attributed_to")

    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.drop_column("mail_failing_reason")
        batch_op.drop_column("mail_failing_since")
