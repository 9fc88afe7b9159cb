"""The `automation` command."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from automation.errors import AutomationError, ConfigError, ImportRejected
from automation.terminal import Progress, print_json, print_table, progress

EX_OK, EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_TEMPFAIL, EX_CONFIG = 0, 64, 65, 66, 75, 78
EX_NOPERM = 77  # sysexits.h: the reader may not see what they asked for


def _progress(
    args: argparse.Namespace, description: str, unit: str
) -> contextlib.AbstractContextManager[Progress]:
    """A progress bar on stderr when it is a terminal (see automation.terminal), unless
    --quiet or --no-progress, or -v, whose log lines would tear it."""
    quiet = getattr(args, "quiet", False) or getattr(args, "no_progress", False)
    return progress(description, unit, enabled=not (quiet or args.verbose))


def _note(args: argparse.Namespace, text: str) -> None:
    """A remark for the person at the terminal, on stderr; --quiet drops it."""
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def _time(value: Any) -> Any:
    """An ISO 8601 string (as some services return times) as a datetime, for a table cell."""
    if isinstance(value, str) and value:
        import datetime as dt

        with contextlib.suppress(ValueError):
            return dt.datetime.fromisoformat(value)
    return value


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The deployment's settings: as main() resolved them for a command that acts for an
    organization (``organization`` is the deployment's own slug, whatever
    AUTOMATION_ORGANIZATION says), else as the file and the environment give them."""
    resolved = getattr(args, "deployment_settings", None)
    if resolved is not None:
        return resolved
    from automation.settings import load_settings

    return load_settings(args.config)


# --- which organization a command acts for (issue 10): `--org SLUG` -------------------------
#
# A command of one organization (people, calendars, mail, PIPs, goals, privacy, jobs,
# reports, templates, config check, ...) runs with that organization's tenant runtime
# (Runtime.tenant: sessions scoped to it; its own settings, adapters, cadences and templates
# from config/orgs/<slug>/; its secrets). main() resolves the organization once, before the
# command runs: `--org SLUG`, else AUTOMATION_ORGANIZATION when it names a client, else the
# deployment's own (the `organization` setting). Commands of the deployment refuse --org.

EX_ORG = 2  # as argparse's usage errors: the command line names no organization it can act for
ORGANIZATION_VARIABLE = "AUTOMATION_ORGANIZATION"


class UnknownOrganization(AutomationError):
    """--org (or AUTOMATION_ORGANIZATION) names no organization on record."""


@dataclass(frozen=True)
class Target:
    """The organization a command acts for, as main() resolved it."""

    slug: str
    deployment: str  # the deployment's own organization's slug
    origin: str  # "--org", AUTOMATION_ORGANIZATION or "the deployment's organization"
    organization_id: int | None = None  # None: not looked up, or the deployment's not created yet
    name: str | None = None  # its organizations row's name, when looked up

    @property
    def own(self) -> bool:
        return self.slug == self.deployment


def _organizations(settings) -> dict[str, tuple[int, str]]:  # type: ignore[no-untyped-def]
    """Every organization on record, slug -> (id, name), read in the system scope; empty when
    the database has no organizations table yet (never migrated: nothing to act for)."""
    from sqlalchemy import inspect, select
    from sqlalchemy.exc import SQLAlchemyError

    from automation.db import make_engine
    from automation.models import Organization

    engine = make_engine(settings.database)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(Organization.__tablename__):
                return {}
            rows = connection.execute(
                select(Organization.slug, Organization.id, Organization.name)
            ).all()
    except SQLAlchemyError as exc:
        raise AutomationError(
            f"cannot read the organizations from the database ({type(exc).__name__}), "
            "needed to know which organization the command acts for"
        ) from None
    finally:
        engine.dispose()
    return {slug: (organization_id, name) for slug, organization_id, name in rows}


def _resolve(args: argparse.Namespace, requested: str | None, *, variable: bool = True) -> Target:
    """The organization a command acts for; keeps the deployment's settings on ``args`` (for
    :func:`_settings`). Reads the database only when a slug other than the deployment's own
    is in play.

    AUTOMATION_ORGANIZATION is also the ``organization`` setting (how `run` and the workers
    learn the deployment's own organization). Here it names a client organization when it
    differs from the settings file's ``organization`` and that one exists in the database;
    otherwise it is the deployment's own slug, as it always was (a deployment that names its
    organization only in the environment). ``variable=False``: the command acts for the
    deployment's own organization whatever the variable says."""
    from automation.settings import load_settings

    settings = load_settings(args.config)
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in (ORGANIZATION_VARIABLE, ORGANIZATION_VARIABLE + "_FILE")
    }
    from_file = load_settings(args.config, environ=environ).organization
    known: dict[str, tuple[int, str]] | None = None
    client: str | None = None
    if settings.organization != from_file:
        known = _organizations(settings)
        if from_file in known:  # the deployment's own is on record: the variable is a client
            client = settings.organization
            settings = settings.with_(organization=from_file)
    args.deployment_settings = settings
    slug, origin = settings.organization, "the deployment's organization"
    if requested is not None:
        slug, origin = requested, "--org"
    elif client is not None and variable:
        slug, origin = client, ORGANIZATION_VARIABLE
    if slug == settings.organization and known is None:
        return Target(slug, settings.organization, origin)  # its id is looked up when needed
    if known is None:
        known = _organizations(settings)
    found = known.get(slug)
    if found is None and slug != settings.organization:
        listed = ", ".join(sorted(known)) or "none"
        raise UnknownOrganization(
            f"no organization {slug!r} (named by {origin}; known: {listed}): "
            f"`automation org list` shows them, `automation org create {slug} --name NAME` "
            "adds one"
        )
    if found is None:
        return Target(slug, settings.organization, origin)
    return Target(slug, settings.organization, origin, found[0], found[1])


# Commands of the deployment, not of one organization, with the reason an explicit --org is
# refused. AUTOMATION_ORGANIZATION keeps its meaning there: the `organization` setting.
_ALL_ORGS_BY_SLUG = "the org commands name the organization as their SLUG argument"
_DEPLOYMENT_COMMANDS: dict[str, str] = {
    "cmd_demo": "the demo runs its own organization on its own files",
    "cmd_run": "the service works for every organization",
    "cmd_web": "the web app serves every organization",
    "cmd_worker": "the workers run every organization's tasks",
    "cmd_ingest_mail": "a message is stored as the organization its signed reply address names",
    "cmd_db_upgrade": "the database is the deployment's",
    "cmd_audit_verify": "it checks every organization's audit chain",
    "cmd_org_create": _ALL_ORGS_BY_SLUG,
    "cmd_org_list": "it lists every organization",
    "cmd_org_config": _ALL_ORGS_BY_SLUG,
    "cmd_org_secret_set": _ALL_ORGS_BY_SLUG,
    "cmd_org_secret_unset": _ALL_ORGS_BY_SLUG,
    "cmd_org_secret_list": _ALL_ORGS_BY_SLUG,
    "cmd_org_secret_rotate": "it re-encrypts every organization's secrets",
    "cmd_console_account_grant": "a consultant's account is in the deployment's organization; "
    "name the client after the command: `console account grant EMAIL --org SLUG`",
}
# Of those, the ones that still need the deployment's own organization right (read through
# the database as for the commands of one organization), so that AUTOMATION_ORGANIZATION
# naming a client is not taken for the deployment's own: grant and revoke act in it.
_RESOLVED_DEPLOYMENT_COMMANDS = frozenset(
    {
        "cmd_audit_verify",
        "cmd_org_create",
        "cmd_org_list",
        "cmd_org_config",
        "cmd_org_secret_set",
        "cmd_org_secret_unset",
        "cmd_org_secret_list",
        "cmd_org_secret_rotate",
        "cmd_console_account_grant",
    }
)
_IGNORES_ORG = frozenset({"cmd_completion"})  # the same shell code for every organization
# The service's own processes: AUTOMATION_ORGANIZATION naming a client there would make the
# client the deployment's organization (the `organization` setting), so it is refused.
_SERVICE_COMMANDS = frozenset({"cmd_run", "cmd_worker", "cmd_web", "cmd_ingest_mail"})


def _command_words(args: argparse.Namespace) -> str:
    words = [getattr(args, key, None) for key in ("command", "sub", "action")]
    return " ".join(w for w in words if isinstance(w, str))


def _choose_organization(args: argparse.Namespace) -> int | None:
    """Resolve the organization the command acts for (main() calls it once, before the
    command); an exit code, with the reason printed, when it cannot run for it."""
    name = getattr(args.func, "__name__", "")
    requested = getattr(args, "org_slug", None)
    if name in _IGNORES_ORG:
        return None
    if name in _DEPLOYMENT_COMMANDS:
        if requested is not None:
            print(
                f"automation: --org does not apply to `automation {_command_words(args)}`: "
                f"{_DEPLOYMENT_COMMANDS[name]}",
                file=sys.stderr,
            )
            return EX_ORG
        if name in _RESOLVED_DEPLOYMENT_COMMANDS:
            args.target = _resolve(args, None, variable=False)
        elif name in _SERVICE_COMMANDS:
            try:
                target = _resolve(args, None)
            except UnknownOrganization as exc:
                print(f"automation: {exc}", file=sys.stderr)
                return EX_ORG
            if target.origin == ORGANIZATION_VARIABLE:
                print(
                    f"automation: {ORGANIZATION_VARIABLE} names the client organization "
                    f"{target.slug!r}, but `automation {_command_words(args)}` "
                    f"{_DEPLOYMENT_COMMANDS[name]} as the deployment's own "
                    f"({target.deployment!r}): unset {ORGANIZATION_VARIABLE} for it (each "
                    "client is served from its config/orgs/<slug>/ folder)",
                    file=sys.stderr,
                )
                return EX_ORG
        return None
    if requested is not None and not requested.strip():
        print("automation: --org needs an organization's slug", file=sys.stderr)
        return EX_ORG
    try:
        args.target = _resolve(args, requested.strip() if requested else None)
    except UnknownOrganization as exc:
        print(f"automation: {exc}", file=sys.stderr)
        return EX_ORG
    except ConfigError:
        if name == "cmd_config_check":
            return None  # the check reports what is wrong with the settings itself
        raise
    return None


def _target(args: argparse.Namespace) -> Target:
    """The organization the command acts for (the deployment's own when main() did not
    resolve one: a command called directly)."""
    found = getattr(args, "target", None)
    if found is None:
        found = args.target = _resolve(args, getattr(args, "org_slug", None))
    return found  # type: ignore[no-any-return]


def _org_settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The settings of the organization the command acts for, without its secrets: its
    folder's view of cadences, templates, PIPs, roles and privacy, for the commands that
    read configuration only. No database read for the deployment's own."""
    from automation.organizations import tenant_settings

    target = _target(args)
    return tenant_settings(_settings(args), target.slug, {}, name=target.name)


def _for_org(args: argparse.Namespace, data: Any) -> Any:
    """A --json object with the organization the command acted for: ``organization``, its
    slug (``organization_slug`` where the object has an ``organization`` of its own, as the
    consistency report has: its name)."""
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = asdict(data)
    slug = _target(args).slug
    if "organization" in data:
        return {**data, "organization_slug": slug}
    return {"organization": slug, **data}


def _runtime(args: argparse.Namespace, *, in_process: bool):  # type: ignore[no-untyped-def]
    """Build the runtime; the broker module reads AUTOMATION_BROKER_URL, so set it first."""
    settings = _settings(args)
    if in_process:
        os.environ.setdefault("AUTOMATION_BROKER_URL", settings.broker_url)
    from automation.runtime import build_runtime, install
    from workers.actors import attach

    rt = attach(build_runtime(settings))
    install(rt)
    return rt


