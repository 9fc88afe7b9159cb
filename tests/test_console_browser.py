"""The HR console in a real browser (headless Chromium): what a person does and sees.

Each page visited is also checked for SEVERE entries in the browser's console log (see
tests/browser.py), which catches an inline script or style that the console's
Content-Security-Policy would block in production. Screenshots land in
test-artifacts/screenshots (or $ARTIFACTS_DIR/screenshots).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from automation.clock import SimulatedClock
from automation.models import AuditEntry
from automation.services.accounts import SignInRefused
from automation.services.loop import run_due
from automation.settings import PROJECT_ROOT
from tests import browser as harness
from tests.browser import Browser, ConsoleLogError
from tests.console_support import console  # noqa: F401 - the fixture the browser serves

pytest_plugins = ("tests.browser",)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only (this replaces conftest's SQLite-and-PostgreSQL fixture in this module):
    what a browser adds (forms, scripts, the CSP) does not depend on the database, which the
    HTTP-level console tests cover on both; a second run would double the slowest tests of
    the suite for nothing."""
    return f"sqlite:///{tmp_path / 'test.db'}"


def test_without_chromium_the_browser_tests_skip_or_fail_under_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(harness, "CHROMIUM", tmp_path / "chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium chromium-driver"):
        harness.require_browser()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="chromium not found"):
        harness.require_browser()


def test_an_hr_admin_signs_in_through_the_form_and_lands_on_home(browser: Browser) -> None:
    password = browser.served.add_account("hr@acme.test", "hr_admin")
    browser.open("/console/")
    assert browser.path == "/console/sign-in?next=/console/"
    browser.shot("sign-in")

    browser.sign_in("hr@acme.test", password)

    assert browser.path == "/console/"
    assert "Signed in as Hr <hr@acme.test>, HR admin." in browser.text()
    assert "messages in quarantine" in browser.text()
    nav = [link.text for link in browser.find_all("header nav a")]
    assert "Report" in nav and "Templates" in nav
    browser.shot("home-hr-admin")


def test_a_wrong_password_is_refused_on_the_sign_in_page(browser: Browser) -> None:
    browser.served.add_account("hr@acme.test", "hr_admin")
    browser.sign_in("hr@acme.test", "not the password at all")

    assert browser.path.startswith("/console/sign-in")
    refusal = browser.find("[role=alert]")
    assert refusal.is_displayed() and refusal.text == str(SignInRefused())
    assert browser.find_all("form[action='/console/sign-out']") == []
    assert browser.driver.get_cookie("checkin_session") is None
    browser.shot("sign-in-refused")
    browser.open("/console/")  # still signed out
    assert browser.path.startswith("/console/sign-in")


def test_a_manager_opening_an_hr_page_gets_the_403_page(browser: Browser) -> None:
    password = browser.served.add_account("boss@acme.test", "manager")
    browser.sign_in("boss@acme.test", password)
    assert "manager" in browser.text()
    nav = [link.text for link in browser.find_all("header nav a")]
    assert "Report" not in nav  # the link is not offered ...

    browser.open("/console/report")  # ... and typing the address is refused

    assert browser.find("h1").text == "Not allowed"
    assert "you are signed in as manager" in browser.text()
    browser.shot("forbidden-manager-report")


def test_signing_out_ends_the_session(browser: Browser) -> None:
    password = browser.served.add_account("hr@acme.test", "hr_admin")
    browser.sign_in("hr@acme.test", password)
    assert browser.path == "/console/"

    browser.sign_out()

    assert browser.path == "/console/sign-in"
    assert browser.find_all("form[action='/console/sign-out']") == []
    browser.open("/console/")
    assert browser.path == "/console/sign-in?next=/console/"
    browser.shot("signed-out")


def test_the_console_log_check_catches_what_the_csp_blocks(browser: Browser) -> None:
    """The check every page gets would fail on an inline script or style attribute."""
    password = browser.served.add_account("hr@acme.test", "hr_admin")
    browser.sign_in("hr@acme.test", password)
    browser.driver.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
        "document.body.appendChild(s); document.body.setAttribute('style', 'color: red');"
    )
    assert browser.driver.execute_script("return window.ran") is None  # blocked
    with pytest.raises(ConsoleLogError) as caught:
        browser.wait(lambda _: browser.check_console_log(), "no violation logged", timeout=2)
    assert "inline" in str(caught.value) and "Content Security Policy" in str(caught.value)


def test_an_employees_timeline_opens_from_the_people_page(browser: Browser) -> None:
    password = browser.served.add_account("boss@acme.test", "manager")
    browser.sign_in("boss@acme.test", password)
    browser.follow("People")
    assert browser.path == "/console/people"
    tree = browser.text(".tree")
    assert "Ana Souza" in tree and "Kai Tanaka" in tree
    assert "Zoe Elsewhere" not in tree  # outside the manager's reporting chain
    browser.shot("people-manager")

    browser.type("input[name=q]", "souza")
    browser.click("form[role=search] button")
    assert browser.path == "/console/people?q=souza"
    browser.follow("Ana Souza")

    ana = browser.served.console.person("ana@acme.test")
    assert browser.path == f"/console/people/{ana.id}"
    assert browser.find("h1").text.startswith("Ana Souza")
    checkins = browser.find_all(".timeline .entry.checkin")
    assert checkins, "the planned check-ins are on the timeline"
    assert "Check-in with Bea Boss" in checkins[0].text
    browser.shot("timeline-ana")


