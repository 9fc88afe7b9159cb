"""calendar sync: where each series lives in a provider, sync cursors and push channels

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:00:00

Two new tables and one nullable column (occurrences.responses: attendee PARTSTATs read back
from the calendar), so SQLite adds the column in place.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "calendar_syncs",
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("calendar", sa.String(length=320), nullable=False),
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("synced_at", sa.DateTime(), nullable=True),
        sa.Column("full_synced_at", sa.DateTime(), nullable=True),
        sa.Column("channel_id", sa.String(length=200), nullable=True),
        sa.Column("channel_secret", sa.String(length=200), nullable=True),
        sa.Column("channel_resource", sa.String(length=500), nullable=True),
        sa.Column("channel_expires_at", sa.DateTime(), nullable=True),
        sa.Column("last_message_number", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_calendar_syncs_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calendar_syncs")),
        sa.UniqueConstraint(
            "organization_id", "id", name=op.f("uq_calendar_syncs_organization_id_id")
        ),
        sa.UniqueConstraint(
            "organization_id",
            "provider",
            "calendar",
            name=op.f("uq_calendar_syncs_organization_id_provider_calendar"),
        ),
    )
    with op.batch_alter_table("calendar_syncs", schema=None) as batch_op:
        batch_op.create_index("ix_calendar_syncs_channel", ["channel_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_calendar_syncs_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "calendar_links",
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=20), nullable=False),
        sa.Column("calendar", sa.String(length=320), nullable=False),
        sa.Column("event_id", sa.String(length=1024), nullable=False),
        sa.Column("written_sequence", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "series_id"],
            ["checkin_series.organization_id", "checkin_series.id"],
            name=op.f("fk_calendar_links_organization_id_series_id_checkin_series"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_calendar_links_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calendar_links")),
        sa.UniqueConstraint(
            "organization_id", "id", name=op.f("uq_calendar_links_organization_id_id")
        ),
        sa.UniqueConstraint(
            "organization_id",
            "series_id",
            "provider",
            name=op.f("uq_calendar_links_organization_id_series_id_provider"),
        ),
    )
    with op.batch_alter_table("calendar_links", schema=None) as batch_op:
        batch_op.create_index(
            "ix_calendar_links_event", ["organization_id", "provider", "event_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_calendar_links_organization_id"), ["organization_id"], unique=False
        )

    with op.batch_alter_table("occurrences", schema=None) as batch_op:
        batch_op.add_column(sa.Column("responses", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("occurrences", schema=None) as batch_op:
        batch_op.drop_column("responses")

    with op.batch_alter_table("calendar_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_calendar_links_organization_id"))
        batch_op.drop_index("ix_calendar_links_event")

    op.drop_table("calendar_links")
    with op.batch_alter_table("calendar_syncs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_calendar_syncs_organization_id"))
        batch_op.drop_index("ix_calendar_syncs_channel")

    op.drop_table("calendar_syncs")
