"""mail transports: mailbox cursors, what the transport reported for each sent message,
soft-bounce counts

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 10:00:00

One new table and nullable columns only, so SQLite adds them in place.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mailbox_states",
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("mailbox", sa.String(length=320), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("polled_at", sa.DateTime(), nullable=True),
        sa.Column("full_synced_at", sa.DateTime(), nullable=True),
        sa.Column("watch_expires_at", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_mailbox_states_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mailbox_states")),
        sa.UniqueConstraint(
            "organization_id", "id", name=op.f("uq_mailbox_states_organization_id_id")
        ),
        sa.UniqueConstraint(
            "organization_id",
            "provider",
            "mailbox",
            name=op.f("uq_mailbox_states_organization_id_provider_mailbox"),
        ),
    )
    with op.batch_alter_table("mailbox_states", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_mailbox_states_organization_id"), ["organization_id"], unique=False
        )

    with op.batch_alter_table("outbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_id", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("provider_thread", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("sent_message_id", sa.String(length=998), nullable=True))
        batch_op.add_column(sa.Column("transport", sa.String(length=20), nullable=True))

    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mail_soft_bounces", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.drop_column("mail_soft_bounces")

    with op.batch_alter_table("outbound_messages", schema=None) as batch_op:
        batch_op.drop_column("transport")
        batch_op.drop_column("sent_message_id")
        batch_op.drop_column("provider_thread")
        batch_op.drop_column("provider_id")

    with op.batch_alter_table("mailbox_states", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mailbox_states_organization_id"))

    op.drop_table("mailbox_states")
