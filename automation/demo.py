"""`automation demo`: the whole loop on the embedded default, over simulated weeks.

A fresh database in the output folder, the sample organisation from ``config/example/``, a
simulated clock, the real in-process dramatiq worker, and simulated managers who reply the way
real ones do: top-posted, inline, late, never, plus a stranger and an out-of-office robot.
Everything the service produced (mail, calendars, a report) is left in the folder to look at.

With ``clients=True`` (``automation demo --clients``) two client organizations of a
fractional-HR practice run beside it, from ``config/example-clients/<slug>/``: each is created
as ``automation org create`` creates one, with that folder as its ``config/orgs/<slug>/`` (in
a copy of the configuration under the output folder) and its credentials stored as encrypted
organization secrets. "northwind" is on Google (Calendar and Gmail), "contoso" on Microsoft
365 (Graph calendars and mail), each served by the local fakes of ``tests/fakes/`` (so this
needs a source checkout) on loopback for the run, on the demo's simulated clock. The simulated
managers answer the clients' prompts into each client's own mailbox in its fake, which the
tick reads with the client's own runtime. A consultant account granted both clients, and an
HR admin account in each, are created for the console.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import email
import email.policy
import email.utils
import heapq
import json
import os
import random
import re
import secrets
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import func, select

from automation import audit, organizations
from automation.clock import SimulatedClock
from automation.config import load_pip_plans
from automation.db import transaction
from automation.domain.cadence import zone
from automation.emails import environment
from automation.errors import AutomationError
from automation.models import (
    NOT_RECORDED,
    AgendaSnapshot,
    AgendaTopic,
    CheckinSeries,
    ConversationRecord,
    Escalation,
    Goal,
    InboundMessage,
    InboundState,
    Occurrence,
    OutboundMessage,
    OutboundState,
    Person,
    Task,
    TaskState,
)
from automation.people import import_people_file
from automation.runtime import Runtime, build_runtime, install
from automation.services import accounts
from automation.services.escalation import start_pip
from automation.services.goals import import_goals_file
from automation.services.loop import bootstrap, next_due, tick
from automation.settings import Settings

DEMO_START = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)  # spans both DST changes of 2026
OWNED = (
    "automation.db",
    "automation.db-wal",
    "automation.db-shm",
    "calendars",
    "mail",
    "report.html",
    "summary.json",
    # With --clients: the clients' data, the configuration they run with, the generated
    # views of it (organizations.py names that folder), the key and the console accounts.
    "clients",
    "demo-config",
    "orgs",
    "secrets-keys",
    "console-accounts.txt",
)


@dataclass(frozen=True)
class ClientSummary:
    """One client organization of ``automation demo --clients``: what its own database rows
    and its own provider fake hold."""

    slug: str
    name: str
    calendar: str  # its calendar_provider (google, graph)
    mail: str  # its mail_transport and mail_inbox (gmail, graph)
    cadences: str  # its own cadences: name (frequency)
    people: int
    series: int
    occurrences: int  # held or planned before the end
    invites: int  # invite tasks done (through its calendar fake)
    calendars_in_fake: int  # organizers' calendars with events in its calendar fake
    events_in_fake: int  # live events there (series, their exceptions)
    emails_sent: int
    sent_through_fake: int  # messages its mail fake accepted (Gmail send, Graph send)
    agendas_sent: int
    followups_sent: int
    reminders: int
    escalations: int
    replies_delivered: int  # by the simulated people, into its own mailbox in its fake
    replies_ingested: int  # taken in from that mailbox by its inbox poll
    records: int
    not_recorded: int
    audit_entries: int
    audit_chain_intact: bool
    folder: str  # its organization folder (config/orgs/<slug>/ of the demo's configuration)
    data: str  # what its fakes held at the end, and its own report


@dataclass(frozen=True)
class DemoSummary:
    people: int
    series: int
    occurrences: int
    invites: int
    agendas_sent: int
    followups_sent: int
    replies_ingested: int
    records: int
    reminders: int
    escalations: int
    quarantined: int  # kept because the sender or token could not be trusted
    not_recorded: int  # every message kept without a record: quarantined, auto-reply, bounce…
    audit_entries: int
    audit_chain_intact: bool
    goals: int  # goals on record (config/example/goals.csv)
    topics_added: int  # by replying to an agenda
    agenda_updates: int  # sent because a topic came after the agenda
    items_closed: int  # action items closed by a record ("#done 2")
    coaching_prompts: int  # shown in managers' agendas (never in employees')
    weeks: int
    seed: int
    out: str
    clients: tuple[ClientSummary, ...] = ()  # with --clients (the sample organization above)


# --- simulated people --------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    kind: str
    to: str
    name: str
    subject: str
    message_id: str
    reply_to: str
    text: str
    sent_at: dt.datetime
    sender: str = "Check-ins <checkins@example.com>"


def _prompt(row: OutboundMessage, sent_at: dt.datetime) -> Prompt:
    msg = email.message_from_bytes(row.raw, policy=email.policy.default)
    body = msg.get_body(("plain",))
    name, addr = email.utils.parseaddr(str(msg["To"]))
    return Prompt(
        row.kind,
        addr,
        name,
        str(msg["Subject"]),
        row.message_id,
        str(msg["Reply-To"]),
        body.get_content() if body else "",
        sent_at,
        str(msg["From"]),
    )


ANSWERS = [
    "Good progress on the onboarding docs; shipped the first two chapters.",
    "The release slipped a week because of the payments dependency.",
    "Wants more ownership of the reporting pipeline; agreed to try it next sprint.",
    "Energy is good, workload feels high in the run-up to the launch.",
    "Customer feedback on the new dashboard was very positive.",
]
ACTIONS = [
    "Action: {employee} to write up the migration plan by Friday",
    "Action: I will introduce {employee} to the platform team by next Wednesday",
    "- [ ] {employee} to book the conference talk rehearsal",
]


TOPICS = [
    "Conference budget for the autumn",
    "Taking on the reporting pipeline",
    "Feedback on the last release",
    "Moving my one-to-one to Thursdays",
    "Training budget for a certification",
    "How the new team structure affects my project",
]


def _compose(rng: random.Random, prompt: Prompt, style: str, first_name: str) -> str:
    questions = [
        line.strip()
        for line in prompt.text.splitlines()
        if line.strip()[:2] in {f"{n}." for n in range(1, 10)}
    ]
    if style == "inline":
        quoted = "\n".join("> " + line for line in prompt.text.splitlines())
        parts = [f"On {prompt.sent_at:%a, %d %b %Y at %H:%M}, Check-ins wrote:"]
        for line in prompt.text.splitlines():
            parts.append("> " + line)
            if line.strip()[:2] in {q[:2] for q in questions}:
                parts.append(rng.choice(ANSWERS))
                parts.append("")
        del quoted
        return "\n".join(parts) + "\n"
    lines = [f"{n}. {rng.choice(ANSWERS)}" for n in range(1, len(questions) + 1)]
    lines.append(f"Rating: {rng.randint(2, 5)}")
    lines.append(rng.choice(ACTIONS).format(employee=first_name))
    if rng.random() < 0.08:
        lines.append("#reschedule Thu 14:00")
    lines += [
        "",
        "Thanks,",
        "--",
        "Sent from my phone",
        "",
        f"On {prompt.sent_at:%a, %d %b %Y at %H:%M}, {prompt.sender} wrote:",
    ]
    lines += ["> " + line for line in prompt.text.splitlines()]
    return "\n".join(lines) + "\n"


def _reply(
    prompt: Prompt,
    body: str,
    sender: str,
    sender_name: str,
    at: dt.datetime,
    n: int,
    headers: dict[str, str] | None = None,
    domain: str = "mail.example.com",
) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = email.utils.formataddr((sender_name, sender))
    msg["To"] = prompt.reply_to
    msg["Subject"] = "Re: " + prompt.subject
    msg["Date"] = email.utils.format_datetime(at)
    msg["Message-ID"] = f"<demo-reply-{n}@{domain}>"
    msg["In-Reply-To"] = prompt.message_id
    msg["References"] = prompt.message_id
    for key, value in (headers or {}).items():
        msg[key] = value
    msg.set_content(body)
    return msg.as_bytes()


class Managers:
    """Decides, reproducibly from the seed, how and when each prompt of one organization gets
    answered, and delivers the answers where that organization's mail comes in.

    ``organization_id``: whose prompts (None: every organization the runtime sees).
    ``deliver(raw, n, at)``: where an answer goes (default: the runtime's inbox, the
    deployment's Maildir). ``domain``: the right-hand side of the answers' Message-IDs.
    ``forgets_first``: the organization's first follow-up prompt is never answered, so its
    ladder runs to the HR partner whatever the seed (the clients': the consultant's queue
    then has something of each)."""

    def __init__(
        self,
        rt: Runtime,
        seed: int | str,
        organization_id: int | None = None,
        deliver: Callable[[bytes, int, dt.datetime], object] | None = None,
        domain: str = "mail.example.com",
        forgets_first: bool = False,
    ):
        self.rt = rt
        self.forgets_first = forgets_first
        self.rng = random.Random(seed)
        self.organization_id = organization_id
        self.deliver = deliver or self._to_inbox
        self.domain = domain
        self.seen: set[int] = set()
        self.queue: list[tuple[dt.datetime, int, bytes]] = []
        self.n = 0
        self.delivered = 0
        self.stranger_sent = False
        self.robot_sent = False
        self.pip_reviews = 0

    def _to_inbox(self, raw: bytes, n: int, at: dt.datetime) -> None:
        self.rt.inbox.deliver(raw, f"demo-{n:05d}.eml")  # type: ignore[attr-defined]

    def _push(self, at: dt.datetime, raw: bytes) -> None:
        self.n += 1
        heapq.heappush(self.queue, (at, self.n, raw))

    def _reply(
        self,
        prompt: Prompt,
        body: str,
        sender: str,
        sender_name: str,
        at: dt.datetime,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        return _reply(prompt, body, sender, sender_name, at, self.n, headers, self.domain)

    def observe(self) -> None:
        """Look at prompts sent since last time and plan each one's fate."""
        mine = (
            []
            if self.organization_id is None
            else [OutboundMessage.organization_id == self.organization_id]
        )
        with self.rt.factory() as session:
            sent = session.scalars(
                select(OutboundMessage.id).where(
                    OutboundMessage.state == OutboundState.SENT,
                    OutboundMessage.kind.in_(("followup", "pip_review", "agenda")),
                    *mine,
                )
            )
            new = [i for i in sent if i not in self.seen]  # ids first: the bodies only of these
            if not new:
                return
            rows = list(
                session.scalars(
                    select(OutboundMessage)
                    .where(OutboundMessage.id.in_(new))
                    # By key, not id: tasks that fall due together may run in any order (and
                    # take ids in that order); the seeded fates must not depend on it.
                    .order_by(OutboundMessage.idempotency_key)
                )
            )
            people_query = select(Person)
            if self.organization_id is not None:
                people_query = people_query.where(Person.organization_id == self.organization_id)
            people = {p.email: p for p in session.scalars(people_query)}
            firsts = {r.id: _employee_of(session, r).name.split()[0] for r in rows}
        for row in rows:
            self.seen.add(row.id)
            person = people[row.recipients[0]]
            prompt = _prompt(row, row.sent_at or self.rt.now())
            employee_first = firsts[row.id]
            now = self.rt.now()
            if row.kind == "agenda":
                self._topic(row, prompt, person)
                continue
            if row.kind == "pip_review":
                self.pip_reviews += 1
                if self.pip_reviews == 1:  # the first review is documented, the next is not
                    body = _compose(self.rng, prompt, "top", employee_first)
                    at = now + dt.timedelta(hours=5)
                    self._push(at, self._reply(prompt, body, person.email, person.name, at))
                continue
            if not self.stranger_sent:
                self.stranger_sent = True
                at = now + dt.timedelta(hours=2)
                self._push(
                    at,
                    self._reply(
                        prompt,
                        "Forwarding this along - looks great to me!\n",
                        "pat.outsider@elsewhere.example",
                        "Pat Outsider",
                        at,
                    ),
                )
            if not self.robot_sent and self.rng.random() < 0.2:
                self.robot_sent = True
                at = now + dt.timedelta(minutes=1)
                self._push(
                    at,
                    self._reply(
                        prompt,
                        "I am out of the office until Monday.\n",
                        person.email,
                        person.name,
                        at,
                        {"Auto-Submitted": "auto-replied"},
                    ),
                )
            if self.forgets_first:
                self.forgets_first = False
                continue  # never documented
            roll = self.rng.random()
            if roll < 0.10:
                continue  # never documented: the ladder runs to the HR partner
            if roll < 0.25:
                delay, style = dt.timedelta(days=self.rng.randint(4, 6)), "top"  # after a reminder
            elif roll < 0.50:
                delay, style = dt.timedelta(hours=self.rng.randint(1, 30)), "inline"
            else:
                delay, style = dt.timedelta(hours=self.rng.randint(1, 30)), "top"
            at = now + delay
            body = _compose(self.rng, prompt, style, employee_first)
            if style == "top" and self.rng.random() < 0.4:
                # Close the first item of the agenda the manager got ("#done 1").
                body = body.replace("\nRating:", "\n#done 1\nRating:", 1)
            self._push(at, self._reply(prompt, body, person.email, person.name, at))

    def _topic(self, row: OutboundMessage, prompt: Prompt, person: Person) -> None:
        """Some employees add a topic by replying to their agenda, a few hours later (before
        the meeting: the agenda goes out a day ahead)."""
        if person.manager_id is None or self.rng.random() >= 0.3:
            return
        topics = self.rng.sample(TOPICS, k=self.rng.choice((1, 1, 2)))
        body = "".join(f"+ {topic}\n" for topic in topics) + "\nThanks!\n"
        at = self.rt.now() + dt.timedelta(hours=self.rng.randint(1, 12))
        self._push(at, self._reply(prompt, body, person.email, person.name, at))

    def next_time(self) -> dt.datetime | None:
        return self.queue[0][0] if self.queue else None

    def deliver_due(self) -> int:
        delivered = 0
        while self.queue and self.queue[0][0] <= self.rt.now():
            at, n, raw = heapq.heappop(self.queue)
            self.deliver(raw, n, at)
            delivered += 1
        self.delivered += delivered
        return delivered


def _employee_of(session: Any, row: OutboundMessage) -> Person:
    from automation.models import Pip, PipReview

    if row.occurrence_id:
        occ = session.get(Occurrence, row.occurrence_id)
        employee_id = session.get(CheckinSeries, occ.series_id).employee_id
    else:
        review = session.get(PipReview, row.pip_review_id)
        employee_id = session.get(Pip, review.pip_id).employee_id
    return session.get(Person, employee_id)


# --- the run -----------------------------------------------------------------------------


def prepare_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in OWNED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_demo(
    base: Settings,
    out: Path,
    weeks: int = 6,
    seed: int = 1,
    start: dt.datetime = DEMO_START,
    progress: Callable[[int, int], None] | None = None,
    clients: bool = False,
) -> DemoSummary:
    """Run the sample organisation for ``weeks`` on a simulated clock; ``progress`` is told
    ``(simulated days done, days)`` as the clock passes each day. With ``clients``, the client
    organizations of ``config/example-clients/`` run beside it, each on its provider's fake
    (see the module's description); :attr:`DemoSummary.clients` says what each did."""
    import dramatiq

    from workers.actors import attach
    from workers.broker import QUEUE, broker

    # Refused before anything in ``out`` changes.
    fakes_module = load_fakes() if clients else None
    if clients and not (base.config_dir / CLIENTS_FOLDER).is_dir():
        raise ClientsUnavailable(
            f"--clients runs the organizations of {base.config_dir / CLIENTS_FOLDER}, which "
            "does not exist: use the configuration of a source checkout (config/)"
        )
    prepare_out(out)
    clock = SimulatedClock(start)
    with contextlib.ExitStack() as stack:
        fakes = None
        changes: dict[str, Any] = {}
        if fakes_module is not None:
            fakes = stack.enter_context(ClientFakes.started(fakes_module, clock))
            changes["config_dir"] = client_config(base, out, fakes)
            stack.enter_context(fakes.environment(out))
        settings = base.with_(
            data_dir=out,
            database_url="",
            calendar_dir=None,
            outbox_dir=None,
            inbox_dir=None,
            organization="example",
            secret_key=base.secret_key or f"demo-secret-{seed}",
            **changes,
        )
        write_settings(settings, out)
        rt = attach(build_runtime(settings, clock))
        install(rt)
        worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
        worker.start()
        try:
            org_id = bootstrap(rt)
            example = settings.config_dir / "example"
            with transaction(rt.factory) as session:
                import_people_file(session, org_id, example / "people.csv", rt.now())
                import_goals_file(session, org_id, example / "goals.csv", rt.now())
                for plan in load_pip_plans(example / "pips.toml"):
                    start_pip(
                        rt,
                        session,
                        org_id,
                        plan,
                        start + dt.timedelta(days=plan.start_offset_days, hours=10),
                    )
            managers = [Managers(rt, seed, org_id)]
            runs: list[ClientRun] = []
            if fakes is not None:
                runs = start_clients(rt, fakes, seed)
                create_console_accounts(rt, org_id, runs, out)
                managers += [run.managers for run in runs]
            end = start + dt.timedelta(weeks=weeks)
            days, reported = weeks * 7, -1
            while True:
                if progress is not None and (done := (rt.now() - start).days) != reported:
                    reported = done
                    progress(min(done, days), days)
                for m in managers:
                    m.deliver_due()
                for _ in range(10):  # a task that fell due while the tick ran goes out now too
                    tick(rt)
                    broker.join(QUEUE)
                    worker.join()
                    due = next_due(rt)
                    if due is None or due > rt.now():
                        break
                for m in managers:
                    m.observe()
                upcoming = [
                    t for t in (next_due(rt), *(m.next_time() for m in managers)) if t is not None
                ]
                nxt = min(upcoming, default=end)
                if nxt >= end:
                    break
                clock.advance_to(max(nxt, rt.now() + dt.timedelta(seconds=1)))
            clock.advance_to(end)
            if progress is not None:
                progress(days, days)
            summary = summarize(rt, org_id, weeks, seed, out)
            if fakes is not None:
                done_clients = tuple(finish_client(run, fakes, weeks, seed, out) for run in runs)
                summary = dataclasses.replace(summary, clients=done_clients)
            write_report(rt, org_id, summary, out)
            (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
            return summary
        finally:
            worker.stop()
            install(None)
            rt.engine.dispose()


# --- client organizations (--clients) ---------------------------------------------------

CLIENTS_FOLDER = "example-clients"  # under config_dir: one organization folder per client
CONFIG_COPY = "demo-config"  # under out: the configuration the run uses, with orgs/<slug>/
CONSULTANT = "consultant@example.com"  # the practice's consultant, in the sample organization
KEYS_FILE = "secrets-keys"  # the key the run made, when AUTOMATION_SECRETS_KEYS was not set
ACCOUNTS_FILE = "console-accounts.txt"
CONSOLE_URL = "http://127.0.0.1:8080"  # the base_url of the demo's settings.toml
PLACEHOLDER = re.compile(r'"@([A-Z][A-Z_]*)@"')  # a whole string value of settings.toml


class ClientsUnavailable(AutomationError):
    """``--clients`` cannot run here (no source checkout with the fakes, no client folders, a
    client folder the demo cannot serve)."""


def load_fakes() -> Any:
    """The provider fakes' modules (``tests/fakes/`` of the source checkout this package is
    in): the Google Calendar, Gmail and Microsoft Graph fakes."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "tests" / "fakes" / "__init__.py").is_file():
        raise ClientsUnavailable(
            "--clients runs the client organizations' Google and Microsoft 365 services as "
            f"the local fakes in tests/fakes/, which only a source checkout has (none under "
            f"{root}); run it from a clone (pip install -e .), or run the demo without "
            "--clients"
        )
    added = str(root) not in sys.path
    if added:
        sys.path.insert(0, str(root))
    try:
        from tests.fakes import gmail, google_calendar, graph
    except ImportError as exc:
        raise ClientsUnavailable(
            f"--clients: the fakes in {root / 'tests' / 'fakes'} do not import ({exc}); "
            "install the test tools: pip install -e '.[dev]'"
        ) from exc
    finally:
        if added:
            sys.path.remove(str(root))
    return SimpleNamespace(gmail=gmail, google_calendar=google_calendar, graph=graph)


@dataclass
class ClientFakes:
    """The providers the clients use, served on loopback for the run: Google (Calendar and
    Gmail, one token endpoint) and Microsoft Graph (calendars and mail, over HTTPS)."""

    module: Any
    google: Any  # FakeGoogleCalendar
    gmail: Any  # FakeGmail
    graph: Any  # GraphFake

    @classmethod
    @contextlib.contextmanager
    def started(cls, module: Any, clock: SimulatedClock) -> Iterator[ClientFakes]:
        google = module.google_calendar.FakeGoogleCalendar()
        gmail = module.gmail.FakeGmail(clock=clock.now)
        # One Google: the key names one token endpoint (the Calendar fake's) for both APIs,
        # so the Gmail fake honours the tokens it issues.
        gmail.tokens = google.tokens
        graph = module.graph.GraphFake(
            tenant=str(uuid.UUID(int=random.Random("tenant").getrandbits(128))),
            client_id=str(uuid.UUID(int=random.Random("client").getrandbits(128))),
            client_secret=secrets.token_urlsafe(24),
            validate_subscriptions=False,  # nothing serves the notification URL
            clock=clock.now,  # mail stamps and subscription expiry in the simulated weeks
        )
        started: list[Any] = []
        try:
            for fake in (google, gmail, graph):
                fake.start()
                started.append(fake)
            yield cls(module, google, gmail, graph)
        finally:
            for fake in reversed(started):
                fake.stop()

    def placeholders(self) -> dict[str, str]:
        """What each ``@NAME@`` of a client's settings.toml stands for in this run."""
        return {
            "GOOGLE_CALENDAR_URL": self.google.url,
            "GMAIL_URL": self.gmail.url,
            "GOOGLE_TOKEN_URI": self.google.token_uri,
            "GRAPH_URL": self.graph.base_url,
            "GRAPH_AUTHORITY": self.graph.authority_host,
            "GRAPH_TENANT": self.graph.tenant,
            "GRAPH_CLIENT_ID": self.graph.client_id,
        }

    def secrets_for(self, slug: str, settings: Settings) -> dict[str, str]:
        """The credentials a client's providers need, as ``org secret set`` stores them."""
        used = {settings.calendar_provider, settings.mail_transport, settings.mail_inbox}
        found: dict[str, str] = {}
        if used & {"google", "gmail"}:
            key = self.module.google_calendar.service_account_info(
                self.google.token_uri, email=f"checkins@{slug}-demo.iam.gserviceaccount.com"
            )
            found[organizations.GOOGLE_KEY_SECRET] = json.dumps(key)
        if "graph" in used:
            found["graph_client_secret"] = self.graph.client_secret
        return found

    def calendar_of(self, settings: Settings) -> Any:
        fake = {"google": self.google, "graph": self.graph}.get(settings.calendar_provider)
        if fake is None:
            raise ClientsUnavailable(
                f"organization {settings.organization}: calendar_provider "
                f"{settings.calendar_provider!r} has no fake in the demo (google or graph)"
            )
        return fake

    def mailbox_of(self, settings: Settings) -> tuple[Any, str]:
        """The fake and the mailbox the client's mail is sent from and read from."""
        if settings.mail_transport != settings.mail_inbox:
            raise ClientsUnavailable(
                f"organization {settings.organization}: the demo's clients send and read "
                "mail through the same provider (mail_transport = mail_inbox)"
            )
        if settings.mail_inbox == "gmail":
            user = settings.gmail_user or email.utils.parseaddr(settings.mail_from)[1]
            return self.gmail, user.lower()
        if settings.mail_inbox == "graph":
            return self.graph, settings.graph_mailbox.lower()
        raise ClientsUnavailable(
            f"organization {settings.organization}: mail_inbox {settings.mail_inbox!r} has "
            "no fake in the demo (gmail or graph)"
        )

    @contextlib.contextmanager
    def environment(self, out: Path) -> Iterator[None]:
        """For the run: the Graph fake's certificate trusted (as its tests do), and a key for
        the organizations' secrets when none is set (kept in ``out/secrets-keys``, readable
        by its owner only, for the console afterwards; never printed)."""
        names = ("REQUESTS_CA_BUNDLE", organizations.KEYS_VARIABLE)
        saved = {name: os.environ.get(name) for name in names}
        os.environ["REQUESTS_CA_BUNDLE"] = str(self.graph.ca_file)
        variable = organizations.KEYS_VARIABLE
        if variable not in os.environ and variable + "_FILE" not in os.environ:
            from cryptography.fernet import Fernet

            key = Fernet.generate_key().decode()
            path = out / KEYS_FILE
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(key + "\n")
            os.environ[variable] = key
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def client_config(base: Settings, out: Path, fakes: ClientFakes) -> Path:
    """``out/demo-config``: the shared configuration, and each client's folder of
    ``config/example-clients/`` as its ``orgs/<slug>/``, its fakes' addresses filled in."""
    target = out / CONFIG_COPY
    shared = base.config_dir.resolve()

    def skipped(folder: str, names: list[str]) -> list[str]:
        top = Path(folder).resolve() == shared
        return [n for n in names if top and n in (organizations.ORGS_FOLDER, CLIENTS_FOLDER)]

    shutil.copytree(base.config_dir, target, ignore=skipped)
    values = fakes.placeholders()
    for folder in sorted((base.config_dir / CLIENTS_FOLDER).iterdir()):
        if not folder.is_dir() or not organizations.valid_slug(folder.name):
            continue
        mine = target / organizations.ORGS_FOLDER / folder.name
        shutil.copytree(folder, mine)
        file = mine / organizations.SETTINGS_FILE
        text = file.read_text(encoding="utf-8")
        unknown = sorted(set(PLACEHOLDER.findall(text)) - set(values))
        if unknown:
            raise ClientsUnavailable(
                f"{folder / organizations.SETTINGS_FILE}: unknown placeholder(s) "
                + ", ".join(f"@{name}@" for name in unknown)
                + " (known: "
                + ", ".join(f"@{name}@" for name in values)
                + ")"
            )
        file.write_text(PLACEHOLDER.sub(lambda m: json.dumps(values[m[1]]), text), encoding="utf-8")
    return target


@dataclass
class ClientRun:
    """One client organization while the demo runs."""

    slug: str
    name: str
    organization_id: int
    rt: Runtime  # its own runtime (Runtime.tenant): scoped sessions, its settings
    managers: Managers
    calendar_fake: Any
    mail_fake: Any
    mailbox: str
    seeded: frozenset[str] = frozenset()  # ids of the people's own events (not ours)


def start_clients(rt: Runtime, fakes: ClientFakes, seed: int) -> list[ClientRun]:
    """Each client folder under ``orgs/``: the organization made as ``automation org create``
    makes it (its first planning scheduled), its credentials stored as encrypted secrets
    (``org secret set``), its people imported in its own scope."""
    base, now = rt.settings, rt.now()
    keyring = organizations.Keyring.from_env()
    runs = []
    for folder in sorted((base.config_dir / organizations.ORGS_FOLDER).iterdir()):
        slug = folder.name
        values = organizations.read_organization_settings(base, slug)
        own = base.with_(**values)
        with transaction(rt.factory) as session:
            made = organizations.create_organization(
                session, base, slug, values.get("organization_name", slug), now, "demo"
            )
            for name, value in fakes.secrets_for(slug, own).items():
                organizations.put_secret(session, made.id, name, value, keyring, now, "demo")
        tenant = rt.tenant(made.id)  # outside a transaction: it reads the database
        people = tenant.settings.config_dir / "example" / "people.csv"
        with transaction(tenant.factory) as session:
            import_people_file(session, made.id, people, now)
        mail_fake, mailbox = fakes.mailbox_of(tenant.settings)
        domain = "mail." + mailbox.rpartition("@")[2]
        if mail_fake is fakes.graph:

            def deliver(raw: bytes, n: int, at: dt.datetime, box: str = mailbox) -> object:
                return fakes.graph.deliver(box, raw, received=at)

        else:

            def deliver(raw: bytes, n: int, at: dt.datetime, box: str = mailbox) -> object:
                return fakes.gmail.deliver(box, raw)

        calendar_fake = fakes.calendar_of(tenant.settings)
        seeded = frozenset(team_meetings(tenant, made.id, calendar_fake, fakes))
        runs.append(
            ClientRun(
                slug=slug,
                name=made.name,
                organization_id=made.id,
                rt=tenant,
                managers=Managers(
                    tenant, f"{seed}:{slug}", made.id, deliver, domain, forgets_first=True
                ),
                calendar_fake=calendar_fake,
                mail_fake=mail_fake,
                mailbox=mailbox,
                seeded=seeded,
            )
        )
    return runs


def team_meetings(rt: Runtime, org_id: int, fake: Any, fakes: ClientFakes) -> list[str]:
    """Every person of a Google client has a calendar of their own, with a weekly team
    meeting on Monday at 10:00 (its time zone), which free/busy makes the planner avoid.
    Returns the events' ids. (The Graph fake answers free/busy for any mailbox.)"""
    if fake is not fakes.google:
        return []
    tz = zone(rt.settings.default_timezone)
    today = rt.now().astimezone(tz).date()
    monday = today - dt.timedelta(days=today.weekday())
    begins = dt.datetime.combine(monday, dt.time(10, 0), tz)
    with rt.factory() as session:
        people = sorted(
            session.scalars(select(Person.email).where(Person.organization_id == org_id))
        )
    return [
        fake.seed_event(
            address,
            start=begins,
            end=begins + dt.timedelta(hours=1),
            summary="Team meeting",
            timezone=rt.settings.default_timezone,
            recurrence=["RRULE:FREQ=WEEKLY"],
        )
        for address in people
    ]


def create_console_accounts(rt: Runtime, org_id: int, runs: Sequence[ClientRun], out: Path) -> None:
    """A consultant in the sample organization (the practice) granted every client, and an
    HR admin in each client (its privacy.toml's first), each with a password of its own in
    ``out/console-accounts.txt`` (readable by its owner only)."""
    from automation.config import load_privacy

    now, made = rt.now(), []
    password = secrets.token_urlsafe(12)
    with transaction(rt.factory) as session:
        account = accounts.create_account(
            session, org_id, email=CONSULTANT, name="Casey Consultant", role="consultant",
            now=now, actor="demo", password=password,
        )  # fmt: skip
        for run in runs:
            accounts.grant(session, account, run.organization_id, now, "demo")
    made.append((CONSULTANT, "consultant", rt.settings.organization, password))
    for run in runs:
        admins = sorted(load_privacy(run.rt.settings).hr_admins)
        if not admins:
            continue
        password = secrets.token_urlsafe(12)
        with transaction(run.rt.factory) as session:
            accounts.create_account(
                session, run.organization_id, email=admins[0], name=admins[0].split("@")[0],
                role="hr_admin", now=now, actor="demo", password=password,
            )  # fmt: skip
        made.append((admins[0], "hr_admin", run.slug, password))
    sign_in = CONSOLE_URL + "/console/sign-in"  # where `web` serves it (write_settings)
    lines = [
        "# Console accounts made by `automation demo --clients` (this file is readable by you",
        "# only). Serve the console (see the demo's output), then sign in at the address shown.",
        "# address\trole\torganization\tsign in at\tpassword",
    ]
    for address, role, slug, secret in made:
        at = sign_in if slug == rt.settings.organization else f"{sign_in}?org={slug}"
        lines.append("\t".join((address, role, slug, at, secret)))
    path = out / ACCOUNTS_FILE
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n")


def console_accounts(out: Path) -> list[dict[str, str]]:
    """The accounts ``out/console-accounts.txt`` lists (address, role, organization,
    sign_in, password)."""
    keys = ("address", "role", "organization", "sign_in", "password")
    path = out / ACCOUNTS_FILE
    if not path.exists():
        return []
    return [
        dict(zip(keys, line.split("\t"), strict=True))
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    ]


def _calendar_dump(fake: Any, fakes: ClientFakes) -> dict[str, list[dict[str, Any]]]:
    """Every live event in a calendar fake, by the calendar (organizer) it is in."""
    found: dict[str, list[dict[str, Any]]] = {}
    if fake is fakes.google:
        for owner, calendar in sorted(fake.calendars.items()):
            events = [
                fake.event(owner, event_id)
                for event_id in calendar.order
                if not calendar.cancelled.get(event_id)
            ]
            if events:
                found[owner] = events
    else:
        for mailbox in sorted(fake.stats()["events"]):
            found[mailbox] = fake.events(mailbox)
    return found


def _mail_dump(fake: Any, fakes: ClientFakes, mailbox: str) -> dict[str, dict[str, list[bytes]]]:
    """What a mail fake holds, by mailbox (the client's, and any other there, which would be
    a leak): ``{"sent": [raw, ...], "received": [...]}``, oldest first."""
    found: dict[str, dict[str, list[bytes]]] = {}
    if fake is fakes.gmail:
        for user in sorted(fake.mailboxes):
            box = found.setdefault(user, {"sent": [], "received": []})
            for gmail_id in fake.messages(user):
                stored = fake.stored(user, gmail_id)
                box["sent" if "SENT" in stored["labels"] else "received"].append(stored["raw"])
    else:
        for user in sorted({mailbox} | {str(o["mailbox"]).lower() for o in fake.outgoing}):
            box = found.setdefault(user, {"sent": [], "received": []})
            for item in fake.mail(user):
                if not item["isDraft"]:
                    box["sent" if item["folder"] == "Sent Items" else "received"].append(
                        item["raw"]
                    )
    return found


def finish_client(
    run: ClientRun, fakes: ClientFakes, weeks: int, seed: int, out: Path
) -> ClientSummary:
    """What a client's rows and its fakes hold at the end: its summary, and in
    ``out/clients/<slug>/`` its report, its calendar fake's events by calendar
    (``calendar.json``), its mail fake's messages (``mail/sent/``, ``mail/received/``) and
    what each mailbox there holds (``mailboxes.json``)."""
    data = out / "clients" / run.slug
    (data / "mail" / "sent").mkdir(parents=True, exist_ok=True)
    (data / "mail" / "received").mkdir(parents=True, exist_ok=True)
    counts = summarize(run.rt, run.organization_id, weeks, seed, data)
    calendars = _calendar_dump(run.calendar_fake, fakes)
    ours = {
        owner: mine
        for owner, events in calendars.items()
        if (mine := [e for e in events if e["id"] not in run.seeded])
    }
    (data / "calendar.json").write_text(json.dumps(calendars, indent=2, sort_keys=True) + "\n")
    mailboxes = _mail_dump(run.mail_fake, fakes, run.mailbox)
    for folder in ("sent", "received"):
        messages = [raw for box in mailboxes.values() for raw in box[folder]]
        for n, raw in enumerate(messages, 1):
            (data / "mail" / folder / f"{n:04d}.eml").write_bytes(raw)
    held = {user: {k: len(v) for k, v in box.items()} for user, box in mailboxes.items()}
    (data / "mailboxes.json").write_text(json.dumps(held, indent=2, sort_keys=True) + "\n")
    if run.mail_fake is fakes.gmail:
        through = sum(fakes.gmail.sends.values())
    else:
        through = sum(fakes.graph.sent_counts().values())
    write_report(run.rt, run.organization_id, counts, data)
    return ClientSummary(
        slug=run.slug,
        name=run.name,
        calendar=run.rt.settings.calendar_provider,
        mail=run.rt.settings.mail_transport,
        cadences=", ".join(f"{c.name} ({c.frequency})" for c in run.rt.cadences.values()),
        people=counts.people,
        series=counts.series,
        occurrences=counts.occurrences,
        invites=counts.invites,
        calendars_in_fake=len(ours),
        events_in_fake=sum(len(events) for events in ours.values()),
        emails_sent=count_sent(run.rt, run.organization_id),
        sent_through_fake=through,
        agendas_sent=counts.agendas_sent,
        followups_sent=counts.followups_sent,
        reminders=counts.reminders,
        escalations=counts.escalations,
        replies_delivered=run.managers.delivered,
        replies_ingested=counts.replies_ingested,
        records=counts.records,
        not_recorded=counts.not_recorded,
        audit_entries=counts.audit_entries,
        audit_chain_intact=counts.audit_chain_intact,
        folder=str(organizations.org_folder(run.rt.settings, run.slug)),
        data=str(data),
    )


def count_sent(rt: Runtime, org_id: int) -> int:
    with rt.factory() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(OutboundMessage)
                .where(
                    OutboundMessage.organization_id == org_id,
                    OutboundMessage.state == OutboundState.SENT,
                )
            )
            or 0
        )


