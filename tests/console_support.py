"""What the console's tests share: an organization with people and check-ins planned, the
web app on it, and signing in as a given role."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from automation.db import transaction
from automation.models import Person
from automation.runtime import Runtime
from automation.services import accounts
from automation.web import create_app
from tests.conftest import start_organization

PASSWORD = "correct horse battery staple"

# Two managers under the CEO, so that "a manager sees only their reporting chain" can fail.
PEOPLE = """email,name,timezone,manager_email,hr_partner_email
ceo@acme.test,Cleo Chief,America/New_York,,hr@acme.test
hr@acme.test,Hal Hr,Europe/London,ceo@acme.test,hr@acme.test
boss@acme.test,Bea Boss,America/New_York,ceo@acme.test,hr@acme.test
ana@acme.test,Ana Souza,Europe/Berlin,boss@acme.test,hr@acme.test
kai@acme.test,Kai Tanaka,Asia/Tokyo,boss@acme.test,hr@acme.test
max@acme.test,Max Other,Europe/Paris,ceo@acme.test,hr@acme.test
zoe@acme.test,Zoe Elsewhere,Europe/Paris,max@acme.test,hr@acme.test
"""


@dataclass
class Console:
    rt: Runtime
    client: TestClient
    org: int

    def person(self, email: str) -> Person:
        with self.rt.factory() as session:
            person = session.scalar(
                select(Person).where(Person.organization_id == self.org, Person.email == email)
            )
            assert person is not None, email
            session.expunge(person)
            return person

    def sign_in(self, email: str, role: str = "hr_admin") -> str:
        """Create an account (a manager's is tied to the person with that address), sign this
        client in with it; returns the session's CSRF token."""
        with transaction(self.rt.factory) as session:
            accounts.create_account(
                session, self.org, email=email, name=email.split("@")[0].title(), role=role,
                now=self.rt.now(), actor="test", password=PASSWORD,
            )  # fmt: skip
        self.client.cookies.clear()
        page = self.client.get("/console/sign-in")
        signed = self.client.post(
            "/console/sign-in",
            data={"email": email, "password": PASSWORD, "csrf": csrf_of(page.text)},
            follow_redirects=False,
        )
        assert signed.status_code == 303, signed.text
        return csrf_of(self.client.get("/console/").text)


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


@pytest.fixture
def console(rt: Runtime, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The web app on an organization whose check-ins are planned and invited."""
    org = start_organization(rt, tmp_path, PEOPLE)
    with TestClient(create_app(rt)) as client:
        yield Console(rt, client, org)