def cmd_demo(args: argparse.Namespace) -> int:
    os.environ["AUTOMATION_BROKER_URL"] = "stub"  # the demo always runs its worker in-process
    from automation.demo import format_summary, run_demo

    with _progress(args, "simulating", "day") as report:
        summary = run_demo(
            _settings(args), Path(args.out), weeks=args.weeks, seed=args.seed, progress=report,
            clients=args.clients,
        )  # fmt: skip
    if args.json:
        print_json(summary)
    else:
        print(format_summary(summary))
    return EX_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Tick and, on the embedded default, an in-process worker, until SIGINT/SIGTERM."""
    import dramatiq

    from automation.services.loop import bootstrap, tick
    from workers.broker import QUEUE, broker

    rt = _runtime(args, in_process=True)
    bootstrap(rt)
    stub = rt.settings.broker_url.startswith("stub")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    web = None
    if args.port and not args.once:
        web = _serve_in_thread(rt, args.host, args.port, verbose=args.verbose)
        if web is None:
            print(
                f"automation run: could not serve the web app on {args.host}:{args.port} "
                "(is the port in use?); choose another with --port, or --port 0 to run "
                "without webhooks",
                file=sys.stderr,
            )
            return EX_CONFIG
    worker = dramatiq.Worker(broker, worker_threads=args.threads) if stub else None
    if worker:
        worker.start()
    print(
        f"automation: running on {rt.settings.database.split('@')[-1]} "
        f"({'in-process worker' if stub else 'broker ' + rt.settings.broker_url.split('@')[-1]})"
        + (f"; web app on http://{_netloc(args.host, args.port)}" if web else "")
        + "; Ctrl-C stops",
        file=sys.stderr,
    )
    try:
        while not stopping:
            result = tick(rt)
            if worker:
                broker.join(QUEUE)
                worker.join()
            if args.once:
                # Work done in this tick can make more work due at once (planning creates
                # the invites): on the in-process worker, keep going until nothing is due.
                rounds = 1
                while worker and result.enqueued and rounds < 20:
                    result, rounds = tick(rt), rounds + 1
                    broker.join(QUEUE)
                    worker.join()
                print(f"done after {rounds} tick(s)")
                break
            _between_ticks(rt, lambda: stopping)
    finally:
        if web:
            server, thread = web
            server.should_exit = True
            thread.join(timeout=15)
        if worker:
            worker.stop()
    return EX_OK


def _between_ticks(rt: Any, stopping: Any) -> None:
    """Wait ``tick_seconds`` before the next tick. An IMAP inbox with IDLE waits on the
    server instead, in short slices so a signal still stops the loop quickly, and cuts the
    wait short when mail arrives."""
    idle = getattr(rt.inbox, "supports_idle", False) and hasattr(rt.inbox, "wait")
    deadline = time.monotonic() + rt.settings.tick_seconds
    while not stopping() and time.monotonic() < deadline:
        if idle:
            try:
                if rt.inbox.wait(min(5.0, max(deadline - time.monotonic(), 0.1))):
                    return  # something arrived: tick now
            except Exception:  # noqa: BLE001 - IDLE is an optimisation; fall back to sleeping
                idle = False
        else:
            time.sleep(0.1)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _uvicorn_config(app: Any, host: str, port: int, *, verbose: bool) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=1,
        lifespan="off",
        log_level="info" if verbose else "warning",
        access_log=verbose,
        server_header=False,
        # Trust X-Forwarded-For/-Proto only from a reverse proxy on this machine.
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1,::1",
    )


def _serve_in_thread(rt, host: str, port: int, *, verbose: bool):  # type: ignore[no-untyped-def]
    """Start uvicorn in a daemon thread on ``rt``; return (server, thread) once it listens,
    or None if it could not start (e.g. the port is taken)."""
    import threading

    import uvicorn

    from automation.web import create_app

    server = uvicorn.Server(_uvicorn_config(create_app(rt), host, port, verbose=verbose))
    thread = threading.Thread(target=server.run, name="automation-web", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        server.should_exit = True
        thread.join(timeout=5)
        return None
    return server, thread


def cmd_web(args: argparse.Namespace) -> int:
    """Serve the web app (webhooks, /healthz) with uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    from automation.db import migrate
    from automation.web import create_app

    rt = _runtime(args, in_process=True)
    migrate(rt.engine)
    if rt.settings.broker_url.startswith("stub"):
        # No worker lives in this process: tasks wait in the database for the tick of
        # `automation run`, instead of piling up in an in-memory queue nobody reads.
        rt.enqueue = lambda task_id: None
    print(
        f"automation: web app on http://{_netloc(args.host, args.port)} "
        f"(database {rt.settings.database.split('@')[-1]}, public base_url "
        f"{rt.settings.base_url}); Ctrl-C stops",
        file=sys.stderr,
    )
    # uvicorn handles SIGINT/SIGTERM itself, shuts down gracefully, then re-raises the signal
    # to the handler that was installed before it: make that one harmless, so we exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    server = uvicorn.Server(
        _uvicorn_config(create_app(rt), args.host, args.port, verbose=args.verbose)
    )
    with contextlib.suppress(SystemExit):  # uvicorn's "could not start" (logged above)
        server.run()
    if not server.started:
        print(
            f"automation web: could not serve on {args.host}:{args.port} (is the port in use?)",
            file=sys.stderr,
        )
        return EX_CONFIG
    return EX_OK


def _port(text: str, lowest: int = 0) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not lowest <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number {lowest}-65535, got {port}")
    return port


def _listen_port(text: str) -> int:
    return _port(text, lowest=1)


def cmd_worker(args: argparse.Namespace) -> int:
    """dramatiq's own worker process manager, on the configured broker."""
    settings = _settings(args)
    if settings.broker_url.startswith("stub"):
        print(
            "automation worker needs a real broker: set AUTOMATION_BROKER_URL to redis://… or "
            "amqp://… (on the embedded default `automation run` has the worker built in)",
            file=sys.stderr,
        )
        return EX_CONFIG
    os.environ["AUTOMATION_BROKER_URL"] = settings.broker_url
    from dramatiq.cli import main as dramatiq_main

    # Loaded once, here: dramatiq forks its worker processes from this one, so they start with
    # the package imported (in milliseconds instead of a second or more each, and sharing
    # those pages). Nothing here opens a connection or starts a thread before the fork.
    import workers.actors  # noqa: F401

    sys.argv = [
        "dramatiq",
        "workers.actors",
        "--processes",
        str(args.processes),
        "--threads",
        str(args.threads),
        "--queues",
        "automation",
    ]
    return int(dramatiq_main() or 0)


def cmd_ingest_mail(args: argparse.Namespace) -> int:
    """Read one RFC 5322 message on stdin, as an MTA pipe transport hands it over.

    Exit 0 once the message is stored (recorded or quarantined); 75 (EX_TEMPFAIL) when it
    could not be stored, so the MTA keeps it and tries again.
    """
    raw = sys.stdin.buffer.read()
    try:
        rt = _runtime(args, in_process=True)
        from automation.services.inbound import store_inbound
        from automation.services.loop import bootstrap

        bootstrap(rt)
        rt.enqueue = lambda task_id: None  # processed right here, below
        stored = store_inbound(rt, raw, source="pipe")
    except Exception as exc:  # noqa: BLE001 - any failure to store means "try again later"
        print(
            f"automation ingest-mail: could not store the message ({type(exc).__name__}: "
            f"{exc}); exiting 75 so the MTA retries",
            file=sys.stderr,
        )
        return EX_TEMPFAIL
    from automation.services.tasks import run_task

    try:
        result = run_task(rt, stored.task_id) if not stored.duplicate else "duplicate"
    except Exception as exc:  # noqa: BLE001 - stored; the tick will retry the processing
        result = f"stored; processing deferred ({type(exc).__name__})"
    if args.json:
        print_json(
            {"inbound_id": stored.inbound_id, "duplicate": stored.duplicate, "result": result}
        )
    else:
        print(f"stored inbound message {stored.inbound_id}: {result}")
    return EX_OK


def _read_input(path: str) -> bytes:
    return sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()


_NUMBER_PREFIX = re.compile(r"^\s*\d{1,2}\s*[.)]\s+")


def _questions(args: argparse.Namespace) -> list[str]:
    """--questions FILE (one a line; "1." prefixes and "#" comments ignored), else the first
    cadence's follow-up questions."""
    if args.questions:
        lines = Path(args.questions).read_text(encoding="utf-8").splitlines()
        return [
            _NUMBER_PREFIX.sub("", line).strip()
            for line in lines
            if line.strip() and not line.lstrip().startswith("#")
        ]
    from automation.config import load_cadences

    cadences = load_cadences(_org_settings(args))
    return list(cadences[0].questions) if cadences else []


def parse_reply_json(raw: bytes, questions: list[str]) -> dict[str, Any]:
    """What `automation parse-reply --json` prints: everything that would be recorded."""
    from automation.replies import parse_reply
    from automation.services.inbound import delivery_report

    result = parse_reply(raw, questions)
    parsed, extraction = result.email, result.extraction
    failing = [list(f.addresses) for f in delivery_report(raw).failures] if result.bounce else []
    return {
        "from": parsed.from_address,
        "to": list(parsed.to),
        "subject": parsed.subject,
        "message_id": parsed.message_id,
        "in_reply_to": list(parsed.in_reply_to),
        "date": parsed.date.isoformat() if parsed.date else None,
        "auto_reply": result.auto_reply,
        "bounce": result.bounce,
        "failing_recipients": [a[0] for a in failing],
        "would_record": not (result.auto_reply or result.bounce),
        "questions": questions,
        "reply_text": result.reply_text,
        "answers": {str(n): text for n, text in sorted(extraction.answers.items())},
        "rating": extraction.rating,
        "action_items": [
            {"text": a.text, "owner": a.owner, "due": a.due.isoformat() if a.due else None}
            for a in extraction.action_items
        ],
        "commands": [{"name": c.name, "argument": c.argument} for c in extraction.commands],
        "notes": extraction.notes,
        "defects": list(parsed.defects),
    }


def cmd_parse_reply(args: argparse.Namespace) -> int:
    """Show what a raw message would become; touches no database."""
    try:
        raw = _read_input(args.file)
    except OSError as exc:
        print(f"automation parse-reply: cannot read {args.file}: {exc}", file=sys.stderr)
        return EX_NOINPUT
    try:
        questions = _questions(args)
    except OSError as exc:
        print(f"automation parse-reply: cannot read {args.questions}: {exc}", file=sys.stderr)
        return EX_NOINPUT
    out = parse_reply_json(raw, questions)
    if args.json:
        print(json.dumps(_for_org(args, out), ensure_ascii=False))
        return EX_OK
    if out["bounce"]:
        kind = "bounce: never recorded" + (
            f"; failing: {', '.join(out['failing_recipients'])}"
            if out["failing_recipients"]
            else ""
        )
    elif out["auto_reply"]:
        kind = "automatic reply: never recorded"
    else:
        kind = "a person's reply: would be recorded if its token and sender check out"
    lines = [
        f"From:         {out['from'] or '(none)'}",
        f"To:           {', '.join(out['to']) or '(none)'}",
        f"Subject:      {out['subject']}",
        f"Date:         {out['date'] or '(none)'}",
        f"Message-ID:   {out['message_id'] or '(none)'}",
        f"Kind:         {kind}",
        "",
        "Reply text:",
        *(f"  | {line}".rstrip() for line in (out["reply_text"] or "(empty)").splitlines()),
        "",
        "Answers:",
    ]
    for number, text in out["answers"].items():
        n = int(number)
        question = questions[n - 1] if 0 < n <= len(questions) else ""
        lines.append(f"  {number}. {question}".rstrip())
        lines += [f"     {line}" for line in (text or "(no answer)").splitlines()]
    if not out["answers"]:
        lines.append("  (none)")
    lines.append(f"Rating:       {out['rating'] if out['rating'] is not None else '(none)'}")
    lines.append("Action items:")
    for item in out["action_items"]:
        meta = ", ".join(
            x for x in (item["owner"], f"by {item['due']}" if item["due"] else "") if x
        )
        lines.append(f"  - {item['text']}" + (f" ({meta})" if meta else ""))
    if not out["action_items"]:
        lines.append("  (none)")
    commands = [f"#{c['name']} {c['argument']}".strip() for c in out["commands"]]
    lines.append(f"Commands:     {', '.join(commands) or '(none)'}")
    if out["notes"]:
        lines += ["Notes:", *(f"  {line}" for line in out["notes"].splitlines())]
    if out["defects"]:
        lines.append(f"Defects:      {'; '.join(out['defects'])}")
    print("\n".join(lines))
    return EX_OK


