"""The console's configuration pages: cadences, PIP templates and email templates, edited in
place, checked by the service's own parsers and sandbox, written atomically and audited.

Every test edits copies of the repository's ``config/`` and ``templates/`` in its own folder
(the ``settings`` fixture points at the real ones, which a test must never change)."""

from __future__ import annotations

import email
import email.policy
import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from automation.models import AuditEntry
from automation.models import Cadence as CadenceRow
from automation.settings import PROJECT_ROOT
from tests.console_support import Console, console  # noqa: F401

ADMIN, PARTNER, MANAGER = "hr@acme.test", "partner@acme.test", "boss@acme.test"


@pytest.fixture
def editable(console: Console, tmp_path: Path) -> Console:  # noqa: F811
    """The console on copies of config/ and templates/ (each test may change them)."""
    shutil.copytree(PROJECT_ROOT / "config", tmp_path / "config")
    shutil.copytree(PROJECT_ROOT / "templates", tmp_path / "templates")
    console.rt.settings = console.rt.settings.with_(
        config_dir=tmp_path / "config", templates_dir=tmp_path / "templates"
    )
    return console


def cadence_file(c: Console) -> Path:
    return c.rt.settings.config_dir / "cadences" / "one-on-one.toml"


def entries(c: Console, action: str) -> list[AuditEntry]:
    with c.rt.factory() as session:
        return list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.organization_id == c.org, AuditEntry.action == action)
                .order_by(AuditEntry.seq)
            )
        )


def textarea(page: str, name: str) -> str:
    match = re.search(rf'<textarea[^>]*name="{re.escape(name)}"[^>]*>(.*?)</textarea>', page, re.S)
    assert match, page
    return match.group(1)


def outbox(c: Console) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
        for raw in c.rt.sender.messages()  # type: ignore[attr-defined]
    ]


# --------------------------------------------------------------------------- cadences, PIPs


def test_hr_reads_the_cadences_and_pip_templates_and_managers_may_not(editable: Console) -> None:
    editable.sign_in(PARTNER, "hr_partner")
    cadences = editable.client.get("/console/cadences")
    assert cadences.status_code == 200
    assert "one-on-one.toml" in cadences.text and "every 2 weeks" in cadences.text
    assert "+3 business days: manager (reminder)" in cadences.text
    assert "New cadence" not in cadences.text  # only admins create
    pips = editable.client.get("/console/pips")
    assert "30-day.toml" in pips.text and "30 days" in pips.text
    assert "Day 15 review (day 15)" in pips.text
    page = editable.client.get("/console/cadences/one-on-one")
    assert "readonly" in page.text and ">Save</button>" not in page.text
    editable.sign_in(MANAGER, "manager")
    assert editable.client.get("/console/cadences").status_code == 403
    assert editable.client.get("/console/pips/30-day").status_code == 403


def test_a_bad_cadence_is_shown_in_place_with_its_lines_and_nothing_is_written(
    editable: Console,
) -> None:
    csrf = editable.sign_in(ADMIN)
    before = cadence_file(editable).read_bytes()
    page = editable.client.get("/console/cadences/one-on-one")
    assert page.status_code == 200
    original = before.decode()
    bad = (
        original.replace('frequency = "every 2 weeks"', 'frequency = "sometimes"')
        .replace('notify = "hr_partner"', 'notify = "<nobody>"')
        .replace("\n", "\r\n")  # as a browser submits a textarea
    )
    refused = editable.client.post(
        "/console/cadences/one-on-one",
        data={
            "csrf": csrf,
            "text": bad,
            "base": re.search(r'name="base" value="(\w+)"', page.text)[1],
        },  # type: ignore[index]
    )
    assert refused.status_code == 422
    lines = original.splitlines()
    frequency_line = next(i for i, x in enumerate(lines, 1) if x.startswith("frequency"))
    assert f'data-line="{frequency_line}">line {frequency_line}</a>' in refused.text
    assert "<code>schedule.frequency</code>" in refused.text
    assert "e.g. frequency = &#34;every 2 weeks&#34;" in refused.text  # the fix, escaped
    assert "<code>escalation[1].notify</code>" in refused.text
    assert "&lt;nobody&gt;" in refused.text and "<nobody>" not in refused.text
    # The submitted text stays in the editor, as submitted (line ends as in a file).
    assert "frequency = &#34;sometimes&#34;" in textarea(refused.text, "text")
    assert cadence_file(editable).read_bytes() == before
    assert entries(editable, "config.cadence_saved") == []
    # A syntax error points at its line too.
    broken = original.replace("duration_minutes = 30", "duration_minutes = = 30")
    syntax = editable.client.post(
        "/console/cadences/one-on-one", data={"csrf": csrf, "text": broken}
    )
    assert syntax.status_code == 422
    duration_line = next(i for i, x in enumerate(lines, 1) if x.startswith("duration_minutes"))
    assert f"line {duration_line}</a>" in syntax.text and "not valid TOML" in syntax.text
    assert cadence_file(editable).read_bytes() == before


