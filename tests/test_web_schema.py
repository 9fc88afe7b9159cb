"""The web app's OpenAPI description, fuzzed with schemathesis: whatever a caller sends to any
operation it describes (webhooks, health, metrics, the console's JSON endpoints), the answer
is never a server error: once anonymous, once signed in to the console as an HR admin (with
the session's CSRF token), so the console's endpoints are fuzzed past their sign-in check.

Schemathesis generates the requests from the description; Hypothesis drives them (one
``@given`` per operation) and the app's own test client sends them: schemathesis' pytest
fixture loader does not run under pytest 9, nor its requests transport under urllib3 2.5.
Every 5xx fails with the request that caused it."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from automation.db import transaction
from automation.services import accounts
from tests.console_support import PASSWORD, csrf_of
from tests.test_web import Web, web  # noqa: F401  (the fixture: the app on a real database)


def sign_in_as_hr_admin(w: Web) -> str:
    with transaction(w.rt.factory) as session:
        accounts.create_account(
            session, w.org, email="hr@acme.test", name="Hal", role="hr_admin",
            now=w.rt.now(), actor="test", password=PASSWORD,
        )  # fmt: skip
    page = w.client.get("/console/sign-in")
    w.client.post(
        "/console/sign-in",
        data={"email": "hr@acme.test", "password": PASSWORD, "csrf": csrf_of(page.text)},
    )
    return csrf_of(w.client.get("/console/").text)


def test_no_request_to_any_described_operation_gets_a_server_error(web: Web) -> None:  # noqa: F811
    schema = schemathesis.openapi.from_asgi("/openapi.json", web.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/healthz", "/webhooks/google/calendar", "/console/report.json",
        "/console/templates/{name}/preview",
    }  # fmt: skip
    fuzz(web, operations, {})
    statuses = fuzz(web, operations, {"X-CSRF-Token": sign_in_as_hr_admin(web)})
    # Signed in, the console's endpoints answered past their sign-in check.
    assert statuses["/console/report.json"] - {401, 403}
    assert statuses["/console/templates/{name}/preview"] - {401, 403}


def fuzz(w: Web, operations: list, headers: dict[str, str]) -> dict[str, set[int]]:  # type: ignore[type-arg]
    """Send each operation's generated cases; returns the statuses seen per path."""
    statuses: dict[str, set[int]] = {}
    tried: dict[str, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            derandomize=True,  # the same cases on every run: a failure is reproducible
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def call(case) -> None:  # type: ignore[no-untyped-def]
            request = case.as_transport_kwargs(base_url="http://testserver")
            request.pop("cookies", None)  # the client's own (a console session) are sent
            request["headers"] = {**(request.get("headers") or {}), **headers}
            response = w.client.request(**request)
            statuses.setdefault(case.operation.path, set()).add(response.status_code)
            assert response.status_code < 500, (
                f"{case.operation.label} answered {response.status_code} to {request!r}: "
                f"{response.text[:500]}"
            )
            tried[case.operation.label] = tried.get(case.operation.label, 0) + 1

        call()
    assert len(tried) == len(operations)  # every operation was called
    return statuses
