"""Organization secrets: each client organization's credentials, encrypted at rest

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29 23:00:00

``organization_secrets`` holds one row per credential of an organization (its SMTP or IMAP
password, its Graph client secret, its Google service-account key): the Fernet token in
``ciphertext`` and ``key_id``, a short fingerprint of the key that encrypted it (the keys come
from the environment, never from the database). One value per name and organization.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "organization_secrets",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_organization_secrets_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organization_secrets")),
        sa.UniqueConstraint(
            "organization_id", "name", name=op.f("uq_organization_secrets_organization_id_name")
        ),
    )
    with op.batch_alter_table("organization_secrets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_organization_secrets_organization_id"), ["organization_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("organization_secrets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_organization_secrets_organization_id"))
    op.drop_table("organization_secrets")
