"""Email templates, the Jinja sandbox around them, and MIME building."""

from __future__ import annotations

import copy
import datetime as dt
import email
import email.policy
import re
from pathlib import Path

import pytest
from jinja2 import meta

from automation.emails import (
    Rendered,
    build_message,
    check_templates,
    environment,
    make_message_id,
    render,
    render_text,
    template_names,
)
from automation.errors import ConfigError
from automation.template_samples import MANAGER_NAME, SAMPLES, sample_context

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
EMAILS = [
    "agenda",
    "followup",
    "confirmation",
    "reminder",
    "escalation",
    "pip_review",
    "quarantine_notice",
    "address_failing",
    "invite",
    "pip_plan",
    "warning",
    "unacknowledged",
    "confirmation_acknowledgement",
]
DESCRIPTION = "invite/description.txt"
NUMBERED = re.compile(r"^(\d+)\. (.+)$", re.MULTILINE)


def write_email(
    root: Path, name: str, subject: str = "Hello", text: str = "Hi", html: str = "<p>Hi</p>"
) -> Path:
    folder = root / "email" / name
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text(subject)
    (folder / "body.txt").write_text(text)
    (folder / "body.html").write_text(html)
    return root


# --- the repository's templates ------------------------------------------------------------


def test_every_template_has_a_sample_and_no_problems():
    assert template_names(TEMPLATES) == sorted(EMAILS)
    assert set(SAMPLES) == {*EMAILS, DESCRIPTION}
    assert check_templates(TEMPLATES) == []


@pytest.mark.parametrize("name", EMAILS)
def test_renders_with_its_sample(name):
    rendered = render(TEMPLATES, name, sample_context(name))
    assert rendered.subject.strip()
    assert "\n" not in rendered.subject and "\r" not in rendered.subject
    assert rendered.subject == rendered.subject.strip()
    assert rendered.text.strip()
    assert rendered.html.strip()


@pytest.mark.parametrize("name", EMAILS)
def test_html_is_self_contained(name):
    html = render(TEMPLATES, name, sample_context(name)).html
    assert html.lstrip().startswith("<!DOCTYPE html>")
    assert html.rstrip().endswith("</html>")
    lowered = html.lower()
    for forbidden in (
        "<script",
        "<style",
        "<link",
        "<img",
        "<iframe",
        "src=",
        "javascript:",
        "@import",
        "url(",
    ):
        assert forbidden not in lowered, forbidden
    # No leftover template syntax.
    assert "{{" not in html and "{%" not in html


@pytest.mark.parametrize("name", EMAILS)
def test_templates_use_only_the_documented_variables(name):
    """Every variable in every branch is one the service passes (the sample's keys)."""
    env = environment(TEMPLATES)
    for part in ("subject.txt", "body.txt", "body.html"):
        source = env.loader.get_source(env, f"email/{name}/{part}")[0]
        used = meta.find_undeclared_variables(env.parse(source))
        assert used <= set(SAMPLES[name]), (part, used - set(SAMPLES[name]))


def test_invite_description_renders():
    text = render_text(TEMPLATES, DESCRIPTION, sample_context(DESCRIPTION))
    assert MANAGER_NAME in text and "Ana Souza" in text
    for question in SAMPLES[DESCRIPTION]["questions"]:
        assert f"- {question}\n" in text
    env = environment(TEMPLATES)
    used = meta.find_undeclared_variables(env.parse(env.loader.get_source(env, DESCRIPTION)[0]))
    assert used <= set(SAMPLES[DESCRIPTION])


def test_invite_description_missing_variable_names_the_file():
    context = sample_context(DESCRIPTION)
    del context["employee"]
    with pytest.raises(ConfigError) as err:
        render_text(TEMPLATES, DESCRIPTION, context)
    assert str(TEMPLATES / DESCRIPTION) in str(err.value)


@pytest.mark.parametrize("name", ["followup", "pip_review"])
def test_questions_are_numbered_one_per_line(name):
    context = sample_context(name)
    text = render(TEMPLATES, name, context).text
    found = NUMBERED.findall(text)
    assert found == [(str(i), q) for i, q in enumerate(context["questions"], start=1)]
    html = render(TEMPLATES, name, context).html
    for i, question in enumerate(context["questions"], start=1):
        # Plain "1. ..." text in HTML too, so it survives the mail client's HTML-to-text quoting.
        assert f">{i}. {question}<" in html


