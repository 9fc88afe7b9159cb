"""The documentation every review of a PIP must carry, kept with the PIP

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 12:00:00

A nullable column only, so SQLite adds it in place; PIPs from before it use the built-in
review questions.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pips", schema=None) as batch_op:
        batch_op.add_column(sa.Column("documentation", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pips", schema=None) as batch_op:
        batch_op.drop_column("documentation")