def summarize(rt: Runtime, org_id: int, weeks: int, seed: int, out: Path) -> DemoSummary:
    def count(query: Any) -> int:
        return int(session.scalar(query) or 0)

    with rt.factory() as session:
        sent = (
            select(func.count())
            .select_from(OutboundMessage)
            .where(
                OutboundMessage.organization_id == org_id,
                OutboundMessage.state == OutboundState.SENT,
            )
        )
        intact, _ = audit.verify_chain(session, org_id)
        from automation.models import AuditEntry

        return DemoSummary(
            people=count(
                select(func.count()).select_from(Person).where(Person.organization_id == org_id)
            ),
            series=count(
                select(func.count())
                .select_from(CheckinSeries)
                .where(CheckinSeries.organization_id == org_id)
            ),
            occurrences=count(
                select(func.count())
                .select_from(Occurrence)
                .where(Occurrence.organization_id == org_id, Occurrence.start_at < rt.now())
            ),
            invites=count(
                select(func.count())
                .select_from(Task)
                .where(
                    Task.organization_id == org_id,
                    Task.kind == "invite",
                    Task.state == TaskState.DONE,
                )
            ),
            agendas_sent=count(sent.where(OutboundMessage.kind == "agenda")),
            followups_sent=count(sent.where(OutboundMessage.kind == "followup")),
            replies_ingested=count(
                select(func.count())
                .select_from(InboundMessage)
                .where(InboundMessage.organization_id == org_id)
            ),
            records=count(
                select(func.count())
                .select_from(ConversationRecord)
                .where(ConversationRecord.organization_id == org_id)
            ),
            reminders=count(
                select(func.count())
                .select_from(Escalation)
                .where(Escalation.organization_id == org_id, Escalation.action == "remind")
            ),
            escalations=count(
                select(func.count())
                .select_from(Escalation)
                .where(Escalation.organization_id == org_id, Escalation.action == "escalate")
            ),
            quarantined=count(
                select(func.count())
                .select_from(InboundMessage)
                .where(
                    InboundMessage.organization_id == org_id,
                    InboundMessage.state == InboundState.QUARANTINED,
                )
            ),
            not_recorded=count(
                select(func.count())
                .select_from(InboundMessage)
                .where(
                    InboundMessage.organization_id == org_id,
                    InboundMessage.state.in_(NOT_RECORDED),
                )
            ),
            audit_entries=count(
                select(func.count())
                .select_from(AuditEntry)
                .where(AuditEntry.organization_id == org_id)
            ),
            audit_chain_intact=intact,
            goals=count(
                select(func.count()).select_from(Goal).where(Goal.organization_id == org_id)
            ),
            topics_added=count(
                select(func.count())
                .select_from(AgendaTopic)
                .where(AgendaTopic.organization_id == org_id)
            ),
            agenda_updates=count(
                select(func.count())
                .select_from(AgendaSnapshot)
                .where(AgendaSnapshot.organization_id == org_id, AgendaSnapshot.sequence > 1)
            ),
            items_closed=count(
                select(func.count())
                .select_from(AuditEntry)
                .where(
                    AuditEntry.organization_id == org_id,
                    AuditEntry.action == "action_item.closed",
                )
            ),
            coaching_prompts=sum(
                len(c or ())
                for c in session.scalars(
                    select(AgendaSnapshot.coaching).where(
                        AgendaSnapshot.organization_id == org_id,
                        AgendaSnapshot.role == "manager",
                    )
                )
            ),
            weeks=weeks,
            seed=seed,
            out=str(out),
        )


