"""Isolation (issue 10): every entry point, tried with another organization's identifiers.

Two client organizations share one database (tests/isolation_support.py builds them: people,
check-ins planned and run by the loop, a record, an overdue check-in with escalation steps, a
PIP, prompts with signed reply addresses, a quarantined message, calendar push channels, an
HR admin each). Each test takes one organization's ids, addresses, tokens or secrets and
presents them through the other's entry point:

1. reply tokens: a reply to one organization's prompt delivered as the other's mail;
2. webhooks: one organization's channel or subscription with the other's secret;
3. console sessions: an HR admin of one organization with the other's ids on every page and
   action;
4. exports: the other organization's employee, through the service and the CLI;
5. jobs: a task of one organization whose subject is the other's row;
6. the ORM scope itself, for every tenant-owned model (from the registry).

Every test checks what it must not change with a snapshot of the victim organization's rows
(every tenant table, its audit log and its ``organizations`` row): equal before and after.

The world is built once per database (module scope: building it runs the loop over two
weeks); tests only add to it, and each compares its own before and after. On PostgreSQL it
runs as an ordinary role, so row-level security is in force (a superuser bypasses it).

Holes found are kept as ``xfail(strict=True)`` with the hole in the reason: when the fix lands
the test passes, strict xfail fails the run, and the marker is removed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import email.utils
import itertools
import re
import shutil
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, insert, inspect, select, update
from sqlalchemy.orm.attributes import flag_modified

from automation.db import make_engine, migrate, session_factory, transaction
from automation.models import (
    AuditEntry,
    Base,
    Cadence,
    CalendarSync,
    CheckinSeries,
    ConsoleAccount,
    ConversationRecord,
    InboundMessage,
    Organization,
    OrgScoped,
    OutboundMessage,
    Person,
    Reassignment,
    Task,
    TaskState,
)
from automation.people import ensure_organization
from automation.services import accounts
from automation.services.tasks import HANDLERS, create_task, run_task
from automation.tenancy import CrossTenantWrite, scoped_factory
from automation.web import create_app, sign_inbound
from tests.isolation_support import (
    PASSWORD,
    Org,
    World,
    build_world,
    changes,
    count,
    fill_every_table,
    ingest_into,
    outbound,
    postgres_url_as_app_role,
    reply,
    row_values,
    snapshot,
    stranger_mail,
    tenant_models,
)

DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
# (attacker, victim): the deployment's own organization and a second client, both ways.
DIRECTIONS = [
    pytest.param(("acme", "beta"), id="acme-vs-beta"),
    pytest.param(("beta", "acme"), id="beta-vs-acme"),
]


def _database(request: pytest.FixtureRequest, folder: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{folder / 'isolation.db'}"
    else:
        yield from postgres_url_as_app_role()


@pytest.fixture(scope="module", params=DATABASES)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    folder = tmp_path_factory.mktemp(f"isolation-{request.param}")
    for url in _database(request, folder):
        built = build_world(folder, url)
        try:
            yield built
        finally:
            built.rt.engine.dispose()


def sides(world: World, direction: tuple[str, str]) -> tuple[Org, Org]:
    attacker, victim = direction
    return world.org(attacker), world.org(victim)


@contextlib.contextmanager
def untouched(world: World, org: Org, *, may_add_to: tuple[str, ...] = ()) -> Iterator[None]:
    """Fails unless every row of ``org`` is as it was (tables in ``may_add_to`` may change:
    the message an attack was delivered as, its ingest task, its audit entry)."""
    before = snapshot(world.rt.engine, org.id)
    yield
    found = changes(before, snapshot(world.rt.engine, org.id))
    for table in may_add_to:
        found.pop(table, None)
    assert found == {}, f"{org.cast.slug}'s rows changed: {found}"


def no_marks(text: str, org: Org) -> list[str]:
    """Names and addresses of ``org`` that appear in ``text`` (should be none)."""
    return [mark for mark in org.cast.marks if mark in text]


# =========================================================================== 1. reply tokens

# Every kind of email that carries a signed reply address, and who it went to.
PROMPT_KINDS = ["followup", "agenda", "pip_review", "pip_plan", "escalate"]
# What delivering mail into an organization may add to it (the message, its ingest task, the
# audit entry of the quarantine and the organization's audit head).
MAIL_ROWS = ("inbound_messages", "tasks", "audit_log", "organizations")


def prompt_of(world: World, org: Org, kind: str) -> OutboundMessage:
    with world.rt.factory() as session:
        found = session.scalars(
            select(OutboundMessage)
            .where(OutboundMessage.organization_id == org.id, OutboundMessage.kind == kind)
            .order_by(OutboundMessage.id)
        ).first()
    assert found is not None, f"{org.cast.slug} has no {kind} email"
    parsed = email.message_from_bytes(found.raw, policy=email.policy.default)
    assert "+" in str(parsed["Reply-To"]), f"{kind} carries no signed reply address"
    return found


@pytest.mark.parametrize("kind", PROMPT_KINDS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_reply_to_one_organizations_prompt_delivered_as_the_others_mail_records_nothing(
    world: World, direction: tuple[str, str], kind: str
) -> None:
    """The signed reply address names its organization: delivered as the other
    organization's mail (its inbox, its tenant runtime), the reply is quarantined with that
    reason and adds nothing to either organization's records, acknowledgements or topics."""
    victim, receiver = sides(world, direction)
    prompt = prompt_of(world, victim, kind)
    sender = prompt.recipients[0]  # the very person the prompt asked: a genuine answer
    raw = reply(world.rt, prompt, sender, "1. All fine.\nRating: 5\nI acknowledge.\n#done\n")
    with untouched(world, victim), untouched(world, receiver, may_add_to=MAIL_ROWS):
        message = ingest_into(world.rt, receiver.id, raw)
    assert message.organization_id == receiver.id
    assert message.state == "quarantined"
    assert message.quarantine_reason == "reply token belongs to another organization"
    assert message.occurrence_id is None and message.pip_review_id is None


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_reply_threaded_under_the_others_prompt_without_its_address_is_no_reference(
    world: World, direction: tuple[str, str]
) -> None:
    """A reply sent to the From address finds its check-in by In-Reply-To, among its own
    organization's emails only."""
    victim, receiver = sides(world, direction)
    prompt = outbound(world.rt, victim.open_prompt)
    raw = reply(world.rt, prompt, victim.email("boss"), "1. Fine.\n", to="checkin@example.com")
    with untouched(world, victim), untouched(world, receiver, may_add_to=MAIL_ROWS):
        message = ingest_into(world.rt, receiver.id, raw)
    assert message.state == "quarantined"
    assert message.quarantine_reason == "no check-in reference: not a reply to a check-in prompt"


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_the_others_manager_answering_a_prompt_is_not_a_participant(
    world: World, direction: tuple[str, str]
) -> None:
    """A person of another organization replying to a prompt (from their own address, to the
    right reply address, in the right organization) is a stranger to the check-in."""
    attacker, victim = sides(world, direction)
    prompt = outbound(world.rt, victim.open_prompt)
    raw = reply(world.rt, prompt, attacker.email("boss"), "1. I document this.\n#done\n")
    with untouched(world, attacker), untouched(world, victim, may_add_to=MAIL_ROWS):
        message = ingest_into(world.rt, victim.id, raw)
    assert message.state == "quarantined"
    assert message.quarantine_reason == (
        f"sender {attacker.email('boss')} is not a participant of this check-in"
    )


