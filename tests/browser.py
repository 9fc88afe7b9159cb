"""Driving the HR console in a real browser: Debian's headless Chromium, through selenium.

The console's own tests (tests/test_console_*.py) speak HTTP through ``fastapi.testclient``;
these check what only a browser shows: the forms really submit, the pages' scripts run under
the console's Content-Security-Policy, a preview updates while someone types.

- :func:`served_console` serves the real web app (:func:`automation.web.create_app`) with
  uvicorn in a background thread on a free loopback port, on the ``console`` fixture's runtime
  (tests/console_support.py), so a test can sign in with the real form and move the
  runtime's simulated clock between page loads.
- :func:`browser` is a :class:`Browser`: one Chromium for the whole test session (starting it
  costs about a second), its cookies and console log emptied before each test. Every page it
  opens or reaches by a click is checked for SEVERE entries in the browser's console log: a
  Content-Security-Policy violation (an inline script or style, blocked in production), a
  script error, a stylesheet or script that failed to load.
- :func:`shot` saves a screenshot under ``$ARTIFACTS_DIR/screenshots`` (default
  ``test-artifacts/screenshots`` in the repository); when a browser test fails, its last
  screen and page source are saved there too, named after the test.

A test module uses it with ``pytest_plugins = ("tests.browser",)`` (the hook that sees a test
fail lives here) and the ``console`` fixture imported from tests/console_support.py. Chromium
and ChromeDriver come from Debian (``apt-get install chromium chromium-driver``, which .ci/run
does): without them the tests skip, and fail under CI=true.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from automation.db import transaction
from automation.services import accounts
from automation.settings import PROJECT_ROOT
from tests.console_support import PASSWORD, Console

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1280, 900)  # fixed, so that screenshots compare across runs
WAIT = 10.0  # seconds a page or an element may take before the test fails
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR") or PROJECT_ROOT / "test-artifacts")
SCREENSHOTS = ARTIFACTS / "screenshots"

# The outcome of each phase of each test, for the fixture's teardown (see the hook below).
_PHASES = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    item.stash.setdefault(_PHASES, {})[report.when] = report
    return report


def require_browser() -> None:
    """Skip the calling test (fail it under CI=true) when Chromium or its driver is missing."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if not missing:
        return
    message = (
        f"{' and '.join(missing)} not found: the browser tests need Debian's packages "
        "chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true requires them (.ci/run installs them)")
    pytest.skip(message)


# --------------------------------------------------------------------------- the server


@dataclass
class Served:
    """The console, served over real HTTP."""

    console: Console
    url: str  # http://127.0.0.1:<port>, no trailing slash

    def add_account(self, email: str, role: str = "hr_admin") -> str:
        """An account with :data:`PASSWORD`; a manager's is tied to the person with that
        address. Returns the password, so a test types it."""
        rt = self.console.rt
        with transaction(rt.factory) as session:
            accounts.create_account(
                session, self.console.org, email=email, name=email.split("@")[0].title(),
                role=role, now=rt.now(), actor="test", password=PASSWORD,
            )  # fmt: skip
        return PASSWORD


@pytest.fixture
def served_console(console: Console) -> Iterator[Served]:
    """The real web app on the ``console`` runtime, served by uvicorn on a loopback port."""
    import uvicorn

    from automation.web import create_app

    # Bound here and handed to uvicorn, so no other process can take the port in between.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        create_app(console.rt), lifespan="off", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="console-web", daemon=True
    )
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(url + "/console/sign-in", thread)
        yield Served(console, url)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()
        assert not thread.is_alive(), "uvicorn did not stop within 10 s"


def _wait_until_answering(url: str, thread: threading.Thread) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        if not thread.is_alive():
            raise RuntimeError("uvicorn stopped before it answered (see the log above)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {WAIT:.0f} s")
        time.sleep(0.05)


# --------------------------------------------------------------------------- the browser


