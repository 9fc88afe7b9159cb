"""Defensible records: the employee export (JSON, HTML, PDF, bundle) and `audit verify`."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
import zipfile
import zlib
from pathlib import Path

import pytest
from sqlalchemy import Integer, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from automation import audit
from automation.cli import main
from automation.db import transaction
from automation.models import AuditEntry, Base, InboundMessage
from automation.services import export
from tests.conftest import start_organization
from tests.test_loop import advance_until, deliver, occurrences, outbox, reply_to

ANA = "ana@acme.test"
SCRIPT = "<script>alert('x')</script>"


@pytest.fixture
def org(rt, tmp_path: Path) -> int:  # type: ignore[no-untyped-def]
    return start_organization(rt, tmp_path)


@pytest.fixture
def weeks(rt, org, clock):  # type: ignore[no-untyped-def]
    """Three simulated weeks for Ana: a check-in documented and then corrected (two
    versions, an action item, a reply with markup in it), one left undocumented until it
    escalates, and a PIP with a review."""
    from automation.config import PipPlan
    from automation.domain.cadence import LadderStep
    from automation.services.escalation import start_pip

    with transaction(rt.factory) as session:
        start_pip(
            rt,
            session,
            org,
            PipPlan(
                ANA,
                "30-day plan",
                0,
                30,
                (("Week 1 review", 7),),
                (LadderStep(1, "manager", "reminder"), LadderStep(3, "hr_partner", "escalation")),
            ),
            clock.now(),
        )
    first = occurrences(rt, ANA)[0]
    advance_until(rt, clock, first.end_at + dt.timedelta(hours=2))
    (prompt,) = [m for m in outbox(rt, "followup") if m.occurrence_id == first.id]
    deliver(
        rt,
        reply_to(
            rt,
            prompt,
            "Bea Boss <boss@acme.test>",
            f"1. Shipped the docs {SCRIPT}\nRating: 3\nAction: Ana to draft the plan by Friday\n",
        ),
        "v1",
    )
    (confirmation,) = [m for m in outbox(rt, "confirmation") if m.occurrence_id == first.id]
    advance_until(rt, clock, clock.now() + dt.timedelta(hours=3))
    deliver(
        rt,
        reply_to(rt, confirmation, "boss@acme.test", "1. Shipped the docs, and the demo.\n4. 4\n"),
        "v2",
    )
    second = occurrences(rt, ANA)[1]
    advance_until(rt, clock, second.end_at + dt.timedelta(days=16))  # reminded, escalated
    return first, second


def test_export_json_is_the_whole_timeline_in_the_readers_zone(rt, org, weeks):
    from automation.models import Person, PipReview
    from automation.services import escalation

    first, second = weeks
    # The overdue check-in and the PIP review were reassigned in the console's queue.
    with transaction(rt.factory) as session:
        hal = session.scalar(select(Person).where(Person.email == "hr@acme.test"))
        review_id = session.scalars(select(PipReview.id)).one()
        moved = [
            escalation.reassign(
                rt, session, org, kind, subject_id, hal.id,
                actor="console:hr@acme.test", reason=reason,
            ).id
            for kind, subject_id, reason in (
                ("occurrence", second.id, f"Bea is travelling {SCRIPT}"),
                ("pip_review", review_id, ""),
            )
        ]  # fmt: skip
    with rt.factory() as session:
        tl = export.timeline(session, org, ANA, "America/Los_Angeles")
        again = export.timeline(session, org, ANA, "America/Los_Angeles")
        raws = {m.id: m.raw for m in session.scalars(select(InboundMessage))}
    data = json.loads(export.render_json(tl))
    assert export.render_json(tl) == export.render_json(again)  # byte-identical
    assert data["employee"]["email"] == ANA and data["timezone"] == "America/Los_Angeles"
    events = data["events"]
    times = [dt.datetime.fromisoformat(e["time"]) for e in events]
    assert times == sorted(times)
    # Every time is in the reader's zone (PST -08:00 before 8 March 2026, PDT -07:00 after).
    assert {t.utcoffset() for t in times} <= {dt.timedelta(hours=-8), dt.timedelta(hours=-7)}
    assert {e["kind"] for e in events} >= {
        "checkin",
        "record",
        "action_item",
        "escalation",
        "email_sent",
        "pip",
        "pip_review",
        "reassignment",
    }
    assert {e["kind"] for e in events} <= set(export.KIND_ORDER)  # every kind is documented
    checkins = [e for e in events if e["kind"] == "checkin"]
    assert {e["details"]["occurrence_id"] for e in checkins} >= {first.id, second.id}

    records = [e for e in events if e["kind"] == "record"]
    assert [(r["details"]["subject_id"], r["details"]["version"]) for r in records] == [
        (first.id, 1),
        (first.id, 2),
    ]
    assert [r["details"]["rating"] for r in records] == [3, 4]
    assert SCRIPT in records[0]["details"]["answers"]["1"]  # kept exactly, v1 not overwritten
    assert "corrected by a later version" in records[0]["summary"]
    shas = []
    for r in records:
        (inbound,) = [s for s in r["sources"] if s["kind"] == "inbound"]
        assert inbound["sha256"] == hashlib.sha256(raws[inbound["id"]]).hexdigest()
        assert inbound["verified"] is True
        assert inbound["path"] == f"sources/{inbound['sha256']}.eml"
        (entry,) = [s for s in r["sources"] if s["kind"] == "audit"]
        assert entry["id"] in {a["seq"] for a in data["audit"]}
        shas.append(inbound["sha256"])
    assert len(set(shas)) == 2

    (item,) = [e for e in events if e["kind"] == "action_item"]
    assert "draft the plan" in item["details"]["text"] and item["details"]["record_version"] == 1
    steps = [e for e in events if e["kind"] == "escalation"]
    checkin_steps = [s for s in steps if s["details"]["subject_kind"] == "occurrence"]
    assert [(s["details"]["subject_id"], s["details"]["action"]) for s in checkin_steps][:2] == [
        (second.id, "remind"),
        (second.id, "escalate"),
    ]
    assert all(any(x["kind"] == "outbound" for x in s["sources"]) for s in steps)
    assert any(s["details"]["subject_kind"] == "pip_review" for s in steps)

    # Reassignments: when, from whom to whom, by whom and why, citing the audit entry and the
    # prompt sent to the new person (listed after the reassignment, at the same time).
    moves = [e for e in events if e["kind"] == "reassignment"]
    assert [e["ref"] for e in moves] == [f"reassignment:{i}" for i in moved]
    checkin_move, review_move = moves
    assert checkin_move["details"] == {
        "reassignment_id": moved[0],
        "subject_kind": "occurrence",
        "subject_id": second.id,
        "from": "Bea Boss <boss@acme.test>",
        "to": "Hal Hr <hr@acme.test>",
        "by": "console:hr@acme.test",
        "reason": f"Bea is travelling {SCRIPT}",
    }
    assert checkin_move["summary"] == (
        f"Reassigned check-in {second.id} from Bea Boss to Hal Hr by console:hr@acme.test: "
        f"Bea is travelling {SCRIPT}"
    )
    assert review_move["summary"] == (
        f"Reassigned PIP review {review_id} from Bea Boss to Hal Hr by console:hr@acme.test"
    )
    assert review_move["details"]["reason"] is None
    audit_by_seq = {a["seq"]: a for a in data["audit"]}
    for move, kind, subject_id in (
        (checkin_move, "occurrence", second.id),
        (review_move, "pip_review", review_id),
    ):
        (entry,) = [s for s in move["sources"] if s["kind"] == "audit"]
        cited = audit_by_seq[entry["id"]]
        assert cited["action"] == "escalation.reassigned"
        assert (cited["subject_kind"], cited["subject_id"]) == (kind, subject_id)
        assert cited["data"]["reassignment_id"] == move["details"]["reassignment_id"]
        (sent,) = [s for s in move["sources"] if s["kind"] == "outbound"]
        (prompt,) = [e for e in events if e["ref"] == f"email_sent:{sent['id']}"]
        assert prompt["time"] == move["time"] and events.index(prompt) > events.index(move)
        assert prompt["details"]["to"] == ["hr@acme.test"]
    # A reader elsewhere sees the same instants on another clock.
    with rt.factory() as session:
        tokyo = export.to_data(export.timeline(session, org, ANA, "Asia/Tokyo"))
    assert [e["ref"] for e in tokyo["events"]] == [e["ref"] for e in events]
    assert tokyo["events"][0]["time"].endswith("+09:00")
    assert dt.datetime.fromisoformat(tokyo["events"][0]["time"]) == times[0]


def test_html_escapes_pdf_names_and_bundle_holds_every_cited_source(rt, org, weeks):
    with rt.factory() as session:
        tl = export.timeline(session, org, ANA, "Europe/London")
        html = export.render_html(tl, rt.settings.templates_dir)
        assert html == export.render_html(
            export.timeline(session, org, ANA, "Europe/London"), rt.settings.templates_dir
        )
        pdf = export.render_pdf(tl, font=None)  # Helvetica: its text stays readable here
        files = export.invites(rt, session, org, tl)
    text = html.decode()
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "Ana Souza" in text and "Europe/London" in text

    assert pdf.startswith(b"%PDF")
    streams = re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S)
    # decompressobj: the regex may cut a stream whose binary body holds "\nendstream"
    content = b"".join(zlib.decompressobj().decompress(s) if s[:1] == b"x" else s for s in streams)
    assert b"Ana Souza" in content
    assert export.render_pdf(tl, font=None) == pdf  # reproducible: no creation time inside

    zipped = export.bundle(tl, files, {"timeline.html": html})
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        names = set(archive.namelist())
        manifest = archive.read("MANIFEST.txt").decode().splitlines()[1:]
        listed = {}
        for line in manifest:
            path, size, digest = line.split("\t")
            body = archive.read(path)
            assert len(body) == int(size) and hashlib.sha256(body).hexdigest() == digest
            listed[path] = digest
        assert set(listed) == names - {"MANIFEST.txt"}
        data = json.loads(archive.read("timeline.json"))
        cited = [s for e in data["events"] for s in e["sources"] if "path" in s]
        assert cited and all(s["path"] in names for s in cited)
        for s in cited:
            if s["kind"] == "inbound":
                assert hashlib.sha256(archive.read(s["path"])).hexdigest() == s["sha256"]
        (invite,) = [n for n in names if n.startswith("invites/")]
        assert b"BEGIN:VCALENDAR" in archive.read(invite)
        assert {s["path"] for s in data["series"]} == {invite}
    assert export.bundle(tl, files, {"timeline.html": html}) == zipped


def _cli_env(monkeypatch, settings) -> None:  # type: ignore[no-untyped-def]
    for key, value in {
        "AUTOMATION_DATABASE_URL": settings.database_url,
        "AUTOMATION_DATA_DIR": str(settings.data_dir),
        "AUTOMATION_ORGANIZATION": settings.organization,
        "AUTOMATION_SECRET_KEY": settings.secret_key,
        "AUTOMATION_DEFAULT_TIMEZONE": "Europe/Berlin",
    }.items():
        monkeypatch.setenv(key, value)


def test_export_command_writes_formats_and_the_bundle(rt, org, clock, settings, monkeypatch,
                                                      tmp_path, capsys):  # fmt: skip
    _cli_env(monkeypatch, settings)
    out, zipped = tmp_path / "ana.json", tmp_path / "ana.zip"
    boss = ["--as", "boss@acme.test"]
    assert main(["export", ANA, *boss, "--out", str(out), "--bundle", str(zipped)]) == 0
    data = json.loads(out.read_bytes())
    assert data["timezone"] == "America/New_York"  # the reader's zone, not the default's
    assert data["events"] and data["events"][0]["time"].endswith(("-05:00", "-04:00"))
    with zipfile.ZipFile(zipped) as archive:
        assert archive.read("timeline.json") == out.read_bytes()
    pdf = ["--format", "pdf", "--out", str(tmp_path / "a.pdf")]
    assert main(["export", ANA, "--as", "hr@acme.test", *pdf]) == 0
    assert (tmp_path / "a.pdf").read_bytes().startswith(b"%PDF")
    capsys.readouterr()
    assert main(["export", ANA, *boss, "--format", "html", "--timezone", "Asia/Tokyo"]) == 0
    assert "Asia/Tokyo" in capsys.readouterr().out
    # Someone outside the chain and not in HR (a peer; an address we do not know) is refused.
    assert main(["export", ANA, "--as", "kai@acme.test"]) == 77
    assert "kai@acme.test may not read the records of ana@acme.test" in capsys.readouterr().err
    assert main(["export", ANA, "--as", "stranger@elsewhere.test"]) == 77
    # An HR admin of config/privacy.toml, who is not on record as a person: the default zone.
    assert main(["export", ANA, "--as", "hr@example.com", "--out", str(out)]) == 0
    assert json.loads(out.read_bytes())["timezone"] == "Europe/Berlin"
    assert main(["export", "nobody@acme.test", *boss]) == 65
    assert main(["export", ANA, *boss, "--timezone", "Mars/Olympus"]) == 64
    assert "unknown time zone" in capsys.readouterr().err
    with rt.factory() as session:
        exported = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.action == "record.exported")
            .order_by(AuditEntry.seq)
        ).all()
    assert [(e.actor, e.data["access"]) for e in exported] == [
        ("boss@acme.test", "manager"),
        ("hr@acme.test", "HR partner"),
        ("boss@acme.test", "manager"),
        ("hr@example.com", "HR admin"),
    ]


def _tamper(rt, sql: str) -> None:  # type: ignore[no-untyped-def]
    """What an attacker with database access does: switch the append-only guard off."""
    with rt.engine.begin() as conn:
        if rt.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
            conn.exec_driver_sql(sql)
            conn.exec_driver_sql("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
        else:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_log_no_update")
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_log_no_delete")
            conn.exec_driver_sql(sql)


def test_audit_verify_passes_then_names_the_altered_and_the_missing_entry(
    rt, org, settings, monkeypatch, capsys
):
    _cli_env(monkeypatch, settings)
    with rt.factory() as session:
        total = session.scalar(select(func.count()).select_from(AuditEntry))
        assert audit.verify(session, org).intact
    assert main(["audit", "verify"]) == 0
    assert f"acme: intact, {total} entries" in capsys.readouterr().out

    _tamper(rt, "UPDATE audit_log SET actor = 'someone else' WHERE seq = 3")
    assert main(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert "acme: BROKEN at entry 3 (altered)" in out
    with rt.factory() as session:
        check = audit.verify(session, org)
    assert (check.problem, check.seq, check.entries) == ("altered", 3, 2)


def test_audit_verify_reports_a_removed_entry_and_a_rehashed_one(rt, org, settings, monkeypatch,
                                                                 capsys):  # fmt: skip
    _cli_env(monkeypatch, settings)
    _tamper(rt, "DELETE FROM audit_log WHERE seq = 4")
    assert main(["audit", "verify", "--json"]) == 1
    (check,) = json.loads(capsys.readouterr().out)
    assert (check["organization"], check["problem"], check["seq"]) == ("acme", "missing", 4)

    with rt.factory() as session:
        last = session.scalar(select(AuditEntry.seq).order_by(AuditEntry.seq.desc()).limit(1))
    _tamper(rt, f"DELETE FROM audit_log WHERE seq >= 4 AND seq > {last - 2}")
    with rt.factory() as session:
        check = audit.verify(session, org)
    assert (check.problem, check.seq) == ("missing", 4)  # still the first one


def test_audit_verify_catches_removed_newest_entries_and_a_rewritten_entry(rt, org):
    with rt.factory() as session:
        last = session.scalar(select(AuditEntry.seq).order_by(AuditEntry.seq.desc()).limit(1))
        two = session.scalar(select(AuditEntry).where(AuditEntry.seq == 2))
        content = audit.content_digest("mallory", two.data)
        forged = audit.entry_hash(
            two.prev_hash, 2, two.at, two.action, two.subject_kind, two.subject_id, content
        )
    _tamper(rt, f"DELETE FROM audit_log WHERE seq = {last}")  # truncating the tail
    with rt.factory() as session:
        check = audit.verify(session, org)
    assert (check.problem, check.seq) == ("missing", last)
    # Changing an entry and giving it a fresh hash: the next entry still names the old one.
    _tamper(
        rt,
        f"UPDATE audit_log SET actor = 'mallory', content_sha256 = '{content}', "
        f"hash = '{forged}' WHERE seq = 2",
    )
    with rt.factory() as session:
        check = audit.verify(session, org)
    assert (check.problem, check.seq) == ("altered", 2)


class Scratch(DeclarativeBase):
    type_annotation_map = Base.type_annotation_map


class ScratchWarning(Scratch):
    """Stands in for the warning model (CorrectiveAction) another change adds."""

    __tablename__ = "test_export_warnings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int]
    employee_id: Mapped[int]
    title: Mapped[str] = mapped_column(String(200))
    issued_at: Mapped[dt.datetime]
    acknowledged_at: Mapped[dt.datetime | None]


def test_models_added_later_join_the_timeline_through_optional_kinds(rt, org, weeks, monkeypatch):
    """A warning model (as another change adds one) shows up without touching the export:
    linked by employee_id, placed by issued_at, acknowledged on the row itself."""
    from automation import models
    from automation.models import Person

    Scratch.metadata.create_all(rt.engine, tables=[ScratchWarning.__table__])
    monkeypatch.setattr(models, "CorrectiveAction", ScratchWarning, raising=False)
    issued = dt.datetime(2026, 3, 20, 9, 0, tzinfo=dt.UTC)
    with transaction(rt.factory) as session:
        ana = session.scalar(select(Person).where(Person.email == ANA))
        session.add(
            ScratchWarning(
                organization_id=org,
                employee_id=ana.id,
                title=f"Written warning {SCRIPT}",
                issued_at=issued,
                acknowledged_at=issued + dt.timedelta(days=1),
            )
        )
    try:
        with rt.factory() as session:
            tl = export.timeline(session, org, ANA, "UTC")
        data = export.to_data(tl)
        (warning,) = [e for e in data["events"] if e["kind"] == "warning"]
        (ack,) = [
            e
            for e in data["events"]
            if e["kind"] == "acknowledgement" and e["details"].get("of") == warning["ref"]
        ]
        assert warning["time"] == issued.isoformat() and SCRIPT in warning["summary"]
        assert ack["time"] == (issued + dt.timedelta(days=1)).isoformat()
        html = export.render_html(tl, rt.settings.templates_dir).decode()
        assert "Written warning &lt;script&gt;" in html
    finally:
        Scratch.metadata.drop_all(rt.engine, tables=[ScratchWarning.__table__])


def test_a_real_warning_and_its_acknowledgement_export_with_their_source_messages(rt, org, clock):
    """The warning model itself (not a stand-in): a manager's #warning reply and Ana's
    acknowledging reply become events citing those two raw messages."""
    from automation.models import CorrectiveAction
    from tests.test_pips import _followup_for_ana

    prompt = _followup_for_ana(rt, clock)
    body = "1. Fine.\n#warning Missed two deadlines\nExpectation: flag risks early\n"
    deliver(rt, reply_to(rt, prompt, "boss@acme.test", body), "warn")
    (sent,) = outbox(rt, "warning")
    deliver(rt, reply_to(rt, sent, "ana@acme.test", "Understood, will do."), "ack")
    with rt.factory() as session:
        action = session.scalars(select(CorrectiveAction)).one()
        sources = {m.from_address: m.sha256 for m in session.scalars(select(InboundMessage))}
        data = json.loads(export.render_json(export.timeline(session, org, ANA, "UTC")))
    (warning,) = [e for e in data["events"] if e["kind"] == "warning"]
    assert warning["summary"] == "Warning: Missed two deadlines"
    assert warning["details"]["expectation"] == "flag risks early"
    assert warning["details"]["occurrence_id"] == prompt.occurrence_id == action.occurrence_id
    cited = {s["sha256"] for s in warning["sources"] if s["kind"] == "inbound"}
    assert cited == {sources["boss@acme.test"]}
    acks = [e for e in data["events"] if e["kind"] == "acknowledgement"]
    acknowledged = [e for e in acks if e["details"].get("subject_kind") == "corrective_action"]
    assert acknowledged and any(
        s.get("sha256") == sources["ana@acme.test"] for e in acknowledged for s in e["sources"]
    )


def test_pdf_prints_names_in_any_script_with_a_unicode_font(rt, org):
    """With a Unicode TrueType font (DejaVu Sans from fonts-dejavu-core) a name in Polish,
    Greek and Cyrillic is in the PDF as written: its ToUnicode map carries those characters.
    Without one, the Latin-1 fallback shows '?' and says so in the docs."""
    import os

    files = export.pdf_font()
    if files is None:
        if os.environ.get("CI"):
            pytest.fail("no Unicode font for PDFs: apt-get install fonts-dejavu-core")
        pytest.skip("no Unicode font here (apt-get install fonts-dejavu-core)")
    from automation.models import Person

    with transaction(rt.factory) as session:
        ana = session.scalars(select(Person).where(Person.email == ANA)).one()
        ana.name = "Łucja Ωmega Жукова"
    with rt.factory() as session:
        tl = export.timeline(session, org, ANA, "UTC")
    pdf = export.render_pdf(tl)
    assert pdf == export.render_pdf(tl)  # still reproducible with an embedded font subset
    streams = re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S)
    content = b"".join(zlib.decompressobj().decompress(s) if s[:1] == b"x" else s for s in streams)
    for char in "ŁΩЖ":
        assert f"<{ord(char):04X}>".encode() in content, char  # in the ToUnicode CMap
    fallback = export.render_pdf(tl, font=None)
    streams = re.findall(rb"stream\r?\n(.*?)\r?\nendstream", fallback, re.S)
    text = b"".join(zlib.decompressobj().decompress(s) if s[:1] == b"x" else s for s in streams)
    assert b"?ucja ?mega ??????" in text