def test_a_good_cadence_is_written_audited_and_applied_at_once(editable: Console) -> None:
    csrf = editable.sign_in(ADMIN)
    path = cadence_file(editable)
    old = path.read_text()
    new = old.replace("duration_minutes = 30", "duration_minutes = 45")
    saved = editable.client.post(
        "/console/cadences/one-on-one", data={"csrf": csrf, "text": new}, follow_redirects=False
    )
    assert saved.status_code == 303
    assert saved.headers["location"] == "/console/cadences/one-on-one?notice=cadence-saved"
    assert path.read_text() == new
    assert [p.name for p in path.parent.iterdir()] == ["one-on-one.toml"]  # no temporary left
    [entry] = entries(editable, "config.cadence_saved")
    assert entry.actor == f"console:{ADMIN}"
    import hashlib

    assert entry.data == {
        "file": "cadences/one-on-one.toml",
        "old_sha256": hashlib.sha256(old.encode()).hexdigest(),
        "new_sha256": hashlib.sha256(new.encode()).hexdigest(),
    }
    # Applied: the runtime plans with it, and the stored cadence is the new one.
    assert editable.rt.tenant(editable.org).cadences["one-on-one"].duration_minutes == 45
    with editable.rt.factory() as session:
        row = session.scalar(
            select(CadenceRow).where(
                CadenceRow.organization_id == editable.org, CadenceRow.name == "one-on-one"
            )
        )
        assert row is not None and row.definition["duration_minutes"] == 45
    shown = editable.client.get(saved.headers["location"])
    assert "Cadence saved and applied" in shown.text and "45 minutes" in shown.text
    # Saving the same text again writes nothing and audits nothing.
    again = editable.client.post(
        "/console/cadences/one-on-one", data={"csrf": csrf, "text": new}, follow_redirects=False
    )
    assert again.headers["location"].endswith("notice=nothing-changed")
    assert len(entries(editable, "config.cadence_saved")) == 1


def test_a_cadence_is_saved_but_not_applied_while_another_file_is_broken(
    editable: Console,
) -> None:
    csrf = editable.sign_in(ADMIN)
    broken = cadence_file(editable).parent / "broken.toml"
    broken.write_text('name = "broken"\n')
    listed = editable.client.get("/console/cadences")
    assert (
        "broken.toml" in listed.text and "<code>schedule.frequency</code>: missing" in listed.text
    )
    new = (
        cadence_file(editable).read_text().replace("duration_minutes = 30", "duration_minutes = 45")
    )
    saved = editable.client.post(
        "/console/cadences/one-on-one", data={"csrf": csrf, "text": new}, follow_redirects=False
    )
    assert saved.headers["location"].endswith("notice=cadence-saved-not-applied")
    assert cadence_file(editable).read_text() == new
    assert (
        editable.rt.tenant(editable.org).cadences["one-on-one"].duration_minutes == 30
    )  # the loaded set stays
    assert "not applied yet" in editable.client.get(saved.headers["location"]).text


def test_a_save_over_someone_elses_change_is_refused(editable: Console) -> None:
    csrf = editable.sign_in(ADMIN)
    page = editable.client.get("/console/cadences/one-on-one")
    base = re.search(r'name="base" value="(\w+)"', page.text)[1]  # type: ignore[index]
    path = cadence_file(editable)
    path.write_text(path.read_text().replace("lead_hours = 24", "lead_hours = 12"))
    changed = path.read_bytes()
    mine = textarea(page.text, "text").replace("delay_hours = 1", "delay_hours = 2")
    refused = editable.client.post(
        "/console/cadences/one-on-one", data={"csrf": csrf, "text": mine, "base": base}
    )
    assert refused.status_code == 409 and "changed by someone else" in refused.text
    assert path.read_bytes() == changed


