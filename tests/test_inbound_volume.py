"""Inbound mail at volume through the production path: a mixed stream (replies, strangers,
forged tokens, auto-replies, bounces, garbage, truncated and mis-labelled MIME, reused
Message-IDs, re-deliveries) poured into the inbox. Every distinct message is stored once and
ends as a record or kept with its reason; nothing is left unprocessed. The benchmark runs
the same at 10,000 messages (bench/run.py --only mail.ingest)."""

from __future__ import annotations

import datetime as dt

from automation.services.loop import run_due
from tests.conftest import start_organization
from tests.test_loop import advance_until, occurrences
from tests.volume import outcome, prompts_and_managers, stream

COUNT = 600


def test_a_mixed_stream_of_inbound_mail_is_all_stored_and_settled(rt, clock, tmp_path):
    org = start_organization(rt, tmp_path)
    last = occurrences(rt, "kai@acme.test")[0]
    advance_until(rt, clock, last.end_at + dt.timedelta(hours=2))
    prompts, managers = prompts_and_managers(rt)
    assert prompts
    distinct = set()
    kinds = set()
    for n, (kind, raw) in enumerate(stream(prompts, managers, COUNT)):
        rt.inbox.deliver(raw, f"volume-{n:05d}")
        distinct.add(raw)
        kinds.add(kind)
    run_due(rt)
    with rt.factory() as session:
        result = outcome(session, org, len(distinct))
    assert result.stored == result.distinct  # every distinct message stored, once
    assert result.unprocessed == 0 and result.without_reason == 0
    assert set(result.states) <= {"recorded", "quarantined", "auto_reply", "bounced", "duplicate"}
    # Each kind of input reached its own outcome.
    assert {"recorded", "quarantined", "auto_reply", "bounced", "duplicate"} <= set(result.states)
    assert len(kinds) >= 10