def test_followup_explains_how_to_reply():
    text = render(TEMPLATES, "followup", sample_context("followup")).text
    assert "reply to this email" in text.lower()
    assert re.search(r"^Rating: 1-5\b", text, re.MULTILINE)
    assert re.search(r"^Action: .* by <date>", text, re.MULTILINE)


def test_followup_commands_help_is_optional():
    context = sample_context("followup")
    shown = render(TEMPLATES, "followup", context).text
    for command in ("#done", "#skip", "#cancel", "#reschedule <when>"):
        assert re.search(rf"^{re.escape(command)} ", shown, re.MULTILINE), command
    context["commands_help"] = False
    hidden = render(TEMPLATES, "followup", context)
    assert "#skip" not in hidden.text and "#skip" not in hidden.html


def test_agenda_lists_questions_and_action_items():
    context = sample_context("agenda")
    text = render(TEMPLATES, "agenda", context).text
    for question in context["questions"]:
        assert f"- {question}\n" in text
    assert "- Share the Q2 roadmap draft (Ana Souza, by 2026-03-13)\n" in text
    assert "- Pair with Lee on the billing migration\n" in text
    assert "No open action items." not in text
    context["open_action_items"] = []
    rendered = render(TEMPLATES, "agenda", context)
    assert "No open action items." in rendered.text
    assert "No open action items." in rendered.html


def test_agenda_speaks_to_each_recipient():
    context = sample_context("agenda")
    to_employee = render(TEMPLATES, "agenda", context).text
    assert f"your check-in with {MANAGER_NAME}." in to_employee
    context["recipient"] = dict(context["manager"], email=context["manager"]["email"].upper())
    to_manager = render(TEMPLATES, "agenda", context).text
    assert "your check-in with Ana Souza." in to_manager
    context["recipient"] = {"name": "Priya Raman", "email": "priya@example.com"}
    to_other = render(TEMPLATES, "agenda", context).text
    assert f"between {MANAGER_NAME} and Ana Souza" in to_other


def test_confirmation_shows_the_record_and_how_to_correct_it():
    context = sample_context("confirmation")
    rendered = render(TEMPLATES, "confirmation", context)
    assert "(version 2)" in rendered.subject
    text = rendered.text
    assert "1. What has gone well since your last check-in?\n" in text
    assert "   Shipped the invoice export a week early.\n   Customers already use it.\n" in text
    assert "(no answer)" in text
    assert "Rating: 4 out of 5" in text
    assert "version 3" in text  # the correction becomes the next version
    assert "Ana would like to present" in text
    assert "- Request staging access for Ana (Zoë O'Brien <script>, by 2026-03-11)\n" in text
    # The first version, with nothing optional.
    record = context["record"]
    record.update(version=1, rating=None, action_items=[], answers=[], notes="", commands=["#skip"])
    rendered = render(TEMPLATES, "confirmation", context)
    assert "version" not in rendered.subject
    assert "Rating: none given" in rendered.text
    assert "Commands: #skip" in rendered.text
    assert "Other notes" not in rendered.text
    assert "version 2" in rendered.text
    # An answer numbered beyond the questions (the service passes an empty question).
    record["answers"] = [{"number": 5, "question": "", "answer": "An extra point."}]
    rendered = render(TEMPLATES, "confirmation", context)
    assert "\n5.\n   An extra point.\n" in rendered.text
    assert ">5.</p>" in rendered.html


def test_reminder_and_escalation_variants():
    reminder = sample_context("reminder")
    first = render(TEMPLATES, "reminder", reminder)
    assert first.subject.startswith("Reminder:")
    assert "3 days" in first.text
    reminder.update(step=2, days_overdue=1)
    second = render(TEMPLATES, "reminder", reminder)
    assert second.subject.startswith("Another reminder:")
    assert "1 day\n" in second.text
    escalation = render(TEMPLATES, "escalation", sample_context("escalation"))
    assert MANAGER_NAME in escalation.text and "Ana Souza" in escalation.text
    assert "7 days" in escalation.text