def calendar_reply(world: World, org: Org) -> bytes:
    """The employee's calendar app declining the next meeting of ``org``'s series, sent to
    the series' signed ORGANIZER address (iMIP REPLY)."""
    from automation.services.imip import organizer_for

    with world.rt.factory() as session:
        series = session.get(CheckinSeries, org.series)
        assert series is not None
        manager, employee = (
            session.get(Person, series.manager_id),
            session.get(Person, series.employee_id),
        )
        assert manager is not None and employee is not None
        organizer = organizer_for(world.rt, manager, series).email
    now = world.rt.now()
    lines = [
        "BEGIN:VCALENDAR", "PRODID:-//Test client//EN", "VERSION:2.0", "METHOD:REPLY",
        "BEGIN:VEVENT", f"UID:{series.uid}", f"DTSTAMP:{now:%Y%m%dT%H%M%SZ}",
        f"SEQUENCE:{series.sequence}",
        f"ATTENDEE;PARTSTAT=DECLINED;CN={employee.name}:mailto:{employee.email}",
        "SUMMARY:1:1", "END:VEVENT", "END:VCALENDAR",
    ]  # fmt: skip
    msg = EmailMessage()
    msg["From"] = employee.email
    msg["To"] = organizer
    msg["Subject"] = "Declined: 1:1"
    msg["Date"] = email.utils.format_datetime(now)
    msg["Message-ID"] = email.utils.make_msgid(domain="client.test")
    msg.set_content(f"{employee.email} has declined.\n")
    msg.add_alternative("\r\n".join(lines) + "\r\n", subtype="calendar", params={"method": "REPLY"})
    return msg.as_bytes()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_calendar_answer_to_the_others_invite_changes_no_meeting(
    world: World, direction: tuple[str, str]
) -> None:
    victim, receiver = sides(world, direction)
    raw = calendar_reply(world, victim)
    with untouched(world, victim), untouched(world, receiver, may_add_to=MAIL_ROWS):
        message = ingest_into(world.rt, receiver.id, raw)
    assert message.state == "quarantined"
    assert message.quarantine_reason == (
        "calendar reply not sent to the signed organizer address of an invite of ours"
    )


def test_a_reply_to_the_second_organization_reaching_the_shared_inbound_path_is_its_own(
    world: World,
) -> None:
    """The deployment has one inbound webhook and one inbox; beta's managers reply to beta's
    signed reply addresses, so their mail arrives there. It must become beta's message (the
    signed token says whose it is), never a row of acme that acme's HR can read."""
    a, b = world.a, world.b
    prompt = outbound(world.rt, b.followup_prompt)
    raw = reply(world.rt, prompt, b.email("boss"), "1. Correction: it went very well.\n")
    records = count(world.rt, ConversationRecord, b.id)
    with untouched(world, a), TestClient(create_app(world.rt)) as client:
        stamp = int(world.rt.now().timestamp())
        posted = client.post(
            "/webhooks/mail/inbound",
            content=raw,
            headers={
                "Content-Type": "message/rfc822",
                "X-Signature": sign_inbound(world.settings.inbound_webhook_secret, stamp, raw),
            },
        )
        assert posted.status_code == 202, posted.text
        stored = posted.json()["stored"]
        with world.rt.factory() as session:
            ingest = session.scalars(
                select(Task.id).where(Task.kind == "ingest", Task.subject_id == stored)
            ).one()
        run_task(world.rt, ingest)
    assert count(world.rt, ConversationRecord, b.id) == records + 1


# =========================================================================== 2. webhooks


@contextlib.contextmanager
def webhook_client(world: World) -> Iterator[tuple[TestClient, list[int]]]:
    enqueued: list[int] = []
    previous = world.rt.enqueue
    world.rt.enqueue = enqueued.append
    try:
        with TestClient(create_app(world.rt)) as client:
            yield client, enqueued
    finally:
        world.rt.enqueue = previous


# Google numbers a channel's notices upwards; a number not above the last one is a duplicate.
MESSAGE_NUMBERS = itertools.count(10_000)


