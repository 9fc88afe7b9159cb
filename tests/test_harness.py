"""The service-required rule itself: skip on a laptop, fail loudly in CI."""

from __future__ import annotations

import socket

import pytest

from tests.conftest import require_service


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_missing_service_skips_with_the_reason_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    port = _closed_port()
    with pytest.raises(pytest.skip.Exception, match=f"Thing is not reachable on 127.0.0.1:{port}"):
        require_service("Thing", "127.0.0.1", port)


def test_missing_service_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires it"):
        require_service("Thing", "127.0.0.1", _closed_port())
