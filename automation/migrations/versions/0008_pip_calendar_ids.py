"""The provider ids of a PIP's calendar events (its check-in series and review meetings)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 13:00:00

A nullable column only, so SQLite adds it in place.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pips", schema=None) as batch_op:
        batch_op.add_column(sa.Column("calendar_ids", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pips", schema=None) as batch_op:
        batch_op.drop_column("calendar_ids")