def google_headers(org: Org, token: str, number: int, state: str = "exists") -> dict[str, str]:
    return {
        "X-Goog-Channel-ID": org.google_channel,
        "X-Goog-Channel-Token": token,
        "X-Goog-Resource-ID": f"res-{org.google_channel[:8]}",
        "X-Goog-Resource-State": state,
        "X-Goog-Message-Number": str(number),
    }


def graph_body(subscription: str, client_state: str) -> dict[str, Any]:
    return {
        "value": [
            {
                "subscriptionId": subscription,
                "clientState": client_state,
                "changeType": "updated",
                "resource": "Users/boss/Events/AAMkAGI2",
            }
        ]
    }


def new_tasks(world: World, enqueued: list[int]) -> list[tuple[int, str, int]]:
    with world.rt.factory() as session:
        rows = session.scalars(select(Task).where(Task.id.in_(enqueued)).order_by(Task.id))
        return [(t.organization_id, t.kind, t.subject_id) for t in rows]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_google_channel_with_the_others_token_is_refused(
    world: World, direction: tuple[str, str]
) -> None:
    attacker, victim = sides(world, direction)
    with (
        untouched(world, attacker),
        untouched(world, victim),
        webhook_client(world) as (client, enqueued),
    ):
        for token in (attacker.google_secret, attacker.graph_secret):
            answer = client.post(
                "/webhooks/google/calendar",
                headers=google_headers(victim, token, next(MESSAGE_NUMBERS)),
            )
            assert answer.status_code == 401, answer.text
        assert enqueued == []


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_graph_subscription_with_the_others_client_state_is_refused(
    world: World, direction: tuple[str, str]
) -> None:
    attacker, victim = sides(world, direction)
    forged = graph_body(victim.graph_subscription, attacker.graph_secret)
    with webhook_client(world) as (client, enqueued):
        with untouched(world, attacker), untouched(world, victim):
            for path in ("/webhooks/graph/calendar", "/webhooks/graph/lifecycle"):
                answer = client.post(path, json=forged)
                assert answer.status_code == 401, (path, answer.text)
            assert enqueued == []
        # Next to a valid item of the attacker's own: only its own calendar is queued.
        body = {"value": forged["value"] + graph_body(
            attacker.graph_subscription, attacker.graph_secret)["value"]}  # fmt: skip
        with untouched(world, victim):
            answer = client.post("/webhooks/graph/calendar", json=body)
        assert answer.status_code == 202 and answer.json() == {"accepted": 1, "rejected": 1}
        assert all(org == attacker.id for org, _, _ in new_tasks(world, enqueued))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_valid_notice_creates_tasks_of_its_own_organization_only(
    world: World, direction: tuple[str, str]
) -> None:
    own, other = sides(world, direction)
    with untouched(world, other), webhook_client(world) as (client, enqueued):
        google = client.post(
            "/webhooks/google/calendar",
            headers=google_headers(own, own.google_secret, next(MESSAGE_NUMBERS)),
        )
        assert google.status_code == 200 and google.json()["result"] in ("queued", "coalesced")
        graph = client.post(
            "/webhooks/graph/calendar", json=graph_body(own.graph_subscription, own.graph_secret)
        )
        assert graph.status_code == 202 and graph.json() == {"accepted": 1, "rejected": 0}
    with world.rt.factory() as session:
        waiting = session.execute(
            select(Task.organization_id, Task.subject_id).where(
                Task.kind == "calendar_sync",
                Task.subject_id.in_([own.google_sync, own.graph_sync]),
                Task.state == TaskState.PENDING,
            )
        ).all()
    assert {(own.id, own.google_sync), (own.id, own.graph_sync)} <= set(waiting)
    assert all(org == own.id for org, _ in waiting)
    assert all(org == own.id for org, _, _ in new_tasks(world, enqueued))


def test_a_channel_id_held_by_both_organizations_is_told_apart_by_its_secret(
    world: World,
) -> None:
    """Provider ids are not ours to make unique (a Graph subscription id is the provider's):
    when both organizations hold the same one, the secret decides whose notice it is."""
    a, b = world.a, world.b

    def move_b_channel(channel: str, resource: str) -> tuple[str | None, str | None]:
        with transaction(world.rt.factory) as session:
            theirs = session.get(CalendarSync, b.google_sync)
            assert theirs is not None
            old = (theirs.channel_id, theirs.channel_resource)
            theirs.channel_id, theirs.channel_resource = channel, resource
            return old

    old = move_b_channel(a.google_channel, f"res-{a.google_channel[:8]}")
    try:
        with untouched(world, a), webhook_client(world) as (client, enqueued):
            answer = client.post(
                "/webhooks/google/calendar",
                headers=google_headers(a, b.google_secret, next(MESSAGE_NUMBERS)),
            )
            assert answer.status_code == 200, answer.text
        assert all(org == b.id for org, _, _ in new_tasks(world, enqueued))
        with world.rt.factory() as session:
            waiting = session.scalar(
                select(func.count())
                .select_from(Task)
                .where(
                    Task.kind == "calendar_sync",
                    Task.subject_id == b.google_sync,
                    Task.organization_id == b.id,
                    Task.state == TaskState.PENDING,
                )
            )
        assert waiting
    finally:
        move_b_channel(*old)  # type: ignore[arg-type]


# =========================================================================== 3. console


@contextlib.contextmanager
def console_as(world: World, org: Org) -> Iterator[tuple[TestClient, str]]:
    """The web app with ``org``'s HR admin signed in (a session opened as the sign-in page
    opens it); yields the client and the session's CSRF token."""
    with transaction(world.rt.factory) as session:
        signed = accounts.sign_in(session, org.id, org.admin, PASSWORD, world.rt.now())
        assert signed is not None
    with TestClient(create_app(world.rt)) as client:
        client.cookies.set("checkin_session", signed.token, path="/console")
        assert client.get("/console/").status_code == 200
        yield client, signed.csrf_token