def write_report(rt: Runtime, org_id: int, summary: DemoSummary, out: Path) -> None:
    """A self-contained HTML page: per employee, each check-in and what was recorded."""
    with rt.factory() as session:
        people = {
            p.id: p for p in session.scalars(select(Person).where(Person.organization_id == org_id))
        }
        series = list(
            session.scalars(
                select(CheckinSeries)
                .where(CheckinSeries.organization_id == org_id)
                .order_by(CheckinSeries.manager_id)
            )
        )
        rows = []
        for s in series:
            occurrences = list(
                session.scalars(
                    select(Occurrence)
                    .where(
                        Occurrence.organization_id == org_id,
                        Occurrence.series_id == s.id,
                        Occurrence.start_at < rt.now(),
                    )
                    .order_by(Occurrence.start_at)
                )
            )
            items = []
            for occ in occurrences:
                records = list(
                    session.scalars(
                        select(ConversationRecord)
                        .where(
                            ConversationRecord.organization_id == org_id,
                            ConversationRecord.subject_kind == "occurrence",
                            ConversationRecord.subject_id == occ.id,
                        )
                        .order_by(ConversationRecord.version)
                    )
                )
                steps = list(
                    session.scalars(
                        select(Escalation)
                        .where(
                            Escalation.organization_id == org_id,
                            Escalation.subject_kind == "occurrence",
                            Escalation.subject_id == occ.id,
                        )
                        .order_by(Escalation.step)
                    )
                )
                local = occ.start_at.astimezone(zone(s.timezone))
                items.append(
                    {
                        "occ": occ,
                        "local": f"{local:%a %d %b %H:%M}",
                        "records": records,
                        "steps": [(e, people[e.recipient_id]) for e in steps],
                    }
                )
            rows.append(
                {
                    "series": s,
                    "manager": people[s.manager_id],
                    "employee": people[s.employee_id],
                    "items": items,
                }
            )
        quarantined = list(
            session.scalars(
                select(InboundMessage)
                .where(
                    InboundMessage.organization_id == org_id,
                    InboundMessage.state.in_(NOT_RECORDED),
                )
                .order_by(InboundMessage.id)
            )
        )
    counts = {k: v for k, v in asdict(summary).items() if k != "clients"}
    html = (
        environment(rt.settings.templates_dir)
        .get_template("report/demo.html")
        .render(
            summary=counts,
            rows=rows,
            quarantined=quarantined,
            org={"name": rt.settings.organization_name},
            clients=summary.clients,
            paths=_relative_paths(summary.clients, out),
        )
    )
    (out / "report.html").write_text(html)


