"""Console grants: a fractional-HR consultant's access to client organizations

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30 10:00:00

``console_grants`` lets a console account with the ``consultant`` role open the client pages
(``/console/clients``) of other organizations: one row per account and granted organization.
The row belongs to the account's own organization (``organization_id``, with ``account_id``
referring to the account inside it); ``granted_organization_id`` names the client. Revoking
deletes the row; the audit logs of both organizations keep who granted and revoked what.

Like every tenant-owned table (see 0015), on PostgreSQL the table gets the row-level security
policy on ``organization_id``: a session scoped to an organization sees only the grants its
own accounts hold.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "console_grants"
POLICY = "tenant_isolation"  # as in 0015
SETTING = "NULLIF(current_setting('app.organization_id', true), '')"
RULE = f"{SETTING} IS NULL OR organization_id = {SETTING}::integer"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("granted_organization_id", sa.Integer(), nullable=False),
        sa.Column("granted_by", sa.String(length=320), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["granted_organization_id"],
            ["organizations.id"],
            name=op.f("fk_console_grants_granted_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_console_grants_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id", "account_id"],
            ["console_accounts.organization_id", "console_accounts.id"],
            name=op.f("fk_console_grants_organization_id_account_id_console_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_grants")),
        sa.UniqueConstraint(
            "account_id",
            "granted_organization_id",
            name=op.f("uq_console_grants_account_id_granted_organization_id"),
        ),
        sa.UniqueConstraint(
            "organization_id", "id", name=op.f("uq_console_grants_organization_id_id")
        ),
    )
    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_console_grants_organization_id"), ["organization_id"], unique=False
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f'ALTER TABLE "{TABLE}" ENABLE ROW LEVEL SECURITY')
        op.execute(f'ALTER TABLE "{TABLE}" FORCE ROW LEVEL SECURITY')
        op.execute(f'CREATE POLICY {POLICY} ON "{TABLE}" USING ({RULE}) WITH CHECK ({RULE})')


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f'DROP POLICY IF EXISTS {POLICY} ON "{TABLE}"')
    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_console_grants_organization_id"))
    op.drop_table(TABLE)