def quarantined_now(world: World, org: Org) -> int:
    return count(world.rt, InboundMessage, org.id, InboundMessage.state == "quarantined")


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_console_pages_never_show_the_others_people_records_or_mail(
    world: World, direction: tuple[str, str]
) -> None:
    """Signed in as one organization's HR admin (who sees everything of their own), every
    page asked about the other's people, managers and messages answers 404 or shows nothing
    of them; the victim's rows and audit log stay as they were."""
    me, them = sides(world, direction)
    with console_as(world, me) as (client, _), untouched(world, them):
        for person in them.people.values():
            page = client.get(f"/console/people/{person}")
            assert page.status_code == 404, person
            assert no_marks(page.text, them) == []
        message = client.get(f"/console/quarantine/{them.quarantined}")
        assert (
            message.status_code == 404 and f"private words of {them.cast.slug}" not in message.text
        )
        pages = [
            "/console/",
            "/console/people",
            f"/console/people?q={them.cast.boss.split()[0]}",
            f"/console/people?q=@{them.cast.domain}",
            f"/console/calendar?manager={them.people['boss']}",
            f"/console/calendar?manager={them.people['boss']}&week=1",
            "/console/queue",
            "/console/report",
            "/console/report?by=team",
            "/console/report.csv",
            "/console/report.json",
        ]
        for path in pages:
            page = client.get(path)
            assert page.status_code == 200, (path, page.status_code)
            typed = path.partition("?q=")[2]
            if typed:  # what was typed is shown back (the box, "people match …")
                assert "Nobody matches." in page.text, path
                shown = page.text.replace(f'value="{typed}"', "").replace(f"“{typed}”", "")
            else:
                shown = page.text
            assert no_marks(shown, them) == [], path
            assert f"Secret of {them.cast.name}" not in page.text, path
        # The quarantine lists only this organization's messages (other tests deliver the
        # other's replies into it: those are its own rows, and may name the other's people).
        listing = client.get("/console/quarantine?state=all")
        assert listing.status_code == 200
        listed = {int(i) for i in re.findall(r'href="/console/quarantine/(\d+)"', listing.text)}
        assert me.quarantined in listed and them.quarantined not in listed
        with world.rt.factory() as session:
            owners = session.scalars(
                select(InboundMessage.organization_id).where(InboundMessage.id.in_(listed))
            ).all()
        assert set(owners) == {me.id}
        assert f"Secret of {them.cast.name}" not in listing.text
        # The home page counts only this organization's quarantine.
        home = client.get("/console/").text
        shown = re.search(r"<strong>(\d+)</strong> messages in quarantine", home)
        assert shown and int(shown.group(1)) == quarantined_now(world, me)
        figures = client.get("/console/report.json").json()
        assert figures["organization"] == me.cast.name
        assert {m["email"].split("@")[1] for m in figures["managers"]} <= {me.cast.domain}
        assert figures["managers"], "the report shows the viewer's own managers"


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_queue_actions_with_the_others_ids_change_nothing(
    world: World, direction: tuple[str, str]
) -> None:
    """Acknowledge and reassign with the other organization's check-ins, PIP reviews and
    acknowledgement requests, and reassigning one's own check-in to the other's person: each
    refused (4xx, never 5xx), nothing written on either side."""
    me, them = sides(world, direction)
    attempts = [
        ("acknowledge", {"kind": them.ackable[0], "id": str(them.ackable[1]), "note": "x"}),
        ("acknowledge", {"kind": "occurrence", "id": str(them.open_occurrence), "note": "x"}),
        ("acknowledge", {"kind": "pip_review", "id": str(them.review), "note": "x"}),
        ("acknowledge", {"kind": "acknowledgement", "id": str(them.pip_ack), "note": "x"}),
        ("reassign", {"kind": "occurrence", "id": str(them.open_occurrence),
                      "person": str(them.people["ceo"])}),
        ("reassign", {"kind": "pip_review", "id": str(them.review),
                      "person": str(them.people["ceo"])}),
        ("reassign", {"kind": "occurrence", "id": str(them.open_occurrence),
                      "person": str(me.people["ceo"])}),
        # Their person as the one who documents my own check-in or review.
        ("reassign", {"kind": "occurrence", "id": str(me.open_occurrence),
                      "person": str(them.people["ceo"])}),
        ("reassign", {"kind": "pip_review", "id": str(me.review),
                      "person": str(them.people["hr"])}),
    ]  # fmt: skip
    reassignments = count(world.rt, Reassignment, me.id)
    with console_as(world, me) as (client, csrf), untouched(world, them):
        audit_entries = count(world.rt, AuditEntry, me.id)  # after the sign-in's own entry
        for action, data in attempts:
            answer = client.post(f"/console/queue/{action}", data={"csrf": csrf, **data},
                                 follow_redirects=False)  # fmt: skip
            assert answer.status_code in (400, 403, 404), (action, data, answer.status_code)
            assert no_marks(answer.text, them) == [], (action, data)
    assert count(world.rt, Reassignment, me.id) == reassignments
    assert count(world.rt, AuditEntry, me.id) == audit_entries


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_the_others_quarantined_message_cannot_be_read_or_released(
    world: World, direction: tuple[str, str]
) -> None:
    me, them = sides(world, direction)
    with console_as(world, me) as (client, csrf), untouched(world, them):
        for data in ({"csrf": csrf}, {"csrf": csrf, "as": them.email("boss"), "reason": "x"}):
            answer = client.post(f"/console/quarantine/{them.quarantined}/release", data=data)
            assert answer.status_code == 404
            assert f"private words of {them.cast.slug}" not in answer.text
        # Releasing one's own message as the other organization's manager: nobody on record.
        own = client.post(
            f"/console/quarantine/{me.quarantined}/release",
            data={"csrf": csrf, "as": them.email("boss"), "reason": "they said so"},
        )
        assert own.status_code == 409
        assert f"nobody with the address {them.email('boss')} is on record" in own.text
    with world.rt.factory() as session:
        mine = session.get(InboundMessage, me.quarantined)
        assert mine is not None and mine.state == "quarantined" and mine.attributed_to is None


