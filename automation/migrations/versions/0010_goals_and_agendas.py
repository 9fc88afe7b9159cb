"""Goals (versioned), development plans, agenda topics and the agendas sent; a person's role

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 10:00:00

``goals`` holds a goal's identity and ``goal_versions`` every state it has had: a change
appends a version, the latest is the current state. Unlike ``audit_log`` (see 0007), no
trigger refuses UPDATE or DELETE on the versions: like ``conversation_records`` they must
stay erasable (a deletion request blanks their text in place), and the application only ever
inserts them. ``agenda_snapshots`` keeps the numbering of the action items each agenda showed,
so "#done 2" in a later reply means the item the manager saw as 2. ``people.role`` is a
nullable column, so SQLite adds it in place; the index on ``action_items`` lets the agenda
read a series' open items through their records without scanning the table.
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _org_fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["organization_id", column],
        [f"{target}.organization_id", f"{target}.id"],
        name=op.f(f"fk_{table}_organization_id_{column}_{target}"),
    )


def _owned(table: str) -> list[Any]:
    """The columns and constraints every tenant-owned table has."""
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f(f"fk_{table}_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
        sa.UniqueConstraint("organization_id", "id", name=op.f(f"uq_{table}_organization_id_id")),
    ]


def _org_index(table: str) -> None:
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f(f"ix_{table}_organization_id"), ["organization_id"], unique=False
        )


def upgrade() -> None:
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=100), nullable=True))
    with op.batch_alter_table("action_items", schema=None) as batch_op:
        batch_op.create_index(
            "ix_action_items_record", ["organization_id", "record_id"], unique=False
        )

    op.create_table(
        "goals",
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("pip_goal_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("created_by", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        *_owned("goals"),
        _org_fk("goals", "person_id", "people"),
        _org_fk("goals", "pip_goal_id", "pip_goals"),
        sa.UniqueConstraint(
            "organization_id",
            "person_id",
            "key",
            name=op.f("uq_goals_organization_id_person_id_key"),
        ),
    )
    _org_index("goals")

    op.create_table(
        "goal_versions",
        sa.Column("goal_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("success_criteria", sa.Text(), nullable=False),
        sa.Column("owner", sa.String(length=320), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("due_on", sa.Date(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("source_detail", sa.String(length=500), nullable=True),
        sa.Column("source_message_id", sa.Integer(), nullable=True),
        sa.Column("author", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("erased_at", sa.DateTime(), nullable=True),
        *_owned("goal_versions"),
        _org_fk("goal_versions", "goal_id", "goals"),
        _org_fk("goal_versions", "owner_id", "people"),
        _org_fk("goal_versions", "source_message_id", "inbound_messages"),
        sa.UniqueConstraint(
            "organization_id",
            "goal_id",
            "version",
            name=op.f("uq_goal_versions_organization_id_goal_id_version"),
        ),
    )
    _org_index("goal_versions")

    op.create_table(
        "development_items",
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("discuss_by", sa.Date(), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("record_id", sa.Integer(), nullable=True),
        sa.Column("pip_goal_id", sa.Integer(), nullable=True),
        sa.Column("goal_id", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("erased_at", sa.DateTime(), nullable=True),
        *_owned("development_items"),
        _org_fk("development_items", "person_id", "people"),
        _org_fk("development_items", "record_id", "conversation_records"),
        _org_fk("development_items", "pip_goal_id", "pip_goals"),
        _org_fk("development_items", "goal_id", "goals"),
    )
    _org_index("development_items")
    with op.batch_alter_table("development_items", schema=None) as batch_op:
        batch_op.create_index(
            "ix_development_items_person", ["organization_id", "person_id"], unique=False
        )

    op.create_table(
        "agenda_topics",
        sa.Column("occurrence_id", sa.Integer(), nullable=False),
        sa.Column("added_by_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("source_message_id", sa.Integer(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("added_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.Column("erased_at", sa.DateTime(), nullable=True),
        *_owned("agenda_topics"),
        _org_fk("agenda_topics", "occurrence_id", "occurrences"),
        _org_fk("agenda_topics", "added_by_id", "people"),
        _org_fk("agenda_topics", "source_message_id", "inbound_messages"),
        sa.UniqueConstraint(
            "organization_id",
            "source_message_id",
            "position",
            name=op.f("uq_agenda_topics_organization_id_source_message_id_position"),
        ),
    )
    _org_index("agenda_topics")
    with op.batch_alter_table("agenda_topics", schema=None) as batch_op:
        batch_op.create_index(
            "ix_agenda_topics_occurrence", ["organization_id", "occurrence_id"], unique=False
        )

    op.create_table(
        "agenda_snapshots",
        sa.Column("occurrence_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("recipient_id", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("topic_ids", sa.JSON(), nullable=False),
        sa.Column("coaching", sa.JSON(), nullable=False),
        sa.Column("outbound_message_id", sa.Integer(), nullable=True),
        sa.Column("built_at", sa.DateTime(), nullable=False),
        *_owned("agenda_snapshots"),
        _org_fk("agenda_snapshots", "occurrence_id", "occurrences"),
        _org_fk("agenda_snapshots", "recipient_id", "people"),
        _org_fk("agenda_snapshots", "outbound_message_id", "outbound_messages"),
        sa.UniqueConstraint(
            "organization_id",
            "occurrence_id",
            "role",
            "sequence",
            name=op.f("uq_agenda_snapshots_organization_id_occurrence_id_role_sequence"),
        ),
    )
    _org_index("agenda_snapshots")


def downgrade() -> None:
    for table in ("agenda_snapshots", "agenda_topics", "development_items", "goal_versions"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            if table == "agenda_topics":
                batch_op.drop_index("ix_agenda_topics_occurrence")
            if table == "development_items":
                batch_op.drop_index("ix_development_items_person")
            batch_op.drop_index(batch_op.f(f"ix_{table}_organization_id"))
        op.drop_table(table)
    with op.batch_alter_table("goals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_goals_organization_id"))
    op.drop_table("goals")
    with op.batch_alter_table("action_items", schema=None) as batch_op:
        batch_op.drop_index("ix_action_items_record")
    with op.batch_alter_table("people", schema=None) as batch_op:
        batch_op.drop_column("role")
