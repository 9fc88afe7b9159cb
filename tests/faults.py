"""Fault harness: kill -9 `automation worker` processes at random moments of a real run.

One :class:`FaultRun` builds a world on a fresh PostgreSQL schema (an organisation of
managers and reports, check-ins planned three weeks in the past so invites, agendas and
follow-up prompts are all due on the real clock), then plays the service as separate
processes that share nothing but the database and the broker:

- ``automation run --once`` subprocesses are the tick (they read the Maildir inbox and enqueue
  due task ids on Redis or RabbitMQ);
- one ``automation worker`` subprocess (dramatiq's process manager and its children, in a
  process group of their own) claims the tasks. At moments drawn from a seeded
  :class:`random.Random` the harness kills the whole group with ``os.killpg(pid, SIGKILL)``
  and starts a new one; ``AUTOMATION_LEASE_SECONDS`` is small, so the leases the dead worker
  held expire quickly and the tick hands those tasks out again;
- while the killing goes on, the harness answers every follow-up prompt that reached the
  outbox with one reply from the manager (to the prompt's signed Reply-To), delivered into
  the Maildir inbox as an MTA would.

Then it stops killing, lets the leases expire and drains (ticks until no task is due or
leased, every reply is recorded and every email sent), and counts, from the fakes first:

- the Maildir outbox (``data_dir/mail/outbox/new``, one file per sent Message-ID): every sent
  ``OutboundMessage`` on disk exactly once, nothing on disk the database does not know, no
  Message-ID twice, and no file written twice (a watcher thread notes each file's inode when
  it first appears; a second send of the same Message-ID replaces the file with a new inode);
- the local calendars (``data_dir/calendars/<email>.ics``): each active series' UID exactly
  once (one master VEVENT) in the organizer's and in the attendee's file;
- the replies: each delivered reply stored once, exactly one ``ConversationRecord`` whose
  source is that message, one version per check-in, and one confirmation sent;
- the task table: nothing failed, nothing left due.

The same run, other faults (:class:`FaultConfig`, combinable with the kills):

- **Provider faults** (``calendar="google"``, ``mail="smtp"``): series go to the Google
  Calendar fake (``tests/fakes/google_calendar.py``) through a :class:`FaultyProxy` that
  answers ``provider_fault_ratio`` of the API requests with 429/503 without forwarding them
  and forwards ``provider_lost_ratio`` but replaces the answer with a 503 (the write happened,
  the retry must be idempotent); the token endpoint is reached directly. Email goes over SMTP
  to the aiosmtpd server of ``tests/fakes/smtp_server.py``, which answers
  ``smtp_fault_ratio`` of the transactions with 421 at MAIL FROM or 451 at DATA and, on
  ``smtp_lost_ratio``, stores the message and closes the connection before its 250. Like
  Gmail and Exchange Online, the server files every accepted message in the Sent folder of a
  real Dovecot (``smtp_sent_copy = "server"``), which the workers search by Message-ID before
  a retried send. Counted at the fakes: every series' iCalUID exactly once (one master event)
  in its organizer's Google calendar and nowhere else, every sent Message-ID exactly once
  among the messages the SMTP server accepted.
- **Dropped database connections** (``db_drop_every``): the service's processes connect with
  an ``application_name`` of this run's own, and a thread terminates every PostgreSQL backend
  with that name (``pg_terminate_backend``) at seeded intervals while the run goes on: pooled
  idle connections and connections in the middle of a transaction alike. Nobody else's
  connections: the harness's own use another name. A tick that loses its connection exits
  non-zero and counts in ``ticks_failed`` (the next one, as cron's next, does the work).
- **Broker outages** (:meth:`FaultRun.redis_outage`, :meth:`FaultRun.rabbitmq_outage`): the
  broker stopped mid-run while ticks fail against it, then started again.

:meth:`FaultRun.result` returns those counts as a :class:`FaultResult`; ``problems`` lists
every violation in words (empty when the run was exactly-once). ``tests/test_faults.py`` runs
the CI size, ``bench/faults.py`` the full size.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.engine import make_url

# What a worker or tick may log when its database connection is terminated under it.
DROPPED = ("terminating connection", "server closed the connection", "OperationalError")

ZONES = (
    "Europe/London",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Tokyo",
    "America/Los_Angeles",
    "Australia/Sydney",
)


@dataclass(frozen=True)
class FaultConfig:
    employees: int = 20
    managers: int = 3
    kills: int = 5
    seed: int = 7
    lease_seconds: int = 5
    processes: int = 1
    threads: int = 2
    # A kill comes this many seconds (uniform) after the worker it kills was started.
    kill_after: tuple[float, float] = (1.0, 4.0)
    days_back: int = 21
    # A quiet machine drains in seconds; the suite's four processes on two cores once took
    # a provider-fault run past 120 s (not reproduced since, the cause not known).
    drain_timeout: float = 300.0
    # The run lasts at least this long, kills or not (for faults that are not kills).
    run_seconds: float = 0.0
    # Where the side effects go: "local" calendar files or the "google" fake behind a
    # FaultyProxy; the "maildir" outbox or "smtp" to aiosmtpd (sent copies in Dovecot).
    calendar: str = "local"
    mail: str = "maildir"
    provider_fault_ratio: float = 0.0  # Google API requests answered 429/503, not forwarded
    provider_lost_ratio: float = 0.0  # forwarded, the answer replaced by a 503
    smtp_fault_ratio: float = 0.0  # SMTP transactions answered 421 (MAIL FROM) or 451 (DATA)
    smtp_lost_ratio: float = 0.0  # stored, then the connection closed before the 250
    google_batch_size: int = 50  # series per batch request (fewer: more requests to fault)
    # Terminate the service's PostgreSQL backends every (uniform) seconds during the run.
    db_drop_every: tuple[float, float] | None = None


@dataclass
class FaultResult:
    kills: int = 0
    leases_orphaned: int = 0  # tasks leased by a worker at the moment it was killed
    worker_starts: int = 0
    ticks: int = 0
    ticks_failed: int = 0  # ticks that found the broker down
    broker_messages_lost: int = 0  # messages in Redis when it was stopped without saving
    worker_exits: int = 0  # workers found exited on their own (and restarted)
    tasks: int = 0
    retries_advanced: int = 0  # tasks whose retry back-off the drain made due at once
    retry_errors: Counter[str] = field(default_factory=Counter)  # their last errors
    emails_sent: int = 0  # OutboundMessage rows in state sent
    emails_on_disk: int = 0
    emails_by_kind: dict[str, int] = field(default_factory=dict)
    emails_lost: int = 0  # queued but never sent, or sent but not on disk
    emails_duplicate: int = 0  # a Message-ID twice on disk, or a file written twice
    emails_unknown: int = 0  # on disk, but not recorded as sent
    emails_found_sent: int = 0  # retried sends that found the earlier attempt (Sent folder)
    series: int = 0
    events: int = 0  # master VEVENTs over all calendar files
    events_lost: int = 0
    events_duplicate: int = 0
    prompts: int = 0
    replies: int = 0
    records: int = 0
    replies_lost: int = 0  # delivered, but no record
    records_duplicate: int = 0
    confirmations: int = 0
    confirmations_lost: int = 0
    tasks_failed: int = 0
    tasks_due: int = 0
    event_checks: int = 0  # (series, calendar) pairs checked: 2 per series locally, 1 on Google
    emails_where: str = "on disk"  # or "at the SMTP server"
    provider_faults: Counter[str] = field(default_factory=Counter)  # injected, by fake and kind
    provider_requests: int = 0  # requests the Google proxy received
    db_drops: int = 0  # rounds of pg_terminate_backend
    backends_terminated: int = 0  # service connections they ended
    broker_messages_kept: int = 0  # messages in RabbitMQ when it was stopped (durable)
    tick_errors: Counter[str] = field(default_factory=Counter)  # last line of failed ticks
    tracebacks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def items(self) -> int:
        """Everything checked for exactly once: emails, events, replies."""
        return self.emails_sent + self.event_checks + self.replies

    @property
    def bad(self) -> int:
        return (
            self.emails_lost
            + self.emails_duplicate
            + self.emails_unknown
            + self.events_lost
            + self.events_duplicate
            + self.replies_lost
            + self.records_duplicate
            + self.confirmations_lost
            + self.tasks_failed
        )

    def row(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.emails_by_kind.items()))
        faults = self.provider_faults
        return (
            f"kills {self.kills} (leases orphaned {self.leases_orphaned}), ticks {self.ticks}, "
            f"tasks {self.tasks} (retries advanced {self.retries_advanced}); "
            f"emails {self.emails_sent} sent / {self.emails_on_disk} {self.emails_where} "
            f"({kinds}), "
            f"lost {self.emails_lost}, duplicate {self.emails_duplicate}, "
            f"unknown {self.emails_unknown}"
            + (
                f", found sent by a retry {self.emails_found_sent}"
                if self.emails_found_sent
                else ""
            )
            + "; "
            f"series {self.series}, events {self.events}, lost {self.events_lost}, "
            f"duplicate {self.events_duplicate}; "
            f"prompts {self.prompts}, replies {self.replies}, records {self.records}, "
            f"lost {self.replies_lost}, duplicate {self.records_duplicate}, "
            f"confirmations {self.confirmations} (lost {self.confirmations_lost}); "
            f"failed {self.tasks_failed}, due {self.tasks_due}; "
            + (
                f"injected faults: {', '.join(f'{k} {v}' for k, v in sorted(faults.items()))}"
                + (
                    f" (Google proxy requests {self.provider_requests})"
                    if self.provider_requests
                    else ""
                )
                + "; "
                if faults
                else ""
            )
            + (
                f"database: {self.db_drops} drops ended {self.backends_terminated} connections; "
                if self.db_drops
                else ""
            )
            + (
                f"broker outage: {self.broker_messages_lost} queued messages lost, "
                f"{self.broker_messages_kept} kept; "
                if self.broker_messages_lost or self.broker_messages_kept
                else ""
            )
            + (
                f"{self.ticks_failed} ticks failed, {self.worker_exits} worker exits; "
                if self.ticks_failed or self.worker_exits
                else ""
            )
            + f"worker tracebacks {len(self.tracebacks)}; {self.seconds:.0f} s"
        )


def people_csv(employees: int, managers: int) -> str:
    """A CEO, an HR partner and ``managers`` managers reporting to the CEO, and ``employees``
    reports spread over the managers, in six time zones."""
    rows = ["email,name,timezone,manager_email,hr_partner_email"]
    rows.append("ceo@acme.test,Cleo Ceo,Europe/London,,hr@acme.test")
    rows.append("hr@acme.test,Hana Hr,Europe/London,ceo@acme.test,")
    for m in range(managers):
        zone = ZONES[m % len(ZONES)]
        rows.append(f"m{m}@acme.test,Manager M{m},{zone},ceo@acme.test,hr@acme.test")
    for e in range(employees):
        m = e % managers
        zone = ZONES[(m + e // managers) % len(ZONES)]
        rows.append(f"e{e}@acme.test,Employee E{e},{zone},m{m}@acme.test,hr@acme.test")
    return "\n".join(rows) + "\n"


def flush_broker(url: str) -> None:
    """Start from an empty queue (as tests/test_brokers.py does)."""
    if url.startswith("redis"):
        from dramatiq.brokers.redis import RedisBroker

        broker = RedisBroker(url=url)
        broker.client.flushdb()
        broker.close()
        return
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=url)
    broker.declare_queue("automation")
    broker.flush("automation")
    broker.close()


class OutboxWatcher(threading.Thread):
    """Notes the inode of every outbox file when it first appears. A second send of the same
    Message-ID writes a new file over it (tmp/ then rename): a new inode, seen at any later
    scan, however late. A scan every 0.1 s: a second send comes from a retry, after a lease
    of seconds ran out, long after the first scan saw the first file (and scanning thousands
    of files a hundred times a second would take a core from the service under test)."""

    def __init__(self, folder: Path):
        super().__init__(daemon=True)
        self.folder = folder
        self.first: dict[str, int] = {}
        self.rewritten: set[str] = set()
        self.stopping = threading.Event()

    def scan(self) -> None:
        if not self.folder.is_dir():
            return
        for entry in os.scandir(self.folder):
            inode = entry.inode()
            known = self.first.setdefault(entry.name, inode)
            if known != inode:
                self.rewritten.add(entry.name)

    def run(self) -> None:
        while not self.stopping.is_set():
            self.scan()
            self.stopping.wait(0.1)

    def stop(self) -> None:
        self.stopping.set()
        if self.ident is not None:  # started
            self.join(5)
        self.scan()


class ConnectionDropper(threading.Thread):
    """Ends every PostgreSQL backend whose ``application_name`` is ``name`` (the service's
    processes of one run, and nobody else's) at seeded intervals of ``every`` seconds, through
    an admin connection of its own (another ``application_name``)."""

    def __init__(self, admin_url: str, name: str, every: tuple[float, float], seed: int):
        super().__init__(daemon=True)
        self.admin_url, self.name, self.every = admin_url, name, every
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self.drops = 0
        self.terminated = 0

    def drop(self, engine: Any) -> None:
        with engine.connect() as conn:
            ended = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND application_name = :name"
                ),
                {"name": self.name},
            ).scalars()
            self.terminated += sum(1 for ok in ended if ok)
            conn.commit()
        self.drops += 1

    def run(self) -> None:
        engine = create_engine(self.admin_url, pool_pre_ping=True)
        try:
            while not self.stopping.wait(self.rng.uniform(*self.every)):
                self.drop(engine)
        finally:
            engine.dispose()

    def stop(self) -> None:
        self.stopping.set()
        if self.ident is not None:
            self.join(30)


class FaultRun:
    """One run: :meth:`setup`, :meth:`run` (kills), :meth:`drain`, :meth:`result`."""

    def __init__(self, pg_url: str, broker_url: str, folder: Path, config: FaultConfig):
        self.pg_url, self.broker_url, self.folder, self.config = pg_url, broker_url, folder, config
        self.rng = random.Random(config.seed)
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_logs: list[Path] = []
        self.kill_logs: set[Path] = set()
        self.replied: dict[int, str] = {}  # prompt OutboundMessage id -> reply Message-ID
        self.result_ = FaultResult()
        self.started = time.monotonic()
        self.watcher = OutboxWatcher(folder / "mail" / "outbox" / "new")
        self.rt: Any = None
        self.env: dict[str, str] = {}
        # The service's processes and the harness connect under names of this run's own, so
        # the dropper ends exactly the service's connections.
        self.app_name = f"faults-{os.getpid()}-{random.Random().getrandbits(32):08x}"
        self.service_url = with_query(pg_url, application_name=self.app_name)
        self.harness_url = with_query(pg_url, application_name=self.app_name + "-harness")
        self.dropper: ConnectionDropper | None = None
        self.fakes = contextlib.ExitStack()
        self.google: Any = None  # FakeGoogleCalendar
        self.proxy: Any = None  # FaultyProxy in front of it
        self.smtp: Any = None  # SmtpServer
        self.sent_account: Any = None  # the Dovecot account whose Sent folder it files into

    # -- the world ------------------------------------------------------------------------

    def setup(self) -> None:
        from automation.clock import SimulatedClock, SystemClock
        from automation.db import transaction
        from automation.people import import_people_file
        from automation.runtime import build_runtime
        from automation.services.loop import bootstrap
        from automation.services.planning import plan
        from automation.settings import PROJECT_ROOT, Settings

        flush_broker(self.broker_url)
        providers = self.start_fakes()
        settings = Settings(
            data_dir=self.folder,
            database_url=self.harness_url,
            broker_url=self.broker_url,
            organization="acme",
            secret_key="fault-secret",
            lease_seconds=self.config.lease_seconds,
            config_dir=PROJECT_ROOT / "config",
            templates_dir=PROJECT_ROOT / "templates",
            **providers,
        )
        back = dt.timedelta(days=self.config.days_back)
        self.rt = rt = build_runtime(settings, SimulatedClock(dt.datetime.now(dt.UTC) - back))
        org = bootstrap(rt)
        people = self.folder / "people.csv"
        people.write_text(people_csv(self.config.employees, self.config.managers))
        if self.google is not None:  # everyone has a Google calendar, in their own zone
            for row in people.read_text().splitlines()[1:]:
                address, _name, zone = row.split(",")[:3]
                self.google.set_timezone(address, zone)
        with transaction(rt.factory) as session:
            import_people_file(session, org, people, rt.now())
            plan(rt, session, org)
        rt.clock = SystemClock()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATION_")}
        self.env.update(
            {
                "AUTOMATION_DATABASE_URL": self.service_url,
                "AUTOMATION_BROKER_URL": self.broker_url,
                "AUTOMATION_DATA_DIR": str(self.folder),
                "AUTOMATION_ORGANIZATION": "acme",
                "AUTOMATION_SECRET_KEY": "fault-secret",
                "AUTOMATION_LEASE_SECONDS": str(self.config.lease_seconds),
            }
        )
        self.env.update({f"AUTOMATION_{k.upper()}": str(v) for k, v in providers.items()})
        # Planning is done (it asked Google for free/busy): from here on the fakes misbehave.
        if self.proxy is not None:
            self.proxy.reset_counts()  # count the run's requests, not planning's free/busy
            self.proxy.fault_ratio = self.config.provider_fault_ratio
            self.proxy.lost_ratio = self.config.provider_lost_ratio
        if self.smtp is not None:
            self.smtp.handler.random_faults(
                self.config.smtp_fault_ratio, self.config.smtp_lost_ratio, self.config.seed
            )
        self.watcher.start()

    def start_fakes(self) -> dict[str, Any]:
        """Start the provider fakes the config asks for; the settings that point at them."""
        settings: dict[str, Any] = {}
        if self.config.calendar == "google":
            from tests.fakes.faulty_proxy import FaultyProxy
            from tests.fakes.google_calendar import FakeGoogleCalendar, service_account_info

            self.google = self.fakes.enter_context(FakeGoogleCalendar(seed=self.config.seed))
            self.proxy = self.fakes.enter_context(
                FaultyProxy(self.google.url, seed=self.config.seed)
            )
            key = self.folder / "service-account.json"
            key.write_text(json.dumps(service_account_info(self.google.token_uri)))
            settings.update(
                calendar_provider="google",
                google_credentials_file=str(key),
                google_api_endpoint=self.proxy.url,
                google_token_uri=self.google.token_uri,  # tokens straight from the fake
                google_batch_size=self.config.google_batch_size,
            )
        elif self.config.calendar != "local":
            raise ValueError(f"calendar must be local or google, not {self.config.calendar!r}")
        if self.config.mail == "smtp":
            from tests.fakes.dovecot import running_dovecot
            from tests.fakes.smtp_server import running_smtp

            dovecot = self.fakes.enter_context(running_dovecot())
            self.sent_account = account = dovecot.add_user("sent")
            self.smtp = self.fakes.enter_context(running_smtp())
            # The server files what it accepts in the Sent folder before its 250 goes out.
            self.smtp.handler.on_accept = lambda received: dovecot.deliver(
                account, received.raw, "Sent"
            )
            settings.update(
                mail_transport="smtp",
                smtp_host=self.smtp.host,
                smtp_port=self.smtp.port,
                smtp_security="none",
                smtp_sent_copy="server",
                imap_host=dovecot.host,
                imap_port=dovecot.port,
                imap_security="none",
                imap_username=account.username,
                imap_password=account.password,
                imap_sent_folder="Sent",
                # Exchange's 30 a minute would make the run last an hour; no cap here.
                mail_per_minute=1_000_000,
                mail_daily_limit=1_000_000,
            )
            self.result_.emails_where = "at the SMTP server"
        elif self.config.mail != "maildir":
            raise ValueError(f"mail must be maildir or smtp, not {self.config.mail!r}")
        return settings

    def close(self) -> None:
        self.stop_worker()
        self.watcher.stop()
        if self.dropper is not None:
            self.dropper.stop()
        if self.rt is not None:
            self.rt.engine.dispose()
        self.fakes.close()

    # -- processes ------------------------------------------------------------------------

    def start_worker(self) -> None:
        from automation.settings import PROJECT_ROOT

        log = self.folder / f"worker-{len(self.worker_logs)}.log"
        self.worker_logs.append(log)
        with log.open("wb") as out:
            self.worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "automation.cli",
                    "worker",
                    "--processes",
                    str(self.config.processes),
                    "--threads",
                    str(self.config.threads),
                ],
                env=self.env,
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches the children
            )
        self.result_.worker_starts += 1

    def kill_worker(self) -> None:
        """SIGKILL the worker's whole process group: no clean-up, no acks, leases left held."""
        assert self.worker is not None
        with self.rt.factory() as session:
            from automation.models import Task, TaskState

            held = session.scalar(
                select(func.count()).select_from(Task).where(Task.state == TaskState.LEASED)
            )
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(30)
        self.kill_logs.add(self.worker_logs[-1])
        self.worker = None
        self.result_.kills += 1
        self.result_.leases_orphaned += held or 0

    def stop_worker(self) -> None:
        if self.worker is None:
            return
        try:
            os.killpg(self.worker.pid, signal.SIGTERM)
            self.worker.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(30)
        self.worker = None

    def tick(self, may_fail: bool = False) -> None:
        """One tick of the service as its own process: read the inbox, enqueue what is due.
        With ``may_fail`` (the broker is down, connections are being dropped) a failure is
        counted, as a cron job's would be, and the next tick does the work."""
        from automation.settings import PROJECT_ROOT

        result = subprocess.run(
            [sys.executable, "-m", "automation.cli", "run", "--once"],
            env=self.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            timeout=120,
        )
        if may_fail and result.returncode != 0:
            self.result_.ticks_failed += 1
            lines = result.stderr.decode(errors="replace").strip().splitlines()
            raised = [line for line in lines if re.match(r"[\w.]+(Error|Exception|Closed)\b", line)]
            last = raised[-1] if raised else lines[-1] if lines else f"exit {result.returncode}"
            self.result_.tick_errors[error_class(last)] += 1
            return
        if result.returncode != 0 or b"in-process worker" in result.stderr:
            raise AssertionError(f"tick failed ({result.returncode}): {result.stderr.decode()}")
        if b"Traceback" in result.stderr:
            self.result_.tracebacks.append("tick: " + result.stderr.decode(errors="replace"))
        self.result_.ticks += 1

    # -- replies --------------------------------------------------------------------------

    def deliver_replies(self) -> int:
        """Answer every sent follow-up prompt not answered yet: one reply from its manager to
        the prompt's Reply-To, dropped into the Maildir inbox."""
        from automation.models import OutboundMessage

        with self.rt.factory() as session:
            prompts = list(
                session.scalars(
                    select(OutboundMessage)
                    .where(OutboundMessage.kind == "followup", OutboundMessage.state == "sent")
                    .order_by(OutboundMessage.id)
                )
            )
        delivered = 0
        for prompt in prompts:
            if prompt.id in self.replied:
                continue
            original = email.message_from_bytes(prompt.raw, policy=email.policy.default)
            reply = EmailMessage()
            reply["From"] = prompt.recipients[0]
            reply["To"] = original["Reply-To"]
            reply["Subject"] = "Re: " + original["Subject"]
            message_id = f"<fault-reply-{prompt.id}@client.test>"
            reply["Message-ID"] = message_id
            reply["In-Reply-To"] = prompt.message_id
            reply.set_content(
                "1. Went well.\n2. Nothing in the way.\nRating: 4\n"
                f"Action: send the notes by Friday (prompt {prompt.id})\n"
            )
            self.rt.inbox.deliver(reply.as_bytes(), f"fault-reply-{prompt.id}")
            self.replied[prompt.id] = message_id
            delivered += 1
        return delivered

    # -- the run --------------------------------------------------------------------------

    def run(self) -> None:
        """Tick, answer prompts and kill the worker ``config.kills`` times at random moments,
        restarting it after each kill; go on for ``config.run_seconds`` at least. With
        ``config.db_drop_every``, the service's database connections are dropped meanwhile."""
        self.start_worker()
        if self.config.db_drop_every is not None:
            self.dropper = ConnectionDropper(
                self.harness_url, self.app_name, self.config.db_drop_every, self.config.seed
            )
            self.dropper.start()
        try:
            self._run()
        finally:
            if self.dropper is not None:
                self.dropper.stop()
                self.result_.db_drops = self.dropper.drops
                self.result_.backends_terminated = self.dropper.terminated

    def _run(self) -> None:
        started = time.monotonic()
        kill_at = started + self.rng.uniform(*self.config.kill_after)
        dropping = self.dropper is not None
        while (
            self.result_.kills < self.config.kills
            or time.monotonic() - started < self.config.run_seconds
        ):
            self.tick(may_fail=dropping)
            self.deliver_replies()
            self.ensure_worker()
            if self.result_.kills >= self.config.kills:
                continue
            now = time.monotonic()
            if now < kill_at:
                # Ticks take a second or so; sleep to the kill when it is nearer than that.
                time.sleep(min(max(kill_at - now, 0.0), 0.5) * self.rng.random())
                if time.monotonic() < kill_at:
                    continue
            self.kill_worker()
            self.start_worker()
            kill_at = time.monotonic() + self.rng.uniform(*self.config.kill_after)

    def _counts(self) -> tuple[int, int]:
        """(tasks due or leased now, follow-up prompts sent but not answered yet)."""
        from automation.models import OutboundMessage, Task

        with self.rt.factory() as session:
            due = session.scalar(select(func.count()).select_from(Task).where(due_or_leased()))
            prompts = session.scalar(
                select(func.count())
                .select_from(OutboundMessage)
                .where(OutboundMessage.kind == "followup", OutboundMessage.state == "sent")
            )
        return due or 0, (prompts or 0) - len(self.replied)

    def _advance_retries(self) -> None:
        """A task that hit an error waits out a back-off of half a minute or more; make such
        retries due now, as the clock would (counted in ``retries_advanced``)."""
        from automation.models import Task, TaskState

        now = dt.datetime.now(dt.UTC)
        waiting = (
            Task.state == TaskState.PENDING,
            Task.due_at > now,
            Task.last_error.is_not(None),
        )
        with self.rt.factory() as session, session.begin():
            for kind, error in session.execute(select(Task.kind, Task.last_error).where(*waiting)):
                self.result_.retry_errors[f"{kind}: {error_class(str(error))}"] += 1
            result = session.execute(update(Task).where(*waiting).values(due_at=now))
            self.result_.retries_advanced += result.rowcount  # type: ignore[attr-defined]

    def _unsettled(self) -> int:
        """Replies without their record, or emails not sent yet."""
        from automation.models import InboundMessage, OutboundMessage

        with self.rt.factory() as session:
            waiting = session.scalar(
                select(func.count())
                .select_from(OutboundMessage)
                .where(OutboundMessage.state != "sent")
            )
            stored = session.scalar(
                select(func.count())
                .select_from(InboundMessage)
                .where(InboundMessage.message_id.in_(list(self.replied.values())))
                .where(InboundMessage.state != "received")
            )
        return (waiting or 0) + len(self.replied) - (stored or 0)

    def ensure_worker(self) -> None:
        """A worker running: start one if there is none or if it exited on its own."""
        if self.worker is not None and self.worker.poll() is not None:
            self.result_.worker_exits += 1
            self.worker = None
        if self.worker is None:
            self.start_worker()

    def redis_outage(self, down_seconds: float) -> None:
        """Stop Redis without saving, so every message queued on it is lost; tick against the
        dead broker and answer prompts for ``down_seconds``; then start Redis again (empty).
        Only for a Redis of the run's own on this machine (:func:`private_redis`): everyone
        else's data on a shared one would go too."""
        import redis

        port = str(urlparse(self.broker_url).port or 6379)
        client = redis.Redis.from_url(self.broker_url)
        self.result_.broker_messages_lost += client.hlen("dramatiq:automation.msgs")
        client.close()
        subprocess.run(["redis-cli", "-p", port, "shutdown", "nosave"], timeout=30)
        try:
            wait_until(lambda: not redis_up(port), 10, "Redis to stop")
            deadline = time.monotonic() + down_seconds
            while time.monotonic() < deadline:
                self.tick(may_fail=True)
                self.deliver_replies()
        finally:
            start_redis(port)

    def rabbitmq_outage(self, down_seconds: float) -> None:
        """Stop the RabbitMQ application (``rabbitmqctl stop_app``: the node stays, durable
        queues and their persistent messages survive), tick against it and answer prompts for
        ``down_seconds``, then ``start_app``. Every vhost on the node is down meanwhile: keep
        it short. Only for a RabbitMQ on this machine."""
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=self.broker_url)
        try:
            ready, _delayed, _dead = broker.get_queue_message_counts("automation")
            self.result_.broker_messages_kept += ready
        finally:
            broker.close()
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)
        try:
            deadline = time.monotonic() + down_seconds
            while time.monotonic() < deadline:
                self.tick(may_fail=True)
                self.deliver_replies()
        finally:
            start_rabbitmq()

    def drain(self) -> None:
        """No more kills: let the dead workers' leases expire and tick until nothing is due or
        leased, every prompt is answered and every answer processed."""
        self.ensure_worker()
        deadline = time.monotonic() + self.config.drain_timeout
        quiet = 0
        while time.monotonic() < deadline:
            self.tick()
            self.deliver_replies()
            self._advance_retries()
            self.ensure_worker()
            due, unanswered = self._counts()
            if due == 0 and unanswered == 0 and self._unsettled() == 0:
                quiet += 1
                if quiet >= 2:  # twice in a row: nothing was in flight between the checks
                    return
            else:
                quiet = 0
                time.sleep(0.5)
        raise AssertionError(
            f"not drained after {self.config.drain_timeout:.0f}s: "
            f"{self._counts()} due/unanswered, {self._unsettled()} unsettled; {self._stuck()}"
        )

    def _stuck(self) -> str:
        """What a failed drain left: the due or leased tasks and unsent emails, and the end of
        the running worker's log, for the failure message."""
        from automation.models import OutboundMessage, Task

        with self.rt.factory() as session:
            tasks = session.execute(
                select(Task.kind, Task.state, Task.attempts, Task.due_at, Task.lease_until,
                       Task.last_error)
                .where(due_or_leased())
                .limit(10)
            ).all()  # fmt: skip
            unsent = session.execute(
                select(OutboundMessage.kind, OutboundMessage.state)
                .where(OutboundMessage.state != "sent")
                .limit(10)
            ).all()
        log = self.worker_logs[-1].read_text(errors="replace") if self.worker_logs else ""
        alive = self.worker is not None and self.worker.poll() is None
        return (
            f"tasks {[tuple(str(v)[:160] for v in row) for row in tasks]}; "
            f"unsent {[tuple(row) for row in unsent]}; worker alive {alive}, "
            f"{self.result_.worker_exits} exits; its log ends: {log[-3000:]}"
        )

    # -- counting -------------------------------------------------------------------------

    def result(self) -> FaultResult:
        from automation.models import (
            CheckinSeries,
            ConversationRecord,
            InboundMessage,
            OutboundMessage,
            Person,
            Task,
            TaskState,
        )

        self.stop_worker()
        self.watcher.stop()
        r = self.result_
        problems = r.problems
        where = r.emails_where
        on_disk: list[tuple[str, str]] = []  # (file name, Message-ID)
        if self.smtp is not None:
            on_disk = [(f"message {i}", m.message_id) for i, m in enumerate(self.smtp.messages)]
            for kind, n in self.smtp.handler.injected.items():
                r.provider_faults[f"SMTP {kind}"] = n
        else:
            outbox = self.folder / "mail" / "outbox" / "new"
            for path in sorted(outbox.iterdir()) if outbox.is_dir() else []:
                msg = email.message_from_bytes(path.read_bytes())
                on_disk.append((path.name, str(msg["Message-ID"]).strip()))
        if self.proxy is not None:
            r.provider_requests = sum(self.proxy.received.values())
            statuses = Counter(status for _, _, status in self.proxy.log)
            lost = sum(self.proxy.lost.values())
            r.provider_faults["Google 429"] = statuses[429]
            r.provider_faults["Google 503"] = statuses[503] - lost
            r.provider_faults["Google lost"] = lost
        disk_ids = Counter(mid for _, mid in on_disk)
        r.emails_on_disk = len(on_disk)
        with self.rt.factory() as session:
            messages = list(session.scalars(select(OutboundMessage)))
            r.tasks = session.scalar(select(func.count()).select_from(Task)) or 0
            failed = list(session.scalars(select(Task).where(Task.state == TaskState.FAILED)))
            r.tasks_failed = len(failed)
            for task in failed:
                problems.append(f"task {task.key} failed: {task.last_error}")
            r.tasks_due, _ = self._counts()
            if r.tasks_due:
                problems.append(f"{r.tasks_due} task(s) still due or leased")
            sent = [m for m in messages if m.state == "sent"]
            r.emails_sent = len(sent)
            r.emails_found_sent = (
                session.scalar(
                    select(func.count())
                    .select_from(Task)
                    .where(Task.kind == "send", Task.result == "found-earlier-attempt")
                )
                or 0
            )
            r.emails_by_kind = dict(Counter(m.kind for m in sent))
            for m in messages:
                if m.state != "sent":
                    r.emails_lost += 1
                    problems.append(f"email {m.idempotency_key} never sent (state {m.state})")
                elif disk_ids[m.message_id] == 0:
                    r.emails_lost += 1
                    problems.append(f"email {m.idempotency_key} recorded sent, not {where}")
            known = {m.message_id for m in sent}
            for mid, n in disk_ids.items():
                if n > 1:
                    r.emails_duplicate += n - 1
                    problems.append(f"Message-ID {mid} {where} {n} times")
                if mid not in known:
                    r.emails_unknown += 1
                    problems.append(f"Message-ID {mid} {where} but not recorded as sent")
            for name in sorted(self.watcher.rewritten):
                r.emails_duplicate += 1
                problems.append(f"outbox file {name} written twice (sent again)")

            # Calendars: each active series' UID once in its organizer's and attendee's file
            # (local), or in its organizer's Google calendar and in no other (Google).
            emails = dict(session.execute(select(Person.id, Person.email)).all())
            series = list(session.scalars(select(CheckinSeries).where(CheckinSeries.active)))
            r.series = len(series)
            files: dict[str, Counter[str]] = {}
            if self.google is not None:
                files = google_masters(self.google)
                suffix = "'s Google calendar"
            else:
                calendars = self.folder / "calendars"
                for path in sorted(calendars.glob("*.ics")) if calendars.is_dir() else []:
                    files[path.stem] = masters(path.read_bytes())
                suffix = ".ics"
            r.events = sum(sum(uids.values()) for uids in files.values())
            expected: set[tuple[str, str]] = set()
            for s in series:
                people = (s.manager_id, s.employee_id)
                for pid in people[:1] if self.google is not None else people:
                    who = emails[pid].lower()
                    expected.add((who, s.uid))
                    r.event_checks += 1
                    n = files.get(who, Counter())[s.uid]
                    if n == 0:
                        r.events_lost += 1
                        problems.append(f"series {s.uid} missing from {who}{suffix}")
                    elif n > 1:
                        r.events_duplicate += n - 1
                        problems.append(f"series {s.uid} {n} times in {who}{suffix}")
            active = {s.uid for s in series}
            for who, uids in files.items():
                for uid, n in uids.items():
                    if (who, uid) in expected:
                        continue
                    if uid in active:  # a series of ours in a calendar it does not belong to
                        r.events_duplicate += n
                        problems.append(f"series {uid} {n} time(s) in {who}{suffix}")
                    elif n > 1:
                        r.events_duplicate += n - 1
                        problems.append(f"UID {uid} {n} times in {who}{suffix}")

            # Replies: stored once, one record each, one confirmation per record.
            r.prompts = sum(1 for m in sent if m.kind == "followup")
            r.replies = len(self.replied)
            inbound = {
                row.message_id: row
                for row in session.scalars(
                    select(InboundMessage).where(
                        InboundMessage.message_id.in_(list(self.replied.values()))
                    )
                )
            }
            stored = Counter(
                session.scalars(
                    select(InboundMessage.message_id).where(
                        InboundMessage.message_id.in_(list(self.replied.values()))
                    )
                )
            )
            records = list(session.scalars(select(ConversationRecord)))
            r.records = len(records)
            by_source = Counter(rec.source_message_id for rec in records)
            by_subject = Counter((rec.subject_kind, rec.subject_id) for rec in records)
            confirmations = {m.idempotency_key: m for m in sent if m.kind == "confirmation"}
            r.confirmations = len(confirmations)
            for mid in self.replied.values():
                row = inbound.get(mid)
                if row is None:
                    r.replies_lost += 1
                    problems.append(f"reply {mid} never stored")
                    continue
                if stored[mid] > 1:
                    problems.append(f"reply {mid} stored {stored[mid]} times")
                    r.records_duplicate += stored[mid] - 1
                n = by_source[row.id]
                if n == 0:
                    r.replies_lost += 1
                    problems.append(f"reply {mid} ({row.state}) has no record")
                elif n > 1:
                    r.records_duplicate += n - 1
                    problems.append(f"reply {mid} has {n} records")
            for (kind, sid), n in by_subject.items():
                if n > 1:
                    r.records_duplicate += n - 1
                    problems.append(f"{kind} {sid} has {n} record versions for one reply")
            for rec in records:
                if f"confirmation:record:{rec.id}" not in confirmations:
                    r.confirmations_lost += 1
                    problems.append(f"record {rec.id} has no confirmation sent")
        for log in self.worker_logs:
            output = log.read_text(errors="replace") if log.exists() else ""
            r.tracebacks.extend(f"{log.name}: {tb}" for tb in tracebacks(output))
        r.seconds = time.monotonic() - self.started
        return r