def test_a_consultant_acting_for_a_client_with_another_organizations_ids_changes_nothing(
    world: World,
) -> None:
    """Fractional HR (automation/console/clients.py): a consultant of acme granted beta acts
    on beta's queue through ``/console/clients/beta/…``. With acme's ids there (its own
    organization's check-ins, acme's people as the new documenter) nothing happens to either:
    the client's pages run in the client's scope. Acme itself is not a client of its own
    consultant (no grant), and beta's people are not on acme's pages."""
    if "consultant" not in accounts.ROLES or not hasattr(accounts, "grant"):
        pytest.skip("the consultant's view is not in this tree")
    a, b = world.a, world.b
    email_ = "connie@acme.test"
    with transaction(world.rt.factory) as session:
        account = session.scalar(
            select(ConsoleAccount).where(
                ConsoleAccount.organization_id == a.id, ConsoleAccount.email == email_
            )
        )
        if account is None:
            account = accounts.create_account(
                session, a.id, email=email_, name="Connie Consultant", role="consultant",
                now=world.rt.now(), actor="test", password=PASSWORD,
            )  # fmt: skip
        accounts.grant(session, account, b.id, world.rt.now(), "test")
        signed = accounts.sign_in(session, a.id, email_, PASSWORD, world.rt.now())
        assert signed is not None
    attempts = [
        ("beta", "acknowledge", {"kind": "occurrence", "id": str(a.open_occurrence)}),
        ("beta", "acknowledge", {"kind": a.ackable[0], "id": str(a.ackable[1])}),
        ("beta", "reassign", {"kind": "occurrence", "id": str(a.open_occurrence),
                              "person": str(b.people["ceo"])}),
        ("beta", "reassign", {"kind": "occurrence", "id": str(b.open_occurrence),
                              "person": str(a.people["ceo"])}),
        ("beta", "reassign", {"kind": "pip_review", "id": str(b.review),
                              "person": str(a.people["hr"])}),
        ("acme", "acknowledge", {"kind": b.ackable[0], "id": str(b.ackable[1])}),
        ("acme", "acknowledge", {"kind": a.ackable[0], "id": str(a.ackable[1])}),
    ]  # fmt: skip
    with TestClient(create_app(world.rt)) as client:
        client.cookies.set("checkin_session", signed.token, path="/console")
        with untouched(world, a), untouched(world, b):
            for slug, action, data in attempts:
                answer = client.post(
                    f"/console/clients/{slug}/queue/{action}",
                    data={"csrf": signed.csrf_token, **data},
                    follow_redirects=False,
                )
                assert answer.status_code in (400, 404), (slug, action, data, answer.status_code)
            report = client.get("/console/clients/beta/report")
            assert report.status_code == 200 and no_marks(report.text, a) == []
            assert client.get("/console/clients/acme/report").status_code == 404
            for person in b.people.values():
                assert client.get(f"/console/people/{person}").status_code == 404


CADENCE = "/console/cadences/one-on-one"


def _save_cadence(client: TestClient, csrf: str, old: str, new: str) -> None:
    assert old != new
    saved = client.post(CADENCE, data={"csrf": csrf, "text": new}, follow_redirects=False)
    assert saved.status_code == 303, saved.text


def _cadence_row(world: World, org: Org) -> dict[str, Any]:
    with world.rt.factory() as session:
        row = session.scalars(
            select(Cadence).where(Cadence.organization_id == org.id, Cadence.name == "one-on-one")
        ).one()
        return dict(row.definition)


def _plan(world: World, org: Org) -> str:
    with transaction(world.rt.factory) as session:
        task = create_task(session, org.id, "plan", f"plan:isolation:{uuid.uuid4().hex}", org.id,
                           world.rt.now(), world.rt.now())  # fmt: skip
    return run_task(world.rt, task.id)


@contextlib.contextmanager
def cadence_restored(world: World) -> Iterator[Path]:
    path = world.settings.config_dir / "cadences" / "one-on-one.toml"
    old = path.read_text()
    try:
        yield path
    finally:
        path.write_text(old)
        for org in (world.a, world.b):
            # A save writes the organization's own copy (config/orgs/<slug>/cadences/).
            shutil.rmtree(path.parent.parent / "orgs" / org.cast.slug, ignore_errors=True)
            _plan(world, org)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_cadence_saved_in_the_console_is_audited_and_applied_in_the_savers_organization_only(
    world: World, direction: tuple[str, str]
) -> None:
    """Config folders are still shared between organizations (per-organization folders are
    being built: automation/organizations.py); what a save does to the database is the
    saver's own: its audit entry and its stored cadence, none of the other's rows."""
    me, them = sides(world, direction)
    with cadence_restored(world) as path, console_as(world, me) as (client, csrf):
        old = path.read_text()
        with untouched(world, them):
            _save_cadence(client, csrf, old, old.replace("duration_minutes = 30",
                                                         "duration_minutes = 50"))  # fmt: skip
        assert _cadence_row(world, me)["duration_minutes"] == 50
        assert _cadence_row(world, them)["duration_minutes"] == 30
        with world.rt.factory() as session:
            saved = session.scalars(
                select(AuditEntry.organization_id).where(
                    AuditEntry.action == "config.cadence_saved",
                    AuditEntry.actor == f"console:{me.admin}",
                )
            ).all()
        assert saved and set(saved) == {me.id}


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_cadence_saved_by_one_organization_is_not_the_others(
    world: World, direction: tuple[str, str]
) -> None:
    me, them = sides(world, direction)
    with cadence_restored(world) as path, console_as(world, me) as (client, csrf):
        old = path.read_text()
        _save_cadence(client, csrf, old, old.replace("duration_minutes = 30",
                                                     "duration_minutes = 55"))  # fmt: skip
        _plan(world, them)
        assert _cadence_row(world, them)["duration_minutes"] == 30


