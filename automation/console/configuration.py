"""HR's configuration in the console: cadences, PIP templates and email templates, edited as
the files they are (``config/cadences/*.toml``, ``config/pips/*.toml``,
``templates/email/<name>/``). HR partners read them; only HR admins change them.

Nothing is written before it passes the checks the service itself applies: a TOML text goes
through :func:`automation.config.parse_cadence` / :func:`~automation.config.parse_pip_template`
(the loaders' parsers), a template through the same Jinja sandbox as a real send, rendered on
its sample data (:mod:`automation.template_samples`). A refused save answers with the page,
the submitted text still in the editor and every problem beside it, with its line. A good one
replaces the file atomically and records the file's SHA-256 before and after (never the
content) in the audit log.

Where a save goes: a deployment that serves several organizations (fractional HR) keeps each
organization's configuration apart, so an HR admin's save is written into their organization's
own folder (:func:`automation.organizations.org_folder`, ``config/orgs/<slug>/``), never into
the shared files another organization also runs with. A cadence or PIP template folder is
copied from the shared one the first time (copy-on-write: ``cadences/`` there replaces the
shared ``cadences/`` whole, so the organization keeps every cadence it had); templates are
written file by file into ``config/orgs/<slug>/templates/email/<name>/`` (the organization's
files come first, the rest stays shared). Once an organization has a folder of its own for a
kind, saves go there whatever the number of organizations. A deployment with one organization
(and no folder of its own for that kind) writes the shared files, as it always did. Pages
show the organization's effective files (its runtime's view of them), and a save is audited in
its own log; its runtime reloads from the new files (:meth:`automation.runtime.Runtime.reloaded`).

A saved cadence is applied at once in this process: the service loads cadences only when a
runtime is built (:func:`automation.runtime.build_runtime`) and planning stores the loaded set
(:func:`automation.services.planning.sync_cadences`), so without a reload the next plan would
keep planning the old one. PIP templates are read when a PIP is started, email templates on
each send.

Template pages preview the email on sample data while it is edited: ``static/console.js``
posts the texts to ``POST /console/templates/{name}/preview`` (JSON, described in the OpenAPI
document, session cookie plus an ``X-CSRF-Token`` header); without scripts, the Preview button
renders the same preview server-side. "Send test" sends the rendered sample to the signed-in
person's own address, through the service's mail transport.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, HTTPException, Request, Security
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyCookie
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from automation import audit, organizations
from automation.config import (
    CADENCES_FOLDER,
    PIPS_FOLDER,
    CheckedText,
    LocatedProblem,
    PipTemplate,
    check_cadence_text,
    check_pip_template_text,
    editable_name,
    load_cadences,
    text_sha256,
    write_text_atomically,
)
from automation.console.base import (
    HEADERS,
    HR,
    MAX_FORM,
    NOTICES,
    SESSION_COOKIE,
    AdminViewer,
    Changed,
    ConsoleError,
    Forbidden,
    HrViewer,
    NotFound,
    Rt,
    TenantRt,
    Viewer,
    render,
)
from automation.db import transaction
from automation.domain.cadence import WEEKDAYS, Cadence, LadderStep
from automation.emails import (
    PARTS,
    TEMPLATE_NAME,
    PartProblem,
    Rendered,
    build_message,
    check_template_texts,
    make_message_id,
    render_texts,
    template_files,
    template_names,
)
from automation.errors import ConfigError, ProviderError
from automation.models import Organization
from automation.ports import OutgoingMail
from automation.runtime import Runtime
from automation.services import accounts
from automation.services.messages import sender_domain
from automation.services.planning import sync_cadences
from automation.template_samples import sample_context
from automation.tenancy import system_factory

router = APIRouter(prefix="/console", include_in_schema=False)
log = logging.getLogger("automation.console")

NOTICES.update(
    {
        "cadence-saved": "Cadence saved and applied: planning uses it from now on.",
        "cadence-saved-not-applied": "Cadence saved, but not applied yet: another cadence file "
        "has problems (listed on the cadences page). Fix it; the next save applies both.",
        "pip-saved": "PIP template saved: PIPs started from now on use it.",
        "template-saved": "Template saved: emails rendered from now on use it.",
        "nothing-changed": "Nothing to save: the text is the one already saved.",
    }
)

# One save at a time in this process, so "the file is still what the editor was opened on"
# and the write that follows cannot interleave with another save of the same file.
_saving = threading.Lock()


def _normalise(text: str) -> str:
    """A textarea's value as a file: browsers submit CRLF line ends."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _shown(rt: Runtime, text: str) -> str:
    """A problem's text without the server's folders: HR knows the files by their names."""
    for folder in (rt.settings.config_dir, rt.settings.templates_dir):
        text = text.replace(f"{folder}/", "")
    return text


