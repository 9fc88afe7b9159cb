"""`automation demo`: the whole loop on the embedded default, over simulated weeks.

A fresh database in the output folder, the sample organisation from ``config/example/``, a
simulated clock, the real in-process dramatiq worker, and simulated managers who reply the way
real ones do: top-posted, inline, late, never, plus a stranger and an out-of-office robot.
Everything the service produced (mail, calendars, a report) is left in the folder to look at.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import email.utils
import heapq
import json
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from automation import audit
from automation.clock import SimulatedClock
from automation.config import load_pip_plans
from automation.db import transaction
from automation.domain.cadence import zone
from automation.emails import environment
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
)


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
        f"On {prompt.sent_at:%a, %d %b %Y at %H:%M}, Check-ins <checkins@example.com> wrote:",
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
) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = email.utils.formataddr((sender_name, sender))
    msg["To"] = prompt.reply_to
    msg["Subject"] = "Re: " + prompt.subject
    msg["Date"] = email.utils.format_datetime(at)
    msg["Message-ID"] = f"<demo-reply-{n}@mail.example.com>"
    msg["In-Reply-To"] = prompt.message_id
    msg["References"] = prompt.message_id
    for key, value in (headers or {}).items():
        msg[key] = value
    msg.set_content(body)
    return msg.as_bytes()


class Managers:
    """Decides, reproducibly from the seed, how and when each prompt gets answered."""

    def __init__(self, rt: Runtime, seed: int):
        self.rt = rt
        self.rng = random.Random(seed)
        self.seen: set[int] = set()
        self.queue: list[tuple[dt.datetime, int, bytes]] = []
        self.n = 0
        self.stranger_sent = False
        self.robot_sent = False
        self.pip_reviews = 0

    def _push(self, at: dt.datetime, raw: bytes) -> None:
        self.n += 1
        heapq.heappush(self.queue, (at, self.n, raw))

    def observe(self) -> None:
        """Look at prompts sent since last time and plan each one's fate."""
        with self.rt.factory() as session:
            rows = [
                r
                for r in session.scalars(
                    select(OutboundMessage)
                    .where(
                        OutboundMessage.state == OutboundState.SENT,
                        OutboundMessage.kind.in_(("followup", "pip_review", "agenda")),
                    )
                    # By key, not id: tasks that fall due together may run in any order (and
                    # take ids in that order); the seeded fates must not depend on it.
                    .order_by(OutboundMessage.idempotency_key)
                )
                if r.id not in self.seen
            ]
            people = {p.email: p for p in session.scalars(select(Person))}
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
                    self._push(
                        now + dt.timedelta(hours=5),
                        _reply(
                            prompt,
                            body,
                            person.email,
                            person.name,
                            now + dt.timedelta(hours=5),
                            self.n,
                        ),
                    )
                continue
            if not self.stranger_sent:
                self.stranger_sent = True
                at = now + dt.timedelta(hours=2)
                self._push(
                    at,
                    _reply(
                        prompt,
                        "Forwarding this along - looks great to me!\n",
                        "pat.outsider@elsewhere.example",
                        "Pat Outsider",
                        at,
                        self.n,
                    ),
                )
            if not self.robot_sent and self.rng.random() < 0.2:
                self.robot_sent = True
                at = now + dt.timedelta(minutes=1)
                self._push(
                    at,
                    _reply(
                        prompt,
                        "I am out of the office until Monday.\n",
                        person.email,
                        person.name,
                        at,
                        self.n,
                        {"Auto-Submitted": "auto-replied"},
                    ),
                )
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
            self._push(at, _reply(prompt, body, person.email, person.name, at, self.n))

    def _topic(self, row: OutboundMessage, prompt: Prompt, person: Person) -> None:
        """Some employees add a topic by replying to their agenda, a few hours later (before
        the meeting: the agenda goes out a day ahead)."""
        if person.manager_id is None or self.rng.random() >= 0.3:
            return
        topics = self.rng.sample(TOPICS, k=self.rng.choice((1, 1, 2)))
        body = "".join(f"+ {topic}\n" for topic in topics) + "\nThanks!\n"
        at = self.rt.now() + dt.timedelta(hours=self.rng.randint(1, 12))
        self._push(at, _reply(prompt, body, person.email, person.name, at, self.n))

    def next_time(self) -> dt.datetime | None:
        return self.queue[0][0] if self.queue else None

    def deliver_due(self) -> int:
        delivered = 0
        while self.queue and self.queue[0][0] <= self.rt.now():
            _, n, raw = heapq.heappop(self.queue)
            self.rt.inbox.deliver(raw, f"demo-{n:05d}.eml")  # type: ignore[attr-defined]
            delivered += 1
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
) -> DemoSummary:
    """Run the sample organisation for ``weeks`` on a simulated clock; ``progress`` is told
    ``(simulated days done, days)`` as the clock passes each day."""
    import dramatiq

    from workers.actors import attach
    from workers.broker import QUEUE, broker

    prepare_out(out)
    settings = base.with_(
        data_dir=out,
        database_url="",
        calendar_dir=None,
        outbox_dir=None,
        inbox_dir=None,
        organization="example",
        secret_key=base.secret_key or f"demo-secret-{seed}",
    )
    write_settings(settings, out)
    clock = SimulatedClock(start)
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
        managers = Managers(rt, seed)
        end = start + dt.timedelta(weeks=weeks)
        days, reported = weeks * 7, -1
        while True:
            if progress is not None and (done := (rt.now() - start).days) != reported:
                reported = done
                progress(min(done, days), days)
            managers.deliver_due()
            for _ in range(10):  # a task that fell due while the tick ran goes out now too
                tick(rt)
                broker.join(QUEUE)
                worker.join()
                due = next_due(rt)
                if due is None or due > rt.now():
                    break
            managers.observe()
            upcoming = [t for t in (next_due(rt), managers.next_time()) if t is not None]
            nxt = min(upcoming, default=end)
            if nxt >= end:
                break
            clock.advance_to(max(nxt, rt.now() + dt.timedelta(seconds=1)))
        clock.advance_to(end)
        if progress is not None:
            progress(days, days)
        summary = summarize(rt, org_id, weeks, seed, out)
        write_report(rt, org_id, summary, out)
        (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
        return summary
    finally:
        worker.stop()
        install(None)
        rt.engine.dispose()


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
    html = (
        environment(rt.settings.templates_dir)
        .get_template("report/demo.html")
        .render(
            summary=asdict(summary),
            rows=rows,
            quarantined=quarantined,
            org={"name": rt.settings.organization_name},
        )
    )
    (out / "report.html").write_text(html)


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
        'base_url = "http://127.0.0.1:8080"',
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
    return "\n".join(lines)