# =========================================================================== 4. exports


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_exporting_the_others_employee_through_the_service_is_refused(
    world: World, direction: tuple[str, str]
) -> None:
    from automation.config import load_privacy
    from automation.services.export import EmployeeNotFound, timeline
    from automation.services.privacy import AccessDenied, check_reader

    me, them = sides(world, direction)
    with untouched(world, them), transaction(scoped_factory(world.rt.engine, me.id)) as session:
        with pytest.raises(EmployeeNotFound):
            timeline(session, me.id, them.email("doc"), "UTC")
        # The other organization's id, in a session scoped to this one: refused, not read.
        with pytest.raises((LookupError, AssertionError)):
            timeline(session, them.id, them.email("doc"), "UTC")
    with world.rt.factory() as session:  # the system scope, as the CLI reads
        employee = session.get(Person, them.people["doc"])
        assert employee is not None
        policy = load_privacy(world.settings)
        for reader in (me.email("hr"), me.email("boss"), me.email("ceo")):
            with pytest.raises(AccessDenied):
                check_reader(session, policy, employee, reader)


@pytest.fixture
def cli_env(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from automation.settings import PROJECT_ROOT

    for key, value in {
        "AUTOMATION_DATABASE_URL": world.settings.database,
        "AUTOMATION_DATA_DIR": str(world.settings.data_dir),
        "AUTOMATION_SECRET_KEY": world.settings.secret_key,
        "AUTOMATION_CONFIG_DIR": str(world.settings.config_dir),
        "AUTOMATION_TEMPLATES_DIR": str(world.settings.templates_dir),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AUTOMATION_CONFIG", raising=False)
    monkeypatch.chdir(PROJECT_ROOT)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_exporting_the_others_employee_with_the_cli_is_refused(
    world: World,
    direction: tuple[str, str],
    cli_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """`automation export` works for the configured organization: the other's employee is
    nobody there; run for the other organization, this one's people may not read."""
    from automation.cli import main

    me, them = sides(world, direction)
    out = tmp_path / "export.json"
    with untouched(world, me), untouched(world, them):
        monkeypatch.setenv("AUTOMATION_ORGANIZATION", me.cast.slug)
        code = main(["export", them.email("doc"), "--as", me.email("hr"), "--out", str(out)])
        assert code == 65, capsys.readouterr().err
        assert f"nobody with the address {them.email('doc')}" in capsys.readouterr().err
        monkeypatch.setenv("AUTOMATION_ORGANIZATION", them.cast.slug)
        for reader in (me.email("hr"), me.email("boss"), me.email("ceo")):
            code = main(["export", them.email("doc"), "--as", reader, "--out", str(out)])
            err = capsys.readouterr().err
            assert code == 77, err
            assert f"{reader} may not read the records of {them.email('doc')}" in err
    assert not out.exists()


# =========================================================================== 5. jobs


def forged_subjects(world: World, victim: Org) -> dict[str, tuple[str, int]]:
    """For each task kind: a key and the victim's row a forged task names as its subject."""
    with world.rt.factory() as session:
        entry = session.scalars(
            select(AuditEntry.id).where(AuditEntry.organization_id == victim.id)
        ).first()
        assert entry is not None

    def key(kind: str) -> str:
        return f"forged:{kind}:{uuid.uuid4().hex}"

    return {
        "send": (key("send"), victim.open_prompt),
        "agenda": (key("agenda"), victim.future_occurrence),
        "agenda_update": (key("agenda_update"), victim.future_occurrence),
        "followup": (key("followup"), victim.future_occurrence),
        # The ladder's task names its subject in the key.
        "escalate": (f"escalate:occurrence:{victim.open_occurrence}:0", victim.open_occurrence),
        "escalate:pip_review": (f"escalate:pip_review:{victim.review}:0", victim.review),
        "escalate:acknowledgement": (
            f"escalate:acknowledgement:{victim.pip_ack}:0",
            victim.pip_ack,
        ),
        "pip_review": (key("pip_review"), victim.review),
        "invite": (key("invite"), victim.series),
        "pip_invite": (key("pip_invite"), victim.pip),
        "calendar_sync": (key("calendar_sync"), victim.google_sync),
        "calendar_channel_renew": (key("calendar_channel_renew"), victim.google_sync),
        "calendar_channel_stop": (key("calendar_channel_stop"), entry),
        "ingest": (key("ingest"), victim.quarantined),
        # These work on their own task's organization, whatever the subject says.
        "plan": (key("plan"), victim.id),
        "retention": (key("retention"), victim.id),
        "mail_poll": (key("mail_poll"), victim.id),
    }


# What each handler answers when its subject is not in the task's organization: the same as
# for a row that does not exist. The last three do their own organization's work.
NO_SUBJECT = {
    "send": "no-message",
    "agenda": "no-occurrence",
    "agenda_update": "no-occurrence",
    "followup": "no-occurrence",
    "escalate": "no-subject",
    "escalate:pip_review": "no-subject",
    "escalate:acknowledgement": "no-subject",
    "pip_review": "no-review",
    "invite": re.compile(r"written 0 series \(1 tasks\), 0 iMIP emails"),
    "pip_invite": "no-pip",
    "calendar_sync": "no-sync-state",
    "calendar_channel_renew": "no-sync-state",
    "calendar_channel_stop": "no-audit-entry",
    "ingest": "no-message",
    "plan": re.compile(r"series\+\d+ occurrences\+\d+"),
    "retention": re.compile(r"people 0 held-requests 0 "),
    "mail_poll": re.compile(r"\d+ message\(s\) taken in|no inbox of this organization"),
}


def test_every_task_kind_is_attacked() -> None:
    """A handler added later must say here which row its task's subject is."""
    kinds = {name.split(":")[0] for name in NO_SUBJECT}
    assert set(HANDLERS) <= kinds, f"add the subject of {sorted(set(HANDLERS) - kinds)}"


def sent_to(world: World, org: Org) -> int:
    """Emails the transport has sent to anyone of ``org``."""
    messages = world.rt.sender.messages()  # type: ignore[attr-defined]
    return sum(1 for raw in messages if f"@{org.cast.domain}".encode() in raw.split(b"\n\n")[0])


@pytest.mark.parametrize("kind", sorted(NO_SUBJECT))
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_task_whose_subject_is_the_others_row_neither_reads_nor_changes_it(
    world: World, direction: tuple[str, str], kind: str
) -> None:
    """A task of one organization, forged in the database to name the other's row, runs
    through the worker's path (claim, the organization's tenant runtime and scoped session):
    the handler finds no such row, does nothing to it and sends nobody of it anything."""
    attacker, victim = sides(world, direction)
    key, subject = forged_subjects(world, victim)[kind]
    with transaction(world.rt.factory) as session:
        task_id = create_task(session, attacker.id, kind.split(":")[0], key, subject,
                              world.rt.now(), world.rt.now()).id  # fmt: skip
    mails = sent_to(world, victim)
    with untouched(world, victim):
        result = run_task(world.rt, task_id)
    with world.rt.factory() as session:
        task = session.get(Task, task_id)
        assert task is not None
    expected = NO_SUBJECT[kind]
    if isinstance(expected, str):
        assert result == expected, (task.state, task.last_error)
    else:
        assert expected.fullmatch(result) or expected.match(result), (result, task.last_error)
    assert task.state == TaskState.DONE
    assert sent_to(world, victim) == mails


def test_a_mail_poll_task_of_a_client_does_not_take_the_deployments_mail(world: World) -> None:
    a, b = world.a, world.b
    raw = stranger_mail(world.rt, a.email("hr"), "For acme only", "acme's own mail\n")
    with transaction(world.rt.factory) as session:
        task_id = create_task(session, b.id, "mail_poll", f"mail-poll:forged:{uuid.uuid4()}",
                              0, world.rt.now(), world.rt.now()).id  # fmt: skip
    world.rt.inbox.deliver(raw, f"acme-{uuid.uuid4().hex}")  # type: ignore[attr-defined]
    try:
        run_task(world.rt, task_id)
        assert count(world.rt, InboundMessage, b.id, InboundMessage.raw == raw) == 0
    finally:
        from automation.services.inbound import poll_inbox

        poll_inbox(world.rt)  # acme's own poll takes whatever is left


class FakeGoogle:
    """A Google calendar provider that records the channels it is asked to stop."""

    name = "google"

    def __init__(self) -> None:
        self.stopped: list[tuple[str, str]] = []

    def watch(self, *args: object) -> None:  # has_push() looks for it
        raise AssertionError("not expected")

    def stop(self, calendar: str, channel: Any) -> None:
        self.stopped.append((calendar, channel.id))


def test_a_channel_stop_never_stops_the_others_live_channel(world: World) -> None:
    from automation import audit

    a, b = world.a, world.b
    with transaction(world.rt.factory) as session:
        entry = audit.record_now(
            session, a.id, actor="webhook:google", action="calendar.channel_unknown",
            subject_kind="calendar_channel", subject_id=None, at=world.rt.now(),
            data={"channel_id": b.google_channel, "resource_id": f"res-{b.google_channel[:8]}",
                  "resource_state": "exists", "message_number": 1},
        )  # fmt: skip
        session.flush()
        task_id = create_task(session, a.id, "calendar_channel_stop",
                              f"calendar-channel-stop:{b.google_channel}", entry.id,
                              world.rt.now(), world.rt.now()).id  # fmt: skip
    fake, previous = FakeGoogle(), world.rt.calendar
    world.rt.calendar = fake  # type: ignore[assignment]
    try:
        result = run_task(world.rt, task_id)
    finally:
        world.rt.calendar = previous
    assert fake.stopped == [], result
    assert result == "channel is ours after all: kept"


# =========================================================================== 6. the ORM scope


@pytest.fixture(scope="module", params=DATABASES)
def filled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, int, int, dict[str, int], dict[str, int]]]:
    """A database of its own with two organizations and a row of each in every tenant table
    (the generic filler: a model added later gets rows without anyone writing them)."""
    folder = tmp_path_factory.mktemp(f"filled-{request.param}")
    for url in _database(request, folder):
        engine = make_engine(url)
        try:
            migrate(engine)
            now = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)
            with transaction(session_factory(engine)) as session:
                a = ensure_organization(session, "alpha", "Alpha", now).id
                b = ensure_organization(session, "bravo", "Bravo", now).id
            # Each organization's rows written in its own scope, as the service writes them.
            with transaction(scoped_factory(engine, a)) as session:
                ids_a = fill_every_table(session, a, now)
            with transaction(scoped_factory(engine, b)) as session:
                ids_b = fill_every_table(session, b, now)
            yield engine, a, b, ids_a, ids_b
        finally:
            engine.dispose()


