"""Email templates and MIME building.

Every message's words live in ``templates/email/<name>/{subject.txt,body.txt,body.html}``.
They render in a Jinja2 sandbox with ``StrictUndefined`` (a misspelt variable is an error, not
a blank) and HTML autoescape for ``.html`` files, so HR can edit them without being able to
reach into Python or inject markup through a person's name.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.policy
import email.utils
import hashlib
import re
from dataclasses import dataclass
from email import quoprimime
from email.header import Header
from email.message import Message
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    select_autoescape,
)
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from automation.domain.ical import method_of
from automation.errors import ConfigError, ConfigProblem

PARTS = ("subject.txt", "body.txt", "body.html")


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


@lru_cache(maxsize=8)
def environment(templates_dir: Path) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        loader=FileSystemLoader(str(templates_dir)),
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["date"] = lambda value, fmt="%A %d %B %Y, %H:%M": value.strftime(fmt)
    return env


def template_names(templates_dir: Path) -> list[str]:
    root = templates_dir / "email"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def render(templates_dir: Path, name: str, context: dict[str, Any]) -> Rendered:
    """Render the three parts of one email; raise ConfigError naming the template on failure."""
    env = environment(templates_dir)
    parts = []
    for part in PARTS:
        path = f"email/{name}/{part}"
        try:
            parts.append(env.get_template(path).render(context))
        except TemplateError as exc:
            lineno = getattr(exc, "lineno", None)
            where = f"line {lineno}" if lineno else "(template)"
            raise ConfigError(
                ConfigProblem(
                    str(templates_dir / path),
                    where,
                    f"{type(exc).__name__}: {exc.message or exc}",
                    "fix the template or the variable name",
                )
            ) from exc
    subject = " ".join(parts[0].split())  # one line, no header injection through newlines
    return Rendered(subject, parts[1], parts[2])


def render_text(templates_dir: Path, path: str, context: dict[str, Any]) -> str:
    """Render a single non-email template, such as the calendar invite's description."""
    try:
        return environment(templates_dir).get_template(path).render(context)
    except TemplateError as exc:
        raise ConfigError(
            ConfigProblem(str(templates_dir / path), "(template)", f"{type(exc).__name__}: {exc}")
        ) from exc


def check_templates(templates_dir: Path) -> list[ConfigProblem]:
    """Syntax-check every template and report missing parts; renders nothing."""
    env = environment(templates_dir)
    problems = []
    for name in template_names(templates_dir):
        for part in PARTS:
            path = f"email/{name}/{part}"
            if not (templates_dir / path).exists():
                problems.append(
                    ConfigProblem(
                        str(templates_dir / path),
                        "(file)",
                        "missing",
                        f"every email needs {', '.join(PARTS)}",
                    )
                )
                continue
            try:
                env.parse(env.loader.get_source(env, path)[0])  # type: ignore[union-attr]
            except TemplateError as exc:
                problems.append(
                    ConfigProblem(
                        str(templates_dir / path), f"line {getattr(exc, 'lineno', '?')}", str(exc)
                    )
                )
    return problems


