"""An index on inbound_messages.state: the quarantine gauge of /metrics and the retention
sweep count and find messages by state without reading the table

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 13:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_inbound_messages_state", "inbound_messages", ["state"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_inbound_messages_state", table_name="inbound_messages")