def test_escalation_rewords_a_label_written_for_the_manager():
    """The service passes the manager's label ("your check-in ...") to every ladder step."""
    context = sample_context("escalation")
    assert context["item"]["label"].startswith("your ")
    rendered = render(TEMPLATES, "escalation", context)
    third_party = f"{MANAGER_NAME}'s check-in with Ana Souza on Tuesday 10 March"
    assert rendered.subject == f"Not yet documented: {third_party}"
    assert f"For your awareness: {third_party} has not been documented yet." in rendered.text
    assert "Zoë O&#39;Brien &lt;script&gt;&#39;s check-in with Ana Souza" in rendered.html
    for part in (rendered.subject, rendered.text, rendered.html):
        assert "your check-in" not in part
    context["item"]["label"] = "the PIP review \u201cWeek 2 review\u201d for Ana Souza"
    rendered = render(TEMPLATES, "escalation", context)
    assert (
        rendered.subject
        == "Not yet documented: the PIP review \u201cWeek 2 review\u201d for Ana Souza"
    )


def test_quarantine_notice_says_nothing_about_check_ins():
    context = sample_context("quarantine_notice")
    rendered = render(TEMPLATES, "quarantine_notice", context)
    assert context["reason"] in rendered.text
    # The sample's people never appear: the notice may go to a stranger.
    for secret in ("Ana", "Zoë", "1:1", "March"):
        assert secret not in rendered.text and secret not in rendered.html
    context["recipient"] = {"name": "", "email": "unknown@example.net"}
    assert render(TEMPLATES, "quarantine_notice", context).text.startswith("Hello,\n")


def test_pip_review_subject_is_discreet():
    rendered = render(TEMPLATES, "pip_review", sample_context("pip_review"))
    assert "PIP" not in rendered.subject
    assert "improvement" not in rendered.subject.lower()


def test_sample_context_is_a_copy_and_names_known_templates():
    context = sample_context("followup")
    context["manager"]["name"] = "changed"
    assert SAMPLES["followup"]["manager"]["name"] == MANAGER_NAME
    with pytest.raises(KeyError) as err:
        sample_context("nope")
    assert "followup" in str(err.value) and "invite/description.txt" in str(err.value)


# --- StrictUndefined and autoescape -----------------------------------------------------------


@pytest.mark.parametrize(
    ("remove", "part"),
    [
        (("employee",), "subject.txt"),  # the subject uses employee.name
        (("occurrence",), "body.txt"),  # the subject does not use occurrence; the body does
        (("occurrence", "when"), "body.txt"),  # a missing attribute, not just a missing key
    ],
)
def test_missing_variable_names_the_template_file(remove, part):
    context = sample_context("followup")
    target = context
    for key in remove[:-1]:
        target = target[key]
    del target[remove[-1]]
    with pytest.raises(ConfigError) as err:
        render(TEMPLATES, "followup", context)
    message = str(err.value)
    assert str(TEMPLATES / "email" / "followup" / part) in message
    assert "UndefinedError" in message
    assert remove[-1] in message


def test_html_is_escaped_and_text_is_not():
    rendered = render(TEMPLATES, "followup", sample_context("followup"))
    assert "Zoë O'Brien <script>" in rendered.text
    assert "<script>" not in rendered.html
    assert "Zoë O&#39;Brien &lt;script&gt;" in rendered.html
    assert "Northwind &amp; Co" in rendered.html
    assert "Northwind & Co" in rendered.text


def test_subject_cannot_carry_a_header_injection():
    context = sample_context("followup")
    context["employee"]["name"] = "Ana\r\nBcc: victim@example.com"
    subject = render(TEMPLATES, "followup", context).subject
    assert "\n" not in subject and "\r" not in subject


# --- the sandbox ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ recipient.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ '{0.__class__}'.format(recipient) }}",
        "{{ questions.append('x') }}",  # the immutable sandbox refuses to mutate the context
        "{% set _ = recipient.update({'name': 'x'}) %}",
    ],
)
def test_sandbox_refuses_hostile_templates(tmp_path, hostile):
    root = write_email(tmp_path / "templates", "hostile", text=hostile)
    context = {"recipient": {"name": "Ana"}, "questions": ["q"]}
    with pytest.raises(ConfigError) as err:
        render(root, "hostile", context)
    message = str(err.value)
    assert str(root / "email" / "hostile" / "body.txt") in message
    assert "SecurityError" in message
    assert context == {"recipient": {"name": "Ana"}, "questions": ["q"]}