# --------------------------------------------------------------------------- where saves go


@dataclass(frozen=True)
class Target:
    """Where a save writes: ``folder``; ``own`` names the organization's folder
    (``orgs/<slug>``, for the audit entry) when it is written there, None for the shared
    files."""

    folder: Path
    own: str | None = None


def _serves_many(rt: Runtime) -> bool:
    """Whether the deployment serves more than one organization (a system-scope read: the
    question is about the deployment, and it answers with a number only)."""
    with system_factory(rt.engine)() as session:
        return len(session.scalars(select(Organization.id).limit(2)).all()) > 1


def _shared(rt: Runtime) -> tuple[Path, Path]:
    """The deployment's config_dir and templates_dir (an organization's runtime reads views of
    them, which are never written through)."""
    settings = rt.parent.settings if rt.parent is not None else rt.settings
    return settings.config_dir, settings.templates_dir


def _own_root(rt: Runtime) -> Path | None:
    """The organization's folder, ``config/orgs/<slug>/`` (None: its slug cannot name one)."""
    slug = rt.settings.organization
    if not organizations.valid_slug(slug):
        return None
    return organizations.org_folder(rt.settings, slug)


def _target(rt: Runtime, subfolder: str) -> Target:
    """Where a save of ``subfolder`` (``cadences``, ``pips``, ``templates/email/<name>``)
    goes: the organization's own when it has it, or when the deployment serves several
    organizations; else the shared one."""
    root = _own_root(rt)
    top = subfolder.split("/")[0]
    if root is not None and (root / top).is_dir():
        return Target(root / subfolder, f"{organizations.ORGS_FOLDER}/{root.name}")
    if not _serves_many(rt):
        config_dir, templates_dir = _shared(rt)
        if top == organizations.TEMPLATES_FOLDER:
            return Target(templates_dir.joinpath(*subfolder.split("/")[1:]))
        return Target(config_dir / subfolder)
    if root is None:
        raise ConsoleError(
            f"This organization's slug ({rt.settings.organization!r}) cannot name a folder, so "
            "its own configuration cannot be saved: the shared files are every organization's."
        )
    return Target(root / subfolder, f"{organizations.ORGS_FOLDER}/{root.name}")


def _copy_on_write(shared: Path, own: Path) -> bool:
    """Make ``own`` a copy of the shared folder's files (as a whole, by a rename), unless it
    exists: the organization's folder replaces the shared one, so it starts with everything
    the organization had. True when it was copied."""
    if own.is_dir():
        return False
    own.parent.mkdir(parents=True, exist_ok=True)
    temporary = own.with_name(f".{own.name}.{secrets.token_hex(6)}.copy")
    if shared.is_dir():
        shutil.copytree(shared, temporary, ignore=shutil.ignore_patterns(".*"))
    else:
        temporary.mkdir()
    try:
        os.rename(temporary, own)
    except OSError:  # another save made it meanwhile
        shutil.rmtree(temporary, ignore_errors=True)
        return False
    return True


# --------------------------------------------------------------------------- cadences, PIPs


@dataclass(frozen=True)
class Kind:
    """One kind of configuration file the console edits."""

    slug: str  # in the URL: /console/<slug>
    folder: str  # under config_dir
    title: str
    singular: str
    action: str  # the audit entry of a save
    notice: str  # after a save
    check: Callable[..., CheckedText]
    summary: Callable[[Any], list[tuple[str, str]]]
    applies: str  # how a saved file takes effect, said on the page
    starter: str  # the text a new file starts from


