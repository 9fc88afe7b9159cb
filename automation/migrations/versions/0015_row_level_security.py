"""Row-level security: on PostgreSQL, every tenant-owned table shows a scoped session only its
organization's rows

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29 23:00:00

The first wall is in the application (automation/tenancy.py: every ORM statement of a session
scoped to an organization is filtered to it, and writes to another are refused). This is the
second, in the database, for what the first does not see (plain SQL): a session scoped to an
organization sets ``app.organization_id`` for its transaction, and each table's policy lets
it see and write only rows of that organization. A session that sets nothing is the system
scope (the tick, claims, migrations) and sees every row.

FORCE makes the policies bind the tables' owner too (the service usually connects as the
owner). A superuser, or a role with BYPASSRLS, is never bound by them: run the service as an
ordinary role. SQLite has no row-level security; nothing happens there.

Every table with an ``organization_id`` column gets the policy, found by inspecting the
database (a migration must not import the models, which change later); ``organizations``
gets one on its ``id``. A table added later needs its own policy in its migration:
tests/test_tenancy.py fails for a tenant-owned table without one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICY = "tenant_isolation"
# The setting is '' (not NULL) once a SET LOCAL of it has ended in this connection; NULLIF
# makes both "unset", and keeps the cast from failing on '' (SQL's OR does not short-circuit).
SETTING = "NULLIF(current_setting('app.organization_id', true), '')"


def _rule(column: str) -> str:
    return f"{SETTING} IS NULL OR {column} = {SETTING}::integer"


def _tenant_tables(bind: sa.engine.Connection) -> list[str]:
    inspector = sa.inspect(bind)
    return sorted(
        name
        for name in inspector.get_table_names()
        if any(c["name"] == "organization_id" for c in inspector.get_columns(name))
    )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table, column in [("organizations", "id")] + [
        (name, "organization_id") for name in _tenant_tables(bind)
    ]:
        rule = _rule(column)
        op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
        op.execute(f'ALTER TABLE "{table}" FORCE ROW LEVEL SECURITY')
        op.execute(f'CREATE POLICY {POLICY} ON "{table}" USING ({rule}) WITH CHECK ({rule})')


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table in ["organizations", *_tenant_tables(bind)]:
        op.execute(f'DROP POLICY IF EXISTS {POLICY} ON "{table}"')
        op.execute(f'ALTER TABLE "{table}" NO FORCE ROW LEVEL SECURITY')
        op.execute(f'ALTER TABLE "{table}" DISABLE ROW LEVEL SECURITY')