def masters(ics: bytes) -> Counter[str]:
    """Master VEVENTs per UID in one calendar file (overrides, with RECURRENCE-ID, not
    counted: they belong to their series' UID)."""
    import icalendar

    cal = icalendar.Calendar.from_ical(ics)
    return Counter(
        str(c.get("uid"))
        for c in cal.walk("VEVENT")
        if "recurrence-id" not in c and str(c.get("status", "")).upper() != "CANCELLED"
    )


def google_masters(fake: Any) -> dict[str, Counter[str]]:
    """Master events per iCalUID in each calendar of the Google fake (deleted events and
    the exceptions of a series, with ``recurringEventId``, not counted)."""
    found: dict[str, Counter[str]] = {}
    with fake.lock:
        for owner, cal in fake.calendars.items():
            uids: Counter[str] = Counter()
            for event_id, raw in cal.events.items():
                event = json.loads(raw)
                if cal.cancelled.get(event_id) or event.get("status") == "cancelled":
                    continue
                if "recurringEventId" not in event:
                    uids[str(event.get("iCalUID"))] += 1
            if uids:
                found[owner.lower()] = uids
    return found


LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.MULTILINE)


def tracebacks(output: str, limit: int = 50) -> list[str]:
    """The log records of a process's output that carry a traceback (a chained one is one
    record): each as its first line and its last 2,000 characters, which end with the
    exception raised."""
    starts = [m.start() for m in LOG_RECORD.finditer(output)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    found = []
    for begin, end in zip(starts, [*starts[1:], len(output)], strict=True):
        record = output[begin:end].rstrip()
        if "Traceback (most recent call last)" not in record:
            continue
        first, _, rest = record.partition("\n")
        found.append(first + ("\n…" + rest[-2000:] if len(rest) > 2000 else "\n" + rest))
        if len(found) >= limit:
            break
    return found


def due_or_leased() -> Any:
    """Tasks due now or leased: what the drain waits for."""
    from automation.models import Task, TaskState

    return (Task.state == TaskState.LEASED) | (
        (Task.state == TaskState.PENDING) & (Task.due_at <= dt.datetime.now(dt.UTC))
    )


def with_query(url: str, **params: str) -> str:
    """The database URL with these query parameters added (``application_name=…``)."""
    parsed = make_url(url)
    return parsed.update_query_dict(params).render_as_string(hide_password=False)


def rabbitmq_running() -> bool:
    done = subprocess.run(
        ["rabbitmqctl", "-q", "eval", "rabbit:is_running()."], capture_output=True, timeout=60
    )
    return done.stdout.strip() == b"true"


def start_rabbitmq() -> None:
    """Start the RabbitMQ application on this machine's node again, unless it runs."""
    if not rabbitmq_running():
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
    subprocess.run(["rabbitmqctl", "await_startup"], check=True, capture_output=True, timeout=120)


def redis_up(port: str) -> bool:
    done = subprocess.run(["redis-cli", "-p", port, "ping"], capture_output=True, timeout=10)
    return done.stdout.strip() == b"PONG"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of the run's own on a free loopback port (no persistence), for runs
    that stop and restart the broker: a shared Redis is never touched. Yields its URL; shut
    down (whatever happened) at the end."""
    port = str(free_port())
    start_redis(port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        subprocess.run(["redis-cli", "-p", port, "shutdown", "nosave"], capture_output=True)


def start_redis(port: str = "6379") -> None:
    """Start Redis on loopback as this machine runs it (no persistence), unless it is up."""
    if redis_up(port):
        return
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", port]
        + ["--save", "", "--appendonly", "no"],
        check=True,
        timeout=30,
    )
    wait_until(lambda: redis_up(port), 30, "Redis to start")


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def error_class(error: str) -> str:
    """A task's last error without its process and transaction numbers: the first line and
    the relation PostgreSQL names (``while locking tuple (0,1) in relation "organizations"``
    becomes ``(locking relation "organizations")``)."""
    first = error.splitlines()[0] if error else ""
    first = re.sub(r"<[^<>@\s]+@[^<>\s]+>", "<message-id>", first)
    relation = re.search(r'while ([a-z ]+) tuple \S+ in (relation "[^"]+")', error)
    return first[:120] + (f" ({relation.group(1)} {relation.group(2)})" if relation else "")


def fault_run(pg_url: str, broker_url: str, folder: Path, config: FaultConfig) -> FaultResult:
    """The whole run: build the world, kill ``config.kills`` times, drain, count."""
    run = FaultRun(pg_url, broker_url, folder, config)
    try:
        run.setup()
        run.run()
        run.drain()
        return run.result()
    finally:
        run.close()
