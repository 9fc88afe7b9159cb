"""A small HTTP reverse proxy that misbehaves on purpose, in front of a real server (Radicale).

    with FaultyProxy(upstream_url, fault_ratio=0.3, seed=7) as proxy:
        client talks to proxy.url

* ``fault_ratio``: that share of requests is answered 429 (``Retry-After: 0`` or ``1``) or
  503 **without being forwarded**, chosen by a seeded random generator (reproducible);
* ``lost_ratio``: that share is forwarded, and the server's answer replaced by a 503, as
  when a response is lost after the server did the work (a retry must then be idempotent);
* ``unsupported_reports``: REPORTs whose body names one of these (``"sync-collection"``,
  ``"free-busy-query"``) are refused with 403 ``DAV:supported-report``, as by a server that
  lacks them, without forwarding;
* ``before_forward``: called with (method, path, headers) just before a request is
  forwarded, to let a test change the server's state at an exact moment.

It counts what it receives by method (``received``), what it forwarded (``forwarded``),
what it answered with an injected fault (``faults``, lost answers included) and whose answer
it lost after forwarding (``lost``), and keeps ``log`` of
(method, path, status returned) in order.
"""

from __future__ import annotations

import http.client
import random
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
METHODS = (
    "GET",
    "HEAD",
    "PUT",
    "POST",
    "DELETE",
    "OPTIONS",
    "PROPFIND",
    "PROPPATCH",
    "REPORT",
    "MKCOL",
    "MKCALENDAR",
    "MOVE",
    "COPY",
)
UNSUPPORTED_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:error xmlns:D="DAV:"><D:supported-report/></D:error>'
)


class FaultyProxy:
    def __init__(
        self,
        upstream: str,
        *,
        fault_ratio: float = 0.0,
        lost_ratio: float = 0.0,
        seed: int = 0,
        unsupported_reports: frozenset[str] | set[str] = frozenset(),
        before_forward: Callable[[str, str, Mapping[str, str]], None] | None = None,
    ):
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.fault_ratio = fault_ratio
        self.lost_ratio = lost_ratio
        self.rng = random.Random(seed)
        self.unsupported_reports = set(unsupported_reports)
        self.before_forward = before_forward
        self.received: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/"

    def reset_counts(self) -> None:
        with self._lock:
            self.received.clear()
            self.forwarded.clear()
            self.faults.clear()
            self.lost.clear()
            self.log.clear()

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ----------------------------------------------------------------- decisions

    def _decide(self, method: str, body: bytes) -> tuple[str, int, dict[str, str]]:
        """("refuse" | "fault" | "lose" | "forward", status, headers), under the lock."""
        with self._lock:
            self.received[method] += 1
            if method == "REPORT" and any(
                name.encode() in body for name in self.unsupported_reports
            ):
                return "refuse", 403, {"Content-Type": "application/xml; charset=utf-8"}
            roll = self.rng.random()
            if roll < self.fault_ratio:
                self.faults[method] += 1
                if self.rng.random() < 0.5:
                    return "fault", 429, {"Retry-After": str(self.rng.choice((0, 1)))}
                return "fault", 503, {}
            if roll < self.fault_ratio + self.lost_ratio:
                self.faults[method] += 1
                self.lost[method] += 1
                self.forwarded[method] += 1
                return "lose", 503, {}
            self.forwarded[method] += 1
            return "forward", 0, {}

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.log.append((method, path, status))

    def _forward(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        if self.before_forward is not None:
            self.before_forward(method, path, headers)
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
        try:
            out = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
            out["Host"] = f"{self.upstream_host}:{self.upstream_port}"
            if body or method in ("PUT", "POST", "REPORT", "PROPFIND", "PROPPATCH"):
                out["Content-Length"] = str(len(body))
            conn.request(method, path, body=body or None, headers=out)
            response = conn.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            return response.status, kept, data
        finally:
            conn.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One write per response (headers and body buffered, flushed once), no Nagle:
            # otherwise each answer waits for the client's delayed ACK.
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD" and body:
                    self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                method = self.command
                action, status, extra = proxy._decide(method, body)
                if action == "refuse":
                    proxy._record(method, self.path, status)
                    self._reply(status, list(extra.items()), UNSUPPORTED_BODY)
                    return
                if action == "fault":
                    proxy._record(method, self.path, status)
                    self._reply(status, list(extra.items()), b"injected fault\n")
                    return
                upstream_status, headers, data = proxy._forward(
                    method, self.path, dict(self.headers.items()), body
                )
                if action == "lose":
                    proxy._record(method, self.path, status)
                    self._reply(status, [], b"injected fault after forwarding\n")
                    return
                proxy._record(method, self.path, upstream_status)
                self._reply(upstream_status, headers, data)

        for name in METHODS:
            setattr(Handler, f"do_{name}", Handler._handle)
        return Handler