def test_sandbox_failure_is_chained_from_the_jinja_error(tmp_path):
    from jinja2.exceptions import SecurityError

    root = write_email(tmp_path / "templates", "hostile", html="{{ ''.__class__.__mro__ }}")
    with pytest.raises(ConfigError) as err:
        render(root, "hostile", {})
    assert isinstance(err.value.__cause__, SecurityError)
    assert err.value.problems[0].file.endswith("body.html")


# --- check_templates ------------------------------------------------------------------------


def test_check_templates_reports_a_syntax_error_with_the_file(tmp_path):
    root = write_email(tmp_path / "templates", "broken", text="Hi\n\n{% if recipient.name %}\n")
    write_email(root, "fine")
    problems = check_templates(root)
    assert len(problems) == 1
    assert problems[0].file == str(root / "email" / "broken" / "body.txt")
    assert problems[0].field == "line 3"
    assert "if" in problems[0].problem


def test_check_templates_reports_a_missing_part(tmp_path):
    root = write_email(tmp_path / "templates", "partial")
    (root / "email" / "partial" / "body.html").unlink()
    problems = check_templates(root)
    assert [(p.file, p.problem) for p in problems] == [
        (str(root / "email" / "partial" / "body.html"), "missing")
    ]


# --- MIME -----------------------------------------------------------------------------------


def _parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_build_message_is_multipart_alternative():
    rendered = render(TEMPLATES, "followup", sample_context("followup"))
    message_id = make_message_id("followup:occurrence:42", "reply.example.com")
    raw = build_message(
        rendered,
        sender="Check-ins <checkins@example.com>",
        to=["Zoë O'Brien <zoe.obrien@example.com>"],
        cc=["hr@example.com"],
        message_id=message_id,
        date=dt.datetime(2026, 3, 10, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        reply_to="checkin+1-o42-abcdefghijklmnopqrst@reply.example.com",
        in_reply_to="<agenda-1@example.com>",
        references=["<invite-1@example.com>", "<agenda-1@example.com>"],
        preferences_url="https://checkins.example.com/preferences/3f9a2c7e",
    )
    msg = _parse(raw)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["Message-ID"] == message_id
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Reply-To"] == "checkin+1-o42-abcdefghijklmnopqrst@reply.example.com"
    assert msg["In-Reply-To"] == "<agenda-1@example.com>"
    assert msg["References"] == "<invite-1@example.com> <agenda-1@example.com>"
    assert msg["Cc"] == "hr@example.com"
    assert msg["To"].addresses[0].display_name == "Zoë O'Brien"
    assert msg["Subject"] == rendered.subject
    assert msg["List-Unsubscribe"] == "<https://checkins.example.com/preferences/3f9a2c7e>"
    assert msg["Date"].datetime == dt.datetime(2026, 3, 10, 9, 30, tzinfo=dt.UTC)
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = msg.get_body(("html",)).get_content().replace("\r\n", "\n")
    assert text == rendered.text
    assert html == rendered.html
    assert "1. What has gone well since your last check-in?\n" in text


def test_build_message_without_optional_headers():
    raw = build_message(
        Rendered("Hello", "Hi\n", "<p>Hi</p>\n"),
        sender="a@example.com",
        to=["b@example.com"],
        message_id="<x@example.com>",
        date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    msg = _parse(raw)
    assert msg.get_content_type() == "multipart/alternative"
    for header in ("Reply-To", "In-Reply-To", "References", "Cc", "List-Unsubscribe"):
        assert header not in msg
    assert msg["Auto-Submitted"] == "auto-generated"


def test_make_message_id_is_deterministic():
    first = make_message_id("agenda:occurrence:7:ana", "example.com")
    assert first == make_message_id("agenda:occurrence:7:ana", "example.com")
    assert first != make_message_id("agenda:occurrence:7:zoe", "example.com")
    assert re.fullmatch(r"<[0-9a-f]{24}@example\.com>", first)
    parsed = _parse(
        build_message(
            Rendered("s", "t", "h"),
            sender="a@example.com",
            to=["b@example.com"],
            message_id=first,
            date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        )
    )
    assert parsed["Message-ID"] == first


def test_samples_are_not_shared_between_renders():
    before = copy.deepcopy(SAMPLES)
    for name in EMAILS:
        render(TEMPLATES, name, sample_context(name))
    assert before == SAMPLES