def _relative_paths(clients: Sequence[ClientSummary], out: Path) -> dict[str, dict[str, str]]:
    def rel(path: str) -> str:
        with contextlib.suppress(ValueError):
            return Path(path).resolve().relative_to(out.resolve()).as_posix()
        return path

    return {c.slug: {"data": rel(c.data), "folder": rel(c.folder)} for c in clients}


def write_settings(settings: Settings, out: Path) -> Path:
    """``<out>/settings.toml``: the demo's data as a settings file, so the HR console (and
    every command) can open it with ``--config <out>/settings.toml``."""
    import json

    def quoted(value: object) -> str:  # a JSON string is a valid TOML basic string
        return json.dumps(str(value), ensure_ascii=False)

    lines = [
        "# Written by `automation demo`: the demo's database and files, for the console and",
        "# the other commands (automation --config <this file> ...). `automation web` serves",
        "# the console without ticking: a tick in real time would run the months since the",
        "# demo's simulated weeks at once.",
        f"data_dir = {quoted(out.resolve())}",
        f"config_dir = {quoted(settings.config_dir.resolve())}",
        f"templates_dir = {quoted(settings.templates_dir.resolve())}",
        'broker_url = "stub"',
        f"organization = {quoted(settings.organization)}",
        f"organization_name = {quoted(settings.organization_name)}",
        f"secret_key = {quoted(settings.secret_key)}",
        f"mail_from = {quoted(settings.mail_from)}",
        f"reply_domain = {quoted(settings.reply_domain)}",
        f"base_url = {quoted(CONSOLE_URL)}",
    ]
    path = out / "settings.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def format_summary(s: DemoSummary) -> str:
    lines = [
        f"Simulated {s.weeks} weeks for {s.people} people (seed {s.seed}).",
        "",
        f"  check-in series        {s.series:>6}   (one per report, in each person's calendar)",
        f"  meetings held/planned  {s.occurrences:>6}",
        f"  calendar invites       {s.invites:>6}",
        f"  agendas sent           {s.agendas_sent:>6}",
        f"  follow-up prompts      {s.followups_sent:>6}",
        f"  replies received       {s.replies_ingested:>6}",
        f"  records documented     {s.records:>6}",
        f"  reminders to managers  {s.reminders:>6}",
        f"  escalations to HR      {s.escalations:>6}",
        f"  kept, not recorded     {s.not_recorded:>6}   "
        f"({s.quarantined} quarantined; the rest auto-replies or bounces)",
        f"  goals on agendas       {s.goals:>6}   (config/example/goals.csv)",
        f"  topics added by reply  {s.topics_added:>6}   "
        f"({s.agenda_updates} agenda updates sent in the agenda's thread)",
        f'  action items closed    {s.items_closed:>6}   ("#done 1" in a manager\'s record)',
        f"  coaching prompts       {s.coaching_prompts:>6}   (in managers' agendas only)",
        f"  audit entries          {s.audit_entries:>6}   chain "
        f"{'intact' if s.audit_chain_intact else 'BROKEN'}",
        "",
        f"Look inside {s.out}/:",
        "  report.html        every check-in, its record and its escalations",
        "  mail/outbox/new/   every email sent, as .eml files",
        "  calendars/         one .ics feed per person (open in any calendar app)",
        "  automation.db      the SQLite database (the truth)",
        "",
        "Browse it in the HR console (an account for you, then the web app):",
        f"  automation --config {s.out}/settings.toml console account add you@example.com "
        "--role hr_admin --password-stdin",
        f"  automation --config {s.out}/settings.toml web     "
        "# then open http://127.0.0.1:8080/console/",
    ]
    if s.clients:
        lines += ["", *_format_clients(s)]
    return "\n".join(lines)


