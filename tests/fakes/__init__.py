"""Local stateful fakes of the provider HTTP APIs (Google Calendar, Microsoft Graph) and helpers
that start real servers (Radicale) for the tests and benchmarks."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import (
    Any,
    ClassVar,
    Self,
)


class LoopbackServer:
    """Serving a fake on 127.0.0.1 (a free port) from a daemon thread: start/stop, ``with``,
    ``url`` and the OAuth ``token_uri``. A subclass names its request handler class, whose
    instances reach the fake through ``self.fake``."""

    handler: ClassVar[type[BaseHTTPRequestHandler]]
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> str:
        handler: Any = type("Handler", (self.handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def token_uri(self) -> str:
        return self.url + "/token"
