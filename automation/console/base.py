"""What every console page shares: who is signed in, what they may see, forms and rendering.

A page declares what it needs as FastAPI dependencies:

- ``Depends(require("hr_admin"))`` (or several roles) gives the signed-in :class:`Viewer`;
  a browser with no session is sent to the sign-in page, a role that may not open the page
  gets a 403 page that says which roles may;
- ``Depends(changed)`` on a POST gives the form's fields after checking the session's CSRF
  token (a cross-site form never carries it);
- :func:`visible_people` and :func:`visible_person` apply "managers see only their reporting
  chain": every query a page makes about people or their records goes through them, and a
  person outside the chain is answered with 404, as if they did not exist.

Roles: ``hr_admin`` does everything; ``hr_partner`` sees the whole organization and works the
overdue queue and the quarantine; ``manager`` sees the people who report to them, directly or
not, and acknowledges what is overdue in that chain. ``consultant`` (fractional HR) has an HR
partner's rights in its own organization, and reaches the organizations it is granted
(``Viewer.granted``) only through :mod:`.clients`. Only HR admins change configuration,
templates and accounts. Every change a page makes is written to the audit log with the actor
``console:<address>``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.orm import Session

from automation.db import transaction
from automation.models import Person
from automation.runtime import Runtime
from automation.services import accounts

SESSION_COOKIE = "checkin_session"
LOGIN_CSRF_COOKIE = "checkin_login_csrf"
MAX_FORM = 256 * 1024  # a template being edited is the largest form
HR_ADMIN, HR_PARTNER, MANAGER = "hr_admin", "hr_partner", "manager"
# Fractional HR: an HR partner's rights in its own organization; the organizations it is
# granted only through the client pages (automation/console/clients.py), each in its scope.
CONSULTANT = "consultant"
HR = (HR_ADMIN, HR_PARTNER, CONSULTANT)
ANYONE = (HR_ADMIN, HR_PARTNER, MANAGER, CONSULTANT)
ROLE_NAMES = {
    HR_ADMIN: "HR admin",
    HR_PARTNER: "HR partner",
    MANAGER: "manager",
    CONSULTANT: "fractional HR consultant",
}

HEADERS = {
    "Cache-Control": "no-store",
    # Scripts and styles only from our own /console/static; nothing may frame a page.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-src 'self' about:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

_HERE = Path(__file__).parent
STATIC_DIR = _HERE / "static"


@dataclass(frozen=True)
class Viewer:
    """The signed-in account, as a page sees it."""

    account_id: int
    organization_id: int
    email: str
    name: str
    role: str
    person_id: int | None
    csrf: str
    # A consultant's client organizations (console_grants), read on every request: a revoked
    # grant is gone at the next one. Empty for every other role.
    granted: tuple[int, ...] = ()

    @property
    def organizations(self) -> tuple[int, ...]:
        """Every organization the viewer reaches: their own, then the granted ones."""
        return (self.organization_id,) + tuple(o for o in self.granted if o != self.organization_id)

    @property
    def actor(self) -> str:
        """How the audit log names this person's changes."""
        return f"console:{self.email}"

    @property
    def is_hr(self) -> bool:
        return self.role in HR

    @property
    def is_admin(self) -> bool:
        return self.role == HR_ADMIN

    @property
    def role_name(self) -> str:
        return ROLE_NAMES.get(self.role, self.role)


class ConsoleError(Exception):
    """Answered with a page of its own (see :func:`automation.console.add_console`)."""

    status = 400

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class NotSignedIn(ConsoleError):
    status = 401


class Forbidden(ConsoleError):
    status = 403


class NotFound(ConsoleError):
    status = 404


class FormExpired(ConsoleError):
    status = 403

    def __init__(self) -> None:
        super().__init__("The form expired or did not come from this console; reload the page.")


# --------------------------------------------------------------------------- requests


def runtime(request: Request) -> Runtime:
    return request.app.state.console_runtime()  # type: ignore[no-any-return]


Rt = Annotated[Runtime, Depends(runtime)]


def viewer(request: Request, rt: Rt) -> Viewer:
    token = request.cookies.get(SESSION_COOKIE)
    with transaction(rt.factory) as session:
        found = accounts.authenticate(session, token, rt.now())
        if found is None:
            raise NotSignedIn()
        account, row = found
        granted = tuple(o.id for o in accounts.granted_organizations(session, account))
        return Viewer(
            account.id, account.organization_id, account.email, account.name, account.role,
            account.person_id, row.csrf_token, granted,
        )  # fmt: skip


def tenant_runtime(who: Annotated[Viewer, Depends(viewer)], rt: Rt) -> Runtime:
    """The runtime of the viewer's organization: a page's sessions are scoped to it
    (automation.tenancy), so a page cannot read or change another organization's rows."""
    return rt.tenant(who.organization_id)


TenantRt = Annotated[Runtime, Depends(tenant_runtime)]


def require(*roles: str) -> Callable[..., Viewer]:
    """A dependency giving the viewer when their role is one of ``roles``."""
    allowed = roles or ANYONE

    def check(who: Annotated[Viewer, Depends(viewer)]) -> Viewer:
        if who.role not in allowed:
            names = ", ".join(ROLE_NAMES[r] + "s" for r in allowed)
            raise Forbidden(f"This page is for {names}; you are signed in as {who.role_name}.")
        return who

    return check