def make_message_id(key: str, domain: str) -> str:
    """A deterministic Message-ID: the same outbox key always yields the same id."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return f"<{digest}@{domain}>"


def build_message(
    rendered: Rendered,
    *,
    sender: str,
    to: list[str],
    message_id: str,
    date: dt.datetime,
    reply_to: str | None = None,
    cc: list[str] | None = None,
    in_reply_to: str | None = None,
    references: list[str] | None = None,
    preferences_url: str | None = None,
    calendar: tuple[str, bytes] | None = None,
) -> bytes:
    """A multipart/alternative RFC 5322 message, ready for any transport.

    ``calendar`` is ``(METHOD, ics bytes)`` for an iMIP message (RFC 6047): a third alternative
    ``text/calendar; method=METHOD; charset=UTF-8`` after text/plain and text/html. The method
    parameter must equal the METHOD inside (Outlook rejects a mismatch); base64 keeps the
    CRLF line ends and 75-octet folding of the .ics intact through any relay.
    """
    msg = Message()
    msg["From"] = _addresses([sender])
    msg["To"] = _addresses(to)
    if cc:
        msg["Cc"] = _addresses(cc)
    if reply_to:
        msg["Reply-To"] = _addresses([reply_to])
    msg["Subject"] = _unstructured(rendered.subject)
    msg["Date"] = email.utils.format_datetime(date.astimezone(dt.UTC))
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = " ".join(references)
    # RFC 3834: tell other robots not to auto-reply to us.
    msg["Auto-Submitted"] = "auto-generated"
    if preferences_url:
        msg["List-Unsubscribe"] = f"<{preferences_url}>"
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = "multipart/alternative"
    msg.attach(_text_part(rendered.text, "plain"))
    msg.attach(_text_part(rendered.html, "html"))
    if calendar is not None:
        method, data = calendar
        inside = method_of(data)
        if method.upper() != inside:
            raise ValueError(f"calendar part: method={method} but the data says METHOD:{inside}")
        # Written as clients expect it: the default policy would quote the parameters
        # (method="REQUEST"), which is valid MIME but not what Outlook looks for.
        part = Message()
        part["Content-Type"] = f"text/calendar; method={inside}; charset=UTF-8"
        part["Content-Transfer-Encoding"] = "base64"
        part.set_payload(base64.encodebytes(data).decode("ascii"))
        msg.attach(part)
    # A boundary derived from the Message-ID keeps the whole message byte-for-byte reproducible.
    msg.set_boundary("=_" + hashlib.sha256(message_id.encode()).hexdigest()[:32])
    return msg.as_bytes(policy=_WIRE)


# The message is put together with the compat32 classes from strings encoded here: the
# default policy parses every header it is given into an object and folds it again, which made
# building an email cost more than parsing one.
_WIRE = email.policy.compat32.clone(linesep="\r\n", max_line_length=78)
_MAX_LINE = 78  # octets per line of a 7bit/8bit body (RFC 5322 2.1.1 "SHOULD")


def _addresses(values: list[str]) -> str:
    """An address list, each display name RFC 2047-encoded when it is not ASCII. A newline
    in a name cannot start a header of its own: whitespace runs become one space."""
    pairs = email.utils.getaddresses([" ".join(v.split()) for v in values])
    return ", ".join(email.utils.formataddr(pair, charset="utf-8") for pair in pairs)


def _unstructured(value: str) -> str | Header:
    value = " ".join(value.split())  # one line: no header injection through a newline
    return value if value.isascii() else Header(value, "utf-8", maxlinelen=_MAX_LINE)


def _text_part(text: str, subtype: str) -> Message:
    """A UTF-8 text part, encoded as the default policy's content manager would: 7bit or 8bit
    when every line fits, else quoted-printable (which keeps the words readable in the
    source, where base64 would hide them)."""
    data = text.encode("utf-8")
    lines = data.splitlines()
    part = Message()
    part["Content-Type"] = f'text/{subtype}; charset="utf-8"'
    if max((len(line) for line in lines), default=0) <= _MAX_LINE:
        cte = "7bit" if data.isascii() else "8bit"
        payload = (b"\n".join(lines) + b"\n").decode("ascii", "surrogateescape")
    else:
        cte = "quoted-printable"
        payload = quoprimime.body_encode((b"\n".join(lines) + b"\n").decode("latin-1"))
    part["Content-Transfer-Encoding"] = cte
    part.set_payload(payload)
    return part


# --- editing templates (the HR console) ------------------------------------------------------
#
# The console edits a template's files as text and previews them before anything is written:
# the edited texts are rendered by the same sandboxed environment as a real send (its overlay,
# with the edited files in front of the templates folder, so ``{% extends "email/_layout.html"
# %}`` still finds the shared layout), and every problem names the file and line.

# A template's folder name as the console accepts it: never a path.
TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True)
class PartProblem:
    """One problem of an edited template: the file (``body.html``; the path under the templates
    folder when it is another file, such as ``email/_layout.html``), the line when known."""

    part: str
    line: int | None
    problem: str
    fix: str = ""


def template_files(templates_dir: Path, name: str) -> dict[str, str]:
    """The texts of a template's files by file name: every plain file its folder holds, and
    each of :data:`PARTS` (empty when missing, so an editor can create it)."""
    folder = templates_dir / "email" / name
    files = {part: "" for part in PARTS}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file() and _FILE_NAME.fullmatch(path.name):
            files[path.name] = path.read_text(encoding="utf-8", errors="replace")
    return files


class _EditedLoader(BaseLoader):
    """The edited files of one template, under the names (and file names, for tracebacks)
    the templates folder gives them."""

    def __init__(self, templates_dir: Path, name: str, texts: dict[str, str]):
        self.sources = {f"email/{name}/{part}": text for part, text in texts.items()}
        self.templates_dir = templates_dir

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Any]:
        if template not in self.sources:
            raise TemplateNotFound(template)
        return self.sources[template], str(self.templates_dir / template), lambda: False


def _edited_environment(
    templates_dir: Path, name: str, texts: dict[str, str]
) -> ImmutableSandboxedEnvironment:
    """The real sends' sandbox (same filters, autoescape, StrictUndefined), reading the edited
    texts first; nothing compiled from them is cached."""
    base = environment(templates_dir)
    loader = ChoiceLoader([_EditedLoader(templates_dir, name, texts), base.loader])  # type: ignore[list-item]
    return base.overlay(loader=loader, cache_size=0)  # type: ignore[return-value]


def _part_of(templates_dir: Path, name: str, file_name: str | None) -> str:
    """How a problem names the file a template error points at."""
    if not file_name:
        return "(template)"
    try:
        relative = Path(file_name).relative_to(templates_dir).as_posix()
    except ValueError:
        relative = file_name
    prefix = f"email/{name}/"
    return relative[len(prefix) :] if relative.startswith(prefix) else relative


def _problem(templates_dir: Path, name: str, part: str, exc: Exception) -> PartProblem:
    """A template failure as a problem: a syntax error carries its file and line; an error
    while rendering (an undefined variable, a refused attribute) is located through the
    traceback, which Jinja rewrites to point at template lines."""
    if isinstance(exc, TemplateSyntaxError):
        where = _part_of(templates_dir, name, exc.filename) if exc.filename else part
        return PartProblem(
            where, exc.lineno, f"{type(exc).__name__}: {exc.message}", "correct the syntax"
        )
    line, where = None, part
    inside = str(templates_dir) + "/"
    tb = exc.__traceback__
    while tb is not None:  # the innermost template frame is where it failed
        file_name = tb.tb_frame.f_code.co_filename
        if file_name.startswith(inside):
            line, where = tb.tb_lineno, _part_of(templates_dir, name, file_name)
        tb = tb.tb_next
    message = exc.message if isinstance(exc, TemplateError) and exc.message else str(exc)
    fix = (
        "use only the variables the email is given; the sandbox refuses Python's internals"
        if isinstance(exc, SecurityError)
        else "fix the template or the variable name"
    )
    return PartProblem(where, line, f"{type(exc).__name__}: {message}", fix)


def check_template_texts(
    templates_dir: Path, name: str, texts: dict[str, str]
) -> list[PartProblem]:
    """What :func:`check_templates` checks, on edited texts: every part present, every file
    parses. Renders nothing."""
    env = _edited_environment(templates_dir, name, texts)
    problems = []
    for part in PARTS:
        if part not in texts and not (templates_dir / "email" / name / part).exists():
            problems.append(
                PartProblem(part, None, "missing", f"every email needs {', '.join(PARTS)}")
            )
        elif part in texts and not texts[part].strip():
            problems.append(PartProblem(part, None, "empty", "every part needs some text"))
    for part, text in texts.items():
        try:
            env.parse(
                text,
                name=f"email/{name}/{part}",
                filename=str(templates_dir / "email" / name / part),
            )
        except TemplateSyntaxError as exc:
            problems.append(_problem(templates_dir, name, part, exc))
    return problems


def render_texts(
    templates_dir: Path, name: str, texts: dict[str, str], context: dict[str, Any]
) -> tuple[Rendered | None, list[PartProblem]]:
    """:func:`render` on edited texts (any part not given is read from the folder): the email
    as it would be sent with ``context``, or None and every part's problem. Any failure of a
    template, not only Jinja's own errors, is a problem here: the text is someone's draft."""
    env = _edited_environment(templates_dir, name, texts)
    parts: list[str] = []
    problems: list[PartProblem] = []
    for part in PARTS:
        try:
            parts.append(env.get_template(f"email/{name}/{part}").render(context))
        except TemplateNotFound as exc:
            problems.append(
                PartProblem(
                    part, None, f"missing: {exc.name}", f"every email needs {', '.join(PARTS)}"
                )
            )
        except Exception as exc:  # noqa: BLE001 - a draft's failure is shown to its author
            problems.append(_problem(templates_dir, name, part, exc))
    if problems:
        return None, problems
    return Rendered(" ".join(parts[0].split()), parts[1], parts[2]), []
