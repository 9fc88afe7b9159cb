"""The console's consistency report (charts, tables, CSV, JSON) and quarantine (list, one
message, release), on SQLite and PostgreSQL, with mail going through the real ingest path."""

from __future__ import annotations

import csv
import datetime as dt
import email.policy
import email.utils
import hashlib
import io
import re
from email.message import EmailMessage
from html import unescape

from sqlalchemy import func, select

from automation import audit
from automation.clock import SimulatedClock
from automation.db import transaction
from automation.models import (
    AuditEntry,
    CheckinSeries,
    ConversationRecord,
    InboundMessage,
    Occurrence,
    OutboundMessage,
    Person,
)
from automation.people import ensure_organization
from automation.services.loop import run_due
from automation.services.report import CHARTS, as_json, consistency_report, csv_columns
from tests.conftest import advance_until as run_until
from tests.console_support import Console, console  # noqa: F401

# --------------------------------------------------------------------------- helpers


def advance_until(site: Console, clock: SimulatedClock, moment: dt.datetime) -> None:
    run_until(site.rt, clock, moment)


def prompted(site: Console, clock: SimulatedClock) -> OutboundMessage:
    """Run until Ana's first check-in (with Bea Boss) has had its follow-up prompt."""
    with site.rt.factory() as session:
        occurrence = session.scalars(
            select(Occurrence)
            .join(CheckinSeries, CheckinSeries.id == Occurrence.series_id)
            .join(Person, Person.id == CheckinSeries.employee_id)
            .where(Person.email == "ana@acme.test")
            .order_by(Occurrence.start_at)
        ).first()
        assert occurrence is not None
    advance_until(site, clock, occurrence.end_at + dt.timedelta(hours=2))
    with site.rt.factory() as session:
        return session.scalars(
            select(OutboundMessage).where(
                OutboundMessage.kind == "followup",
                OutboundMessage.occurrence_id == occurrence.id,
            )
        ).one()


def mail(
    site: Console,
    sender: str,
    body: str,
    *,
    prompt: OutboundMessage | None = None,
    subject: str = "Hello",
) -> InboundMessage:
    """Deliver a message to the inbox, let the loop ingest it; the stored message."""
    msg = EmailMessage()
    msg["From"] = sender
    if prompt is not None:
        original = email.message_from_bytes(prompt.raw, policy=email.policy.default)
        msg["To"] = str(original["Reply-To"])
        msg["Subject"] = "Re: " + str(original["Subject"])
        msg["In-Reply-To"] = prompt.message_id
    else:
        msg["To"] = "checkins@example.com"
        msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(site.rt.now())
    msg["Message-ID"] = email.utils.make_msgid(domain="client.test")
    msg.set_content(body)
    raw = msg.as_bytes()
    site.rt.inbox.deliver(raw, hashlib.sha256(raw).hexdigest()[:16])
    run_due(site.rt)
    with site.rt.factory() as session:
        return session.scalars(select(InboundMessage).where(InboundMessage.raw == raw)).one()


def stored(site: Console, message_id: int) -> InboundMessage:
    with site.rt.factory() as session:
        message = session.get(InboundMessage, message_id)
        assert message is not None
        session.expunge(message)
        return message


def releases(site: Console) -> list[AuditEntry]:
    with site.rt.factory() as session:
        return list(
            session.scalars(select(AuditEntry).where(AuditEntry.action == "inbound.released"))
        )


def table_row(page: str, marker: str) -> list[str]:
    """The cells' texts of the table row that contains ``marker``."""
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", page, re.S):
        if marker in row:
            cells = re.findall(r"<td>(.*?)</td>", row, re.S)
            return [unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in cells]
    raise AssertionError(f"no row with {marker!r}")