def test_an_escalation_is_acknowledged_from_the_overdue_queue(
    browser: Browser, clock: SimulatedClock
) -> None:
    # Past the first check-ins' end by more than the ladder's 7 business days: the HR partner
    # has been sent the escalation step, which asks them to acknowledge it.
    rt = browser.served.console.rt
    clock.advance(dt.timedelta(days=12))
    run_due(rt)
    password = browser.served.add_account("hr@acme.test", "hr_partner")
    browser.sign_in("hr@acme.test", password)
    browser.follow("Overdue")
    assert browser.path == "/console/queue"
    forms = browser.find_all("form[action='/console/queue/acknowledge']")
    assert forms, "an escalation awaits its acknowledgement"
    row = forms[0].find_element("xpath", "ancestor::tr")
    row_id = row.get_attribute("id")
    employee = row.find_elements("css selector", "td")[2].text.splitlines()[0]
    assert "Hal Hr" in row.find_element("css selector", ".open-acks").text
    browser.shot("queue-before-acknowledging")

    forms[0].find_element("css selector", "input[name=note]").send_keys("On it <today>")
    browser.click(forms[0].find_element("css selector", "button"))

    assert browser.path == "/console/queue?notice=queue-acknowledged"
    assert browser.text("[role=status]").startswith("Acknowledged.")
    row = browser.find(f"tr[id='{row_id}']")  # still overdue: acknowledging documents nothing
    assert row.find_element("css selector", ".open-acks").text == "none"
    assert row.find_elements("css selector", "form[action='/console/queue/acknowledge']") == []
    kind, subject_id = row_id.rsplit("-", 1)
    with rt.factory() as session:
        entry = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "escalation.acknowledged")
        ).one()
    assert entry.actor == "console:hr@acme.test"
    assert (entry.subject_kind, entry.subject_id) == (kind, int(subject_id))
    browser.shot("queue-acknowledged")

    # The note shows on the employee's timeline as typed: escaped, not read as a tag.
    browser.follow("People")
    browser.follow(employee)
    assert "acknowledged" in browser.text(".timeline")
    assert "On it <today>" in browser.text(".timeline")


def test_a_template_preview_follows_the_typing_without_a_button(browser: Browser) -> None:
    saved = PROJECT_ROOT / "templates" / "email" / "reminder" / "body.html"
    before = saved.read_text()
    password = browser.served.add_account("hr@acme.test", "hr_admin")
    browser.sign_in("hr@acme.test", password)
    browser.follow("Templates")
    browser.follow("reminder")
    assert browser.path == "/console/templates/reminder"
    browser.wait(  # rendered on the sample data (the script may be re-rendering it)
        lambda _: "Hi " in preview_frame_text(browser), "the preview shows no sample data"
    )
    browser.shot("template-before-typing")

    # Type at the start of the content block, as a person who clicked there would.
    editor = browser.find("textarea[data-part='body.html']")
    browser.driver.execute_script(
        "const at = arguments[0].value.indexOf('{% block content %}') + 19;"
        "arguments[0].focus(); arguments[0].setSelectionRange(at, at);",
        editor,
    )
    editor.send_keys("<p>Typed live: 7 &lt; 8</p>")

    browser.wait(
        lambda _: "Typed live: 7 < 8" in preview_frame_text(browser),
        "the preview did not show the typed text",
    )
    browser.wait(lambda _: browser.text("#preview-status") == "up to date", "status not updated")
    assert browser.path == "/console/templates/reminder"  # no form was submitted
    browser.check_console_log()
    browser.shot("template-live-preview")
    assert saved.read_text() == before  # previewing writes nothing


def preview_frame_text(browser: Browser) -> str:
    """The text of the document shown in the preview's sandboxed frame; empty while the
    frame is loading a new preview (setting srcdoc replaces its document)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    driver = browser.driver
    try:
        driver.switch_to.frame(browser.find("#preview-html"))
        return str(driver.find_element("tag name", "body").text)
    except (StaleElementReferenceException, NoSuchElementException):
        return ""
    finally:
        driver.switch_to.default_content()


def test_every_page_in_the_navigation_loads_without_console_errors(browser: Browser) -> None:
    """An HR admin sees every link; each page loads its styles and scripts within the CSP."""
    password = browser.served.add_account("hr@acme.test", "hr_admin")
    browser.sign_in("hr@acme.test", password)
    links = {link.text: link.get_attribute("href") for link in browser.find_all("header nav a")}
    assert len(links) >= 9
    for label, href in links.items():
        browser.open(href.removeprefix(browser.url))  # checks the console log
        heading = browser.find_all("main h1")
        assert heading and heading[0].text not in ("Not found", "Not allowed"), label
        assert browser.driver.execute_script(
            "return getComputedStyle(document.body).margin === '0px'"
        ), f"{label}: console.css did not apply"
