"""The `automation` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from automation.errors import AutomationError, ConfigError, ImportRejected

EX_OK, EX_USAGE, EX_DATAERR, EX_TEMPFAIL, EX_CONFIG = 0, 64, 65, 75, 78


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from automation.settings import load_settings

    return load_settings(args.config)


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

    summary = run_demo(_settings(args), Path(args.out), weeks=args.weeks, seed=args.seed)
    print(json.dumps(asdict(summary)) if args.json else format_summary(summary))
    return EX_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Tick and, on the embedded default, an in-process worker, until SIGINT/SIGTERM."""
    import dramatiq

    from automation.services.loop import bootstrap, tick
    from workers.broker import QUEUE, broker

    rt = _runtime(args, in_process=True)
    bootstrap(rt)
    stub = rt.settings.broker_url.startswith("stub")
    worker = dramatiq.Worker(broker, worker_threads=args.threads) if stub else None
    if worker:
        worker.start()
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"automation: running on {rt.settings.database.split('@')[-1]} "
        f"({'in-process worker' if stub else 'broker ' + rt.settings.broker_url.split('@')[-1]})"
        "; Ctrl-C stops",
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
            for _ in range(rt.settings.tick_seconds * 10):
                if stopping:
                    break
                time.sleep(0.1)
    finally:
        if worker:
            worker.stop()
    return EX_OK


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
    print(f"stored inbound message {stored.inbound_id}: {result}")
    return EX_OK


def cmd_people_import(args: argparse.Namespace) -> int:
    from automation.db import make_engine, migrate, session_factory, transaction
    from automation.people import ensure_organization, import_people_file

    settings = _settings(args)
    engine = make_engine(settings.database)
    migrate(engine)
    from automation.clock import SystemClock

    now = SystemClock().now()
    with transaction(session_factory(engine)) as session:
        org = ensure_organization(session, settings.organization, settings.organization_name, now)
        result = import_people_file(session, org.id, Path(args.file), now)
    print(
        f"imported {args.file}: {result.created} created, {result.updated} updated, "
        f"{result.unchanged} unchanged"
    )
    return EX_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    from automation.config import check_all

    settings, problems = check_all(args.config)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return EX_CONFIG
    assert settings is not None
    print(f"configuration OK ({settings.source}, {settings.config_dir}, {settings.templates_dir})")
    return EX_OK


def cmd_templates_preview(args: argparse.Namespace) -> int:
    from automation.emails import render, render_text, template_names
    from automation.template_samples import sample_context

    settings = _settings(args)
    names = template_names(settings.templates_dir)
    if args.name not in names and args.name != "invite/description.txt":
        print(f"no template named {args.name!r}; known: {', '.join(names)}", file=sys.stderr)
        return EX_USAGE
    context = sample_context(args.name)
    if args.name == "invite/description.txt":
        print(render_text(settings.templates_dir, args.name, context))
        return EX_OK
    rendered = render(settings.templates_dir, args.name, context)
    print(f"Subject: {rendered.subject}\n")
    print(rendered.html if args.html else rendered.text)
    return EX_OK


def cmd_templates_list(args: argparse.Namespace) -> int:
    from automation.emails import template_names

    print("\n".join(template_names(_settings(args).templates_dir)))
    return EX_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from automation.db import make_engine, migrate

    settings = _settings(args)
    migrate(make_engine(settings.database))
    print(f"database at {settings.database.split('@')[-1]} is up to date")
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
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the whole loop over simulated weeks, on local files")
    p.add_argument("--weeks", type=int, default=6)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument("--json", action="store_true", help="print one JSON object of counts")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run the service: the tick, and workers on the embedded set-up")
    p.add_argument("--once", action="store_true", help="one tick, then exit")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("worker", help="start dramatiq workers on the configured broker")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=4)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("ingest-mail", help="store one message from stdin (an MTA pipe transport)")
    p.set_defaults(func=cmd_ingest_mail)

    people = sub.add_parser("people", help="the organisation").add_subparsers(
        dest="sub", required=True
    )
    p = people.add_parser("import", help="create or update people from a CSV file")
    p.add_argument("file")
    p.set_defaults(func=cmd_people_import)

    config = sub.add_parser("config", help="configuration").add_subparsers(
        dest="sub", required=True
    )
    config.add_parser("check", help="validate settings, cadences and templates").set_defaults(
        func=cmd_config_check
    )

    templates = sub.add_parser("templates", help="email templates").add_subparsers(
        dest="sub", required=True
    )
    p = templates.add_parser("preview", help="render a template with sample data")
    p.add_argument("name")
    p.add_argument("--html", action="store_true", help="print the HTML part")
    p.set_defaults(func=cmd_templates_preview)
    templates.add_parser("list", help="list templates").set_defaults(func=cmd_templates_list)

    db = sub.add_parser("db", help="database").add_subparsers(dest="sub", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return EX_CONFIG
    except ImportRejected as exc:
        print(exc, file=sys.stderr)
        return EX_DATAERR
    except AutomationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