def _format_clients(s: DemoSummary) -> list[str]:
    out = Path(s.out)
    lines = [
        f"Client organizations ({len(s.clients)}), beside the sample one, each on its own "
        "provider fakes (stopped now; what they held is in its folder):",
    ]
    for c in s.clients:
        lines += [
            "",
            f"  {c.name} ({c.slug}): calendar {c.calendar}, mail {c.mail}, cadences {c.cadences}",
            f"    people {c.people}, series {c.series}, meetings {c.occurrences}, invites "
            f"{c.invites} ({c.events_in_fake} events in {c.calendars_in_fake} calendars of "
            "its fake)",
            f"    emails {c.emails_sent} ({c.sent_through_fake} through its fake), replies "
            f"{c.replies_delivered} delivered to its mailbox, {c.replies_ingested} taken in, "
            f"records {c.records}",
            f"    reminders {c.reminders}, escalations {c.escalations}, audit entries "
            f"{c.audit_entries} chain {'intact' if c.audit_chain_intact else 'BROKEN'}",
            f"    its configuration  {c.folder}/",
            f"    its data           {c.data}/  (report.html, calendar.json, mail/sent/, "
            "mail/received/, mailboxes.json)",
        ]
    keys = (
        f"AUTOMATION_SECRETS_KEYS_FILE={out}/{KEYS_FILE} "
        if (out / KEYS_FILE).exists()
        else "(with the same AUTOMATION_SECRETS_KEYS) "
    )
    lines += [
        "",
        f"The consultant ({CONSULTANT}) sees both clients in one queue at /console/clients;",
        "each client's HR admin signs in at /console/sign-in?org=<slug> and sees only their",
        f"own. Passwords: {out}/{ACCOUNTS_FILE}. The clients' secrets are encrypted in the",
        "database, so the console needs the key they were stored under:",
        f"  {keys}automation --config {s.out}/settings.toml web",
    ]
    return lines
