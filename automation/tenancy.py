"""Organizations as tenants: one mechanism scopes every query to one organization.

A session opened for an organization (``scoped_factory(engine, organization_id)``, or the
``factory`` of :meth:`automation.runtime.Runtime.tenant`) carries the organization's id in
``Session.info``. Two listeners, on every session, then enforce it, so that code running for
a tenant cannot read or change another's rows even where it forgot a filter:

- **reads, updates and deletes** (``do_orm_execute``): every ORM statement gets
  ``with_loader_criteria`` on :class:`~automation.models.OrgScoped` (every tenant-owned table)
  and on :class:`~automation.models.Organization`, so a row of another organization is never
  loaded, updated or deleted: it is as if it did not exist. ``session.get`` of another
  organization's id returns None.
- **writes** (``before_flush``): a new or changed tenant-owned object whose
  ``organization_id`` is not the session's raises :class:`CrossTenantWrite` before any SQL.

On PostgreSQL, the session also sets ``app.organization_id`` for its transaction, which the
row-level security policies read: a second wall under the first, for statements the ORM
listeners do not see (plain SQL).

A session without an organization in its ``info`` is the *system* scope: the tick, the
claim of a task (which is how the worker learns whose task it is), migrations, and the
look-ups that find which organization a webhook or a console session belongs to. Those are
few and explicit; everything done *for* an organization runs in its scope.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker, with_loader_criteria

from automation.errors import AutomationError
from automation.models import Organization, OrgScoped

SCOPE_KEY = "organization_id"


class CrossTenantWrite(AutomationError):
    """Code running for one organization tried to write a row of another."""


def scope_of(session: Session) -> int | None:
    """The organization ``session`` is scoped to; None for the system scope."""
    value = session.info.get(SCOPE_KEY)
    return int(value) if value is not None else None


def system_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions of the system scope, for the few questions about the whole deployment that
    code running for one organization must ask (is this channel anyone's?). Use sparingly:
    every such call is a place where isolation rests on the caller."""
    return sessionmaker(engine, expire_on_commit=False)


def scoped_factory(engine: Engine, organization_id: int) -> sessionmaker[Session]:
    """Sessions that see and change only ``organization_id``'s rows."""
    return sessionmaker(engine, expire_on_commit=False, info={SCOPE_KEY: int(organization_id)})


@event.listens_for(Session, "do_orm_execute")
def _only_this_organization(state: ORMExecuteState) -> None:
    organization_id = scope_of(state.session)
    if organization_id is None:
        return
    if state.is_insert:
        _check_insert(state, organization_id)
        return
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.is_column_load or state.is_relationship_load:
        return  # the parent row was loaded in scope; its criteria are already applied
    statement = state.statement.options(
        with_loader_criteria(
            OrgScoped,
            lambda cls: cls.organization_id == organization_id,
            include_aliases=True,
        ),
        with_loader_criteria(
            Organization,
            lambda cls: cls.id == organization_id,
            include_aliases=True,
        ),
    )
    if state.is_update or state.is_delete:
        # Written against the Table rather than the mapped class, a statement escapes the
        # loader criteria: filter its table directly (a repeat of the criteria otherwise).
        table = statement.table
        owner = _owner_column(table)
        if owner is not None:
            statement = statement.where(owner == organization_id)
    state.statement = statement


def _owner_column(table: Any) -> Any:
    """The column naming a row's organization: ``organization_id``, or ``organizations.id``."""
    columns = getattr(table, "c", None)
    if columns is None:
        return None
    if "organization_id" in columns:
        return columns.organization_id
    return columns.id if getattr(table, "name", None) == "organizations" else None


def _check_insert(state: ORMExecuteState, organization_id: int) -> None:
    """An INSERT (the service writes its hot rows with statements, not objects) may only
    write rows of the session's organization: the values in the statement and those passed
    to execute are checked before anything is sent."""
    statement = state.statement
    owner = _owner_column(statement.table)
    if owner is None:
        return
    given: list[Any] = []
    for column, value in (getattr(statement, "_values", None) or {}).items():
        if getattr(column, "key", column) == owner.key:
            given.append(getattr(value, "value", value))
    for row in getattr(statement, "_multi_values", None) or ():
        for values in row:
            if isinstance(values, dict):
                given.extend(v for k, v in values.items() if getattr(k, "key", k) == owner.key)
    parameters = state.parameters
    for row in parameters if isinstance(parameters, list) else [parameters or {}]:
        if owner.key in row:
            given.append(row[owner.key])
    for value in given:
        if value is not None and not hasattr(value, "compile") and value != organization_id:
            raise CrossTenantWrite(
                f"an INSERT into {statement.table.name} for organization {value} in a "
                f"session scoped to organization {organization_id}"
            )


@event.listens_for(Session, "before_flush")
def _no_writes_to_another(session: Session, _context: Any, _instances: Any) -> None:
    organization_id = scope_of(session)
    if organization_id is None:
        return
    for obj in (*session.new, *session.dirty, *session.deleted):
        owner = (
            obj.id
            if isinstance(obj, Organization)
            else getattr(obj, "organization_id", organization_id)
        )
        if owner is not None and owner != organization_id:
            raise CrossTenantWrite(
                f"a {type(obj).__name__} of organization {owner} was written in a session "
                f"scoped to organization {organization_id}"
            )


@event.listens_for(Session, "after_begin")
def _tell_postgresql(session: Session, _transaction: Any, connection: Any) -> None:
    """Row-level security reads the transaction's organization (``SET LOCAL``)."""
    organization_id = scope_of(session)
    if organization_id is None or connection.dialect.name != "postgresql":
        return
    connection.execute(
        text("SELECT set_config('app.organization_id', :org, true)"),
        {"org": str(organization_id)},
    )
