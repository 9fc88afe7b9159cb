"""The web app's OpenAPI description, fuzzed with schemathesis: whatever a caller sends to any
operation it describes (webhooks, health, metrics), the answer is never a server error.

Schemathesis generates the requests from the description; Hypothesis drives them (one
``@given`` per operation) and the app's own test client sends them: schemathesis' pytest
fixture loader does not run under pytest 9, nor its requests transport under urllib3 2.5.
Every 5xx fails with the request that caused it."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.test_web import Web, web  # noqa: F401  (the fixture: the app on a real database)


def test_no_request_to_any_described_operation_gets_a_server_error(web: Web) -> None:  # noqa: F811
    schema = schemathesis.openapi.from_asgi("/openapi.json", web.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/healthz", "/webhooks/google/calendar"}
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
            request.pop("cookies", None)
            response = web.client.request(**request)
            assert response.status_code < 500, (
                f"{case.operation.label} answered {response.status_code} to {request!r}: "
                f"{response.text[:500]}"
            )
            tried[case.operation.label] = tried.get(case.operation.label, 0) + 1

        call()
    assert len(tried) == len(operations)  # every operation was called