def _ladder(steps: tuple[LadderStep, ...]) -> str:
    if not steps:
        return "none"
    return "; ".join(
        f"{s.after_business_days:+d} business days: {s.notify} ({s.template})" for s in steps
    )


def _cadence_summary(cadence: Cadence) -> list[tuple[str, str]]:
    days = ", ".join(WEEKDAYS[d].title() for d in cadence.weekdays)
    return [
        ("Name", cadence.name),
        ("Interval", cadence.frequency),
        (
            "Meeting",
            f"{cadence.duration_minutes} minutes, {days}, "
            f"{cadence.window_start:%H:%M}-{cadence.window_end:%H:%M} (employee's time)",
        ),
        ("Applies to", "reports of " + ", ".join(cadence.reports_of) if cadence.reports_of
         else "every manager's reports"),
        ("Ladder", _ladder(cadence.ladder)),
    ]  # fmt: skip


def _pip_summary(template: PipTemplate) -> list[tuple[str, str]]:
    reviews = ", ".join(f"{name} (day {day})" for name, day in template.reviews)
    return [
        ("Name", f"{template.name}: {template.title}"),
        ("Length", f"{template.duration_days} days"),
        ("Reviews", f"{reviews}; documented by the {template.reviewer.replace('_', ' ')}"),
        ("Ladder", _ladder(template.ladder)),
        ("Acknowledgement", f"within {template.acknowledgement_days} business days; "
         + _ladder(template.acknowledgement_ladder)),
    ]  # fmt: skip


CADENCE_STARTER = """\
name = "{name}"
description = ""
title = "1:1 {{manager}} / {{employee}}"

[applies_to]
reports_of = []   # manager emails; empty means every manager
exclude = []      # employee emails to leave out

[schedule]
frequency = "every 2 weeks"   # "weekly", "every N weeks" or "monthly"
duration_minutes = 30
weekdays = ["tue", "wed", "thu"]
window_start = "09:00"
window_end = "16:00"

[agenda]
lead_hours = 24

[followup]
delay_hours = 1
questions = ["What went well since your last check-in?"]

[[escalation]]
after_business_days = 3
notify = "manager"
template = "reminder"
"""

PIP_STARTER = """\
name = "{name}"
title = "Performance improvement plan"
duration_days = 30
reviewer = "manager"

[checkins]
frequency = "weekly"
weekdays = ["tue", "wed", "thu"]
window_start = "09:00"
window_end = "16:00"
minutes = 30

[[review]]
name = "Final review"
after_days = 30

[documentation]
required = ["Progress against each goal, with evidence"]

[[escalation]]
after_business_days = 0
notify = "manager"
template = "reminder"

[acknowledgement]
within_business_days = 3
"""