def test_a_new_cadence_is_created_under_a_safe_name_only(editable: Console) -> None:
    csrf = editable.sign_in(ADMIN)
    form = editable.client.get("/console/cadences/new")
    assert form.status_code == 200 and 'name="name"' in form.text
    folder = cadence_file(editable).parent
    text = cadence_file(editable).read_text().replace('name = "one-on-one"', 'name = "weekly"')
    for bad in ("../settings", "Weekly", ".hidden", "a/b", "", "x" * 65, "new"):
        refused = editable.client.post(
            "/console/cadences/new", data={"csrf": csrf, "name": bad, "text": text}
        )
        assert refused.status_code == 422, bad
        assert "cannot be a file name here" in refused.text or "missing" in refused.text
    assert sorted(p.name for p in folder.iterdir()) == ["one-on-one.toml"]
    assert not (editable.rt.settings.config_dir / "settings.toml").read_text().startswith("name")
    # The same name as another cadence is the clash the loader refuses.
    clash = editable.client.post(
        "/console/cadences/new",
        data={"csrf": csrf, "name": "copy", "text": cadence_file(editable).read_text()},
    )
    assert clash.status_code == 422 and "is already used by cadences/one-on-one.toml" in clash.text
    # An existing file is not overwritten from the "new" form.
    exists = editable.client.post(
        "/console/cadences/new", data={"csrf": csrf, "name": "one-on-one", "text": text}
    )
    assert exists.status_code == 409
    created = editable.client.post(
        "/console/cadences/new",
        data={"csrf": csrf, "name": "weekly", "text": text},
        follow_redirects=False,
    )
    assert created.status_code == 303
    assert (folder / "weekly.toml").read_text() == text
    [entry] = entries(editable, "config.cadence_saved")
    assert entry.data["file"] == "cadences/weekly.toml" and entry.data["old_sha256"] is None
    assert set(editable.rt.tenant(editable.org).cadences) == {"one-on-one", "weekly"}


def test_only_hr_admins_save_and_a_forged_form_changes_nothing(editable: Console) -> None:
    path = cadence_file(editable)
    before = path.read_bytes()
    new = before.decode().replace("duration_minutes = 30", "duration_minutes = 45")
    for email_, role in ((PARTNER, "hr_partner"), (MANAGER, "manager")):
        csrf = editable.sign_in(email_, role)
        refused = editable.client.post(
            "/console/cadences/one-on-one", data={"csrf": csrf, "text": new}
        )
        assert refused.status_code == 403, role
        created = editable.client.post(
            "/console/pips/new", data={"csrf": csrf, "name": "x", "text": new}
        )
        assert created.status_code == 403, role
    editable.sign_in(ADMIN)
    forged = editable.client.post(
        "/console/cadences/one-on-one", data={"csrf": "forged", "text": new}
    )
    assert forged.status_code == 403
    no_token = editable.client.post("/console/cadences/one-on-one", data={"text": new})
    assert no_token.status_code == 403
    assert path.read_bytes() == before
    assert not (editable.rt.settings.config_dir / "pips" / "x.toml").exists()
    assert entries(editable, "config.cadence_saved") == []


def test_names_that_are_paths_are_not_found(editable: Console) -> None:
    csrf = editable.sign_in(ADMIN)
    for url in (
        "/console/cadences/..%2F..%2Fsettings",
        "/console/cadences/%2E%2E",  # ".." itself (a client would resolve it)
        "/console/cadences/.one-on-one",
        "/console/cadences/ONE-ON-ONE",
        "/console/cadences/missing",
        "/console/pips/..%2F30-day",
        "/console/templates/..%2F..%2Fconfig",
        "/console/templates/_layout.html",
        "/console/templates/nope",
    ):
        assert editable.client.get(url).status_code == 404, url
        assert editable.client.post(url, data={"csrf": csrf, "text": "x"}).status_code in (
            404,
            405,
        ), url
    # A template's form names only its own files: another name is ignored, never written.
    target = editable.rt.settings.templates_dir / "email" / "reminder"
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    settings_file = editable.rt.settings.config_dir / "settings.toml"
    settings_before = settings_file.read_bytes()
    editable.client.post(
        "/console/templates/reminder",
        data={"csrf": csrf, "action": "save", "part:../../../config/settings.toml": "x"},
    )
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert settings_file.read_bytes() == settings_before


