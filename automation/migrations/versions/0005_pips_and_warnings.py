"""PIPs from templates, their goals, written warnings and corrective actions,
acknowledgements

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 10:00:00

New tables and nullable columns only, so SQLite adds them in place.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pip_goals",
        sa.Column("pip_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("goal", sa.Text(), nullable=False),
        sa.Column("success_criteria", sa.Text(), nullable=False),
        sa.Column("owner", sa.String(length=320), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("due_on", sa.Date(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "owner_id"],
            ["people.organization_id", "people.id"],
            name=op.f("fk_pip_goals_organization_id_owner_id_people"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "pip_id"],
            ["pips.organization_id", "pips.id"],
            name=op.f("fk_pip_goals_organization_id_pip_id_pips"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_pip_goals_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pip_goals")),
        sa.UniqueConstraint("organization_id", "id", name=op.f("uq_pip_goals_organization_id_id")),
        sa.UniqueConstraint("pip_id", "position", name=op.f("uq_pip_goals_pip_id_position")),
    )
    with op.batch_alter_table("pip_goals", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pip_goals_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "acknowledgements",
        sa.Column("subject_kind", sa.String(length=30), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("requested_at", sa.DateTime(), nullable=False),
        sa.Column("due_at", sa.DateTime(), nullable=False),
        sa.Column("ladder", sa.JSON(), nullable=False),
        sa.Column("outbound_message_id", sa.Integer(), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(), nullable=True),
        sa.Column("source_message_id", sa.Integer(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "outbound_message_id"],
            ["outbound_messages.organization_id", "outbound_messages.id"],
            name=op.f("fk_acknowledgements_organization_id_outbound_message_id_outbound_messages"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "person_id"],
            ["people.organization_id", "people.id"],
            name=op.f("fk_acknowledgements_organization_id_person_id_people"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "source_message_id"],
            ["inbound_messages.organization_id", "inbound_messages.id"],
            name=op.f("fk_acknowledgements_organization_id_source_message_id_inbound_messages"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_acknowledgements_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acknowledgements")),
        sa.UniqueConstraint(
            "organization_id", "id", name=op.f("uq_acknowledgements_organization_id_id")
        ),
        sa.UniqueConstraint(
            "organization_id",
            "subject_kind",
            "subject_id",
            "person_id",
            name=op.f("uq_acknowledgements_organization_id_subject_kind_subject_id_person_id"),
        ),
    )
    with op.batch_alter_table("acknowledgements", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_acknowledgements_organization_id"), ["organization_id"], unique=False
        )

    op.create_table(
        "corrective_actions",
        sa.Column("kind", sa.String(length=30), nullable=False),
        sa.Column("employee_id", sa.Integer(), nullable=False),
        sa.Column("issued_by_id", sa.Integer(), nullable=True),
        sa.Column("issued_by", sa.String(length=320), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("expectation", sa.Text(), nullable=False),
        sa.Column("consequence", sa.Text(), nullable=False),
        sa.Column("pip_id", sa.Integer(), nullable=True),
        sa.Column("occurrence_id", sa.Integer(), nullable=True),
        sa.Column("source_message_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id", "employee_id"],
            ["people.organization_id", "people.id"],
            name=op.f("fk_corrective_actions_organization_id_employee_id_people"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "issued_by_id"],
            ["people.organization_id", "people.id"],
            name=op.f("fk_corrective_actions_organization_id_issued_by_id_people"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "occurrence_id"],
            ["occurrences.organization_id", "occurrences.id"],
            name=op.f("fk_corrective_actions_organization_id_occurrence_id_occurrences"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "pip_id"],
            ["pips.organization_id", "pips.id"],
            name=op.f("fk_corrective_actions_organization_id_pip_id_pips"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "source_message_id"],
            ["inbound_messages.organization_id", "inbound_messages.id"],
            name=op.f("fk_corrective_actions_organization_id_source_message_id_inbound_messages"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_corrective_actions_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_corrective_actions")),
        sa.UniqueConstraint(
            "organization_id", "id", name=op.f("uq_corrective_actions_organization_id_id")
        ),
    )
    with op.batch_alter_table("corrective_actions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_corrective_actions_organization_id"), ["organization_id"], unique=False
        )

    with op.batch_alter_table("pip_reviews", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("original_due_at", sa.DateTime(), nullable=True))

    with op.batch_alter_table("pips", schema=None) as batch_op:
        batch_op.add_column(sa.Column("template", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("reviewer", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("calendar_uid", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("calendar_sequence", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("checkin_rrule", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("checkin_dtstart_local", sa.String(length=19), nullable=True))
        batch_op.add_column(sa.Column("checkin_timezone", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("checkin_duration_minutes", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("extended_days", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("closed_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("closing_note", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pips", schema=None) as batch_op:
        batch_op.drop_column("closing_note")
        batch_op.drop_column("closed_at")
        batch_op.drop_column("extended_days")
        batch_op.drop_column("checkin_duration_minutes")
        batch_op.drop_column("checkin_timezone")
        batch_op.drop_column("checkin_dtstart_local")
        batch_op.drop_column("checkin_rrule")
        batch_op.drop_column("calendar_sequence")
        batch_op.drop_column("calendar_uid")
        batch_op.drop_column("reviewer")
        batch_op.drop_column("template")

    with op.batch_alter_table("pip_reviews", schema=None) as batch_op:
        batch_op.drop_column("original_due_at")
        batch_op.drop_column("kind")

    with op.batch_alter_table("corrective_actions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_corrective_actions_organization_id"))

    op.drop_table("corrective_actions")
    with op.batch_alter_table("acknowledgements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_acknowledgements_organization_id"))

    op.drop_table("acknowledgements")
    with op.batch_alter_table("pip_goals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pip_goals_organization_id"))

    op.drop_table("pip_goals")