def _system_runtime(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The deployment's runtime on the configured database (system scope), without a broker,
    for the few commands that span every organization."""
    from automation import services  # noqa: F401  (registers the task handlers)
    from automation.db import migrate
    from automation.runtime import build_runtime

    rt = build_runtime(_settings(args))
    migrate(rt.engine)
    return rt


def _inbox_runtime(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The runtime of the organization the command acts for (Runtime.tenant: scoped sessions,
    its own settings, adapters, cadences, templates and secrets), on the configured database
    without a broker: operator commands run here. The deployment's own organization before
    it exists gets the deployment's runtime (and _org() says to create it)."""
    rt = _system_runtime(args)
    try:
        found = _target_id(args, rt)
    except LookupError:
        return rt
    try:
        return rt.tenant(found)
    except BaseException:
        rt.engine.dispose()
        raise


def _target_id(args: argparse.Namespace, rt) -> int:  # type: ignore[no-untyped-def]
    """The id of the organization the command acts for (a LookupError if not on record)."""
    found = _target(args).organization_id
    if found is not None:
        return found
    from automation.services.inbound import organization_id

    with rt.factory() as session:
        return organization_id(session, _target(args).slug)


def _org(rt) -> int:  # type: ignore[no-untyped-def]
    if rt.organization_id is not None:
        return rt.organization_id  # type: ignore[no-any-return]
    from automation.services.inbound import organization_id

    with rt.factory() as session:
        return organization_id(session, rt.settings.organization)


def _when(moment) -> str:  # type: ignore[no-untyped-def]
    return f"{moment:%Y-%m-%d %H:%M:%SZ}" if moment else "-"


def cmd_inbox_list(args: argparse.Namespace) -> int:
    """Messages kept without a record, newest first, each with its reason."""
    from sqlalchemy import select

    from automation.models import NOT_RECORDED, InboundMessage

    rt = _inbox_runtime(args)
    try:
        org = _org(rt)
        states = [args.state] if args.state else list(NOT_RECORDED)
        with rt.factory() as session:
            rows = list(
                session.scalars(
                    select(InboundMessage)
                    .where(InboundMessage.organization_id == org, InboundMessage.state.in_(states))
                    .order_by(InboundMessage.received_at.desc(), InboundMessage.id.desc())
                    .limit(args.limit)
                )
            )
    finally:
        rt.engine.dispose()
    if args.json:
        print_json(
            [
                {
                    "id": m.id,
                    "received_at": m.received_at,
                    "from": m.from_address,
                    "subject": m.subject,
                    "state": m.state,
                    "reason": m.quarantine_reason,
                    "source": m.source,
                    "sha256": m.sha256,
                    "size": m.size,
                }
                for m in rows
            ]
        )
        return EX_OK
    print_table(
        ["id", "received_at", "from", "state", "reason"],
        [(m.id, m.received_at, m.from_address, m.state, m.quarantine_reason) for m in rows],
        empty="no messages kept without a record",
    )
    return EX_OK


def cmd_inbox_show(args: argparse.Namespace) -> int:
    from automation.models import InboundMessage
    from automation.replies import decode_message

    rt = _inbox_runtime(args)
    try:
        org = _org(rt)
        with rt.factory() as session:
            message = session.get(InboundMessage, args.id)
            if message is None or message.organization_id != org:
                print(f"no inbound message {args.id} in this organization", file=sys.stderr)
                return EX_DATAERR
            session.expunge(message)
    finally:
        rt.engine.dispose()
    if args.raw:
        sys.stdout.buffer.write(message.raw)
        sys.stdout.buffer.flush()
        return EX_OK
    parsed = decode_message(message.raw)
    if args.json:
        print_json(
            _for_org(
                args,
                {
                    "id": message.id,
                    "state": message.state,
                    "reason": message.quarantine_reason,
                    "received_at": message.received_at,
                    "source": message.source,
                    "processed_at": message.processed_at,
                    "sha256": message.sha256,
                    "size": message.size,
                    "occurrence_id": message.occurrence_id,
                    "pip_review_id": message.pip_review_id,
                    "released_at": message.released_at,
                    "attributed_to": message.attributed_to,
                    "from": parsed.from_address,
                    "from_name": parsed.from_name,
                    "to": list(parsed.to),
                    "subject": parsed.subject,
                    "date": parsed.date,
                    "message_id": parsed.message_id,
                    "in_reply_to": list(parsed.in_reply_to),
                    "auto_reply": bool(parsed.auto_reply),
                    "bounce": bool(parsed.bounce),
                    "defects": list(parsed.defects),
                    "text": parsed.text,
                },
            )
        )
        return EX_OK
    linked = (
        f"occurrence {message.occurrence_id}"
        if message.occurrence_id
        else f"PIP review {message.pip_review_id}"
        if message.pip_review_id
        else "-"
    )
    automatic = "bounce" if parsed.bounce else "auto-reply" if parsed.auto_reply else "no"
    lines = [
        f"Inbound message {message.id}",
        f"State:        {message.state}",
        f"Reason:       {message.quarantine_reason or '-'}",
        f"Received:     {_when(message.received_at)} (via {message.source})",
        f"Processed:    {_when(message.processed_at)}",
        f"SHA-256:      {message.sha256}",
        f"Size:         {message.size} bytes",
        f"Linked to:    {linked}",
    ]
    if message.released_at:
        lines.append(
            f"Released:     {_when(message.released_at)}"
            + (f", attributed to {message.attributed_to}" if message.attributed_to else "")
        )
    lines += [
        "",
        f"From:         {parsed.from_name + ' ' if parsed.from_name else ''}"
        f"<{parsed.from_address or '?'}>",
        f"To:           {', '.join(parsed.to) or '-'}",
        f"Subject:      {parsed.subject or '-'}",
        f"Date:         {parsed.date.isoformat() if parsed.date else '-'}",
        f"Message-ID:   {parsed.message_id or '-'}",
        f"In-Reply-To:  {' '.join(parsed.in_reply_to) or '-'}",
        f"Automatic:    {automatic}",
    ]
    if parsed.defects:
        lines.append(f"Defects:      {'; '.join(parsed.defects)}")
    lines += ["", "--- decoded text ---", parsed.text]
    print("\n".join(lines))
    return EX_OK


def cmd_inbox_release(args: argparse.Namespace) -> int:
    import getpass

    from automation.services.inbound import ReleaseRefused, release
    from automation.services.tasks import run_task

    if args.as_address and not (args.reason or "").strip():
        print("--as needs --reason: say why this message is attributed", file=sys.stderr)
        return EX_USAGE
    from automation.models import InboundMessage

    operator = args.by or getpass.getuser()
    rt = _inbox_runtime(args)
    try:
        task_id = release(
            rt,
            args.id,
            operator=f"operator:{operator}",
            attribute_to=args.as_address,
            reason=args.reason,
        )
        result = run_task(rt, task_id)
        with rt.factory() as session:
            state = session.get(InboundMessage, args.id).state  # type: ignore[union-attr]
    except ReleaseRefused as exc:
        print(f"automation inbox quarantine release: {exc}", file=sys.stderr)
        return EX_DATAERR
    finally:
        rt.engine.dispose()
    if args.json:
        print_json(_for_org(args, {"id": args.id, "state": state, "result": result}))
    else:
        print(f"released inbound message {args.id}: {result}")
    return EX_OK


def cmd_people_import(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from automation.db import make_engine, migrate, session_factory, transaction
    from automation.models import Organization
    from automation.people import ensure_organization, import_people_file
    from automation.services.planning import plan_after_import

    settings = _settings(args)
    target = _target(args)
    engine = make_engine(settings.database)
    migrate(engine)
    from automation.clock import SystemClock
    from automation.tenancy import scoped_factory

    now = SystemClock().now()
    try:
        org_id = target.organization_id
        if org_id is None:
            with session_factory(engine)() as session:
                org_id = session.scalar(
                    select(Organization.id).where(Organization.slug == target.slug)
                )
        with _progress(args, "importing", "person") as report:
            if org_id is not None:  # in its scope: it reads and writes only its own people
                with transaction(scoped_factory(engine, org_id)) as session:
                    result = import_people_file(
                        session, org_id, Path(args.file), now, progress=report
                    )
            else:  # the deployment's own: created with its first people, as it always was
                with transaction(session_factory(engine)) as session:
                    org = ensure_organization(
                        session, settings.organization, settings.organization_name, now
                    )
                    result = import_people_file(
                        session, org.id, Path(args.file), now, progress=report
                    )
                    org_id = org.id
            if result.created or result.updated:
                # Plan now, not at the next daily run: a client's first plan runs as soon as
                # `org create` made it, usually before its people are imported.
                with transaction(scoped_factory(engine, org_id)) as session:
                    plan_after_import(session, org_id, now)
    finally:
        engine.dispose()
    if args.json:
        print_json(_for_org(args, {"file": args.file, **asdict(result)}))
    else:
        print(
            f"imported {args.file}: {result.created} created, {result.updated} updated, "
            f"{result.unchanged} unchanged"
        )
    return EX_OK


def cmd_people_list(args: argparse.Namespace) -> int:
    """The people on record with their manager, HR partner and role; leavers with --all."""
    from sqlalchemy import select
    from sqlalchemy.orm import aliased

    from automation.models import Person

    def action(rt, session, org, actor):  # type: ignore[no-untyped-def]
        manager, partner = aliased(Person), aliased(Person)
        query = (
            select(Person, manager.email, partner.email)
            .outerjoin(
                manager,
                (manager.organization_id == Person.organization_id)
                & (manager.id == Person.manager_id),
            )
            .outerjoin(
                partner,
                (partner.organization_id == Person.organization_id)
                & (partner.id == Person.hr_partner_id),
            )
            .where(Person.organization_id == org)
            .order_by(Person.email)
        )
        if not args.all:
            query = query.where(Person.active.is_(True))
        return [
            {
                "email": p.email,
                "name": p.name,
                "timezone": p.timezone,
                "manager_email": manager_email,
                "hr_partner_email": partner_email,
                "role": p.role,
                "active": p.active,
                "left_at": p.left_at,
                "mail_failing_since": p.mail_failing_since,
            }
            for p, manager_email, partner_email in session.execute(query)
        ]

    rows = _operator_call(args, action, AutomationError) or []
    if args.json:
        print_json(rows)
        return EX_OK
    columns = ["email", "name", "timezone", "manager_email", "hr_partner_email", "role"]
    print_table(
        ["email", "name", "timezone", "manager", "hr_partner", "role"]
        + (["active"] if args.all else []),
        [[r[c] for c in columns] + ([r["active"]] if args.all else []) for r in rows],
        empty="nobody on record" + ("" if args.all else " is active"),
    )
    return EX_OK


def cmd_people_mail_ok(args: argparse.Namespace) -> int:
    """HR checked the address: clear its failing flag and send what was held for it."""
    import getpass

    from automation.services.mail import clear_failing

    rt = _inbox_runtime(args)
    try:
        released = clear_failing(
            rt, _org(rt), args.email, f"operator:{getpass.getuser()}", args.reason
        )
    finally:
        rt.engine.dispose()
    if args.json:
        print_json(_for_org(args, {"email": args.email.strip().lower(), "released": released}))
    else:
        print(f"{args.email}: no longer flagged; {released} held message(s) queued again")
    return EX_OK


def cmd_mail_status(args: argparse.Namespace) -> int:
    from automation.services.mail import mail_status

    rt = _inbox_runtime(args)
    try:
        status = mail_status(rt, _org(rt))
    finally:
        rt.engine.dispose()
    if args.json:
        print_json(_for_org(args, status))
        return EX_OK
    print(f"outbound  {status.transport} as {status.sender}")
    print(f"inbound   {status.inbox}")
    outbox = ", ".join(f"{k} {v}" for k, v in sorted(status.outbox.items())) or "empty"
    print(f"outbox    {outbox}")
    print(f"sent      {status.sent_last_24h} in the last 24 h (limit {status.daily_limit})")
    if status.mailboxes:
        print()
        print_table(
            ["provider", "mailbox", "polled_at", "error"],
            [
                (b["provider"], b["mailbox"], _time(b["polled_at"]), b["error"])
                for b in status.mailboxes
            ],
        )
    if status.failing_addresses:
        print()
        print_table(
            ["failing", "since", "reason"],
            [(p["email"], _time(p["since"]), p["reason"]) for p in status.failing_addresses],
        )
    return EX_OK


def cmd_mail_test_send(args: argparse.Namespace) -> int:
    """Send one test message through the configured transport and look it up again."""
    from automation.services.mail import send_test_message

    rt = _inbox_runtime(args)
    try:
        result = send_test_message(rt, args.address)
    finally:
        rt.engine.dispose()
    if args.json:
        print_json(_for_org(args, result))
    else:
        print(f"sent {result.message_id} through {rt.sender.name}")
        if result.provider_id:
            print(f"provider id {result.provider_id}, thread {result.thread or '-'}")
        print(
            "lookup by Message-ID finds it: retried sends will not go out twice"
            if result.found_by_lookup
            else "lookup by Message-ID does NOT find it: a send retried after a crash could "
            "go out twice (see README, Mail)"
        )
    return EX_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the settings and every cadence, template and other file the organization
    runs with: the deployment's configuration, or, for an organization with a folder of its
    own (a client under --org, or the deployment's own with config/orgs/<slug>/), that
    folder's view over the shared files, and its stored secrets."""
    from automation.config import check_all
    from automation.organizations import check_organization, org_folder, valid_slug

    target: Target | None = getattr(args, "target", None)  # None: the settings do not load
    settings, problems = check_all(args.config)
    if settings is not None and target is not None:
        has_folder = valid_slug(target.slug) and org_folder(settings, target.slug).is_dir()
        if not target.own or has_folder:
            settings, problems = check_organization(_settings(args), target.slug, name=target.name)
            problems.extend(_secret_problems(args, target))
    slug = target.slug if target is not None else None
    if args.json:
        print_json(
            {
                "ok": not problems,
                "organization": slug,
                "settings_file": str(settings.source) if settings else None,
                "config_dir": settings.config_dir if settings else None,
                "templates_dir": settings.templates_dir if settings else None,
                "problems": problems,
            }
        )
        return EX_CONFIG if problems else EX_OK
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return EX_CONFIG
    assert settings is not None
    whose = f"organization {slug}: " if target is not None and not target.own else ""
    print(
        f"{whose}configuration OK ({settings.source}, {settings.config_dir}, "
        f"{settings.templates_dir})"
    )
    return EX_OK


def _secret_problems(args: argparse.Namespace, target: Target) -> list[Any]:
    """Whether the organization's stored secrets decrypt with AUTOMATION_SECRETS_KEYS (as
    `org config SLUG --check` tells); nothing to check for one not on record."""
    if target.organization_id is None:
        return []
    from automation.db import make_engine
    from automation.organizations import Keyring, load_secrets
    from automation.tenancy import scoped_factory

    engine = make_engine(_settings(args).database)
    try:
        with scoped_factory(engine, target.organization_id)() as session:
            load_secrets(session, target.organization_id, Keyring.from_env_if_set())
    except ConfigError as exc:
        return list(exc.problems)
    finally:
        engine.dispose()
    return []


def cmd_templates_preview(args: argparse.Namespace) -> int:
    from automation.emails import render, render_text, template_names
    from automation.template_samples import sample_context

    settings = _org_settings(args)
    names = template_names(settings.templates_dir)
    if args.name not in names and args.name != "invite/description.txt":
        print(f"no template named {args.name!r}; known: {', '.join(names)}", file=sys.stderr)
        return EX_USAGE
    context = sample_context(args.name)
    if args.name == "invite/description.txt":
        text = render_text(settings.templates_dir, args.name, context)
        if args.json:
            print_json(
                _for_org(args, {"name": args.name, "subject": None, "text": text, "html": None})
            )
        else:
            print(text)
        return EX_OK
    rendered = render(settings.templates_dir, args.name, context)
    if args.json:
        print_json(
            _for_org(
                args,
                {
                    "name": args.name,
                    "subject": rendered.subject,
                    "text": rendered.text,
                    "html": rendered.html,
                },
            )
        )
        return EX_OK
    print(f"Subject: {rendered.subject}\n")
    print(rendered.html if args.html else rendered.text)
    return EX_OK


def cmd_templates_list(args: argparse.Namespace) -> int:
    from automation.emails import template_names

    names = template_names(_org_settings(args).templates_dir)
    if args.json:
        print_json(names)
    else:
        print("\n".join(names))
    return EX_OK


def _print_calendars(rows: list[Any], as_json: bool) -> None:
    if as_json:
        print_json(rows)
        return
    print_table(
        ["provider", "calendar", "synced_at", "full_synced_at", "channel_until", "result"],
        [
            (
                r.provider,
                r.calendar,
                _time(r.synced_at),
                _time(r.full_synced_at),
                _time(r.channel_expires_at),
                r.error or r.result,
            )
            for r in rows
        ],
        empty="no calendars yet: `automation calendars connect` sets them up",
    )


def cmd_calendars_connect(args: argparse.Namespace) -> int:
    """Check access to each organizer's calendar with a full sync; open push channels."""
    from automation.services.calendars import connect_calendars

    rt = _inbox_runtime(args)
    try:
        try:
            with _progress(args, "connecting", "calendar") as report:
                rows = connect_calendars(rt, _org(rt), args.calendar, progress=report)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EX_CONFIG
    finally:
        rt.engine.dispose()
    _print_calendars(rows, args.json)
    return 1 if any(r.error for r in rows) else EX_OK


def cmd_calendars_status(args: argparse.Namespace) -> int:
    from automation.services.calendars import calendar_status

    rt = _inbox_runtime(args)
    try:
        rows = calendar_status(rt, _org(rt))
    finally:
        rt.engine.dispose()
    _print_calendars(rows, args.json)
    return EX_OK


def cmd_calendars_sync(args: argparse.Namespace) -> int:
    from automation.services.calendars import sync_now

    rt = _inbox_runtime(args)
    try:
        with _progress(args, "syncing", "calendar") as report:
            rows = sync_now(rt, _org(rt), args.calendar, full=args.full, progress=report)
    finally:
        rt.engine.dispose()
    _print_calendars(rows, args.json)
    return EX_OK


def cmd_export(args: argparse.Namespace) -> int:
    """An employee's whole timeline as JSON, HTML or PDF; --bundle adds the sources (zip).

    ``--as`` names the reader: it must be in the employee's manager chain, their HR partner or
    an HR admin (config/privacy.toml); times are shown in the reader's zone, and the export is
    written to the audit log under the reader's name."""
    from sqlalchemy import func, select

    from automation import audit
    from automation.config import load_privacy
    from automation.db import transaction
    from automation.models import Person
    from automation.services.export import (
        EmployeeNotFound,
        bundle,
        invites,
        parse_zone,
        render,
        timeline,
    )
    from automation.services.privacy import AccessDenied, check_reader

    rt = _inbox_runtime(args)
    try:
        org = _org(rt)
        policy = load_privacy(rt.settings)
        with rt.factory() as session:
            employee = session.scalar(
                select(Person).where(
                    Person.organization_id == org,
                    func.lower(Person.email) == args.employee.strip().lower(),
                )
            )
            if employee is None:
                print(f"automation export: nobody with the address {args.employee} is on "
                      "record", file=sys.stderr)  # fmt: skip
                return EX_DATAERR
            try:
                why = check_reader(session, policy, employee, args.reader)
            except AccessDenied as exc:
                print(f"automation export: refused: {exc}", file=sys.stderr)
                return EX_NOPERM
            reader = session.scalar(
                select(Person).where(
                    Person.organization_id == org,
                    func.lower(Person.email) == args.reader.strip().lower(),
                )
            )
            try:
                zone = parse_zone(
                    args.timezone
                    or (reader.timezone if reader is not None else None)
                    or rt.settings.default_timezone
                )
            except ValueError as exc:
                print(f"automation export: {exc}", file=sys.stderr)
                return EX_USAGE
            try:
                tl = timeline(session, org, args.employee, zone)
            except EmployeeNotFound as exc:
                print(f"automation export: {exc}", file=sys.stderr)
                return EX_DATAERR
            output = render(tl, args.format, rt.settings.templates_dir)
            zipped = None
            if args.bundle:
                with _progress(args, "invites", "series") as report:
                    calendars = invites(rt, session, org, tl, progress=report)
                with _progress(args, "bundling", "file") as report:
                    zipped = bundle(
                        tl,
                        calendars,
                        {} if args.format == "json" else {f"timeline.{args.format}": output},
                        progress=report,
                    )
        with transaction(rt.factory) as session:
            audit.record(
                session,
                org,
                actor=args.reader.strip().lower(),
                action="record.exported",
                subject_kind="person",
                subject_id=employee.id,
                at=rt.now(),
                data={"format": args.format, "bundle": zipped is not None, "access": why},
            )
    finally:
        rt.engine.dispose()
    if args.out and args.out != "-":
        Path(args.out).write_bytes(output)
    elif args.format == "pdf" and sys.stdout.isatty():
        print("automation export: a PDF goes to a file: add --out FILE", file=sys.stderr)
        return EX_USAGE
    else:
        sys.stdout.buffer.write(output)
        sys.stdout.buffer.flush()
    if zipped is not None:
        Path(args.bundle).write_bytes(zipped)
    where = f" to {args.out}" if args.out and args.out != "-" else ""
    _note(
        args,
        f"exported {len(tl.events)} event(s) of {tl.employee['email']}{where} for "
        f"{args.reader} ({why})" + (f"; bundle {args.bundle}" if zipped is not None else ""),
    )
    return EX_OK


def _privacy_call(args: argparse.Namespace, action):  # type: ignore[no-untyped-def]
    """Run one privacy operation in a transaction; None (with the reason printed) if refused."""
    from automation.services.privacy import PrivacyError

    return _operator_call(args, action, PrivacyError, getattr(args, "by", None))


def cmd_privacy_hold(args: argparse.Namespace) -> int:
    from automation.services import privacy

    if args.action == "list":

        def listing(rt, session, org, by):  # type: ignore[no-untyped-def]
            return privacy.list_holds(session, org, all_=args.all)

        rows = _privacy_call(args, listing) or []
        if args.json:
            print_json(rows)
        else:
            print_table(
                ["id", "person", "state", "placed_at", "placed_by", "released_at", "reason"],
                [
                    (
                        r.id,
                        r.person,
                        "released" if r.released_at else "ACTIVE",
                        r.placed_at,
                        r.placed_by,
                        r.released_at,
                        r.reason,
                    )
                    for r in rows
                ],
                empty="no legal holds" + ("" if args.all else " active"),
            )
        return EX_OK
    if not args.employee:
        print(f"automation privacy hold {args.action}: name the employee", file=sys.stderr)
        return EX_USAGE
    if args.action == "place":
        if not args.reason:
            print("automation privacy hold place: add --reason (the matter)", file=sys.stderr)
            return EX_USAGE
        hold = _privacy_call(
            args,
            lambda rt, session, org, by: (
                privacy.place_hold(session, org, args.employee, args.reason, by, rt.now()).id
            ),
        )
        if hold is None:
            return EX_DATAERR
        if args.json:
            print_json(
                _for_org(
                    args, {"id": hold, "employee": args.employee.strip().lower(), "state": "active"}
                )
            )
        else:
            print(f"legal hold {hold} placed on {args.employee}: nothing of theirs is erased")
        return EX_OK
    released = _privacy_call(
        args,
        lambda rt, session, org, by: [
            h.id for h in privacy.release_hold(session, org, args.employee, by, rt.now())
        ],
    )
    if released is None:
        return EX_DATAERR
    if args.json:
        print_json(
            _for_org(args, {"employee": args.employee.strip().lower(), "released": released})
        )
        return EX_OK
    print(
        f"legal hold(s) {', '.join(map(str, released))} on {args.employee} released; "
        "deletion requests it held run at the next retention sweep"
    )
    return EX_OK


def cmd_privacy_erase(args: argparse.Namespace) -> int:
    from automation.services import privacy

    result = _privacy_call(
        args,
        lambda rt, session, org, by: (lambda r: (r.id, r.state, dict(r.removed or {})))(
            privacy.request_erasure(session, org, args.employee, args.reference, by, rt.now())
        ),
    )
    if result is None:
        return EX_DATAERR
    request_id, state, removed = result
    if args.json:
        print_json(_for_org(args, {"request": request_id, "state": state, "removed": removed}))
    elif state == "held":
        print(
            f"deletion request {request_id} recorded but HELD: {args.employee} is under a legal "
            "hold; it is carried out when the hold is released"
        )
    else:
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in removed.items() if v)
        print(f"deletion request {request_id} done: {counts or 'nothing held personal data'}")
    return EX_OK


def cmd_privacy_sweep(args: argparse.Namespace) -> int:
    from dataclasses import asdict as as_dict

    from automation.config import load_privacy
    from automation.services import privacy

    result = _privacy_call(
        args,
        lambda rt, session, org, by: privacy.sweep(
            session, org, load_privacy(rt.settings), rt.now()
        ),
    )
    if result is None:
        return EX_DATAERR
    if args.json:
        print_json(_for_org(args, as_dict(result)))
    else:
        print(
            f"retention: {result.people_erased} person(s) erased, "
            f"{result.held_requests_done} held request(s) carried out, "
            f"{result.unrecorded_mail_erased} unrecorded and {result.sent_mail_erased} sent "
            f"message(s) expired; {result.skipped_for_holds} kept for legal holds"
        )
    return EX_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Recompute each organization's hash chain; exit 1 naming the first bad entry."""
    from automation.audit import verify_all

    rt = _system_runtime(args)
    try:
        with rt.factory() as session:
            checks = verify_all(session)
    finally:
        rt.engine.dispose()
    if args.json:
        print_json([{**asdict(c), "intact": c.intact} for c in checks])
    else:
        for c in checks:
            if c.intact:
                print(f"{c.organization}: intact, {c.entries} entries")
            else:
                print(f"{c.organization}: BROKEN at entry {c.seq} ({c.problem}): {c.detail}")
        if not checks:
            print("no organizations: nothing to verify")
    return EX_OK if all(c.intact for c in checks) else 1


def _operator_call(  # type: ignore[no-untyped-def]
    args: argparse.Namespace, action, refused: type[Exception], by=None, *, system: bool = False
):
    """Run ``action(rt, session, org, actor)`` in one transaction on the configured database,
    in the scope of the organization the command acts for (``system``: unscoped, for what
    spans organizations, as a consultant's grant does); a ``refused`` error prints its reason
    and returns None. Work it schedules (emails, calendar writes) is done by `automation run`."""
    import getpass

    from automation.db import transaction

    rt = _system_runtime(args) if system else _inbox_runtime(args)
    try:
        org = _target_id(args, rt) if system else _org(rt)
        with transaction(rt.factory) as session:
            return action(rt, session, org, by or f"operator:{getpass.getuser()}")
    except refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return None
    finally:
        rt.engine.dispose()


def _pip_call(args: argparse.Namespace, action):  # type: ignore[no-untyped-def]
    from automation.services.pips import PipError

    return _operator_call(args, action, PipError)


def cmd_pip_start(args: argparse.Namespace) -> int:
    from automation.config import load_goals, load_pip_templates
    from automation.services.pips import start_pip_from_template

    settings = _org_settings(args)
    found = load_pip_templates(settings)
    if args.template not in found:
        print(
            f"no PIP template {args.template!r} in {settings.config_dir / 'pips'}; "
            f"known: {', '.join(sorted(found)) or 'none'}",
            file=sys.stderr,
        )
        return EX_CONFIG
    goals = load_goals(Path(args.goals))

    def action(rt, session, org, actor):  # type: ignore[no-untyped-def]
        pip = start_pip_from_template(
            rt, session, org, args.employee, found[args.template], goals, actor=actor
        )
        return (pip.id, pip.ends_on)

    done = _pip_call(args, action)
    if done is None:
        return EX_DATAERR
    if args.json:
        print_json(
            _for_org(
                args,
                {
                    "id": done[0],
                    "employee": args.employee.strip().lower(),
                    "template": args.template,
                    "ends_on": done[1].date().isoformat(),  # as `pip list` shows it (UTC)
                },
            )
        )
    else:
        print(f"PIP {done[0]} started for {args.employee}, ends {done[1]:%Y-%m-%d}; plan queued")
    return EX_OK


def cmd_pip_extend(args: argparse.Namespace) -> int:
    from automation.services.pips import extend_pip

    def action(rt, session, org, actor):  # type: ignore[no-untyped-def]
        pip = extend_pip(
            rt, session, org, args.employee, args.days, actor=actor, reason=args.reason
        )
        return pip.id, pip.ends_on

    done = _pip_call(args, action)
    if done is None:
        return EX_DATAERR
    pip_id, ends = done
    if args.json:
        print_json(
            _for_org(
                args,
                {
                    "id": pip_id,
                    "employee": args.employee.strip().lower(),
                    "days": args.days,
                    "ends_on": ends.date().isoformat(),
                },
            )
        )
    else:
        print(f"PIP of {args.employee} extended by {args.days} days, now ends {ends:%Y-%m-%d}")
    return EX_OK


def cmd_pip_close(args: argparse.Namespace) -> int:
    from automation.services.pips import close_pip

    def action(rt, session, org, actor):  # type: ignore[no-untyped-def]
        return close_pip(
            rt, session, org, args.employee, args.outcome, actor=actor, note=args.note
        ).id

    pip_id = _pip_call(args, action)
    if pip_id is None:
        return EX_DATAERR
    if args.json:
        print_json(
            _for_org(
                args,
                {"id": pip_id, "employee": args.employee.strip().lower(), "outcome": args.outcome},
            )
        )
    else:
        print(f"PIP {pip_id} of {args.employee} closed: {args.outcome}")
    return EX_OK


def cmd_pip_list(args: argparse.Namespace) -> int:
    from automation.services.pips import list_pips

    rows = _pip_call(args, lambda rt, session, org, actor: list_pips(session, org)) or []
    if args.json:
        print_json(rows)
        return EX_OK
    print_table(
        ["id", "employee", "state", "outcome", "started_on", "ends_on", "documented",
         "acknowledged", "title"],
        [
            (r.id, r.employee, r.state, r.outcome, r.started_on, r.ends_on,
             f"{r.documented}/{r.milestones}", r.acknowledged, r.title)
            for r in rows
        ],
        empty="no PIPs",
    )  # fmt: skip
    return EX_OK


def cmd_warning_create(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from automation.models import Person
    from automation.services.pips import PipError, create_warning

    def action(rt, session, org, actor):  # type: ignore[no-untyped-def]
        employee = session.scalar(
            select(Person).where(
                Person.organization_id == org, Person.email == args.employee.strip().lower()
            )
        )
        if employee is None:
            raise PipError(f"nobody with the address {args.employee} is on record")
        return create_warning(
            rt,
            session,
            org,
            employee,
            reason=args.reason,
            expectation=args.expectation,
            consequence=args.consequence,
            kind=args.kind,
            actor=actor,
        ).id

    action_id = _pip_call(args, action)
    if action_id is None:
        return EX_DATAERR
    if args.json:
        employee = args.employee.strip().lower()
        print_json(_for_org(args, {"id": action_id, "employee": employee, "kind": args.kind}))
    else:
        print(
            f"{args.kind.replace('_', ' ')} {action_id} recorded for {args.employee}; email queued"
        )
    return EX_OK


def _goal_call(args: argparse.Namespace, action):  # type: ignore[no-untyped-def]
    from automation.services.goals import GoalError

    return _operator_call(args, action, GoalError)


def _date_arg(text: str):  # type: ignore[no-untyped-def]
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def cmd_goals_import(args: argparse.Namespace) -> int:
    from automation.services.goals import import_goals_file

    def action(rt, session, org, actor):  # type: ignore[no-untyped-def]
        return import_goals_file(session, org, Path(args.file), rt.now(), actor=actor)

    result = _goal_call(args, action)
    if result is None:
        return EX_DATAERR
    if args.json:
        print_json(_for_org(args, result))
    else:
        print(
            f"imported {args.file}: {result.created} created, {result.updated} updated "
            f"(a new version each), {result.unchanged} unchanged"
        )
    return EX_OK


def _print_goals(rows: list[Any], as_json: bool) -> None:
    if as_json:
        print_json(rows)
        return
    print_table(
        ["id", "version", "employee", "status", "due", "title", "success_criteria"],
        [(r.id, r.version, r.employee, r.status, r.due, r.title, r.success_criteria) for r in rows],
        empty="no goals",
    )


def cmd_goals_list(args: argparse.Namespace) -> int:
    from automation.services.goals import list_goals

    rows = _goal_call(
        args,
        lambda rt, session, org, actor: list_goals(
            session, org, args.employee, include_closed=args.all
        ),
    )
    if rows is None:
        return EX_DATAERR
    _print_goals(rows, args.json)
    return EX_OK


def cmd_goals_show(args: argparse.Namespace) -> int:
    from automation.services.goals import goal_history

    rows = _goal_call(args, lambda rt, session, org, actor: goal_history(session, org, args.id))
    if rows is None:
        return EX_DATAERR
    if args.json:
        print_json(rows)
        return EX_OK
    for r in rows:
        print(
            f"v{r.version:<3} {r.updated_at[:16]}  {r.status:<9} {r.due or '-':<10}  {r.title}"
            f"  (by {r.author}, {r.source})"
            + (f"\n      criteria: {r.success_criteria}" if r.success_criteria else "")
            + (f"\n      note: {r.note}" if r.note else "")
        )
    return EX_OK


def cmd_goals_set(args: argparse.Namespace) -> int:
    from automation.services.goals import set_goal

    def action(rt, session, org, actor):  # type: ignore[no-untyped-def]
        return set_goal(
            session,
            org,
            args.employee,
            args.title,
            rt.now(),
            actor=actor,
            goal_id=args.id,
            key=args.key,
            success_criteria=args.criteria,
            owner=args.owner,
            due=args.due,
            status=args.status,
            note=args.note,
        )

    change = _goal_call(args, action)
    if change is None:
        return EX_DATAERR
    if args.json:
        print_json(_for_org(args, change))
    elif not change.changed:
        print(f"goal {change.goal_id} “{change.title}”: unchanged (version {change.version})")
    else:
        print(
            f"goal {change.goal_id} “{change.title}” "
            f"{'created' if change.created else 'updated'}: {change.status}, "
            f"version {change.version}"
        )
    return EX_OK


def cmd_development(args: argparse.Namespace) -> int:
    from automation.services.goals import (
        add_development_item,
        list_development,
        set_development_status,
    )

    if args.sub == "add":
        found = _goal_call(
            args,
            lambda rt, session, org, actor: (
                add_development_item(
                    session,
                    org,
                    args.employee,
                    args.kind,
                    args.text,
                    rt.now(),
                    actor=actor,
                    discuss_by=args.discuss_by,
                    record_id=args.record,
                    goal_id=args.goal,
                    pip_goal_id=args.pip_goal,
                ).id
            ),
        )
        if found is None:
            return EX_DATAERR
        if args.json:
            employee = args.employee.strip().lower()
            print_json(_for_org(args, {"id": found, "employee": employee, "kind": args.kind}))
        else:
            print(f"development item {found} added for {args.employee}")
        return EX_OK
    if args.sub == "close":
        found = _goal_call(
            args,
            lambda rt, session, org, actor: (
                set_development_status(
                    session, org, args.id, args.status, rt.now(), actor=actor
                ).status
            ),
        )
        if found is None:
            return EX_DATAERR
        if args.json:
            print_json(_for_org(args, {"id": args.id, "status": found}))
        else:
            print(f"development item {args.id}: {found}")
        return EX_OK
    rows = _goal_call(
        args,
        lambda rt, session, org, actor: list_development(
            session, org, args.employee, include_closed=args.all
        ),
    )
    if rows is None:
        return EX_DATAERR
    if args.json:
        print_json(rows)
        return EX_OK
    print_table(
        ["id", "employee", "kind", "status", "discuss_by", "text"],
        [(r.id, r.employee, r.kind, r.status, r.discuss_by, r.text) for r in rows],
        empty="no development items" + ("" if args.all else " open"),
    )
    return EX_OK


def cmd_roles_check(args: argparse.Namespace) -> int:
    """Validate config/roles/*.toml (exit 78 naming file, field and fix), then the people on
    record: a role no file describes is reported with the person (exit 65)."""
    from sqlalchemy import func, select

    from automation.config import load_roles
    from automation.models import Person

    roles = load_roles(_org_settings(args))  # a ConfigError is reported by main()

    def people_roles(rt, session, org, actor):  # type: ignore[no-untyped-def]
        return session.execute(
            select(Person.role, func.count(Person.id), func.min(Person.email))
            .where(Person.organization_id == org, Person.active.is_(True))
            .group_by(Person.role)
        ).all()

    counts = _operator_call(args, people_roles, LookupError) or []
    used = {role: (n, example) for role, n, example in counts}
    unknown = {role: used[role] for role in used if role is not None and role not in roles}
    if args.json:
        print_json(
            _for_org(
                args,
                {
                    "roles": {
                        name: {
                            "title": r.title,
                            "file": r.source_file,
                            "people": used.get(name, (0,))[0],
                        }
                        for name, r in sorted(roles.items())
                    },
                    "without_role": used.get(None, (0,))[0],
                    "unknown": {role: {"people": n, "e.g.": e} for role, (n, e) in unknown.items()},
                },
            )
        )
    else:
        print_table(
            ["role", "title", "people", "file"],
            [
                *((name, r.title, used.get(name, (0,))[0], r.source_file)
                  for name, r in sorted(roles.items())),
                ("(no role)", None, used.get(None, (0,))[0], None),
            ],
        )  # fmt: skip
        for role, (n, example) in sorted(unknown.items()):
            print(
                f"unknown role {role!r} on {n} person(s), e.g. {example} (fix: add "
                f"config/roles/{role}.toml, or correct the people file's role column)",
                file=sys.stderr,
            )
    return EX_DATAERR if unknown else EX_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    """The work queue: counts by kind and state, the failed jobs (dead letters), retry."""
    import getpass

    from automation.db import transaction
    from automation.services import jobs

    rt = _inbox_runtime(args)
    try:
        org = _org(rt)
        if args.sub == "retry":
            if not args.ids and not args.all:
                print("automation jobs retry: name job ids, or --all", file=sys.stderr)
                return EX_USAGE
            try:
                with transaction(rt.factory) as session:
                    ids = jobs.retry_jobs(
                        session,
                        org,
                        None if args.all else args.ids,
                        kind=args.kind,
                        by=f"operator:{getpass.getuser()}",
                        now=rt.now(),
                    )
            except jobs.NotFailed as exc:
                print(f"refused: {exc}", file=sys.stderr)
                return EX_DATAERR
            if args.json:
                print_json(_for_org(args, {"retried": ids, "count": len(ids)}))
            else:
                print(
                    f"{len(ids)} job(s) due again"
                    + (": " + ", ".join(map(str, ids)) if ids else "")
                )
            return EX_OK
        with rt.factory() as session:
            if args.sub == "status":
                counts = jobs.queue_counts(session, org)
                if args.json:
                    print_json(counts)
                else:
                    print_table(
                        ["kind", "state", "count", "oldest_due (UTC)"],
                        [(c.kind, c.state, c.count, c.oldest_due) for c in counts],
                        empty="nothing queued",
                    )
                return EX_OK
            failed = jobs.failed_jobs(session, org, args.kind, args.limit)
    finally:
        rt.engine.dispose()
    if args.json:
        print_json(failed)
    else:
        if failed:
            print_table(
                ["id", "kind", "attempts", "failed_at (UTC)", "key", "error"],
                [
                    (f.id, f.kind, f.attempts, f.failed_at, f.key,
                     f.error.splitlines()[0] if f.error else None)
                    for f in failed
                ],
            )  # fmt: skip
        print(
            f"{len(failed)} failed job(s)"
            + ("; retry with: automation jobs retry ID" if failed else "")
        )
    return EX_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from automation.db import make_engine, migrate

    settings = _settings(args)
    migrate(make_engine(settings.database))
    print(f"database at {settings.database.split('@')[-1]} is up to date")
    return EX_OK


def cmd_report_consistency(args: argparse.Namespace) -> int:
    """Per manager and team: completion, documentation delay, overdue items, PIPs."""
    import datetime as dt

    from automation.services.report import as_json, consistency_report, write_report

    if args.date_from and args.date_to and args.date_to < args.date_from:
        print("error: --to is before --from", file=sys.stderr)
        return EX_USAGE
    # Whole UTC days: --from's midnight up to the midnight after --to.
    start = dt.datetime.combine(args.date_from, dt.time(), dt.UTC) if args.date_from else None
    end = (
        dt.datetime.combine(args.date_to + dt.timedelta(days=1), dt.time(), dt.UTC)
        if args.date_to
        else None
    )
    rt = _inbox_runtime(args)
    try:
        with rt.factory() as session:
            report = consistency_report(
                session,
                _org(rt),
                as_of=rt.now(),
                period_from=start,
                period_to=end,
                business_weekdays=rt.settings.business_weekdays,
                holidays=rt.settings.holidays,
            )
    finally:
        rt.engine.dispose()
    paths = write_report(report, Path(args.out), rt.settings.templates_dir)
    if args.json:
        print_json(_for_org(args, as_json(report) | {"files": [str(p) for p in paths]}))
    else:
        org = report.org
        print(
            f"{len(report.managers)} manager(s), {org.due} check-in(s) due, "
            f"{org.documented} documented, "
            f"{org.overdue_checkins + org.overdue_pip_reviews + org.overdue_action_items} "
            "overdue item(s)"
        )
        for path in paths:
            print(path)
    return EX_OK


# --- organizations (issue 10): `automation org …` -------------------------------------------


def _org_database(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The deployment's settings and a session factory in the system scope (the org commands
    work across organizations, and never need a provider)."""
    from automation.db import make_engine, migrate, session_factory

    settings = _settings(args)
    engine = make_engine(settings.database)
    migrate(engine)
    return settings, engine, session_factory(engine)


def _organization_row(session, slug: str):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from automation.models import Organization

    org = session.scalars(select(Organization).where(Organization.slug == slug)).one_or_none()
    if org is None:
        known = ", ".join(session.scalars(select(Organization.slug).order_by(Organization.slug)))
        raise LookupError(
            f"no organization {slug!r} (known: {known or 'none'}); create it with "
            f"`automation org create {slug} --name NAME`"
        )
    return org


def _operator() -> str:
    import getpass

    return f"operator:{getpass.getuser()}"


def cmd_org_create(args: argparse.Namespace) -> int:
    """The organizations row and config/orgs/<slug>/ with a commented settings.toml."""
    from automation.clock import SystemClock
    from automation.db import transaction
    from automation.organizations import OrganizationRefused, create_organization

    settings, engine, factory = _org_database(args)
    try:
        with transaction(factory) as session:
            made = create_organization(
                session, settings, args.slug, args.name, SystemClock().now(), _operator()
            )
    except OrganizationRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EX_DATAERR
    finally:
        engine.dispose()
    if args.json:
        print_json(made)
        return EX_OK
    if made.created:
        print(f"created organization {made.slug} ({made.name})")
    else:
        print(f"organization {made.slug} exists already ({made.name}); its name is unchanged")
    print(
        f"settings: {made.folder / 'settings.toml'}"
        + ("" if made.folder_created else " (kept as it was)")
    )
    _note(args, f"check it with: automation org config {made.slug} --check")
    return EX_OK


def cmd_org_list(args: argparse.Namespace) -> int:
    """Every organization: people, its folder, its secrets and the keys they are under."""
    from sqlalchemy import func, select

    from automation.models import Organization, OrganizationSecret, Person
    from automation.organizations import org_folder, valid_slug

    settings, engine, factory = _org_database(args)
    try:
        with factory() as session:
            people = dict(
                session.execute(
                    select(Person.organization_id, func.count())
                    .where(Person.active.is_(True))
                    .group_by(Person.organization_id)
                ).all()
            )
            keys: dict[int, list[str]] = {}
            for organization_id, key_id in session.execute(
                select(OrganizationSecret.organization_id, OrganizationSecret.key_id)
            ):
                keys.setdefault(organization_id, []).append(key_id)
            rows = [
                {
                    "slug": org.slug,
                    "name": org.name,
                    "people": people.get(org.id, 0),
                    "config_folder": valid_slug(org.slug)
                    and org_folder(settings, org.slug).is_dir(),
                    "secrets": len(keys.get(org.id, [])),
                    "key_ids": sorted(set(keys.get(org.id, []))),
                }
                for org in session.scalars(select(Organization).order_by(Organization.slug))
            ]
    finally:
        engine.dispose()
    if args.json:
        print_json(rows)
        return EX_OK
    print_table(
        ["slug", "name", "people", "config_folder", "secrets", "keys"],
        [
            (r["slug"], r["name"], r["people"], "yes" if r["config_folder"] else "no",
             r["secrets"], ", ".join(r["key_ids"]))
            for r in rows
        ],
        empty="no organizations: `automation org create SLUG --name NAME` adds one",
    )  # fmt: skip
    return EX_OK


def _shown_setting(value: Any) -> Any:
    if isinstance(value, tuple):
        return ", ".join(str(v) for v in value)
    return value


def cmd_org_config(args: argparse.Namespace) -> int:
    """The settings one organization runs with, secrets shown only as set or not; --check
    validates its folder (settings, cadences, templates and the rest) and its secrets."""
    from automation.organizations import (
        ORGANIZATION_FIELDS,
        ORGANIZATION_SECRETS,
        Keyring,
        check_organization,
        list_secrets,
        load_secrets,
        org_folder,
        read_organization_settings,
        tenant_settings,
    )

    settings, engine, factory = _org_database(args)
    try:
        with factory() as session:
            org = _organization_row(session, args.slug)
            stored = [s.name for s in list_secrets(session, org.id)]
            if args.check:
                effective, problems = check_organization(settings, org.slug, name=org.name)
                try:
                    load_secrets(session, org.id, Keyring.from_env_if_set())
                except ConfigError as exc:
                    problems.extend(exc.problems)
    finally:
        engine.dispose()
    folder = org_folder(settings, org.slug)
    if args.check:
        if args.json:
            print_json(
                {
                    "ok": not problems,
                    "organization": org.slug,
                    "folder": folder,
                    "config_dir": effective.config_dir if effective else None,
                    "templates_dir": effective.templates_dir if effective else None,
                    "problems": problems,
                }
            )
            return EX_CONFIG if problems else EX_OK
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"{len(problems)} problem(s) found", file=sys.stderr)
            return EX_CONFIG
        where = folder if folder.is_dir() else "no folder of its own: the shared configuration"
        print(f"organization {org.slug}: configuration OK ({where})")
        return EX_OK
    effective = tenant_settings(settings, org.slug, {}, name=org.name)
    from_file = read_organization_settings(settings, org.slug)
    own = org.slug == settings.organization
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for field in sorted(ORGANIZATION_FIELDS):
        values[field] = getattr(effective, field)
        origin[field] = "organization" if field in from_file else "deployment"
    for secret in ORGANIZATION_SECRETS:
        deployment_value = own and bool(getattr(settings, secret))
        values[secret] = "(set)" if secret in stored or deployment_value else "(not set)"
        if secret in stored:
            origin[secret] = "organization secrets"
        else:
            origin[secret] = "deployment" if deployment_value else "-"
    if args.json:
        print_json(
            {
                "organization": org.slug,
                "name": org.name,
                "folder": folder,
                "folder_exists": folder.is_dir(),
                "config_dir": effective.config_dir,
                "templates_dir": effective.templates_dir,
                "settings": values,
                "set_by_organization": sorted(from_file),
            }
        )
        return EX_OK
    print(f"organization   {org.slug} ({org.name})")
    print(f"folder         {folder}" + ("" if folder.is_dir() else " (none: shared configuration)"))
    print(f"config_dir     {effective.config_dir}")
    print(f"templates_dir  {effective.templates_dir}")
    print()
    print_table(
        ["setting", "value", "from"],
        [(name, _shown_setting(value), origin[name]) for name, value in values.items()],
    )
    return EX_OK


def _secret_value(args: argparse.Namespace) -> str:
    """The value from standard input only (never an argument, which `ps` and the shell's
    history would keep); asked without echo when standard input is a terminal."""
    import getpass

    if sys.stdin.isatty():
        return getpass.getpass(f"{args.name} for {args.slug} (not shown): ")
    return sys.stdin.read().rstrip("\r\n")


def cmd_org_secret_set(args: argparse.Namespace) -> int:
    from automation.clock import SystemClock
    from automation.db import transaction
    from automation.organizations import Keyring, SecretRefused, check_secret_name, put_secret

    try:
        check_secret_name(args.name)  # before waiting for a value
    except SecretRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EX_USAGE
    keyring = Keyring.from_env()
    value = _secret_value(args)
    settings, engine, factory = _org_database(args)
    try:
        with transaction(factory) as session:
            org = _organization_row(session, args.slug)
            row = put_secret(
                session, org.id, args.name, value, keyring, SystemClock().now(), _operator()
            )
            result = {"organization": org.slug, "name": row.name, "key_id": row.key_id}
    except SecretRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EX_DATAERR
    finally:
        engine.dispose()
    if args.json:
        print_json(result)
    else:
        print(f"stored {result['name']} for {result['organization']} (key {result['key_id']})")
    return EX_OK


def cmd_org_secret_unset(args: argparse.Namespace) -> int:
    from automation.clock import SystemClock
    from automation.db import transaction
    from automation.organizations import remove_secret

    settings, engine, factory = _org_database(args)
    try:
        with transaction(factory) as session:
            org = _organization_row(session, args.slug)
            removed = remove_secret(session, org.id, args.name, SystemClock().now(), _operator())
    finally:
        engine.dispose()
    if args.json:
        print_json({"organization": args.slug, "name": args.name, "removed": removed})
    elif removed:
        print(f"removed {args.name} of {args.slug}")
    else:
        print(f"{args.slug} has no secret {args.name}: nothing to remove")
    return EX_OK


def cmd_org_secret_list(args: argparse.Namespace) -> int:
    """Names, key ids and times: never a value (nothing is decrypted)."""
    from automation.organizations import Keyring, list_secrets

    keyring = Keyring.from_env_if_set()
    settings, engine, factory = _org_database(args)
    try:
        with factory() as session:
            org = _organization_row(session, args.slug)
            found = list_secrets(session, org.id)
    finally:
        engine.dispose()
    current = keyring.current_key_id if keyring else None
    rows = [
        {**asdict(s), "current_key": None if current is None else s.key_id == current}
        for s in found
    ]
    if args.json:
        print_json(rows)
        return EX_OK
    print_table(
        ["name", "key_id", "updated_at (UTC)"],
        [(r["name"], r["key_id"], r["updated_at"]) for r in rows],
        empty=f"{args.slug} has no secrets: `automation org secret set {args.slug} NAME`",
    )
    stale = [r["name"] for r in rows if r["current_key"] is False]
    if stale:
        _note(
            args,
            f"{len(stale)} secret(s) not under the first key ({current}): "
            "run `automation org secret rotate`",
        )
    return EX_OK


def cmd_org_secret_rotate(args: argparse.Namespace) -> int:
    """Re-encrypt every organization's secrets under the first key of AUTOMATION_SECRETS_KEYS."""
    from automation.clock import SystemClock
    from automation.db import transaction
    from automation.organizations import Keyring, rotate

    keyring = Keyring.from_env()
    settings, engine, factory = _org_database(args)
    try:
        with transaction(factory) as session:
            counts = rotate(session, keyring, SystemClock().now(), _operator())
    finally:
        engine.dispose()
    if args.json:
        print_json(counts)
        return EX_OK
    print(
        f"re-encrypted {counts.rotated} secret(s) under key {counts.key_id}; "
        f"{counts.unchanged} already under it"
    )
    for slug, count in sorted(counts.by_organization.items()):
        print(f"  {slug}: {count}")
    if counts.from_key_ids:
        _note(
            args,
            "no secret is under "
            + ", ".join(sorted(counts.from_key_ids))
            + " any more: that key may now be removed from AUTOMATION_SECRETS_KEYS",
        )
    return EX_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="automation", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="settings file (default: $AUTOMATION_CONFIG or config/settings.toml)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every task")
    _org_option(parser)
    _display_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the whole loop over simulated weeks, on local files")
    p.add_argument("--weeks", type=int, default=6)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--json", action="store_true", help="print one JSON object of counts")
    p.add_argument(
        "--clients",
        action="store_true",
        help="also run two client organizations (config/example-clients/) on the Google and "
        "Microsoft 365 fakes of tests/fakes/ (a source checkout), with a consultant account",
    )
    p.set_defaults(func=cmd_demo)

    console = sub.add_parser("console", help="the HR console").add_subparsers(
        dest="sub", required=True
    )
    account = console.add_parser("account", help="who may sign in").add_subparsers(
        dest="action", required=True
    )
    p = account.add_parser("add", help="a local account (password asked on the terminal)")
    p.add_argument("email")
    p.add_argument(
        "--role", required=True, choices=["hr_admin", "hr_partner", "manager", "consultant"]
    )
    p.add_argument("--name", help="shown in the console (default: the address)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    how.add_argument("--no-password", action="store_true", help="OpenID Connect sign-in only")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_console_account_add)
    p = account.add_parser("list", help="every account: role, state, last sign-in")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_console_account_list)
    for name, active in (("disable", False), ("enable", True)):
        ends = "" if active else "; ends its sessions"
        p = account.add_parser(name, help=f"{name} an account{ends}")
        p.add_argument("email")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=cmd_console_account_active, active=active)
    for name, granting in (("grant", True), ("revoke", False)):
        p = account.add_parser(
            name,
            help=f"{name} a consultant's access to a client organization's console pages",
        )
        p.add_argument("email", help="the consultant's account (in the configured organization)")
        p.add_argument("--org", required=True, metavar="SLUG", help="the client organization")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=cmd_console_account_grant, granting=granting)

    p = sub.add_parser(
        "completion",
        help='print shell completion code: eval "$(automation completion bash)"',
    )
    p.add_argument("shell", nargs="?", default="bash", choices=["bash", "zsh", "fish", "tcsh"])
    p.set_defaults(func=cmd_completion)

    p = sub.add_parser(
        "run",
        help="run the service: the tick, the web app (webhooks), and workers on the embedded "
        "set-up",
        description="Run the service until SIGINT/SIGTERM: the tick every tick_seconds, the "
        "web app (provider webhooks, /healthz) in a background thread, and an in-process "
        "worker when broker_url is stub. --once runs one round of ticks and exits, without "
        "the web app.",
    )
    p.add_argument("--once", action="store_true", help="one tick, then exit (no web app)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the web app listens on (default: 127.0.0.1, behind a reverse proxy)",
    )
    p.add_argument(
        "--port",
        type=_port,
        default=8080,
        help="port of the web app (default: 8080; 0 runs without the web app)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "web",
        help="serve only the web app: provider webhooks and /healthz",
        description="Serve the web app with uvicorn (one process) until SIGINT/SIGTERM: "
        "Google and Microsoft Graph calendar webhooks, which queue sync tasks, and /healthz. "
        "Expose it over HTTPS through a reverse proxy and set base_url to its public address. "
        "On the embedded set-up (broker stub) the tasks it queues run in `automation run`.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, behind a reverse proxy)",
    )
    p.add_argument(
        "--port", type=_listen_port, default=8080, help="port to listen on (default: 8080)"
    )
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("worker", help="start dramatiq workers on the configured broker")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=4)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("ingest-mail", help="store one message from stdin (an MTA pipe transport)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_ingest_mail)

    p = sub.add_parser(
        "parse-reply", help="show what a raw message would be recorded as (no database)"
    )
    p.add_argument("file", help="an RFC 5322 message (.eml), or - for stdin")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--questions",
        metavar="FILE",
        help="the prompt's questions, one a line (default: the first cadence's)",
    )
    p.set_defaults(func=cmd_parse_reply)

    inbox = sub.add_parser("inbox", help="inbound mail").add_subparsers(dest="sub", required=True)
    quarantine = inbox.add_parser(
        "quarantine",
        help="messages kept without a record: quarantined, auto-replies, bounces, duplicates",
    ).add_subparsers(dest="action", required=True)
    p = quarantine.add_parser("list", help="newest first, with the reason for each")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument(
        "--state", choices=["quarantined", "auto_reply", "bounced", "duplicate"], default=None
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inbox_list)
    p = quarantine.add_parser("show", help="one message: headers, reason, hash and text")
    p.add_argument("id", type=int)
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--raw", action="store_true", help="write the stored raw bytes to stdout")
    shown.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inbox_show)
    p = quarantine.add_parser("release", help="process a quarantined message (or auto-reply) again")
    p.add_argument("id", type=int)
    p.add_argument(
        "--as",
        dest="as_address",
        metavar="EMAIL",
        help="attribute it to this person on record (e.g. sent from a private mailbox)",
    )
    p.add_argument("--reason", help="why (required with --as; kept in the audit log)")
    p.add_argument("--by", help="who is releasing it (default: the login name)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inbox_release)

    people = sub.add_parser("people", help="the organisation").add_subparsers(
        dest="sub", required=True
    )
    p = people.add_parser("import", help="create or update people from a CSV file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=cmd_people_import)
    p = people.add_parser("list", help="the people on record: manager, HR partner, role")
    p.add_argument("--all", action="store_true", help="people who left too")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_people_list)
    p = people.add_parser(
        "mail-ok", help="clear an address flagged as failing and send what was held for it"
    )
    p.add_argument("email")
    p.add_argument("--reason", required=True, help="why it works again (goes in the audit log)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_people_mail_ok)

    mail = sub.add_parser("mail", help="outbound and inbound mail").add_subparsers(
        dest="sub", required=True
    )
    p = mail.add_parser("status", help="transport, inbox cursors, outbox, failing addresses")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_mail_status)
    p = mail.add_parser(
        "test-send", help="send a test message and check the lookup that prevents resends"
    )
    p.add_argument("address")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_mail_test_send)

    config = sub.add_parser("config", help="configuration").add_subparsers(
        dest="sub", required=True
    )
    p = config.add_parser("check", help="validate settings, cadences and templates")
    p.add_argument("--json", action="store_true", help="print the problems as JSON")
    p.set_defaults(func=cmd_config_check)

    templates = sub.add_parser("templates", help="email templates").add_subparsers(
        dest="sub", required=True
    )
    p = templates.add_parser("preview", help="render a template with sample data")
    p.add_argument("name")
    p.add_argument("--html", action="store_true", help="print the HTML part")
    p.add_argument("--json", action="store_true", help="print subject, text and HTML as JSON")
    p.set_defaults(func=cmd_templates_preview)
    p = templates.add_parser("list", help="list templates")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_templates_list)

    calendars = sub.add_parser(
        "calendars", help="connected calendars (Google, Microsoft 365, CalDAV)"
    ).add_subparsers(dest="sub", required=True)
    p = calendars.add_parser(
        "connect",
        help="check access to each organizer's calendar (a full sync) and open push channels",
    )
    p.add_argument(
        "--calendar",
        action="append",
        default=[],
        metavar="EMAIL",
        help="only this organizer (repeatable; default: every manager with a series)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_calendars_connect)
    p = calendars.add_parser("status", help="each calendar: last sync, full sync, push channel")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_calendars_status)
    p = calendars.add_parser("sync", help="read changes from the calendars now")
    p.add_argument(
        "--calendar",
        action="append",
        default=[],
        metavar="EMAIL",
        help="only this calendar (repeatable; default: every known one)",
    )
    p.add_argument("--full", action="store_true", help="a full sync instead of an incremental")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_calendars_sync)

    p = sub.add_parser(
        "export",
        help="an employee's whole timeline (check-ins, records and their versions, PIPs, "
        "escalations) as JSON, HTML or PDF, with its sources",
        description="Export everything on record about one employee, each statement citing "
        "its source (the raw message's SHA-256, the audit entry). --bundle also writes a zip "
        "of the raw source messages (.eml), the sent messages, the invites (.ics), "
        "timeline.json and a MANIFEST.txt of their SHA-256. --as names the reader, who must "
        "be in the employee's manager chain, their HR partner or an HR admin "
        "(config/privacy.toml); the export is written to the audit log.",
    )
    p.add_argument("employee", metavar="EMPLOYEE", help="the employee's email address")
    p.add_argument(
        "--as",
        dest="reader",
        required=True,
        metavar="READER",
        help="who reads it: a manager in their chain, their HR partner or an HR admin",
    )
    p.add_argument("--format", choices=["json", "html", "pdf"], default="json")
    p.add_argument(
        "--timezone",
        metavar="ZONE",
        help="show times in this IANA zone (default: the reader's, else default_timezone)",
    )
    p.add_argument("--out", metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--bundle", metavar="ZIP", help="also write the sources bundle here")
    p.set_defaults(func=cmd_export)

    privacy_cmd = sub.add_parser(
        "privacy", help="legal holds, deletion requests and the retention sweep"
    ).add_subparsers(dest="sub", required=True)
    p = privacy_cmd.add_parser(
        "hold", help="place, release or list legal holds (a hold stops every erasure)"
    )
    p.add_argument("action", choices=("place", "release", "list"))
    p.add_argument("employee", nargs="?", help="the person's email address")
    p.add_argument("--reason", help="the matter the hold is for (place)")
    p.add_argument("--all", action="store_true", help="list released holds too")
    p.add_argument("--by", help="who asks (default: operator:<login>)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_privacy_hold)
    p = privacy_cmd.add_parser(
        "erase",
        help="a deletion request: remove a former employee's personal data (unless held)",
        description="Removes the person's record content, mail, goals, warnings, comments, "
        "name and address; keeps the skeleton (times, states, ids) and says so in the audit "
        "log without the content. Under a legal hold the request is kept and carried out "
        "once the hold is released.",
    )
    p.add_argument("employee")
    p.add_argument("--reference", required=True, help="the ticket or letter it answers")
    p.add_argument("--by", help="who asks (default: operator:<login>)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_privacy_erase)
    p = privacy_cmd.add_parser(
        "sweep", help="apply the retention periods now (the service runs it daily)"
    )
    p.add_argument("--by", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_privacy_sweep)

    audit_cmd = sub.add_parser("audit", help="the audit log").add_subparsers(
        dest="sub", required=True
    )
    p = audit_cmd.add_parser(
        "verify",
        help="check the hash chain of every organization's audit log; exit 1 if broken",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_audit_verify)

    pip = sub.add_parser("pip", help="performance improvement plans").add_subparsers(
        dest="sub", required=True
    )
    p = pip.add_parser("start", help="start a PIP from a template in config/pips/")
    p.add_argument("employee", help="the employee's email address")
    p.add_argument("--template", required=True, help="a template name, e.g. 90-day")
    p.add_argument(
        "--goals", required=True, help="goals file: TOML [[goal]] or CSV goal,success_criteria,…"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_pip_start)
    p = pip.add_parser("extend", help="extend the active PIP; open reviews move with it")
    p.add_argument("employee")
    p.add_argument("--days", type=int, required=True)
    p.add_argument("--reason", default="")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_pip_extend)
    p = pip.add_parser("close", help="close the active PIP with its outcome")
    p.add_argument("employee")
    p.add_argument("--outcome", required=True, choices=("successful", "extended", "ended"))
    p.add_argument("--note", default="")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_pip_close)
    p = pip.add_parser("list", help="every PIP with its state and documentation")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pip_list)

    warning = sub.add_parser("warning", help="written warnings and corrective actions")
    wsub = warning.add_subparsers(dest="sub", required=True)
    p = wsub.add_parser("create", help="record one and send it to the employee to acknowledge")
    p.add_argument("employee")
    p.add_argument("--reason", required=True)
    p.add_argument("--expectation", default="")
    p.add_argument("--consequence", default="")
    p.add_argument(
        "--kind", default="written_warning", choices=("written_warning", "corrective_action")
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_warning_create)

    goals = sub.add_parser("goals", help="people's goals (versioned)").add_subparsers(
        dest="sub", required=True
    )
    p = goals.add_parser(
        "import",
        help="create or update goals from a CSV file (employee_email,title,success_criteria"
        "[,owner,due,status,key,note]); a new version only where something changed",
    )
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=cmd_goals_import)
    p = goals.add_parser("list", help="goals with their latest version")
    p.add_argument("employee", nargs="?", help="only this person's")
    p.add_argument("--all", action="store_true", help="done and dropped goals too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_goals_list)
    p = goals.add_parser("show", help="every version of one goal")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_goals_show)
    p = goals.add_parser("set", help="create a goal or append a version with what is given")
    p.add_argument("employee", help="whose goal (their email address)")
    p.add_argument("title", nargs="?", help="the goal's title (finds it by its key, or names it)")
    p.add_argument("--id", type=int, help="the goal's id (from goals list)")
    p.add_argument("--key", help="find (or create) it by this key instead of the title")
    p.add_argument("--criteria", help="measurable success criteria")
    p.add_argument("--owner", help="employee, manager or an address on record")
    p.add_argument("--due", type=_date_arg, help="YYYY-MM-DD")
    p.add_argument("--status", help="open, on_track, at_risk, done, dropped")
    p.add_argument("--note", help="kept with the new version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_goals_set)

    development = sub.add_parser(
        "development", help="development plans: skills, agreed support, career notes"
    ).add_subparsers(dest="sub", required=True)
    p = development.add_parser("add", help="add an item to a person's development plan")
    p.add_argument("employee")
    p.add_argument("--kind", required=True, choices=("skill", "support", "career_note"))
    p.add_argument("--text", required=True)
    p.add_argument(
        "--discuss-by", type=_date_arg, help="on agendas from this date (YYYY-MM-DD) until closed"
    )
    p.add_argument("--goal", type=int, help="the goal it serves (id)")
    p.add_argument("--pip-goal", type=int, help="the PIP goal it serves (id)")
    p.add_argument("--record", type=int, help="the conversation record it was agreed in (id)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_development)
    p = development.add_parser("list", help="open development items")
    p.add_argument("employee", nargs="?")
    p.add_argument("--all", action="store_true", help="closed ones too")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_development)
    p = development.add_parser("close", help="mark an item done or dropped (or open again)")
    p.add_argument("id", type=int)
    p.add_argument("--status", default="done", choices=("done", "dropped", "open"))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_development)

    roles = sub.add_parser("roles", help="role expectations (config/roles)").add_subparsers(
        dest="sub", required=True
    )
    p = roles.add_parser(
        "check", help="validate config/roles/*.toml and the roles the people on record have"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_roles_check)

    jobs_cmd = sub.add_parser(
        "jobs", help="the work queue: status, failed jobs (dead letters), retry"
    ).add_subparsers(dest="sub", required=True)
    p = jobs_cmd.add_parser("status", help="queued, leased and failed jobs by kind")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)
    p = jobs_cmd.add_parser(
        "failed", help="jobs that failed for good (max_attempts, or refused by a provider)"
    )
    p.add_argument("--kind", help="only this kind (send, agenda, escalate, ...)")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)
    p = jobs_cmd.add_parser("retry", help="make failed jobs due again (audited)")
    p.add_argument("ids", nargs="*", type=int, metavar="ID")
    p.add_argument("--all", action="store_true", help="every failed job (of --kind)")
    p.add_argument("--kind")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_jobs)

    db = sub.add_parser("db", help="database").add_subparsers(dest="sub", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)

    report = sub.add_parser("report", help="reports for HR").add_subparsers(
        dest="sub", required=True
    )
    p = report.add_parser(
        "consistency",
        help="per manager and team: completion, documentation delay, overdue items, PIPs "
        "(consistency.html and consistency.csv)",
    )
    p.add_argument("--out", default="report-out", help="folder to write into (default: report-out)")
    p.add_argument("--from", dest="date_from", type=_date_arg, help="first day (UTC), YYYY-MM-DD")
    p.add_argument("--to", dest="date_to", type=_date_arg, help="last day (UTC), inclusive")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=cmd_report_consistency)

    org_cmd = sub.add_parser(
        "org", help="client organizations: their settings folder and encrypted secrets"
    ).add_subparsers(dest="sub", required=True)
    p = org_cmd.add_parser(
        "create", help="add an organization and config/orgs/SLUG/ with a commented settings.toml"
    )
    p.add_argument("slug", help="short name: lower-case letters, digits, '-' (e.g. north-wind)")
    p.add_argument("--name", required=True, help="the organization's name, shown in its emails")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_org_create)
    p = org_cmd.add_parser("list", help="every organization: people, folder, secrets, keys")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_org_list)
    p = org_cmd.add_parser(
        "config", help="the settings one organization runs with (secrets: set or not)"
    )
    p.add_argument("slug")
    p.add_argument(
        "--check",
        action="store_true",
        help="validate its folder (settings, cadences, templates, …) and secrets; exit 78 on "
        "problems",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_org_config)
    secret = org_cmd.add_parser(
        "secret", help="an organization's passwords and keys, encrypted at rest"
    ).add_subparsers(dest="action", required=True)
    p = secret.add_parser(
        "set", help="store one secret, read from standard input (asked, hidden, on a terminal)"
    )
    p.add_argument("slug")
    p.add_argument("name", help="caldav_password, google_credentials_file (the key's JSON), …")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_org_secret_set)
    p = secret.add_parser("unset", help="remove one secret")
    p.add_argument("slug")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_org_secret_unset)
    p = secret.add_parser("list", help="names, key ids and times (never a value)")
    p.add_argument("slug")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_org_secret_list)
    p = secret.add_parser(
        "rotate", help="re-encrypt every secret under the first key of AUTOMATION_SECRETS_KEYS"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_org_secret_rotate)
    _display_options_everywhere(parser)
    return parser