class Form(dict[str, str]):
    """A posted form: the first value of each field, and :meth:`all` for repeated ones."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        super().__init__({k: v[0] for k, v in fields.items()})
        self._lists = fields

    def all(self, name: str) -> list[str]:
        return list(self._lists.get(name, []))


async def form(request: Request) -> Form:
    """The urlencoded body (no multipart: the console never uploads files)."""
    body = await request.body()
    if len(body) > MAX_FORM:
        raise ConsoleError(f"The form is larger than {MAX_FORM // 1024} KiB.")
    return Form(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))


def changed(
    who: Annotated[Viewer, Depends(viewer)], fields: Annotated[Form, Depends(form)]
) -> Form:
    """The form of a change, once its CSRF token is the session's."""
    if not accounts.csrf_token_ok(who.csrf, fields.get("csrf")):
        raise FormExpired()
    return fields


# What a page declares: `def page(request: Request, who: HrViewer, rt: Rt)`.
AnyViewer = Annotated[Viewer, Depends(require(*ANYONE))]
HrViewer = Annotated[Viewer, Depends(require(*HR))]
AdminViewer = Annotated[Viewer, Depends(require(HR_ADMIN))]
Changed = Annotated[Form, Depends(changed)]


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a console path, never another site."""
    if not target or not target.startswith("/console/") or target.startswith("//"):
        return "/console/"
    if any(c in target for c in "\\\r\n") or "://" in target:
        return "/console/"
    return target


def sign_in_url(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/console/sign-in?next=" + quote(safe_next(here), safe="/")


# --------------------------------------------------------------------------- who sees what


def reports_of(session: Session, organization_id: int, manager_id: int) -> set[int]:
    """Everyone below ``manager_id`` in the reporting lines (a cycle stops the walk)."""
    edges = session.execute(
        select(Person.id, Person.manager_id).where(
            Person.organization_id == organization_id, Person.manager_id.is_not(None)
        )
    ).all()
    children: dict[int, list[int]] = {}
    for person_id, boss in edges:
        children.setdefault(boss, []).append(person_id)
    seen: set[int] = set()
    todo = list(children.get(manager_id, []))
    while todo:
        current = todo.pop()
        if current in seen or current == manager_id:
            continue
        seen.add(current)
        todo.extend(children.get(current, []))
    return seen


def visible_people(session: Session, who: Viewer) -> set[int] | None:
    """The people ``who`` may see: None means everyone in the organization (HR)."""
    if who.is_hr:
        return None
    if who.person_id is None:
        return set()
    return reports_of(session, who.organization_id, who.person_id)


def visible_person(session: Session, who: Viewer, person_id: int) -> Person:
    """The person, if ``who`` may see them; :class:`NotFound` otherwise (even if they exist)."""
    person = session.get(Person, person_id)
    if person is None or person.organization_id != who.organization_id:
        raise NotFound("No such person.")
    allowed = visible_people(session, who)
    if allowed is not None and person.id not in allowed:
        raise NotFound("No such person.")
    return person


def only_visible(column: Any, allowed: set[int] | None) -> Any:
    """A WHERE clause keeping rows whose ``column`` (a person id) ``who`` may see."""
    if allowed is None:
        return column.is_not(None) | column.is_(None)
    return column.in_(sorted(allowed) or [-1])


# --------------------------------------------------------------------------- rendering


def _when(moment: dt.datetime | None, zone: str = "UTC") -> str:
    if moment is None:
        return ""
    from zoneinfo import ZoneInfo

    try:
        local = moment.astimezone(ZoneInfo(zone))
    except Exception:  # noqa: BLE001 - an unknown zone shows UTC rather than failing the page
        local = moment.astimezone(dt.UTC)
    return f"{local:%a %d %b %Y %H:%M} {local.tzname()}"


_env = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["when"] = _when
_env.globals["ROLE_NAMES"] = ROLE_NAMES

# What a page says after a change redirected back to it (?notice=<key>): fixed texts, so a
# link cannot make the console display words of someone else's choosing.
NOTICES: dict[str, str] = {"signed-in": "Signed in."}

NAV = (
    ("/console/", "Home", ANYONE),
    ("/console/clients", "Clients", (CONSULTANT,)),
    ("/console/people", "People", ANYONE),
    ("/console/calendar", "Calendar", ANYONE),
    ("/console/queue", "Overdue", ANYONE),
    ("/console/report", "Report", HR),
    ("/console/quarantine", "Quarantine", HR),
    ("/console/cadences", "Cadences", HR),
    ("/console/pips", "PIP templates", HR),
    ("/console/templates", "Templates", HR),
)


def render(
    request: Request,
    template: str,
    who: Viewer | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A console page: ``template`` (under automation/console/templates) in the layout."""
    key = request.query_params.get("notice", "")
    nav = [(href, label) for href, label, roles in NAV if who is not None and who.role in roles]
    page = _env.get_template(template).render(
        viewer=who, nav=nav, path=request.url.path, notice=NOTICES.get(key),
        **context,
    )  # fmt: skip
    return HTMLResponse(page, status_code=status, headers=HEADERS)


def markup(text: str) -> Markup:
    """Our own, already-safe HTML (an SVG chart) to place in a template unescaped."""
    return Markup(text)


def ids(values: Iterable[str]) -> list[int]:
    """Integers from form values, ignoring anything that is not one."""
    return [int(v) for v in values if v.strip().isdigit()]