def svgs(page: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", page, re.S)


# --------------------------------------------------------------------------- the report


def test_the_report_charts_the_figures_of_real_check_ins(console: Console, clock) -> None:  # noqa: F811
    prompt = prompted(console, clock)
    reply = mail(
        console, "Bea Boss <boss@acme.test>", "1. Good progress.\nRating: 4\n", prompt=prompt
    )
    assert reply.state == "recorded"
    with console.rt.factory() as session:
        expected = consistency_report(
            session, console.org, as_of=console.rt.now(),
            business_weekdays=console.rt.settings.business_weekdays,
            holidays=console.rt.settings.holidays,
        )  # fmt: skip
    boss = next(f for f in expected.managers if f.email == "boss@acme.test")
    assert boss.documented == 1 and boss.due >= 1  # the data really is there

    console.sign_in("hr@acme.test", role="hr_partner")
    page = console.client.get("/console/report")
    assert page.status_code == 200
    charts = svgs(page.text)
    assert len(charts) == len(CHARTS)
    assert all('role="img"' in chart and "Bea Boss" in chart for chart in charts)
    # The console's CSP (default-src 'self') refuses inline style attributes and scripts.
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "style=" not in page.text and "<script" not in page.text
    row = table_row(page.text, "boss@acme.test")
    assert row[0] == "Bea Boss boss@acme.test"
    assert row[1:6] == [
        str(v) for v in (boss.direct_reports, boss.due, boss.held_or_documented, boss.documented, 0)
    ]
    assert table_row(page.text, "Organisation")[2] == str(expected.org.due)
    assert 'href="/console/report.csv"' in page.text

    teams = console.client.get("/console/report", params={"by": "team"})
    assert teams.status_code == 200 and "Per team" in teams.text
    assert len(svgs(teams.text)) == len(CHARTS)
    assert 'href="/console/report.csv?by=team"' in teams.text

    figures = console.client.get("/console/report.json")
    assert figures.status_code == 200
    assert figures.json() == as_json(expected)


def test_bad_dates_are_explained_in_place(console: Console) -> None:  # noqa: F811
    console.sign_in("hr@acme.test")
    cases = {
        ("2026-13-01", ""): "The start date “2026-13-01” is not a date",
        ("", "next week"): "The end date “next week” is not a date",
        ("2026-03-10", "2026-03-01"): "The end date is before the start date.",
        ("", "9999-12-31"): "The end date is too far in the future.",
    }
    for (start, end), message in cases.items():
        page = console.client.get("/console/report", params={"from": start, "to": end})
        assert page.status_code == 400, (start, end)
        assert message in page.text
        assert svgs(page.text) == []
        assert 'name="from"' in page.text  # the form is there to correct it
        table = console.client.get("/console/report.csv", params={"from": start, "to": end})
        assert table.status_code == 400 and message in table.text
        figures = console.client.get("/console/report.json", params={"from": start, "to": end})
        assert figures.status_code == 400 and message in figures.json()["detail"]
    hostile = console.client.get("/console/report", params={"from": "<b>x</b>"})
    assert hostile.status_code == 400 and "&lt;b&gt;x&lt;/b&gt;" in hostile.text


def test_a_period_without_check_ins_says_so(console: Console) -> None:  # noqa: F811
    console.sign_in("hr@acme.test")
    page = console.client.get("/console/report", params={"from": "2020-01-01", "to": "2020-01-31"})
    assert page.status_code == 200
    assert "No check-ins were due" in page.text and svgs(page.text) == []
    assert 'value="2020-01-01"' in page.text
    assert '/console/report.csv?from=2020-01-01&amp;to=2020-01-31"' in page.text
    assert table_row(page.text, "boss@acme.test")[2] == "0"


def test_the_csv_download_carries_the_managers_figures(console: Console, clock) -> None:  # noqa: F811
    prompt = prompted(console, clock)
    mail(console, "boss@acme.test", "1. Fine.\n", prompt=prompt)
    console.sign_in("hr@acme.test")
    table = console.client.get("/console/report.csv")
    assert table.status_code == 200
    assert table.headers["content-type"].startswith("text/csv")
    assert "attachment" in table.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(table.text)))
    with console.rt.factory() as session:
        expected = consistency_report(session, console.org, as_of=console.rt.now())
    assert rows[0] == csv_columns(expected)
    by_email = {row[0]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    assert set(by_email) == {f.email for f in expected.managers}
    assert by_email["boss@acme.test"]["documented"] == "1"
    # A period before anything happened: every manager, nothing due.
    early = console.client.get("/console/report.csv", params={"to": "2020-01-01"})
    assert early.status_code == 200
    assert {row[3] for row in list(csv.reader(io.StringIO(early.text)))[1:]} == {"0"}


def test_the_report_is_for_hr_only(console: Console) -> None:  # noqa: F811
    console.sign_in("boss@acme.test", role="manager")
    for path in ("/console/report", "/console/report.csv", "/console/report.json"):
        answer = console.client.get(path)
        assert answer.status_code == 403, path
        assert "Bea Boss" not in answer.text
    console.sign_in("hr@acme.test", role="hr_partner")
    assert console.client.get("/console/report.csv").status_code == 200


def test_the_json_figures_are_described_and_the_pages_are_not(console: Console) -> None:  # noqa: F811
    paths = console.client.get("/openapi.json").json()["paths"]
    assert "/console/report.json" in paths
    assert "/console/report" not in paths and "/console/quarantine" not in paths


# --------------------------------------------------------------------------- the quarantine


def test_a_stranger_s_message_is_listed_shown_as_text_and_released(console: Console) -> None:  # noqa: F811
    body = "Click <script>alert('x')</script> here\n"
    message = mail(console, "Mallory <mallory@evil.test>", body, subject="Hi <b>HR</b>")
    assert message.state == "quarantined"
    reason = message.quarantine_reason
    assert reason and "no check-in reference" in reason

    csrf = console.sign_in("hr@acme.test", role="hr_partner")
    listing = console.client.get("/console/quarantine")
    assert listing.status_code == 200
    row = table_row(listing.text, "mallory@evil.test")
    assert row[1:] == ["mallory@evil.test", "Hi <b>HR</b>", reason]
    assert "Hi &lt;b&gt;HR&lt;/b&gt;" in listing.text
    assert f'href="/console/quarantine/{message.id}"' in listing.text

    page = console.client.get(f"/console/quarantine/{message.id}")
    assert page.status_code == 200
    assert message.sha256 in page.text and "no check-in reference" in page.text
    assert "Click &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; here" in page.text
    assert "<script" not in page.text
    assert "Message-ID" in page.text and "mallory@evil.test" in page.text
    assert f'action="/console/quarantine/{message.id}/release"' in page.text

    released = console.client.post(
        f"/console/quarantine/{message.id}/release", data={"csrf": csrf}, follow_redirects=False
    )
    assert released.status_code == 303
    assert released.headers["location"] == (
        f"/console/quarantine/{message.id}?notice=quarantine-kept"
    )
    after = stored(console, message.id)
    assert after.state == "quarantined" and after.released_at is not None
    assert after.raw == message.raw
    (entry,) = releases(console)  # the service's one entry, not a second one of ours
    assert entry.actor == "console:hr@acme.test" and entry.subject_id == message.id
    assert entry.data["previous_state"] == "quarantined"
    with console.rt.factory() as session:
        assert audit.verify_chain(session, console.org) == (True, None)
    shown = console.client.get(released.headers["location"]).text
    assert "processed again and kept without a record" in shown
    assert "Released" in shown and after.quarantine_reason in unescape(shown)


def test_a_release_attributed_to_the_manager_is_recorded(console: Console, clock) -> None:  # noqa: F811
    prompt = prompted(console, clock)
    message = mail(console, "Bea <bea.private@mail.test>", "1. From my phone.\n", prompt=prompt)
    assert message.state == "quarantined"
    csrf = console.sign_in("hr@acme.test")
    url = f"/console/quarantine/{message.id}/release"

    unexplained = console.client.post(url, data={"csrf": csrf, "as": "boss@acme.test"})
    assert unexplained.status_code == 400 and "Say why" in unexplained.text
    nobody = console.client.post(
        url, data={"csrf": csrf, "as": "nobody@acme.test", "reason": "phone call"}
    )
    assert nobody.status_code == 409 and "nobody@acme.test" in nobody.text
    assert stored(console, message.id).state == "quarantined" and releases(console) == []

    released = console.client.post(
        url,
        data={"csrf": csrf, "as": "boss@acme.test", "reason": "Bea confirmed it by phone"},
        follow_redirects=False,
    )
    assert released.status_code == 303
    assert released.headers["location"].endswith("?notice=quarantine-recorded")
    after = stored(console, message.id)
    assert after.state == "recorded" and after.attributed_to == "boss@acme.test"
    with console.rt.factory() as session:
        assert session.scalar(select(func.count()).select_from(ConversationRecord)) == 1
    (entry,) = releases(console)
    assert entry.actor == "console:hr@acme.test"
    assert entry.data["reason"] == "Bea confirmed it by phone"
    page = console.client.get(released.headers["location"]).text
    assert "recorded" in page and "attributed to boss@acme.test" in page
    assert f'action="{url}"' not in page  # a recorded message cannot be released again
    again = console.client.post(url, data={"csrf": csrf})
    assert again.status_code == 409 and "only quarantined or auto_reply" in again.text


def test_a_forged_release_changes_nothing(console: Console) -> None:  # noqa: F811
    message = mail(console, "mallory@evil.test", "hello\n")
    console.sign_in("hr@acme.test")
    url = f"/console/quarantine/{message.id}/release"
    for data in ({"csrf": "forged"}, {}):
        answer = console.client.post(url, data=data, follow_redirects=False)
        assert answer.status_code == 403
    after = stored(console, message.id)
    assert after.state == "quarantined" and after.released_at is None
    assert releases(console) == []


def test_the_quarantine_is_for_hr_only(console: Console) -> None:  # noqa: F811
    message = mail(console, "mallory@evil.test", "hello\n", subject="Secret subject")
    csrf = console.sign_in("boss@acme.test", role="manager")
    for path in ("/console/quarantine", f"/console/quarantine/{message.id}"):
        answer = console.client.get(path)
        assert answer.status_code == 403, path
        assert "Secret subject" not in answer.text
    refused = console.client.post(f"/console/quarantine/{message.id}/release", data={"csrf": csrf})
    assert refused.status_code == 403
    assert stored(console, message.id).released_at is None and releases(console) == []


def test_another_organization_s_messages_are_not_found(console: Console) -> None:  # noqa: F811
    raw = b"From: someone@other.test\r\nSubject: Theirs\r\n\r\nprivate\r\n"
    with transaction(console.rt.factory) as session:
        other = ensure_organization(session, "other", "Other", console.rt.now())
        theirs = InboundMessage(
            organization_id=other.id, raw=raw, sha256=hashlib.sha256(raw).hexdigest(),
            size=len(raw), source="test", from_address="someone@other.test", subject="Theirs",
            state="quarantined", quarantine_reason="no check-in reference",
            received_at=console.rt.now(),
        )  # fmt: skip
        session.add(theirs)
        session.flush()
        their_id = theirs.id
    csrf = console.sign_in("hr@acme.test")
    assert "Theirs" not in console.client.get("/console/quarantine?state=all").text
    shown = console.client.get(f"/console/quarantine/{their_id}")
    assert shown.status_code == 404 and "private" not in shown.text
    released = console.client.post(f"/console/quarantine/{their_id}/release", data={"csrf": csrf})
    assert released.status_code == 404
    assert console.client.get("/console/quarantine/999999").status_code == 404
    with console.rt.factory() as session:
        assert session.get(InboundMessage, their_id).released_at is None