def _org_option(parser: argparse.ArgumentParser, default: Any = None) -> None:
    action = parser.add_argument(
        "--org",
        dest="org_slug",
        metavar="SLUG",
        default=default,
        help="act for this organization, with its own settings, folder and secrets (default: "
        "$AUTOMATION_ORGANIZATION when it names a client, else the deployment's own; "
        "`automation org list` shows them)",
    )
    action.completer = _complete_org  # type: ignore[attr-defined]


def _complete_org(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """The organizations' slugs for the shell: from the database, else the folders under
    config/orgs/. Never fails: a completion that cannot be offered is none."""
    try:
        from automation.settings import load_settings

        settings = load_settings(getattr(parsed_args, "config", None))
    except Exception:  # noqa: BLE001 - completion must never print a traceback
        return []
    slugs: set[str] = {settings.organization}
    try:
        slugs |= set(_organizations(settings))
    except Exception:  # noqa: BLE001
        from automation.organizations import ORGS_FOLDER

        with contextlib.suppress(OSError):
            slugs |= {p.name for p in (settings.config_dir / ORGS_FOLDER).iterdir() if p.is_dir()}
    return sorted(slug for slug in slugs if slug.startswith(prefix))


def _display_options(parser: argparse.ArgumentParser, default: Any = False) -> None:
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="no progress bars or remarks on stderr (errors still)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        default=default,
        help="no progress bars (they only ever show when stderr is a terminal)",
    )


