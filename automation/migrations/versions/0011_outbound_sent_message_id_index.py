"""An index on outbound_messages.sent_message_id: finding our email by a Message-ID (the
thread a reminder or confirmation joins, the prompt a reply without a token answers) asks for
``message_id`` or ``sent_message_id``; without an index on the second, PostgreSQL read every
outgoing email of the organization for each send (at 10,000 people, most of the database's
CPU while replies came in)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 19:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_outbound_messages_sent_message_id",
        "outbound_messages",
        ["sent_message_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_outbound_messages_sent_message_id", table_name="outbound_messages")
