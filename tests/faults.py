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

:meth:`FaultRun.result` returns those counts as a :class:`FaultResult`; ``problems`` lists
every violation in words (empty when the run was exactly-once). ``tests/test_faults.py`` runs
the CI size, ``bench/faults.py`` the full size.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import func, select, update

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
    drain_timeout: float = 120.0


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
    tracebacks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def items(self) -> int:
        """Everything checked for exactly once: emails, events, replies."""
        return self.emails_sent + self.series * 2 + self.replies

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
        return (
            f"kills {self.kills} (leases orphaned {self.leases_orphaned}), ticks {self.ticks}, "
            f"tasks {self.tasks} (retries advanced {self.retries_advanced}); "
            f"emails {self.emails_sent} sent / {self.emails_on_disk} on disk ({kinds}), "
            f"lost {self.emails_lost}, duplicate {self.emails_duplicate}, "
            f"unknown {self.emails_unknown}; "
            f"series {self.series}, events {self.events}, lost {self.events_lost}, "
            f"duplicate {self.events_duplicate}; "
            f"prompts {self.prompts}, replies {self.replies}, records {self.records}, "
            f"lost {self.replies_lost}, duplicate {self.records_duplicate}, "
            f"confirmations {self.confirmations} (lost {self.confirmations_lost}); "
            f"failed {self.tasks_failed}, due {self.tasks_due}; "
            + (
                f"broker outage: {self.broker_messages_lost} queued messages lost, "
                f"{self.ticks_failed} ticks failed, {self.worker_exits} worker exits; "
                if self.broker_messages_lost or self.ticks_failed
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
    scan, however late."""

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
            self.stopping.wait(0.01)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
        self.scan()


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
        settings = Settings(
            data_dir=self.folder,
            database_url=self.pg_url,
            broker_url=self.broker_url,
            organization="acme",
            secret_key="fault-secret",
            lease_seconds=self.config.lease_seconds,
            config_dir=PROJECT_ROOT / "config",
            templates_dir=PROJECT_ROOT / "templates",
        )
        back = dt.timedelta(days=self.config.days_back)
        self.rt = rt = build_runtime(settings, SimulatedClock(dt.datetime.now(dt.UTC) - back))
        org = bootstrap(rt)
        people = self.folder / "people.csv"
        people.write_text(people_csv(self.config.employees, self.config.managers))
        with transaction(rt.factory) as session:
            import_people_file(session, org, people, rt.now())
            plan(rt, session, org)
        rt.clock = SystemClock()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOMATION_")}
        self.env.update(
            {
                "AUTOMATION_DATABASE_URL": self.pg_url,
                "AUTOMATION_BROKER_URL": self.broker_url,
                "AUTOMATION_DATA_DIR": str(self.folder),
                "AUTOMATION_ORGANIZATION": "acme",
                "AUTOMATION_SECRET_KEY": "fault-secret",
                "AUTOMATION_LEASE_SECONDS": str(self.config.lease_seconds),
            }
        )
        self.watcher.start()

    def close(self) -> None:
        self.stop_worker()
        self.watcher.stop()
        if self.rt is not None:
            self.rt.engine.dispose()

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

    def tick(self, broker_down: bool = False) -> None:
        """One tick of the service as its own process: read the inbox, enqueue what is due.
        With ``broker_down`` it is expected to fail (nowhere to enqueue)."""
        from automation.settings import PROJECT_ROOT

        result = subprocess.run(
            [sys.executable, "-m", "automation.cli", "run", "--once"],
            env=self.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            timeout=120,
        )
        if broker_down:
            self.result_.ticks_failed += result.returncode != 0
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
        restarting it after each kill."""
        self.start_worker()
        started = time.monotonic()
        kill_at = started + self.rng.uniform(*self.config.kill_after)
        while self.result_.kills < self.config.kills:
            self.tick()
            self.deliver_replies()
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
        from automation.models import OutboundMessage, Task, TaskState

        now = dt.datetime.now(dt.UTC)
        with self.rt.factory() as session:
            due = session.scalar(
                select(func.count())
                .select_from(Task)
                .where(
                    (Task.state == TaskState.LEASED)
                    | ((Task.state == TaskState.PENDING) & (Task.due_at <= now))
                )
            )
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
        Only for a Redis broker on a loopback port of this machine."""
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
                self.tick(broker_down=True)
                self.deliver_replies()
        finally:
            start_redis(port)

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
            f"{self._counts()} due/unanswered, {self._unsettled()} unsettled"
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
        outbox = self.folder / "mail" / "outbox" / "new"
        on_disk: list[tuple[str, str]] = []  # (file name, Message-ID)
        for path in sorted(outbox.iterdir()) if outbox.is_dir() else []:
            msg = email.message_from_bytes(path.read_bytes())
            on_disk.append((path.name, str(msg["Message-ID"]).strip()))
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
            r.emails_by_kind = dict(Counter(m.kind for m in sent))
            for m in messages:
                if m.state != "sent":
                    r.emails_lost += 1
                    problems.append(f"email {m.idempotency_key} never sent (state {m.state})")
                elif disk_ids[m.message_id] == 0:
                    r.emails_lost += 1
                    problems.append(f"email {m.idempotency_key} recorded sent, not on disk")
            known = {m.message_id for m in sent}
            for mid, n in disk_ids.items():
                if n > 1:
                    r.emails_duplicate += n - 1
                    problems.append(f"Message-ID {mid} on disk {n} times")
                if mid not in known:
                    r.emails_unknown += 1
                    problems.append(f"Message-ID {mid} on disk but not recorded as sent")
            for name in sorted(self.watcher.rewritten):
                r.emails_duplicate += 1
                problems.append(f"outbox file {name} written twice (sent again)")

            # Calendars: each active series' UID once in its organizer's and attendee's file.
            emails = dict(session.execute(select(Person.id, Person.email)).all())
            series = list(session.scalars(select(CheckinSeries).where(CheckinSeries.active)))
            r.series = len(series)
            files: dict[str, Counter[str]] = {}
            calendars = self.folder / "calendars"
            for path in sorted(calendars.glob("*.ics")) if calendars.is_dir() else []:
                files[path.stem] = masters(path.read_bytes())
                r.events += sum(files[path.stem].values())
            for s in series:
                for pid in (s.manager_id, s.employee_id):
                    who = emails[pid].lower()
                    n = files.get(who, Counter())[s.uid]
                    if n == 0:
                        r.events_lost += 1
                        problems.append(f"series {s.uid} missing from {who}.ics")
                    elif n > 1:
                        r.events_duplicate += n - 1
                        problems.append(f"series {s.uid} {n} times in {who}.ics")
            for who, uids in files.items():
                for uid, n in uids.items():
                    if n > 1 and uid not in {s.uid for s in series}:
                        r.events_duplicate += n - 1
                        problems.append(f"UID {uid} {n} times in {who}.ics")

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
            text = log.read_text(errors="replace") if log.exists() else ""
            if "Traceback" in text:
                r.tracebacks.append(f"{log.name}: {text[text.index('Traceback') :][:3000]}")
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


def redis_up(port: str) -> bool:
    done = subprocess.run(["redis-cli", "-p", port, "ping"], capture_output=True, timeout=10)
    return done.stdout.strip() == b"PONG"


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
