"""A real Radicale CalDAV server in a subprocess, on loopback, for the CalDAV tests.

    with running_radicale(tmp_dir) as server:
        server.url, server.username, server.password

or, in a test module, ``radicale = radicale_fixture()`` for a module-scoped fixture.

Radicale runs as ``python -m radicale --config <file>`` with filesystem storage under the
temporary folder, htpasswd (plain) authentication with one service user, and "authenticated"
rights (that user reads and writes every calendar: a service account). It is stopped (and
killed if it does not stop) on exit.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

USERNAME = "service"
PASSWORD = "service-password"


@dataclass(frozen=True)
class RadicaleServer:
    url: str  # http://127.0.0.1:<port>/
    username: str
    password: str
    folder: Path  # the storage folder (collections live under it)
    log: Path  # Radicale's stderr, for a failing test to read


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(root: Path, port: int) -> Path:
    users = root / "users"
    users.write_text(f"{USERNAME}:{PASSWORD}\n")
    config = root / "radicale.conf"
    config.write_text(
        "\n".join(
            [
                "[server]",
                f"hosts = 127.0.0.1:{port}",
                "delay_on_error = 0",
                "[auth]",
                "type = htpasswd",
                f"htpasswd_filename = {users}",
                "htpasswd_encryption = plain",
                "delay = 0",
                "[rights]",
                "type = authenticated",
                "[storage]",
                f"filesystem_folder = {root / 'collections'}",
                "[web]",
                "type = none",
                "[logging]",
                "level = warning",
                "mask_passwords = True",
                "",
            ]
        )
    )
    return config


@contextlib.contextmanager
def running_radicale(root: Path, startup_timeout: float = 20.0) -> Iterator[RadicaleServer]:
    """Start Radicale with its files under ``root``; yield it once it answers; stop it."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = _config(root, port)
    log_path = root / "radicale.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "radicale", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}/"
            deadline = time.monotonic() + startup_timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"Radicale exited with {process.returncode}: {log_path.read_text()}"
                    )
                try:
                    requests.request("OPTIONS", url, timeout=1)
                    break
                except requests.ConnectionError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"Radicale did not answer on {url}: {log_path.read_text()}"
                        ) from None
                    time.sleep(0.05)
            yield RadicaleServer(url, USERNAME, PASSWORD, root / "collections", log_path)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def radicale_fixture(scope: str = "module") -> Callable[..., Iterator[RadicaleServer]]:
    """A pytest fixture running one Radicale for the scope: ``radicale = radicale_fixture()``."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def radicale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadicaleServer]:
        with running_radicale(tmp_path_factory.mktemp("radicale")) as server:
            yield server

    return radicale