def test_every_model_with_an_organization_is_scoped() -> None:
    """The scope's criteria apply to :class:`OrgScoped`: a model with an ``organization_id``
    that does not derive from it would be read across organizations."""
    unscoped = [
        m.class_.__name__
        for m in Base.registry.mappers
        if "organization_id" in m.columns and not issubclass(m.class_, OrgScoped)
    ]
    assert unscoped == []
    mapped = {m.local_table.name for m in Base.registry.mappers}
    tables = {t.name for t in Base.metadata.tables.values() if "organization_id" in t.c}
    assert tables <= mapped


MODELS = [pytest.param(m, id=m.__name__) for m in tenant_models()]


def _plain_column(model: type) -> Any:
    """A column an UPDATE can set to itself (not the key, not a reference)."""
    table = model.__table__  # type: ignore[attr-defined]
    for column in table.columns:
        if not column.primary_key and not column.foreign_keys:
            return getattr(model, inspect(model).get_property_by_column(column).key)
    raise AssertionError(f"{model.__name__} has no plain column")


@pytest.mark.parametrize("model", MODELS)
def test_a_scoped_session_neither_sees_nor_changes_the_others_rows(
    filled: tuple[Any, int, int, dict[str, int], dict[str, int]], model: type
) -> None:
    engine, a, b, ids_a, ids_b = filled
    table = model.__table__.name  # type: ignore[attr-defined]
    mine, theirs = ids_a[table], ids_b[table]
    column = _plain_column(model)
    with scoped_factory(engine, a)() as session:
        rows = session.scalars(select(model)).all()
        assert rows and {r.organization_id for r in rows} == {a}
        assert mine in {r.id for r in rows} and theirs not in {r.id for r in rows}
        assert session.get(model, theirs) is None
        assert session.get(model, mine) is not None
        assert session.scalar(select(model).where(model.id == theirs)) is None  # type: ignore[attr-defined]
        assert session.scalar(select(func.count()).select_from(model)) == len(rows)
        moved = session.execute(
            update(model).where(model.id == theirs).values({column: column})  # type: ignore[attr-defined]
        )
        assert moved.rowcount == 0  # type: ignore[attr-defined]
        if model is not AuditEntry:  # append-only: the database refuses any DELETE of it
            gone = session.execute(delete(model).where(model.id == theirs))  # type: ignore[attr-defined]
            assert gone.rowcount == 0  # type: ignore[attr-defined]
        session.rollback()
    # Writing theirs: loaded where it may be, merged into the scoped session and changed.
    with session_factory(engine)() as system:
        other = system.get(model, theirs)
        assert other is not None
        system.expunge(other)
        values = {
            c.key: getattr(other, c.key) for c in inspect(model).column_attrs if c.key != "id"
        }
    with pytest.raises(CrossTenantWrite), transaction(scoped_factory(engine, a)) as session:
        flag_modified(session.merge(other, load=False), column.key)
    with pytest.raises(CrossTenantWrite), transaction(scoped_factory(engine, a)) as session:
        session.add(model(**values))
    with session_factory(engine)() as system:
        assert (
            system.scalar(
                select(func.count()).select_from(model).where(model.organization_id == b)  # type: ignore[attr-defined]
            )
            == 1
        )