KINDS = {
    "cadences": Kind(
        slug="cadences", folder=CADENCES_FOLDER, title="Cadences", singular="cadence",
        action="config.cadence_saved", notice="cadence-saved", check=check_cadence_text,
        summary=_cadence_summary, starter=CADENCE_STARTER,
        applies="Saving applies the cadence at once in this process: planning, agendas, "
        "follow-ups and escalations use it from the next tick. Other processes of the "
        "service read the folder again at their next plan, when they see a file changed.",
    ),
    "pips": Kind(
        slug="pips", folder=PIPS_FOLDER, title="PIP templates", singular="PIP template",
        action="config.pip_template_saved", notice="pip-saved", check=check_pip_template_text,
        summary=_pip_summary, starter=PIP_STARTER,
        applies="A PIP template is read when a PIP is started: saving changes the PIPs "
        "started from now on; running PIPs keep the plan they started with.",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class ConfigFile:
    """One file as a page shows it."""

    name: str  # without .toml
    editable: bool  # a name the console may write (others are listed, not edited)
    checked: CheckedText
    summary: list[tuple[str, str]]


def _folder(rt: Runtime, kind: Kind) -> Path:
    return rt.settings.config_dir / kind.folder


def _read(rt: Runtime, kind: Kind, path: Path) -> tuple[str, ConfigFile]:
    text = path.read_text(encoding="utf-8", errors="replace")
    checked = kind.check(rt.settings, path.name, text)
    summary = kind.summary(checked.value) if checked.value is not None else []
    return text, ConfigFile(path.stem, editable_name(path.stem), checked, summary)


def _problems(rt: Runtime, located: tuple[LocatedProblem, ...]) -> list[dict[str, Any]]:
    return [
        {
            "field": p.problem.field,
            "line": p.line,
            "problem": _shown(rt, p.problem.problem),
            "fix": _shown(rt, p.problem.fix),
        }
        for p in located
    ]


def _file_path(rt: Runtime, kind: Kind, name: str) -> Path:
    """The file of an editable name; anything else (a path, a dot) is not found."""
    if not editable_name(name):
        raise NotFound(f"No {kind.singular} file named like that.")
    return _folder(rt, kind) / f"{name}.toml"


def _list_page(request: Request, who: Viewer, rt: Runtime, kind: Kind) -> Response:
    files = [_read(rt, kind, p)[1] for p in sorted(_folder(rt, kind).glob("*.toml"))]
    return render(
        request, "config_list.html", who, kind=kind, files=files,
        problems={f.name: _problems(rt, f.checked.problems) for f in files},
    )  # fmt: skip


def _edit_page(
    request: Request,
    who: Viewer,
    rt: Runtime,
    kind: Kind,
    *,
    name: str,
    text: str,
    base: str,
    problems: list[dict[str, Any]],
    summary: list[tuple[str, str]],
    new: bool = False,
    status: int = 200,
) -> Response:
    return render(
        request, "config_edit.html", who, status, kind=kind, name=name, text=text, base=base,
        problems=problems, summary=summary, new=new,
    )  # fmt: skip


def _apply_cadences(rt: Runtime, organization_id: int) -> bool:
    """Load the cadence files again into this runtime and store them (what the next plan
    would store), so the change takes effect now. False when a file has problems: the
    runtime keeps the set it had."""
    try:
        cadences = {c.name: c for c in load_cadences(rt.settings)}
    except ConfigError:
        return False
    rt.cadences = cadences  # a new dict: a plan iterating over the old one is not disturbed
    try:
        with transaction(rt.factory) as session:
            sync_cadences(session, organization_id, cadences, rt.now())
    except SQLAlchemyError as exc:
        # A plan storing the same cadences at the same moment, say: the runtime has them, and
        # its next plan stores them, so the save stands.
        log.warning("saved cadences not stored yet (%s); the next plan stores them", exc)
    return True


def _save(rt: Runtime, who: Viewer, kind: Kind, path: Path, text: str, old: str | None) -> str:
    """Write the checked text where the organization's saves go (:func:`_target`) and audit
    it, then apply a cadence; returns the notice to show. The reload has its own transaction:
    a clash with a plan storing cadences at that moment must not undo the audit entry of a
    file already written."""
    target = _target(rt, kind.folder)
    data: dict[str, Any] = {
        "file": f"{kind.folder}/{path.name}",
        "old_sha256": text_sha256(old) if old is not None else None,
        "new_sha256": text_sha256(text),
    }
    with transaction(rt.factory) as session:
        # The file is replaced inside the transaction, just before it commits: a failed write
        # leaves no audit entry, and the entry cannot name a write that did not happen.
        if target.own is not None:
            data["folder"] = target.own
            if _copy_on_write(_shared(rt)[0] / kind.folder, target.folder):
                data["copied_shared_folder"] = True
        write_text_atomically(target.folder / path.name, text)
        audit.record(
            session, who.organization_id, actor=who.actor, action=kind.action,
            subject_kind="config_file", subject_id=None, at=rt.now(), data=data,
        )  # fmt: skip
    # The organization's runtime as the files are now (a first file of its own changes the
    # folders it reads).
    rt = rt.reloaded()
    if kind.slug == "cadences" and not _apply_cadences(rt, who.organization_id):
        return "cadence-saved-not-applied"
    return kind.notice


def _save_or_refuse(
    request: Request, who: Viewer, rt: Runtime, kind: Kind, name: str, fields: Changed, new: bool
) -> Response:
    text = _normalise(fields.get("text", ""))
    base = fields.get("base", "")
    shown = {"name": name, "text": text, "base": base, "new": new}
    if new and (not editable_name(name) or name == "new"):  # /new is the form itself
        problem = {
            "field": "file name", "line": None,
            "problem": f"{name!r} cannot be a file name here" if name else "missing",
            "fix": "lower-case letters, digits and -, starting with a letter or digit "
            "(at most 64), e.g. monthly-1on1",
        }  # fmt: skip
        return _edit_page(
            request, who, rt, kind, **shown, problems=[problem], summary=[], status=422
        )
    path = _file_path(rt, kind, name)
    with _saving:
        old = path.read_text(encoding="utf-8", errors="replace") if path.exists() else None
        conflict = None
        if new and old is not None:
            conflict = f"{path.name} already exists"
        elif not new and old is None:
            raise NotFound(f"No {kind.singular} file {name}.toml.")
        elif not new and old is not None and base and text_sha256(old) != base:
            conflict = f"{path.name} was changed by someone else since you opened it"
        if conflict:
            problem = {
                "field": "(file)", "line": None, "problem": conflict,
                "fix": "copy your text, open the file again and apply your change to it",
            }  # fmt: skip
            return _edit_page(
                request, who, rt, kind, **shown, problems=[problem], summary=[], status=409
            )
        if old == text:
            return RedirectResponse(
                f"/console/{kind.slug}/{name}?notice=nothing-changed", status_code=303
            )
        checked = kind.check(rt.settings, path.name, text)
        if not checked.ok:
            return _edit_page(
                request, who, rt, kind, **shown, problems=_problems(rt, checked.problems),
                summary=[], status=422,
            )  # fmt: skip
        notice = _save(rt, who, kind, path, text, old)
    return RedirectResponse(f"/console/{kind.slug}/{name}?notice={notice}", status_code=303)


def _add_config_routes(kind: Kind) -> None:
    @router.get(f"/{kind.slug}", name=f"{kind.slug}-list")
    def list_files(request: Request, who: HrViewer, rt: TenantRt) -> Response:
        return _list_page(request, who, rt, kind)

    @router.get(f"/{kind.slug}/new", name=f"{kind.slug}-new")
    def new_file(request: Request, who: AdminViewer, rt: TenantRt) -> Response:
        return _edit_page(
            request, who, rt, kind, name="", text=kind.starter.format(name="new-name"),
            base="", problems=[], summary=[], new=True,
        )  # fmt: skip

    @router.post(f"/{kind.slug}/new", name=f"{kind.slug}-create")
    def create_file(request: Request, who: AdminViewer, fields: Changed, rt: TenantRt) -> Response:
        name = fields.get("name", "").strip()
        return _save_or_refuse(request, who, rt, kind, name, fields, new=True)

    @router.get(f"/{kind.slug}/{{name}}", name=f"{kind.slug}-edit")
    def edit_file(request: Request, name: str, who: HrViewer, rt: TenantRt) -> Response:
        path = _file_path(rt, kind, name)
        if not path.is_file():
            raise NotFound(f"No {kind.singular} file {name}.toml.")
        text, found = _read(rt, kind, path)
        return _edit_page(
            request, who, rt, kind, name=name, text=text, base=text_sha256(text),
            problems=_problems(rt, found.checked.problems), summary=found.summary,
        )  # fmt: skip

    @router.post(f"/{kind.slug}/{{name}}", name=f"{kind.slug}-save")
    def save_file(
        request: Request, name: str, who: AdminViewer, fields: Changed, rt: TenantRt
    ) -> Response:
        return _save_or_refuse(request, who, rt, kind, name, fields, new=False)


for _kind in KINDS.values():
    _add_config_routes(_kind)


# --------------------------------------------------------------------------- email templates


@dataclass
class Preview:
    """A template rendered on its sample data, or why it could not be."""

    rendered: Rendered | None
    problems: list[PartProblem]
    sampled: bool = True  # False: no sample data, so only the syntax was checked

    @property
    def savable(self) -> bool:
        """Every file parses and, when there is sample data, the email renders with it."""
        return not self.problems or not self.sampled  # unsampled: the syntax check passed


def _template(rt: Runtime, name: str) -> str:
    """An existing template's name; anything else (a path, an unknown name) is not found."""
    if not TEMPLATE_NAME.fullmatch(name) or name not in template_names(rt.settings.templates_dir):
        raise NotFound("No email template by that name.")
    return name


def _edited(rt: Runtime, name: str, submitted: dict[str, str]) -> dict[str, str]:
    """The template's files with the submitted texts in place of the saved ones. Only the
    template's own files (and the parts every email needs) can be submitted: any other name
    is ignored, so nothing outside the template's folder is ever read or written."""
    texts = template_files(rt.settings.templates_dir, name)
    for part in texts:
        if part in submitted:
            texts[part] = _normalise(submitted[part])
    return texts


def _digest(texts: dict[str, str]) -> str:
    """What the editor was opened on, to notice a save by someone else in between."""
    return hashlib.sha256(json.dumps(texts, sort_keys=True).encode()).hexdigest()


def preview(rt: Runtime, name: str, texts: dict[str, str]) -> Preview:
    """Render ``texts`` on the template's sample data, in the sandbox real sends use."""
    problems = check_template_texts(rt.settings.templates_dir, name, texts)
    if problems:
        return Preview(None, problems)
    try:
        context = sample_context(name)
    except KeyError:
        return Preview(None, [PartProblem(
            "(template)", None, "there is no sample data for this template, so it cannot be "
            "previewed or sent as a test", "add a sample context to automation/template_samples.py",
        )], sampled=False)  # fmt: skip
    rendered, problems = render_texts(rt.settings.templates_dir, name, texts, context)
    return Preview(rendered, problems)


def _part_problems(rt: Runtime, problems: list[PartProblem]) -> list[dict[str, Any]]:
    return [
        {"part": p.part, "line": p.line, "problem": _shown(rt, p.problem), "fix": _shown(rt, p.fix)}
        for p in problems
    ]


# A template's page allows inline styles: the preview's srcdoc frame inherits the page's
# policy, and emails carry their styles inline (mail clients drop <style> and external
# sheets). Scripts stay forbidden, and the frame is sandboxed (no scripts, a unique origin).
TEMPLATE_HEADERS = {
    **HEADERS,
    "Content-Security-Policy": HEADERS["Content-Security-Policy"]
    + "; style-src 'self' 'unsafe-inline'",
}


def _template_page(
    request: Request,
    who: Viewer,
    rt: Runtime,
    name: str,
    texts: dict[str, str],
    base: str,
    shown: Preview,
    *,
    status: int = 200,
    sent_to: str = "",
    failure: str = "",
) -> Response:
    response = render(
        request, "template_edit.html", who, status, name=name, texts=texts, base=base,
        preview=shown.rendered, problems=_part_problems(rt, shown.problems), sent_to=sent_to,
        failure=failure, parts=PARTS,
    )  # fmt: skip
    response.headers.update(TEMPLATE_HEADERS)
    return response


@router.get("/templates")
def templates_list(request: Request, who: HrViewer, rt: TenantRt) -> Response:
    rows = []
    for name in template_names(rt.settings.templates_dir):
        texts = template_files(rt.settings.templates_dir, name)
        shown = preview(rt, name, texts)
        rows.append(
            {
                "name": name,
                "files": list(texts),
                "subject": shown.rendered.subject if shown.rendered else "",
                "problems": _part_problems(rt, shown.problems),
                "editable": TEMPLATE_NAME.fullmatch(name) is not None,
            }
        )
    return render(request, "templates_list.html", who, rows=rows)


@router.get("/templates/{name}")
def template_page(request: Request, name: str, who: HrViewer, rt: TenantRt) -> Response:
    name = _template(rt, name)
    texts = template_files(rt.settings.templates_dir, name)
    return _template_page(request, who, rt, name, texts, _digest(texts), preview(rt, name, texts))


@router.post("/templates/{name}")
def template_action(
    request: Request, name: str, who: HrViewer, fields: Changed, rt: TenantRt
) -> Response:
    """Preview (HR), save or send a test (HR admins) of the texts in the form."""
    name = _template(rt, name)
    action = fields.get("action", "preview")
    if action in ("save", "test") and not who.is_admin:
        raise Forbidden("Only HR admins change templates or send test emails.")
    submitted = {key[5:]: value for key, value in fields.items() if key.startswith("part:")}
    texts = _edited(rt, name, submitted)
    base = fields.get("base", "")
    shown = preview(rt, name, texts)
    if action == "test":
        if shown.rendered is None:
            return _template_page(request, who, rt, name, texts, base, shown, status=422)
        try:
            _send_test(rt, who, name, texts, shown.rendered)
        except (ProviderError, OSError) as exc:
            failure = f"The mail transport could not send it: {type(exc).__name__}: {exc}"
            return _template_page(
                request, who, rt, name, texts, base, shown, status=502, failure=failure
            )
        return _template_page(request, who, rt, name, texts, base, shown, sent_to=who.email)
    if action != "save":
        return _template_page(request, who, rt, name, texts, base, shown)
    with _saving:
        saved = template_files(rt.settings.templates_dir, name)
        if base and _digest(saved) != base:
            shown.problems.insert(0, PartProblem(
                "(template)", None, "someone else saved this template since you opened it",
                "copy your text, open the template again and apply your change to it",
            ))  # fmt: skip
            return _template_page(request, who, rt, name, texts, base, shown, status=409)
        if not shown.savable:
            return _template_page(request, who, rt, name, texts, base, shown, status=422)
        changed = {part: text for part, text in texts.items() if saved.get(part) != text}
        if not changed:
            return RedirectResponse(
                f"/console/templates/{name}?notice=nothing-changed", status_code=303
            )
        shown_folder = rt.settings.templates_dir / "email" / name  # the effective files
        hashes = {
            f"email/{name}/{part}": {
                "old_sha256": text_sha256(saved[part]) if (shown_folder / part).exists()
                else None,
                "new_sha256": text_sha256(text),
            }
            for part, text in changed.items()
        }  # fmt: skip
        # File by file: the organization's files come first, the rest stays shared.
        target = _target(rt, f"{organizations.TEMPLATES_FOLDER}/email/{name}")
        data: dict[str, Any] = {"template": name, "files": hashes}
        if target.own is not None:
            data["folder"] = target.own
        with transaction(rt.factory) as session:
            # Each file is replaced atomically, and they are written together just before the
            # audit entry commits (a send in between may pair a new subject with an old body).
            target.folder.mkdir(parents=True, exist_ok=True)
            for part, text in changed.items():
                write_text_atomically(target.folder / part, text)
            audit.record(
                session, who.organization_id, actor=who.actor, action="template.saved",
                subject_kind="email_template", subject_id=None, at=rt.now(), data=data,
            )  # fmt: skip
    return RedirectResponse(f"/console/templates/{name}?notice=template-saved", status_code=303)


def _send_test(
    rt: Runtime, who: Viewer, name: str, texts: dict[str, str], rendered: Rendered
) -> None:
    """The rendered sample to the signed-in person's own address (never any other), through
    the service's transport, outside the outbox (as ``automation mail test-send`` sends), then
    audited."""
    now = rt.now()
    # A random part: two tests in the same second are two messages, not one sent twice.
    key = f"template-test:{name}:{who.email}:{now.isoformat()}:{secrets.token_hex(8)}"
    message_id = make_message_id(key, sender_domain(rt))
    test = Rendered(f"[Test] {rendered.subject}", rendered.text, rendered.html)
    raw = build_message(
        test, sender=rt.settings.mail_from, to=[who.email], message_id=message_id, date=now
    )
    mail = OutgoingMail(
        message_id=message_id,
        raw=raw,
        sender=email.utils.parseaddr(rt.settings.mail_from)[1],
        recipients=(who.email,),
    )
    sent = rt.sender.send(mail)
    saved = template_files(rt.settings.templates_dir, name)
    with transaction(rt.factory) as session:
        audit.record(
            session, who.organization_id, actor=who.actor, action="template.test_sent",
            subject_kind="email_template", subject_id=None, at=now,
            data={
                "template": name, "to": who.email, "message_id": sent.message_id,
                "transport": rt.sender.name,
                "edited": {p: text_sha256(t) for p, t in texts.items() if saved.get(p) != t},
            },
        )  # fmt: skip


# --------------------------------------------------------------------------- the preview API


class PreviewIn(BaseModel):
    """The template's texts as edited, by file name (``subject.txt``, ``body.txt``,
    ``body.html``); a file not given is taken as saved."""

    model_config = ConfigDict(extra="forbid")
    parts: dict[Annotated[str, Field(max_length=100)], Annotated[str, Field(max_length=MAX_FORM)]]


class ProblemOut(BaseModel):
    part: str = Field(description="the file: body.html, or another template's path")
    line: int | None = Field(description="the line in that file, when known")
    problem: str
    fix: str


class PreviewOut(BaseModel):
    """The email as it would be sent with the template's sample data; empty texts and the
    problems when it cannot be rendered."""

    subject: str
    text: str
    html: str
    problems: list[ProblemOut]


class RefusedOut(BaseModel):
    detail: str


_session_cookie = APIKeyCookie(
    name=SESSION_COOKIE, scheme_name="ConsoleSession", auto_error=False,
    description="the console's session cookie (sign in at /console/sign-in first)",
)  # fmt: skip


def _json_viewer(rt: Runtime, token: str | None, csrf: str | None) -> Viewer:
    """The signed-in HR person of a JSON call: 401 without a session, 403 for another role
    or without the session's CSRF token. JSON answers, not the pages' HTML."""
    with transaction(rt.factory) as session:
        found = accounts.authenticate(session, token, rt.now())
        if found is None:
            raise HTTPException(401, "Sign in to the console first.")
        account, row = found
        if account.role not in HR:
            raise HTTPException(403, "Templates are for HR admins and partners.")
        if not accounts.csrf_ok(row, csrf):
            raise HTTPException(403, "Missing or wrong X-CSRF-Token header.")
        return Viewer(
            account.id, account.organization_id, account.email, account.name, account.role,
            account.person_id, row.csrf_token,
        )  # fmt: skip


class SignedInFirst(APIRoute):
    """Checks the session before FastAPI reads the body: a caller who is not signed in gets
    401/403 whatever it sends (malformed JSON included), never a hint about the body."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            rt = request.app.state.console_runtime()
            request.state.console_viewer = await run_in_threadpool(
                _json_viewer, rt, request.cookies.get(SESSION_COOKIE),
                request.headers.get("x-csrf-token"),
            )  # fmt: skip
            if int(request.headers.get("content-length") or 0) > MAX_FORM + 4096:
                raise HTTPException(413, "The texts are too large.")
            return await handler(request)

        return guarded


def _signed_in(
    request: Request,
    _session: Annotated[str | None, Security(_session_cookie)],
    _csrf: Annotated[
        str,
        Header(
            alias="X-CSRF-Token",
            description="the session's CSRF token (the page's data-csrf attribute)",
        ),
    ],
) -> Viewer:
    """The viewer :class:`SignedInFirst` checked; the parameters describe what it checks
    (the cookie and the header are both needed: one security scheme and one header)."""
    return request.state.console_viewer  # type: ignore[no-any-return]


api = APIRouter(prefix="/console", tags=["console"], route_class=SignedInFirst)


def install(app: FastAPI) -> None:
    app.include_router(api)


@api.post(
    "/templates/{name}/preview",
    response_model=PreviewOut,
    summary="Render an email template's edited texts on its sample data (HR; console session)",
    responses={
        401: {"model": RefusedOut, "description": "Not signed in"},
        403: {"model": RefusedOut, "description": "Not HR, or no CSRF token"},
        404: {"model": RefusedOut, "description": "No such template"},
    },
)
def preview_json(
    name: Annotated[str, PathParam(max_length=64)],
    texts: PreviewIn,
    who: Annotated[Viewer, Security(_signed_in)],
    response: Response,
    rt: Rt,
) -> PreviewOut:
    rt = rt.tenant(who.organization_id)
    if not TEMPLATE_NAME.fullmatch(name) or name not in template_names(rt.settings.templates_dir):
        raise HTTPException(404, "No email template by that name.")
    shown = preview(rt, name, _edited(rt, name, texts.parts))
    response.headers.update(HEADERS)
    rendered = shown.rendered or Rendered("", "", "")
    return PreviewOut(
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        problems=[ProblemOut(**p) for p in _part_problems(rt, shown.problems)],
    )