def test_a_pip_template_is_checked_by_the_loaders_parser_then_saved(editable: Console) -> None:
    csrf = editable.sign_in(ADMIN)
    path = editable.rt.settings.config_dir / "pips" / "30-day.toml"
    old = path.read_text()
    late = old.replace("after_days = 15", "after_days = 45")
    refused = editable.client.post("/console/pips/30-day", data={"csrf": csrf, "text": late})
    assert refused.status_code == 422
    line = next(i for i, x in enumerate(old.splitlines(), 1) if x == "after_days = 15")
    assert f"line {line}</a>" in refused.text and "after the plan&#39;s end" in refused.text
    assert path.read_text() == old
    good = old.replace("after_days = 15", "after_days = 14")
    saved = editable.client.post(
        "/console/pips/30-day", data={"csrf": csrf, "text": good}, follow_redirects=False
    )
    assert saved.headers["location"] == "/console/pips/30-day?notice=pip-saved"
    assert path.read_text() == good
    [entry] = entries(editable, "config.pip_template_saved")
    assert entry.data["file"] == "pips/30-day.toml" and "after_days" not in str(entry.data)
    assert "Day 15 review (day 14)" in editable.client.get("/console/pips").text


# --------------------------------------------------------------------------- email templates


def preview(c: Console, csrf: str | None, parts: dict[str, str], name: str = "reminder"):  # type: ignore[no-untyped-def]
    headers = {"X-CSRF-Token": csrf} if csrf else {}
    return c.client.post(
        f"/console/templates/{name}/preview", json={"parts": parts}, headers=headers
    )