def test_a_scoped_session_sees_only_its_own_organization_row(
    filled: tuple[Any, int, int, dict[str, int], dict[str, int]],
) -> None:
    engine, a, b, _, _ = filled
    with scoped_factory(engine, a)() as session:
        assert session.scalars(select(Organization.id)).all() == [a]
        assert session.get(Organization, b) is None
        moved = session.execute(update(Organization).where(Organization.id == b).values(name="x"))
        assert moved.rowcount == 0  # type: ignore[attr-defined]
        session.rollback()


def _refused(exc: Exception) -> bool:
    """Refused by a wall (the scope, or row-level security), not by a constraint."""
    return isinstance(exc, CrossTenantWrite) or "row-level security" in str(exc)


def test_insert_statements_for_the_other_organization_are_refused(
    request: pytest.FixtureRequest,
    filled: tuple[Any, int, int, dict[str, int], dict[str, int]],
) -> None:
    """The service inserts with statements too (create_task, store_many, the record's
    version): in a scoped session, an INSERT of another organization's row is refused like
    a flushed object is."""
    engine, a, b, _, ids_b = filled
    now = dt.datetime(2026, 3, 2, 7, 0, tzinfo=dt.UTC)
    not_refused = []
    for model in tenant_models():
        if model is AuditEntry:
            continue  # its sequence is the chain's: written only through automation.audit
        table = model.__table__  # type: ignore[attr-defined]
        values = row_values(table, b, ids_b, now, other_organization=a)
        for how, statement in (("ORM", insert(model)), ("Core", insert(table))):
            with scoped_factory(engine, a)() as session:
                try:
                    session.execute(statement.values(values))
                    not_refused.append(f"{model.__name__} ({how}): written")
                except Exception as exc:  # noqa: BLE001 - which wall refused it is checked
                    if not _refused(exc):
                        not_refused.append(f"{model.__name__} ({how}): {type(exc).__name__}")
                session.rollback()
    assert not_refused == []


def test_table_statements_stay_in_the_organization(
    request: pytest.FixtureRequest,
    filled: tuple[Any, int, int, dict[str, int], dict[str, int]],
) -> None:
    """UPDATE and DELETE written against the Table (not the mapped class; the service
    already writes its hot INSERTs that way): the scope must filter them too."""
    engine, a, b, _, ids_b = filled
    reached = []
    for model in tenant_models():
        table = model.__table__  # type: ignore[attr-defined]
        column = _plain_column(model)
        theirs = table.c.id == ids_b[table.name]
        statements = [update(table).where(theirs).values({column.key: table.c[column.key]})]
        if model is not AuditEntry:  # append-only: its trigger refuses any DELETE
            statements.append(delete(table).where(theirs))
        for statement in statements:
            with scoped_factory(engine, a)() as session:
                try:
                    if session.execute(statement).rowcount:  # type: ignore[attr-defined]
                        reached.append(f"{model.__name__}: {statement.__visit_name__}")
                except Exception as exc:  # noqa: BLE001
                    # The audit log's trigger fires only on a row the statement reached.
                    reached.append(f"{model.__name__}: {type(exc).__name__}")
                session.rollback()
    assert reached == []