# Services and shell code: no progress to show, and their start lines on stderr are what a
# service manager's log and the tests wait for, so -q there would promise what it cannot do.
_NO_DISPLAY_OPTIONS = frozenset({"run", "web", "worker", "completion"})


def _display_options_everywhere(parser: argparse.ArgumentParser) -> None:
    """-q/--quiet, --no-progress and --org after the command as well as before it. The
    commands' copies default to SUPPRESS: argparse lets a subcommand's defaults overwrite
    what was given before it, and `automation -q demo` must stay quiet."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if any(isinstance(a, argparse._SubParsersAction) for a in child._actions):
                    _display_options_everywhere(child)
                else:
                    if name not in _NO_DISPLAY_OPTIONS:
                        _display_options(child, argparse.SUPPRESS)
                    if "--org" not in child._option_string_actions:  # grant/revoke have theirs
                        _org_option(child, argparse.SUPPRESS)


def _console_password(args: argparse.Namespace) -> str | None:
    """The new account's password: from standard input with --password-stdin (scripts), else
    asked twice on the terminal; None for an account that will sign in with OpenID Connect."""
    import getpass

    if args.no_password:
        return None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password for the console: ")
    if getpass.getpass("again: ") != first:
        raise AutomationError("the two passwords differ; nothing was created")
    return first


def cmd_console_account_add(args: argparse.Namespace) -> int:
    from automation.services.accounts import AccountError, create_account

    password = _console_password(args)

    def action(rt, session, org, actor):  # type: ignore[no-untyped-def]
        account = create_account(
            session, org, email=args.email, name=args.name or "", role=args.role,
            now=rt.now(), actor=actor, password=password,
        )  # fmt: skip
        return {"id": account.id, "email": account.email, "role": account.role}

    created = _operator_call(args, action, AccountError)
    if created is None:
        return EX_DATAERR
    if args.json:
        print_json(_for_org(args, created))
    else:
        print(f"created {created['role']} {created['email']}")
    return EX_OK


def cmd_console_account_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from automation.models import ConsoleAccount
    from automation.services.accounts import granted_organizations

    def action(rt, session, org, actor):  # type: ignore[no-untyped-def]
        return [
            {
                "email": a.email,
                "name": a.name,
                "role": a.role,
                "active": a.active,
                "sign_in": "password" if a.password_hash else "openid" if a.oidc_subject else "-",
                "last_sign_in_at": a.last_sign_in_at,
                "clients": [o.slug for o in granted_organizations(session, a)],
            }
            for a in session.scalars(
                select(ConsoleAccount)
                .where(ConsoleAccount.organization_id == org)
                .order_by(ConsoleAccount.email)
            )
        ]

    # In the system scope (a consultant's clients are other organizations), filtered to the
    # organization the command acts for.
    rows = _operator_call(args, action, AutomationError, system=True) or []
    if args.json:
        print_json(rows)
        return EX_OK
    print_table(
        ["email", "name", "role", "state", "sign_in", "last_sign_in_at (UTC)", "clients"],
        [
            (r["email"], r["name"], r["role"], "active" if r["active"] else "disabled",
             r["sign_in"], r["last_sign_in_at"] or "never", ", ".join(r["clients"]) or "-")
            for r in rows
        ],
        empty="no console accounts: `automation console account add` creates one",
    )  # fmt: skip
    return EX_OK


def cmd_console_account_active(args: argparse.Namespace) -> int:
    from automation.services.accounts import AccountError, set_active

    def action(rt, session, org, actor):  # type: ignore[no-untyped-def]
        return set_active(session, org, args.email, args.active, rt.now(), actor).email

    email = _operator_call(args, action, AccountError)
    if email is None:
        return EX_DATAERR
    if args.json:
        print_json(_for_org(args, {"email": email, "active": args.active}))
    else:
        print(f"{'enabled' if args.active else 'disabled (its sessions ended)'}: {email}")
    return EX_OK


def cmd_console_account_grant(args: argparse.Namespace) -> int:
    """Grant (or revoke) a consultant's access to a client organization: the account is in the
    configured organization, the client is named by its slug. Granting twice, or revoking what
    was not granted, changes nothing and says so."""
    from sqlalchemy import select

    from automation.models import ConsoleAccount, Organization
    from automation.services.accounts import (
        AccountError,
        grant,
        granted_organizations,
        revoke,
    )

    def action(rt, session, org, actor):  # type: ignore[no-untyped-def]
        email = args.email.strip().lower()
        account = session.scalar(
            select(ConsoleAccount).where(
                ConsoleAccount.organization_id == org, ConsoleAccount.email == email
            )
        )
        if account is None:
            raise AccountError(f"{email} has no console account")
        client = session.scalar(select(Organization).where(Organization.slug == args.org))
        if client is None:
            known = ", ".join(
                session.scalars(select(Organization.slug).order_by(Organization.slug))
            )
            raise AccountError(
                f"no organization {args.org!r} (known: {known or 'none'}); create it with "
                f"`automation org create {args.org} --name NAME`"
            )
        before = {o.id for o in granted_organizations(session, account)}
        if args.granting:
            grant(session, account, client.id, rt.now(), actor)
            changed = client.id not in before
        else:
            changed = revoke(session, account, client.id, rt.now(), actor)
        return {
            "email": account.email,
            "organization": client.slug,
            "granted": args.granting,
            "changed": changed,
            "clients": [o.slug for o in granted_organizations(session, account)],
        }

    # In the system scope: the client is another organization, and the grant is audited in
    # both organizations' logs. The account is in the deployment's own organization.
    result = _operator_call(args, action, AccountError, system=True)
    if result is None:
        return EX_DATAERR
    if args.json:
        print_json(result)
        return EX_OK
    email, slug = result["email"], result["organization"]
    if args.granting:
        print(f"granted {email} access to {slug}" if result["changed"] else
              f"{email} has access to {slug} already")  # fmt: skip
    else:
        print(f"revoked {email}'s access to {slug}" if result["changed"] else
              f"{email} had no access to {slug}: nothing to revoke")  # fmt: skip
    return EX_OK


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the shell code that completes `automation` commands and options."""
    import argcomplete

    print(argcomplete.shellcode(["automation"], shell=args.shell), end="")
    return EX_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions: answer and exit
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        refused = _choose_organization(args)
        if refused is not None:
            return refused
        return args.func(args)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EX_CONFIG
    except ImportRejected as exc:
        print(exc, file=sys.stderr)
        return EX_DATAERR
    except (AutomationError, LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader stopped early (`automation people list | head`): no traceback. Point
        # stdout at /dev/null so the interpreter's last flush does not fail again, and exit
        # as a process ended by SIGPIPE does (128 + 13), like the other tools in a pipe.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