def test_the_templates_page_lists_every_template_and_its_files(editable: Console) -> None:
    editable.sign_in(PARTNER, "hr_partner")
    page = editable.client.get("/console/templates")
    assert page.status_code == 200
    for name in ("agenda", "reminder", "pip_review"):
        assert f'href="/console/templates/{name}"' in page.text
    assert "subject.txt, body.txt, body.html" in page.text
    edit = editable.client.get("/console/templates/reminder")
    assert edit.status_code == 200
    assert "Send test" not in edit.text and "readonly" in edit.text
    # The preview of the saved template on sample data, escaped into a sandboxed frame.
    assert "<iframe" in edit.text and "sandbox srcdoc=" in edit.text
    assert (
        "Zoë O&amp;#39;Brien &amp;lt;script&amp;gt;" in edit.text
    )  # escaped twice: HTML, then attribute
    assert "<script>" not in edit.text.replace(
        '<script src="/console/static/console.js" defer>', ""
    )
    assert (
        "data-csrf=" in edit.text
        and 'data-preview-url="/console/templates/reminder/preview"' in edit.text
    )
    # Inline styles for the email in the frame; scripts still only from /console/static.
    policy = dict(
        d.strip().split(" ", 1) for d in edit.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'self'" and "script-src" not in policy
    assert policy["style-src"] == "'self' 'unsafe-inline'"


def test_the_preview_endpoint_renders_sample_data_and_locates_errors(editable: Console) -> None:
    csrf = editable.sign_in(ADMIN)
    body = (editable.rt.settings.templates_dir / "email" / "reminder" / "body.txt").read_text()
    good = preview(editable, csrf, {"subject.txt": "Hello {{ recipient.name }} <3"})
    assert good.status_code == 200, good.text
    answer = good.json()
    assert answer["problems"] == []
    assert answer["subject"] == "Hello Zoë O'Brien <script> <3"  # a subject is plain text
    assert "Ana Souza" in answer["text"]
    assert "Zoë O&#39;Brien &lt;script&gt;" in answer["html"]  # autoescaped HTML part
    broken = preview(editable, csrf, {"body.txt": body + "\n\n{% if %}\n"})
    assert broken.status_code == 200
    [problem] = broken.json()["problems"]
    assert problem["part"] == "body.txt"
    assert problem["line"] == len((body + "\n\n").splitlines()) + 1
    assert "TemplateSyntaxError" in problem["problem"]
    assert broken.json()["html"] == ""
    undefined = preview(editable, csrf, {"subject.txt": "Hi\n{{ nobody.name }}"})
    assert undefined.json()["problems"][0] | {"fix": ""} == {
        "part": "subject.txt", "line": 2, "problem": "UndefinedError: 'nobody' is undefined",
        "fix": "",
    }  # fmt: skip
    assert good.headers["cache-control"] == "no-store"
    schema = editable.client.get("/openapi.json").json()
    assert "/console/templates/{name}/preview" in schema["paths"]


def test_the_sandbox_refuses_reaching_into_python(editable: Console) -> None:
    csrf = editable.sign_in(ADMIN)
    for attack in (
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ recipient.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
    ):
        answer = preview(editable, csrf, {"subject.txt": attack}).json()
        assert answer["subject"] == "" and answer["problems"], attack
        assert answer["problems"][0]["part"] == "subject.txt"
        assert (
            "unsafe" in answer["problems"][0]["problem"]
            or "Undefined" in answer["problems"][0]["problem"]
        )
    path = editable.rt.settings.templates_dir / "email" / "reminder" / "subject.txt"
    before = path.read_bytes()
    page = editable.client.get("/console/templates/reminder")
    refused = editable.client.post(
        "/console/templates/reminder",
        data={"csrf": csrf, "action": "save", "part:subject.txt": "{{ ''.__class__ }}",
              "base": re.search(r'name="base" value="(\w+)"', page.text)[1]},  # type: ignore[index]
    )  # fmt: skip
    assert refused.status_code == 422 and "SecurityError" in refused.text
    assert path.read_bytes() == before
    assert entries(editable, "template.saved") == []


def test_the_preview_endpoint_wants_an_hr_session_and_its_csrf_header(editable: Console) -> None:
    # Not signed in: 401 whatever the body, before the body is even read.
    for body in ({"parts": {}}, None):
        answer = editable.client.post(
            "/console/templates/reminder/preview",
            content=b"{not json" if body is None else None,
            json=body,
            headers={"Content-Type": "application/json"},
        )
        assert answer.status_code == 401 and answer.json()["detail"], answer.text
    csrf = editable.sign_in(ADMIN)
    assert preview(editable, None, {}).status_code == 403
    assert preview(editable, "forged", {}).status_code == 403
    assert preview(editable, csrf, {}, name="nope").status_code == 404
    assert preview(editable, csrf, {}, name="..").status_code in (404, 422)
    assert preview(editable, csrf, {"subject.txt": 5}).status_code == 422  # type: ignore[dict-item]
    manager = editable.sign_in(MANAGER, "manager")
    assert preview(editable, manager, {}).status_code == 403


def test_preview_without_scripts_keeps_the_edits_and_writes_nothing(editable: Console) -> None:
    csrf = editable.sign_in(ADMIN)
    path = editable.rt.settings.templates_dir / "email" / "reminder" / "subject.txt"
    before = path.read_bytes()
    page = editable.client.post(
        "/console/templates/reminder",
        data={
            "csrf": csrf,
            "action": "preview",
            "part:subject.txt": "Draft <b>for</b> {{ employee.name }}",
        },
    )
    assert page.status_code == 200
    assert "Draft &lt;b&gt;for&lt;/b&gt; {{ employee.name }}" in textarea(
        page.text, "part:subject.txt"
    )
    assert '<span id="preview-subject">Draft &lt;b&gt;for&lt;/b&gt; Ana Souza</span>' in page.text
    assert path.read_bytes() == before


def test_saving_a_template_writes_the_changed_files_and_audits_their_hashes(
    editable: Console,
) -> None:
    folder = editable.rt.settings.templates_dir / "email" / "reminder"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    csrf = editable.sign_in(PARTNER, "hr_partner")
    page = editable.client.get("/console/templates/reminder")
    base = re.search(r'name="base" value="(\w+)"', page.text)[1]  # type: ignore[index]
    fields = {"csrf": csrf, "base": base, "part:subject.txt": "Please document {{ item.label }}"}
    assert (
        editable.client.post(
            "/console/templates/reminder", data={**fields, "action": "save"}
        ).status_code
        == 403
    )
    assert (
        editable.client.post(
            "/console/templates/reminder", data={**fields, "action": "test"}
        ).status_code
        == 403
    )
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    csrf = editable.sign_in(ADMIN)
    fields["csrf"] = csrf
    saved = editable.client.post(
        "/console/templates/reminder", data={**fields, "action": "save"}, follow_redirects=False
    )
    assert saved.status_code == 303
    assert saved.headers["location"] == "/console/templates/reminder?notice=template-saved"
    assert (folder / "subject.txt").read_text() == "Please document {{ item.label }}"
    assert (folder / "body.txt").read_bytes() == before["body.txt"]  # untouched
    assert sorted(p.name for p in folder.iterdir()) == sorted(before)  # no temporary left
    [entry] = entries(editable, "template.saved")
    assert entry.data["template"] == "reminder"
    assert set(entry.data["files"]) == {"email/reminder/subject.txt"}
    assert "document" not in str(entry.data)  # hashes, not content
    # Real sends render the saved text.
    from automation.emails import render
    from automation.template_samples import sample_context

    rendered = render(editable.rt.settings.templates_dir, "reminder", sample_context("reminder"))
    assert rendered.subject.startswith("Please document your check-in with Ana Souza")
    # The old form, opened before the save, no longer matches: refused, nothing lost.
    stale = editable.client.post(
        "/console/templates/reminder",
        data={**fields, "action": "save", "part:subject.txt": "Another {{ item.label }}"},
    )
    assert stale.status_code == 409 and "Another {{ item.label }}" in stale.text


def test_a_test_send_goes_to_the_viewer_only(editable: Console) -> None:
    csrf = editable.sign_in(ADMIN)
    earlier = {m["Message-ID"] for m in outbox(editable)}  # the check-ins' invitations
    sent = editable.client.post(
        "/console/templates/reminder",
        data={"csrf": csrf, "action": "test", "to": "someone@else.test",
              "part:subject.txt": "Edited {{ employee.name }}"},
    )  # fmt: skip
    assert sent.status_code == 200 and f"Test sent to {ADMIN}" in sent.text
    [message] = [m for m in outbox(editable) if m["Message-ID"] not in earlier]
    assert message["To"] == ADMIN and message["Cc"] is None and message["Bcc"] is None
    assert message["Subject"] == "[Test] Edited Ana Souza"
    assert "someone@else.test" not in message.as_string()
    [entry] = entries(editable, "template.test_sent")
    assert entry.data["to"] == ADMIN and entry.data["template"] == "reminder"
    assert set(entry.data["edited"]) == {"subject.txt"}
    # The template itself is unchanged, and a template with an error sends nothing.
    assert (
        "Edited"
        not in (editable.rt.settings.templates_dir / "email/reminder/subject.txt").read_text()
    )
    broken = editable.client.post(
        "/console/templates/reminder",
        data={"csrf": csrf, "action": "test", "part:body.txt": "{{ nobody }}"},
    )
    assert broken.status_code == 422 and "UndefinedError" in broken.text
    assert len(outbox(editable)) == len(earlier) + 1


def test_no_generated_request_to_the_preview_endpoint_gets_a_server_error(
    editable: Console,
) -> None:
    """The endpoint is in the OpenAPI description, so the web app's schema fuzz calls it
    without a session; here the same, and signed in with the right header."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_asgi("/openapi.json", editable.client.app)
    [operation] = [
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().path == "/console/templates/{name}/preview"
    ]
    csrf = editable.sign_in(ADMIN)
    stranger = TestClient(editable.client.app)  # no session cookie
    seen: set[int] = set()

    @given(case=operation.as_strategy())
    @settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def call(case) -> None:  # type: ignore[no-untyped-def]
        request = case.as_transport_kwargs(base_url="http://testserver")
        request.pop("cookies", None)
        refused = stranger.request(**request)
        assert refused.status_code == 401, (request, refused.text[:300])
        headers = {**(request.pop("headers", None) or {}), "X-CSRF-Token": csrf}
        answer = editable.client.request(**request, headers=headers)
        assert answer.status_code < 500, (request, answer.text[:300])
        seen.add(answer.status_code)

    call()
    assert seen & {200, 404, 422}


def test_a_running_worker_plans_with_the_cadence_saved_after_it_started(tmp_path: Path) -> None:
    """Another process's runtime loaded the cadences at start; its next plan must read the
    saved file rather than write its old copy back to the database."""
    import shutil

    from automation.runtime import build_runtime, current_cadences
    from automation.settings import Settings
    from tests.conftest import PROJECT_ROOT

    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    settings = Settings(
        data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path}/a.db",
        config_dir=config, templates_dir=PROJECT_ROOT / "templates",
    )  # fmt: skip
    worker = build_runtime(settings)
    try:
        before = current_cadences(worker)["one-on-one"].duration_minutes
        path = config / "cadences" / "one-on-one.toml"
        text = path.read_text()
        assert f"duration_minutes = {before}" in text
        path.write_text(text.replace(f"duration_minutes = {before}", "duration_minutes = 50"))
        assert current_cadences(worker)["one-on-one"].duration_minutes == 50
        # A file that no longer loads keeps the last good set.
        path.write_text("this is = not [valid")
        assert current_cadences(worker)["one-on-one"].duration_minutes == 50
    finally:
        worker.engine.dispose()
