"""SMTP benchmark: connection reuse against one connection per message, in one run.

``mail.smtp.reuse_speedup`` starts a real SMTP server (aiosmtpd, ``tests/fakes/smtp_server.py``)
on loopback and sends N real outbox messages (``automation.emails.build_message``, about 1.5
KB each; N = 1,000 at ``--scale 1``) through :class:`automation.adapters.smtp.SmtpSender` twice:

* with reuse: ``send_many`` in batches of 100, one connection per batch;
* without: ``send`` per message, each on a fresh connection (connect, greeting, EHLO, MAIL,
  RCPT, DATA, QUIT).

value = messages/s with reuse, baseline = messages/s without, ratio = the speedup. The note
gives both times and the connections and messages the server counted for each (the counts
are the check: N / 100 connections against N). Both runs follow a short warm-up. Loopback
without TLS or AUTH is the best case for the per-message way: over a network, with STARTTLS
and a login on every connection, reuse saves far more.
"""

from __future__ import annotations

import datetime as dt
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from automation.adapters.smtp import SmtpSender  # noqa: E402
from automation.emails import Rendered, build_message, make_message_id  # noqa: E402
from automation.ports import OutgoingMail, SentMail  # noqa: E402
from tests.fakes.smtp_server import running_smtp  # noqa: E402

BATCH = 100
WARMUP = 5
SENDER = "checkins@bench.test"


def messages(n: int, tag: str) -> list[OutgoingMail]:
    out = []
    for i in range(n):
        message_id = make_message_id(f"bench:{tag}:{i}", "bench.test")
        to = f"e{i}@bench.test"
        raw = build_message(
            Rendered(
                subject=f"Agenda: your check-in with Manager {i % 40}",
                text="Hello,\n\n" + "Your check-in is on Tuesday at 10:00.\n" * 12,
                html="<p>Hello,</p>" + "<p>Your check-in is on Tuesday at 10:00.</p>" * 12,
            ),
            sender=f"Check-ins <{SENDER}>",
            to=[to],
            message_id=message_id,
            date=dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC),
        )
        out.append(OutgoingMail(message_id, raw, SENDER, (to,)))
    return out


def rows(result_type: type, scale: float) -> list[Any]:
    n = max(round(1000 * scale), 10)
    reused_mails, single_mails = messages(n, "reuse"), messages(n, "single")
    with running_smtp() as server:
        sender = SmtpSender(server.host, server.port, security="none", timeout=30)
        for mail in messages(WARMUP, "warm"):
            sender.send(mail)
        sender.send_many(messages(WARMUP, "warm-many"))

        def measure(send: Callable[[], list[SentMail | Exception]]) -> tuple[float, int, int]:
            connections, accepted = server.connections, len(server.messages)
            t0 = time.perf_counter()
            results = send()
            elapsed = time.perf_counter() - t0
            failed = [r for r in results if not isinstance(r, SentMail)]
            assert not failed, failed[:3]
            return elapsed, server.connections - connections, len(server.messages) - accepted

        def with_reuse() -> list[SentMail | Exception]:
            out: list[SentMail | Exception] = []
            for start in range(0, n, BATCH):
                out += sender.send_many(reused_mails[start : start + BATCH])
            return out

        def without_reuse() -> list[SentMail | Exception]:
            return [sender.send(mail) for mail in single_mails]

        single_s, single_conns, single_msgs = measure(without_reuse)
        reuse_s, reuse_conns, reuse_msgs = measure(with_reuse)
    assert single_msgs == reuse_msgs == n, (single_msgs, reuse_msgs, n)
    assert reuse_conns == math.ceil(n / BATCH) and single_conns == n
    reuse_rate, single_rate = n / reuse_s, n / single_s
    note = (
        f"{n} messages; reuse (send_many, batches of {BATCH}): {reuse_s:.3f} s, "
        f"{reuse_conns} connections; one connection per message (send): {single_s:.3f} s, "
        f"{single_conns} connections; counted at the server, loopback, no TLS"
    )
    return [
        result_type(
            "mail.smtp.reuse_speedup",
            reuse_rate,
            "msg/s",
            single_rate,
            reuse_rate / single_rate,
            note,
        )
    ]


def register(benchmark: Callable[[str], Callable[[Any], Any]], result_type: type) -> None:
    """Add ``mail.smtp`` to bench/run.py's registry, building its Result rows."""

    @benchmark("mail.smtp")
    def mail_smtp(scale: float, folder: Path) -> list[Any]:
        """Messages per second over SMTP with connection reuse vs one connection each."""
        return rows(result_type, scale)


if __name__ == "__main__":  # python bench/mail_smtp.py [--scale S] [--json]
    from bench import run

    register(run.benchmark, run.Result)
    sys.exit(run.main(["--only", "mail.smtp", *sys.argv[1:]]))