def _start_chromium() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.add_argument("--headless=new")
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    if os.geteuid() == 0:
        # Chromium refuses to start its sandbox as root (CI and these machines run as root).
        options.add_argument("--no-sandbox")
    for flag in (
        # No calls home: this machine has no network beyond loopback and the registries, and
        # Chromium's refused connections would only slow it down and fill the log.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        "--no-first-run",
        "--disable-gpu",  # no GPU here; software rendering is what the screenshots show
        "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    ):
        options.add_argument(flag)
    # Everything the pages log (CSP violations, script errors), read by check_console_log.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # With the driver's path given, selenium does not run Selenium Manager (no downloads).
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT)
    return driver


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """One headless Chromium for the session; :func:`browser` gives each test a clean one."""
    require_browser()
    driver = _start_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver: Any, name: str) -> Path:
    """Save the browser's screen as ``<screenshots>/<name>.png``; returns the path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{_file_name(name)}.png"
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"Chromium could not save a screenshot to {path}")
    return path


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "screen"


class ConsoleLogError(AssertionError):
    """The browser logged a SEVERE entry: a CSP violation, a script error, a failed load."""


@dataclass
class Browser:
    """A signed-out Chromium pointed at the served console, with the steps tests repeat."""

    driver: Any
    served: Served
    # Top-level pages reached: the browser logs an error answer (401, 403, 404) to a page
    # itself as a failed load, but the page's status is what the test checks, not a fault.
    pages: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return self.served.url

    @property
    def path(self) -> str:
        """The current page's path and query."""
        return self.driver.current_url.removeprefix(self.served.url)

    def open(self, path: str) -> None:
        """Load ``path`` (e.g. ``/console/``) and check the console log."""
        self.driver.get(self.served.url + path)
        self._loaded()

    def click(self, target: str | Callable[[], Any] | Any) -> None:
        """Click the element and wait until the browser has loaded the page it leads to.

        ``target`` is a CSS selector, a function that finds the element, or an element found
        before. With a selector or a function the element is found again if the page
        replaced it between finding and clicking ("stale", or "Node does not belong to the
        document" under load: the previous navigation's document was still being swapped)."""
        from selenium.common.exceptions import (
            StaleElementReferenceException,
            WebDriverException,
        )
        from selenium.webdriver.support import expected_conditions as ec

        locate: Callable[[], Any] | None = (
            (lambda: self.find(target))
            if isinstance(target, str)
            else target
            if callable(target) and not hasattr(target, "click")
            else None
        )
        for attempt in range(3):
            page = self.driver.find_element("tag name", "html")
            element = locate() if locate is not None else target
            try:
                element.click()
                break
            except WebDriverException as exc:
                stale = isinstance(exc, StaleElementReferenceException) or (
                    "does not belong to the document" in str(exc)
                )
                if locate is None or not stale or attempt == 2:
                    raise
                self._loaded()
        self.wait(ec.staleness_of(page), f"no new page after clicking {target}")
        self._loaded()

    def follow(self, link_text: str) -> None:
        """Click the link that reads ``link_text``, as a person would."""
        self.click(lambda: self.driver.find_element("link text", link_text))

    def type(self, css: str, text: str, *, clear: bool = True) -> None:
        element = self.find(css)
        if clear:
            element.clear()
        element.send_keys(text)

    def find(self, css: str) -> Any:
        return self.driver.find_element("css selector", css)

    def find_all(self, css: str) -> list[Any]:
        return list(self.driver.find_elements("css selector", css))

    def text(self, css: str = "main") -> str:
        """What a person reads in the element (hidden text excluded)."""
        return str(self.find(css).text)

    def wait(self, condition: Callable[[Any], Any], message: str, timeout: float = WAIT) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(condition, message)

    def sign_in(self, email: str, password: str) -> None:
        """Through the real form: type the address and password, press the button."""
        if not self.path.startswith("/console/sign-in"):
            self.open("/console/sign-in")
        self.type("input[name=email]", email)
        self.type("input[name=password]", password)
        self.click("form[action='/console/sign-in'] button")

    def sign_out(self) -> None:
        self.click("form[action='/console/sign-out'] button")

    def shot(self, name: str) -> Path:
        return shot(self.driver, name)

    def check_console_log(self) -> None:
        """Fail on any SEVERE entry the browser logged since the last check."""
        severe = [
            entry
            for entry in self.driver.get_log("browser")
            if entry.get("level") == "SEVERE" and not self._page_status(entry)
        ]
        if severe:
            lines = "\n".join(f"  [{e.get('source')}] {e.get('message')}" for e in severe)
            raise ConsoleLogError(f"the browser logged errors on {self.path}:\n{lines}")

    def _page_status(self, entry: dict[str, Any]) -> bool:
        """The failed-load entry for a page's own error status (see :attr:`pages`)."""
        if entry.get("source") != "network":
            return False
        address = str(entry.get("message", "")).split(" ", 1)[0]
        return address in self.pages

    def _loaded(self) -> None:
        self.wait(
            lambda d: d.execute_script("return document.readyState") == "complete",
            f"{self.driver.current_url} did not finish loading",
        )
        self.pages.add(self.driver.current_url)
        self.check_console_log()

    def reset(self) -> None:
        """Signed out, nothing logged: as a new browser would be, without restarting one."""
        self.driver.get("about:blank")
        # Every host's: cookies belong to 127.0.0.1 whatever the port of an earlier test.
        self.driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
        self.driver.get_log("browser")  # empties it


@pytest.fixture
def browser(
    request: pytest.FixtureRequest, chromium: Any, served_console: Served
) -> Iterator[Browser]:
    """A clean Chromium on the served console. When the test fails, its screen and page
    source are saved as artefacts; a SEVERE entry logged after its last check fails it."""
    driver = Browser(chromium, served_console)
    driver.reset()
    failed = _file_name(f"FAILED-{request.node.nodeid.split('::')[-1]}")
    for stale in (SCREENSHOTS / f"{failed}.png", SCREENSHOTS / f"{failed}.html"):
        stale.unlink(missing_ok=True)  # what is there describes this run's outcome
    yield driver
    phases = request.node.stash.get(_PHASES, {})
    if phases.get("call") is not None and phases["call"].failed:
        with contextlib.suppress(Exception):  # a crashed browser must not hide the failure
            shot(chromium, failed)
            (SCREENSHOTS / f"{failed}.html").write_text(chromium.page_source, encoding="utf-8")
        return
    driver.check_console_log()
