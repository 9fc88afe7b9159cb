"""Inbound mail: store raw first, then turn a reply into a conversation record.

Whatever arrives is stored unchanged with its SHA-256 before anything parses it, so a parser
bug can never lose a manager's words. Then the ``ingest`` task decides, in this order:

* **duplicate**: a Message-ID the organization already received (other bytes, e.g. re-sent
  by a relay; identical bytes are already stored once by their hash). Nothing else happens.
* **bounced**: a delivery failure report. The failed recipient (``Original-Recipient`` /
  ``Final-Recipient`` of the report, else the returned message's To) gets
  ``people.mail_failing_since`` and ``mail_failing_reason``, and their HR partner one
  ``address_failing`` email a day. Nothing clears the flag yet: a successful delivery is not
  observable with the current mail adapters, and a people import leaves it as it is.
* **calendar answers**: a text/calendar METHOD:REPLY for one of our series (an attendee
  accepting or declining an iMIP invite) is **recorded** by
  :func:`automation.services.imip.apply_replies`, or **quarantined** with the reason
  (unknown UID, sender not the ATTENDEE, not a participant, invalid REPLY).
* **auto_reply**: an out-of-office, Exchange automatic reply or bulk mail. Linked to the
  check-in it answers when its token or threading resolves, but it documents nothing and the
  escalation ladder runs on.
* **recorded**: the reply's token (else its In-Reply-To/References) names a check-in or PIP
  review and the sender is its manager or employee, or a delegate of the manager
  (``config/delegates.toml``; check-ins only): the record's author is the delegate and the
  audit log says on whose behalf.
* **quarantined**: anything else (no or a forged token, a stranger), with the reason.

Every state but ``recorded`` keeps its reason in ``quarantine_reason``. An operator can
:func:`release` a quarantined message or auto-reply (``automation inbox quarantine release``),
optionally attributing it to a person on record; the raw bytes never change.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser, HeaderParser

from sqlalchemy import exc as sa_exc
from sqlalchemy import func, insert, or_, select
from sqlalchemy.orm import Session, make_transient_to_detached

from automation import audit
from automation.db import dialect_insert, transaction
from automation.domain.cadence import zone
from automation.domain.commands import parse_warnings, parse_when
from automation.domain.mime import parse_message
from automation.domain.tokens import ForgedToken, ReplyToken, find_token
from automation.errors import ProviderError, QuotaExhausted
from automation.models import (
    Acknowledgement,
    ActionItem,
    CheckinSeries,
    ConversationRecord,
    InboundMessage,
    InboundState,
    MailboxState,
    Occurrence,
    OccurrenceState,
    Organization,
    OutboundMessage,
    Person,
    Pip,
    PipReview,
    Task,
)
from automation.replies import Extraction, ParsedEmail, decode_message, extract
from automation.runtime import Runtime
from automation.services import imip, pips
from automation.services.escalation import load_subject
from automation.services.messages import (
    agenda_update_key,
    load_checkin,
    person_ctx,
    queue_email,
    reply_to_for,
    when,
)
from automation.services.planning import move_occurrence, next_open_occurrence, series_changed
from automation.services.tasks import Deferred, create_task, create_tasks, handles

# Our emails a reply may answer in their thread (used when the reply token is missing).
PROMPT_KINDS = ("followup", "pip_review", "remind", "confirmation")

log = logging.getLogger("automation.inbound")


@dataclass(frozen=True)
class Stored:
    inbound_id: int
    task_id: int
    duplicate: bool


def organization_id(session: Session, slug: str) -> int:
    org_id = session.scalar(select(Organization.id).where(Organization.slug == slug))
    if org_id is None:
        raise LookupError(
            f"organization {slug!r} does not exist: run `automation people import` "
            "or `automation run` once to create it"
        )
    return org_id


def store_inbound(rt: Runtime, raw: bytes, source: str) -> Stored:
    """Store one raw message and schedule its processing. The same bytes are stored once."""
    return store_many(rt, [raw], source)[0]


def store_many(rt: Runtime, raws: list[bytes], source: str) -> list[Stored]:
    """Store raw messages (a poll page) and schedule their processing, in one transaction:
    one multi-row INSERT of the messages and one of their ingest tasks, whatever the page's
    size. Bytes stored before (by an earlier poll, another path, or a concurrent worker: the
    (organization, sha256) key settles races) are not stored again and count as duplicates;
    their ingest task is made sure of all the same, so a crash between the two is harmless."""
    if not raws:
        return []
    now = rt.now()
    digests = [hashlib.sha256(raw).hexdigest() for raw in raws]
    with transaction(rt.factory) as session:
        default = _organization_id(rt, session)
        owners = _owners(rt, session, raws, default)
        rows = {}
        for raw, digest, owner in zip(raws, digests, owners, strict=True):
            rows.setdefault(
                digest,
                {
                    "organization_id": owner,
                    "raw": raw,
                    "sha256": digest,
                    "size": len(raw),
                    "source": source,
                    "state": InboundState.RECEIVED,
                    "received_at": now,
                },
            )
        inserted = dict(
            session.execute(
                dialect_insert(session, InboundMessage)
                .values(list(rows.values()))
                .on_conflict_do_nothing(index_elements=["organization_id", "sha256"])
                .returning(InboundMessage.sha256, InboundMessage.id)
            ).all()
        )
        known = set(inserted)
        ids = dict(inserted)
        by_owner: dict[int, list[str]] = {}
        for digest, row in rows.items():
            by_owner.setdefault(row["organization_id"], []).append(digest)
        tasks: dict[str, int] = {}
        for owner, owned in by_owner.items():
            missing = [d for d in owned if d not in known]
            if missing:
                ids.update(
                    session.execute(
                        select(InboundMessage.sha256, InboundMessage.id).where(
                            InboundMessage.organization_id == owner,
                            InboundMessage.sha256.in_(missing),
                        )
                    ).all()
                )
            tasks.update(
                create_tasks(
                    session,
                    owner,
                    "ingest",
                    [(f"ingest:{ids[d]}", ids[d]) for d in owned],
                    now,
                    now,
                )  # fmt: skip
            )
    stored, seen = [], set()
    for digest in digests:
        message_id = ids[digest]
        duplicate = digest not in known or digest in seen
        seen.add(digest)
        stored.append(Stored(message_id, tasks[f"ingest:{message_id}"], duplicate))
    for s in stored:
        if not s.duplicate:
            rt.enqueue(s.task_id)
    return stored


MAX_HEADER_BYTES = 64 * 1024  # a message's header is read for its owner, never more
# Where a reply address can stand: the recipients, and what the MTA says it delivered to.
_RECIPIENT_HEADERS = ("To", "Cc", "Delivered-To", "X-Original-To")


def _owners(rt: Runtime, session: Session, raws: list[bytes], default: int) -> list[int]:
    """Whose each message is. A deployment serving several organizations has one inbound
    path (the webhook, the configured inbox); a reply names its organization in its signed
    reply address, so it is stored as that organization's message: its HR reads it and its
    check-in is documented. Anything else (no token, a forged one) is the deployment's own,
    and its ingest says why. A runtime working for one organization (its own inbox) keeps
    everything as its own: another organization's token is then quarantined by the ingest."""
    if rt.organization_id is not None:
        return [default] * len(raws)
    organizations = _organizations(rt, session)
    if len(organizations) < 2:
        return [default] * len(raws)
    key = rt.settings.signing_key()
    parser = BytesHeaderParser(policy=email.policy.compat32)
    owners = []
    for raw in raws:
        owner = default
        try:
            headers = parser.parsebytes(raw[:MAX_HEADER_BYTES])
            addresses = [
                str(value) for name in _RECIPIENT_HEADERS for value in headers.get_all(name, [])
            ]
            token = find_token(key, addresses)
        except (ForgedToken, ValueError, TypeError):
            token = None  # the ingest quarantines it with the precise reason
        if token is not None and token.organization_id not in organizations:
            organizations = _organizations(rt, session, fresh=True)  # one created since
        if token is not None and token.organization_id in organizations:
            owner = token.organization_id
        owners.append(owner)
    return owners


def _organizations(rt: Runtime, session: Session, fresh: bool = False) -> set[int]:
    """The organizations' ids, read again at most once a minute (or when asked): a
    single-organization deployment pays for no header parsing, and a new one is seen."""
    cached = rt.cache.get("organization_ids")
    if fresh or cached is None or time.monotonic() - cached[0] > 60:
        cached = rt.cache["organization_ids"] = (
            time.monotonic(),
            set(session.scalars(select(Organization.id))),
        )
    return cached[1]  # type: ignore[no-any-return]


def _organization_id(rt: Runtime, session: Session) -> int:
    """The organization mail is stored for: the runtime's own when it works for one
    (Runtime.tenant), else the configured one, looked up once per runtime."""
    if rt.organization_id is not None:
        return rt.organization_id
    slug = rt.settings.organization
    cached = rt.cache.get(("organization_id", slug))
    if cached is None:
        cached = rt.cache[("organization_id", slug)] = organization_id(session, slug)
    return cached


def poll_inbox(rt: Runtime, limit: int = 100, pages: int = 10) -> int:
    """Move new messages from the inbox into the database.

    Each message is stored (raw, first) before its page is acknowledged at the source, and
    the cursor is saved only after that: a crash anywhere means the page is read again, and
    storing the same bytes twice is a no-op. So nothing is lost and nothing doubles.

    One poller at a time per inbox, across processes and machines (the tick on each machine,
    a pushed ``mail_poll`` task): the others return 0 at once instead of reading the same page.
    """
    from automation.db import exclusive

    with exclusive(rt.engine, inbox_lock_name(rt)) as mine:
        return _poll(rt, limit, pages) if mine else 0


def inbox_lock_name(rt: Runtime) -> str:
    """The inbox lock's name. An advisory lock is database-wide, so the name carries the
    database URL (with its schema) and the data directory: two deployments sharing one
    PostgreSQL server in different schemas never wait for each other. It carries the
    organization too: a client's own inbox, polled by the tick with the client's runtime
    (:func:`automation.services.loop.take_in`), has a lock of its own, so one slow mailbox
    never makes the others' polls skip."""
    return (
        f"poll_inbox:{rt.settings.database}:{rt.settings.data_dir}:"
        f"{rt.settings.organization}:{rt.inbox.name}"
    )


def _poll(rt: Runtime, limit: int, pages: int) -> int:
    count = 0
    for _ in range(pages):
        state = _mailbox_state(rt)
        page = rt.inbox.fetch(state.cursor if state else None, limit)
        store_many(rt, [raw for _key, raw in page.messages], rt.inbox.name)
        if page.messages:
            rt.inbox.ack([key for key, _ in page.messages])
        count += len(page.messages)
        if state is not None:
            with transaction(rt.factory) as session:
                row = session.get(MailboxState, state.id)
                assert row is not None
                row.cursor, row.polled_at, row.updated_at = page.cursor, rt.now(), rt.now()
                if page.full_resync or row.full_synced_at is None:
                    row.full_synced_at = rt.now()
                row.error = None
        if not page.more:
            break
    return count


@handles("mail_poll")
def run_mail_poll(rt: Runtime, session: Session, task: Task) -> str:
    """A push notice asked for the inbox to be read now (the tick reads it anyway)."""
    from automation.runtime import NoInbox

    if isinstance(rt.inbox, NoInbox):
        # A client organization without an inbox of its own: the configured inbox is the
        # deployment's, and its mail must not be taken in as this organization's.
        return "no inbox of this organization"
    return f"{poll_inbox(rt)} message(s) taken in"


def _mailbox_state(rt: Runtime) -> MailboxState | None:
    """The cursor row of the configured inbox (none for a Maildir, whose new/ is the queue)."""
    if rt.inbox.name == "maildir":
        return None
    mailbox = getattr(rt.inbox, "mailbox", rt.inbox.name)
    with transaction(rt.factory) as session:
        org = _organization_id(rt, session)
        state = session.scalar(
            select(MailboxState).where(
                MailboxState.organization_id == org,
                MailboxState.provider == rt.inbox.name,
                MailboxState.mailbox == mailbox,
            )
        )
        if state is None:
            state = MailboxState(
                organization_id=org, provider=rt.inbox.name, mailbox=mailbox, updated_at=rt.now()
            )
            session.add(state)
            session.flush()
        session.expunge(state)
        return state


def _not_recorded(
    session: Session,
    rt: Runtime,
    message: InboundMessage,
    state: InboundState,
    reason: str,
    data: dict[str, object] | None = None,
) -> str:
    """Keep the message in ``state`` with its reason, and say so in the audit log."""
    message.state = state
    message.quarantine_reason = reason
    message.processed_at = rt.now()
    audit.record(
        session,
        message.organization_id,
        actor="ingest",
        action=f"inbound.{state}",
        subject_kind="inbound_message",
        subject_id=message.id,
        at=rt.now(),
        data={"reason": reason, "sha256": message.sha256, **(data or {})},
    )
    return f"{state}: {reason}"


def _quarantine(session: Session, rt: Runtime, message: InboundMessage, reason: str) -> str:
    return _not_recorded(session, rt, message, InboundState.QUARANTINED, reason)


def _resolve(
    rt: Runtime, session: Session, message: InboundMessage, parsed: ParsedEmail
) -> ReplyToken | str:
    """The check-in a reply belongs to, or the reason it belongs to none."""
    try:
        token = find_token(rt.settings.signing_key(), list(parsed.to))
    except ForgedToken:
        return "forged reply token: the reply address's signature does not match"
    if token is None and parsed.in_reply_to:
        # Some clients reply to From instead of Reply-To: fall back to threading headers.
        token = _token_of_prompt(session, message.organization_id, parsed.in_reply_to, PROMPT_KINDS)
    if token is None:
        return "no check-in reference: not a reply to a check-in prompt"
    if token.organization_id != message.organization_id:
        return "reply token belongs to another organization"
    return token


def _token_of_prompt(
    session: Session, organization_id: int, message_ids: Sequence[str], kinds: Sequence[str] = ()
) -> ReplyToken | None:
    """The check-in or PIP review one of our emails (by Message-ID) was about."""
    ids = list(message_ids)
    query = select(OutboundMessage).where(
        OutboundMessage.organization_id == organization_id,
        # Ours, or the one the provider sent it under (Gmail and Graph may rewrite it).
        or_(OutboundMessage.message_id.in_(ids), OutboundMessage.sent_message_id.in_(ids)),
    )
    if kinds:
        query = query.where(OutboundMessage.kind.in_(list(kinds)))
    for prompt in session.scalars(query.order_by(OutboundMessage.id)):
        if prompt.occurrence_id:
            return ReplyToken(organization_id, "occurrence", prompt.occurrence_id)
        if prompt.pip_review_id:
            return ReplyToken(organization_id, "pip_review", prompt.pip_review_id)
    return None


def _link(message: InboundMessage, token: ReplyToken | None) -> None:
    if token is None:
        return
    if token.kind in ("occurrence", "agenda"):
        message.occurrence_id = token.subject_id
    elif token.kind == "pip_review":
        message.pip_review_id = token.subject_id


# --- machines: auto-replies and delivery failure reports -----------------------------------


def _header_message(raw: bytes) -> Message | None:
    # The bounded parser of the inbound path (policy.default is quadratic on long headers);
    # None when unparseable: stored raw anyway, the caller falls back to generic wording.
    return parse_message(raw)


def _header(msg: Message, name: str) -> str:
    try:
        return " ".join(str(msg.get(name, "") or "").split())
    except Exception:  # a malformed header must not stop the classification
        return ""


def automatic_reason(raw: bytes, subject: str) -> str:
    """Why a message was taken for an automatic reply, in words an operator can check."""
    msg = _header_message(raw)
    signals = []
    if msg is not None:
        for name in (
            "Auto-Submitted",
            "Precedence",
            "X-Autoreply",
            "X-Autorespond",
            "X-Autoresponder",
        ):
            value = _header(msg, name)
            if value and value.lower() != "no":
                signals.append(f"{name}: {value}")
        if msg.get("X-Auto-Response-Suppress") is not None:
            signals.append("X-Auto-Response-Suppress (Exchange)")
    if subject and (not signals or signals == ["X-Auto-Response-Suppress (Exchange)"]):
        signals.append(f"subject {subject[:80]!r}")
    shown = "; ".join(signals) or "automatic-message markers"
    return f"automatic reply ({shown}): not a person's answer, documents nothing"


@dataclass(frozen=True)
class DeliveryFailure:
    """One recipient a delivery status report says could not be reached."""

    addresses: tuple[str, ...]  # Original-Recipient then Final-Recipient (or the fallback)
    reason: str


@dataclass(frozen=True)
class DeliveryReport:
    """What a bounce says: its report type, the failed recipients, the bounced message."""

    report_type: str  # "delivery-status", "disposition-notification", "" (no report part)
    failures: tuple[DeliveryFailure, ...]
    original_message_id: str | None
    delayed: tuple[str, ...] = ()  # recipients only delayed, not failed


_MSG_ID = re.compile(r"<[^<>\s]+>")


def _dsn_address(value: object) -> str | None:
    """``rfc822; user@example.com`` (RFC 3464 address-type; address) -> the address."""
    text = " ".join(str(value or "").split())
    if ";" in text:
        text = text.split(";", 1)[1]
    address = text.strip().strip("<>").strip().lower()
    return address if "@" in address and " " not in address else None


def _addresses(values: list[str]) -> list[str]:
    found = []
    for _, addr in email.utils.getaddresses(values):
        addr = addr.strip().lower()
        if "@" in addr and addr not in found:
            found.append(addr)
    return found


def delivery_report(raw: bytes) -> DeliveryReport:
    """Read a bounce with the email package; pure, never raises.

    The failed recipients come from the ``message/delivery-status`` part (RFC 3464): each
    per-recipient block whose ``Action`` is ``failed`` (or missing) gives its
    ``Original-Recipient`` and ``Final-Recipient``, and ``Status`` and ``Diagnostic-Code`` make
    the reason. Without such a part: Exim's ``X-Failed-Recipients``, then the To of the
    returned original message (``message/rfc822`` or ``text/rfc822-headers``).
    """
    msg = _header_message(raw)
    if msg is None:
        return DeliveryReport("", (), None)
    try:
        return _delivery_report(msg)
    except Exception:  # a damaged report: nothing can be flagged from it
        return DeliveryReport("", (), None)


def _delivery_report(msg: Message) -> DeliveryReport:
    report_type = ""
    if msg.get_content_type() == "multipart/report":
        report_type = str(msg.get_param("report-type", "") or "").lower() or "delivery-status"
    failures: list[DeliveryFailure] = []
    delayed: list[str] = []
    original_to: list[str] = []
    original_id: str | None = None
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        ctype = part.get_content_type()
        payload = part.get_payload()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            blocks = payload if isinstance(payload, list) else []
            if not blocks and isinstance(payload, str):  # some parsers leave it as text
                blocks = [HeaderParser().parsestr(b) for b in re.split(r"\n\s*\n", payload)]
            for block in blocks:
                candidates = [
                    a
                    for a in (
                        _dsn_address(block.get("Original-Recipient")),
                        _dsn_address(block.get("Final-Recipient")),
                    )
                    if a
                ]
                if not candidates:
                    continue  # the per-message block
                action = _header(block, "Action").lower()
                if action == "delayed":
                    delayed.append(candidates[0])
                    continue
                if action and action != "failed":
                    continue  # delivered, relayed, expanded: not a failure
                status = _header(block, "Status")
                diagnostic = _header(block, "Diagnostic-Code")
                reason = " ".join(x for x in (status, diagnostic) if x) or "delivery failed"
                failures.append(DeliveryFailure(tuple(dict.fromkeys(candidates)), reason[:500]))
        elif ctype in ("message/rfc822", "message/global", "text/rfc822-headers"):
            if ctype == "text/rfc822-headers":
                text = payload if isinstance(payload, str) else ""
                original: Message | None = HeaderParser().parsestr(text)
            else:
                original = payload[0] if isinstance(payload, list) and payload else None
            if original is not None and original_id is None:
                ids = _MSG_ID.findall(_header(original, "Message-ID"))
                original_id = ids[0] if ids else None
                headers = (original.get_all("To") or []) + (original.get_all("Cc") or [])
                original_to = _addresses([str(v) for v in headers])
        elif isinstance(payload, list) and depth < 16:
            stack += [(p, depth + 1) for p in reversed(payload) if isinstance(p, Message)]
    if report_type not in ("", "delivery-status"):
        return DeliveryReport(report_type, (), original_id)  # a read receipt, not a failure
    if not failures and not delayed:
        subject = _header(msg, "Subject") or "delivery failed"
        exim = _addresses([_header(msg, "X-Failed-Recipients")])
        for address in exim or original_to:
            failures.append(DeliveryFailure((address,), subject[:500]))
    return DeliveryReport(report_type, tuple(failures), original_id, tuple(delayed))


_STATUS = re.compile(r"^\s*([245])\.\d{1,3}\.\d{1,3}\b")


def _soft(reason: str) -> bool:
    """A 4.x.x status (RFC 3463: persistent transient failure); 5.x.x or none is hard."""
    match = _STATUS.match(reason)
    return bool(match) and match.group(1) == "4"


def _bounce(rt: Runtime, session: Session, message: InboundMessage, parsed: ParsedEmail) -> str:
    """Flag the failing recipients' addresses and tell each one's HR partner, once a day."""
    report = delivery_report(message.raw)
    if report.report_type not in ("", "delivery-status"):
        return _not_recorded(
            session,
            rt,
            message,
            InboundState.AUTO_REPLY,
            f"automatic report ({report.report_type}, e.g. a read receipt): not a person's "
            "answer, documents nothing",
        )
    if report.original_message_id:
        bounced = [report.original_message_id]
        _link(message, _token_of_prompt(session, message.organization_id, bounced))
    now = rt.now()
    sender = email.utils.parseaddr(rt.settings.mail_from)[1].lower()
    reply_domain = rt.settings.reply_domain.lower()
    flagged, unknown = [], []
    for failure in report.failures:
        if any(a == sender or a.rpartition("@")[2] == reply_domain for a in failure.addresses):
            continue  # one of our own addresses (a bounce of a bounce): nobody to flag
        person = session.scalar(
            select(Person).where(
                Person.organization_id == message.organization_id,
                Person.email.in_(list(failure.addresses)),
            )
        )
        if person is None:
            unknown.append(failure.addresses[0])
            continue
        if _soft(failure.reason):
            # 4.x.x: the mailbox may be full or the server busy; the MTA retries. Only a
            # run of them flags the address.
            person.mail_soft_bounces = (person.mail_soft_bounces or 0) + 1
            if person.mail_soft_bounces < rt.settings.mail_soft_bounce_limit:
                flagged.append(
                    f"{person.email} soft bounce {person.mail_soft_bounces} of "
                    f"{rt.settings.mail_soft_bounce_limit} ({failure.reason})"
                )
                continue
        flagged.append(f"{person.email} ({failure.reason})")
        if person.mail_failing_since is None:
            person.mail_failing_since = now
        person.mail_failing_reason = failure.reason
        audit.record(
            session,
            message.organization_id,
            actor="ingest",
            action="person.mail_failing",
            subject_kind="person",
            subject_id=person.id,
            at=now,
            data={
                "email": person.email,
                "reason": failure.reason,
                "inbound_message_id": message.id,
                "bounced_message_id": report.original_message_id,
            },
        )
        hr = session.get(Person, person.hr_partner_id) if person.hr_partner_id else None
        if hr is None:
            continue
        queue_email(
            rt,
            session,
            organization_id=message.organization_id,
            key=f"bounce:person:{person.id}:{now.date().isoformat()}",
            kind="address_failing",
            template="address_failing",
            to=[hr],
            context={"person": person_ctx(person), "reason": failure.reason},
        )
    parts = []
    if flagged:
        parts.append("address failing for " + ", ".join(flagged))
    if unknown:
        parts.append("failed recipient not on record: " + ", ".join(unknown))
    if report.delayed and not report.failures:
        parts.append("delivery only delayed for " + ", ".join(report.delayed) + "; nothing flagged")
    if not parts:
        parts.append("delivery failure report naming no recipient; nothing flagged")
    return _not_recorded(
        session,
        rt,
        message,
        InboundState.BOUNCED,
        "; ".join(parts),
        {"bounced_message_id": report.original_message_id},
    )


# --- the ingest task -------------------------------------------------------------------------


def _first_with_message_id(session: Session, message: InboundMessage) -> int | None:
    """The id of an earlier message of the organization with the same Message-ID."""
    if not message.message_id:
        return None
    return session.scalar(
        select(InboundMessage.id)
        .where(
            InboundMessage.organization_id == message.organization_id,
            InboundMessage.message_id == message.message_id,
            InboundMessage.id < message.id,
        )
        .order_by(InboundMessage.id)
        .limit(1)
    )


@handles("ingest")
def ingest(rt: Runtime, session: Session, task: Task) -> str:
    """Process one stored message (:func:`_ingest`) under a SAVEPOINT: whatever a message
    makes fail (a parser bug, data the database refuses) quarantines that message with
    "could not be processed: <error type>" instead of retrying it into the failed jobs. The
    database itself failing (connection, deadlock, a concurrent writer) still raises: the
    task is retried."""
    pending = len(session.info.get("new_tasks", ()))
    try:
        with session.begin_nested():
            return _ingest(rt, session, task)
    except Exception as exc:
        if _retried(exc):
            raise
        error = _error_name(exc)
        log.warning("inbound message %s could not be processed: %s", task.subject_id, error)
        del session.info.get("new_tasks", [])[pending:]  # rolled back with the savepoint
        message = session.get(InboundMessage, task.subject_id)
        if message is None or message.state != InboundState.RECEIVED:
            raise
        return _quarantine(session, rt, message, f"could not be processed: {error}")


def _retried(exc: BaseException) -> bool:
    """Whether ``exc`` is worth a retry of the task rather than the message's quarantine."""
    if isinstance(exc, Deferred | QuotaExhausted | ProviderError | MemoryError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        sqlstate = str(getattr(exc.orig, "sqlstate", "") or "")
        # 22: data exception (a NUL, an invalid byte sequence); 54: a program limit (an index
        # row too large): the message's data is the problem, and will be on every retry.
        # Anything else: the connection, a deadlock or serialization failure, a lock timeout.
        return not (isinstance(exc, sa_exc.DataError) or sqlstate[:2] in ("22", "54"))
    # The session's own state or a pool timeout: never the message's fault.
    return isinstance(
        exc, sa_exc.InvalidRequestError | sa_exc.DisconnectionError | sa_exc.TimeoutError
    )


def _error_name(exc: BaseException) -> str:
    """The exception's type, not its text (which may quote the message): a value that did
    not bind (``StatementError``) is named by its own error, e.g. ``UnicodeEncodeError``."""
    orig = getattr(exc, "orig", None)
    if type(exc) is sa_exc.StatementError and isinstance(orig, BaseException):
        return type(orig).__name__
    return type(exc).__name__


def _ingest(rt: Runtime, session: Session, task: Task) -> str:
    message = session.get(InboundMessage, task.subject_id)
    if message is None or message.organization_id != task.organization_id:
        return "no-message"
    if message.state != InboundState.RECEIVED:
        return f"already-{message.state}"
    parsed = decode_message(message.raw)
    message.message_id = (parsed.message_id or "")[:998] or None
    message.from_address = (parsed.from_address or "")[:320] or None
    message.subject = parsed.subject
    with session.no_autoflush:  # these columns are written once, with the outcome
        first = _first_with_message_id(session, message)
    if first is not None:
        # A relay or client sent the same message again with other bytes (headers added):
        # the first copy is the one that counts.
        return _not_recorded(
            session,
            rt,
            message,
            InboundState.DUPLICATE,
            f"duplicate of inbound message {first}: Message-ID {message.message_id} "
            "was already received",
            {"first_id": first},
        )
    if parsed.over_limit:
        return _quarantine(
            session, rt, message, f"over the parsing limits ({parsed.over_limit}): kept raw, unread"
        )
    # An operator's release vouches that this is a person's message, whatever it looks like.
    released = message.released_at is not None
    if parsed.bounce and not released:
        return _bounce(rt, session, message, parsed)
    # A calendar answer (iMIP METHOD:REPLY) to one of our invites carries no reply token.
    calendar_reply = imip.find_reply(message.raw)
    if calendar_reply is not None:
        return _calendar_reply(rt, session, message, parsed, calendar_reply)
    token = _resolve(rt, session, message, parsed)
    if parsed.auto_reply and not released:
        # Kept as what it is, on the check-in it answers, and it changes nothing there: the
        # check-in stays undocumented and its ladder runs on.
        if isinstance(token, ReplyToken) and load_subject(
            session, message.organization_id, token.kind, token.subject_id
        ):
            _link(message, token)
        return _not_recorded(
            session,
            rt,
            message,
            InboundState.AUTO_REPLY,
            automatic_reason(message.raw, parsed.subject),
        )
    sender = message.attributed_to or parsed.from_address
    if sender is None:
        return _quarantine(session, rt, message, "no usable From address")
    if isinstance(token, str):
        return _quarantine(session, rt, message, token)
    if token.kind == "acknowledgement":
        return _acknowledge(rt, session, message, parsed, token, sender)
    if token.kind == "agenda":
        return _agenda_reply(rt, session, message, parsed, token, sender)
    # The message's columns set above are written with its outcome, in one UPDATE.
    with session.no_autoflush:
        subject = load_subject(session, message.organization_id, token.kind, token.subject_id)
    if subject is None:
        return _quarantine(session, rt, message, f"the {token.kind} this reply names is gone")
    participants = {
        subject.manager.email.lower(): subject.manager,
        subject.employee.email.lower(): subject.employee,
    }
    if subject.documenter is not None:
        # A PIP review's HR partner reviewer, or whoever a check-in was reassigned to in the
        # console (escalation.reassign); the manager may still add to the file.
        participants[subject.documenter.email.lower()] = subject.documenter
    author = participants.get(sender)
    on_behalf_of: Person | None = None
    if author is None and sender in rt.delegates.get(subject.manager.email.lower(), ()):
        if token.kind != "occurrence":
            return _quarantine(
                session,
                rt,
                message,
                f"sender {sender} is a delegate of {subject.manager.email}, but delegates may "
                "not document PIP reviews",
            )
        author = session.scalar(
            select(Person).where(
                Person.organization_id == message.organization_id, Person.email == sender
            )
        )
        if author is None or not author.active:
            return _quarantine(
                session,
                rt,
                message,
                f"sender {sender} is a delegate of {subject.manager.email} but is not an "
                "active person on record (fix: add them to the people import)",
            )
        on_behalf_of = subject.manager
    if author is None:
        return _quarantine(
            session,
            rt,
            message,
            f"sender {sender} is not a participant of this "
            f"{'check-in' if token.kind == 'occurrence' else 'PIP review'}",
        )
    if token.kind == "occurrence":
        with session.no_autoflush:
            ctx = load_checkin(session, message.organization_id, token.subject_id)
        assert ctx is not None
        questions = list(ctx.cadence.questions)
    else:
        # The PIP's own list (its template's documentation, for a review): the numbered
        # answers of the record are that list's items.
        review = session.get(PipReview, token.subject_id)
        pip = session.get(Pip, review.pip_id) if review else None
        assert review is not None and pip is not None
        questions = pips.review_questions(pip, review)
    # Relative dates ("by Friday") count on the sender's calendar: the Date header keeps the
    # sender's offset; without one, the author's configured zone stands in.
    sent_at = parsed.date or rt.now().astimezone(zone(author.timezone))
    extraction = extract(parsed.text, questions, sent_at, parsed.from_name)
    # Recorded: set before the record is written so that one flush writes both.
    message.state = InboundState.RECORDED
    message.quarantine_reason = None
    message.processed_at = rt.now()
    _link(message, token)
    record, documentation = _record(
        rt,
        session,
        message,
        token,
        author,
        subject.manager,
        subject.employee,
        extraction,
        on_behalf_of=on_behalf_of,
        from_address=parsed.from_address,
    )
    applied = _apply_commands(rt, session, token, extraction, author, on_behalf_of)
    applied += _warnings(rt, session, message, token, extraction, author, subject.manager)
    if token.kind == "occurrence":
        applied += _agenda_items(
            rt, session, message, token, extraction, author, subject.employee, record.id
        )
    _confirm(
        rt,
        session,
        record,
        message,
        parsed,
        author,
        subject.manager,
        subject.employee,
        questions,
        extraction,
        applied,
        token,
        on_behalf_of,
        missing=documentation.missing if documentation else [],
    )
    return (
        f"recorded v{record.version}"
        + (f" by {author.email} on behalf of {on_behalf_of.email}" if on_behalf_of else "")
        + (
            f", review not documented: {len(documentation.missing)} required item(s) missing"
            if documentation and documentation.missing
            else ""
        )
    )


def _calendar_reply(
    rt: Runtime,
    session: Session,
    message: InboundMessage,
    parsed: ParsedEmail,
    found: tuple[imip.ImipReply, ...] | str,
) -> str:
    """Apply an attendee's calendar answer; quarantine it with the reason when it must not
    count (unknown UID, sender not the ATTENDEE, not a participant, invalid REPLY)."""
    sender = message.attributed_to or parsed.from_address
    try:
        if isinstance(found, str):
            raise imip.ReplyRefused(found)
        if sender is None:
            raise imip.ReplyRefused("no usable From address")
        # A REPLY goes to the invite's ORGANIZER, which carries the series' signed token:
        # without it, a forged From could answer for someone else.
        try:
            token = find_token(rt.settings.signing_key(), list(parsed.to))
        except ForgedToken:
            raise imip.ReplyRefused(
                "forged organizer token: the calendar reply address's signature does not match"
            ) from None
        if (
            token is None
            or token.kind != "series"
            or token.organization_id != message.organization_id
        ):
            raise imip.ReplyRefused(
                "calendar reply not sent to the signed organizer address of an invite of ours"
            )
        result = imip.apply_replies(
            rt,
            session,
            found,
            sender,
            organization_id=message.organization_id,
            series_id=token.subject_id,
        )
    except imip.ReplyRefused as exc:
        return _quarantine(session, rt, message, str(exc))
    message.state = InboundState.RECORDED
    message.quarantine_reason = None
    message.processed_at = rt.now()
    message.occurrence_id = result.occurrence_id
    return f"recorded calendar reply: {result}"


# --- operator release --------------------------------------------------------------------

RELEASABLE = (InboundState.QUARANTINED, InboundState.AUTO_REPLY)


class ReleaseRefused(Exception):
    """The message cannot be released; the text says why."""


def release(
    rt: Runtime,
    inbound_id: int,
    *,
    operator: str,
    attribute_to: str | None = None,
    reason: str | None = None,
) -> int:
    """Put a kept message back to ``received`` and schedule its ingest again; the task's id.

    The raw bytes are never touched. ``attribute_to`` makes the participant check use that
    address instead of From (a manager writing from a private mailbox); it needs ``reason``.
    A released message is processed as a person's message even if it looked automatic.
    """
    if attribute_to and not (reason or "").strip():
        raise ReleaseRefused("--as needs --reason: say why this message is attributed")
    now = rt.now()
    with transaction(rt.factory) as session:
        org = _organization_id(rt, session)
        message = session.get(InboundMessage, inbound_id)
        if message is None or message.organization_id != org:
            raise ReleaseRefused(f"no inbound message {inbound_id} in this organization")
        if message.state not in RELEASABLE:
            raise ReleaseRefused(
                f"inbound message {inbound_id} is {message.state}; only "
                f"{' or '.join(RELEASABLE)} messages can be released"
            )
        person = None
        if attribute_to:
            attribute_to = attribute_to.strip().lower()
            person = session.scalar(
                select(Person).where(Person.organization_id == org, Person.email == attribute_to)
            )
            if person is None:
                raise ReleaseRefused(f"nobody with the address {attribute_to} is on record")
        entry = audit.record_now(
            session,
            org,
            actor=operator,
            action="inbound.released",
            subject_kind="inbound_message",
            subject_id=message.id,
            at=now,
            data={
                "previous_state": message.state,
                "previous_reason": message.quarantine_reason,
                "from": message.from_address,
                "attributed_to": attribute_to,
                "reason": (reason or "").strip() or None,
                "sha256": message.sha256,
            },
        )
        message.state = InboundState.RECEIVED
        message.released_at = now
        if attribute_to:
            message.attributed_to = attribute_to
        message.processed_at = None
        task = create_task(
            session, org, "ingest", f"ingest:{message.id}:release:{entry.seq}", message.id, now, now
        )
        task_id = task.id
    return task_id


def _record(
    rt: Runtime,
    session: Session,
    message: InboundMessage,
    token: ReplyToken,
    author: Person,
    manager: Person,
    employee: Person,
    extraction: Extraction,
    *,
    on_behalf_of: Person | None = None,
    from_address: str | None = None,
) -> tuple[ConversationRecord, pips.ReviewDocumentation | None]:
    """Store the record (a new version) and what it documents: a check-in is documented by
    any participant's record; a PIP milestone as :func:`pips.document_review` decides."""
    now = rt.now()
    # The next version number is computed by the INSERT itself (one round trip, not two);
    # the unique (subject, version) key stops two concurrent replies taking the same one.
    next_version = (
        select(func.coalesce(func.max(ConversationRecord.version), 0) + 1)
        .where(
            ConversationRecord.organization_id == message.organization_id,
            ConversationRecord.subject_kind == token.kind,
            ConversationRecord.subject_id == token.subject_id,
        )
        .scalar_subquery()
    )
    values = {
        "organization_id": message.organization_id,
        "subject_kind": token.kind,
        "subject_id": token.subject_id,
        "source_message_id": message.id,
        "author_id": author.id,
        "body": extraction.body,
        "answers": {str(k): v for k, v in sorted(extraction.answers.items())},
        "rating": extraction.rating,
        "notes": extraction.notes,
        "commands": [{"name": c.name, "argument": c.argument} for c in extraction.commands],
        "created_at": now,
        "erased_at": None,
    }
    table = ConversationRecord.__table__
    record_id, version = session.execute(
        insert(table).values(version=next_version).returning(table.c.id, table.c.version),
        values,
    ).one()
    record = ConversationRecord(id=record_id, version=version, **values)
    make_transient_to_detached(record)
    session.add(record)
    first_names = {
        manager.name.split()[0].lower(): manager.id,
        employee.name.split()[0].lower(): employee.id,
    }
    for item in extraction.action_items:
        owner = (item.owner or "").lower()
        owner_id = {
            "manager": manager.id,
            "employee": employee.id,
            "i": author.id,
            "me": author.id,
        }.get(owner) or first_names.get(owner.split(" ")[0] if owner else "")
        session.add(
            ActionItem(
                organization_id=message.organization_id,
                record_id=record.id,
                owner_id=owner_id,
                text=item.text,
                due_on=item.due,
                done=False,
                created_at=now,
            )
        )
    documentation: pips.ReviewDocumentation | None = None
    if token.kind == "occurrence":
        occ = session.get(Occurrence, token.subject_id)
        assert occ is not None
        if occ.documented_at is None:
            occ.documented_at = now
            occ.updated_at = now
    else:
        # Documented only by its reviewer, once every required item is answered; any other
        # record (or an incomplete one) is kept all the same, and the ladder runs on.
        review = session.get(PipReview, token.subject_id)
        assert review is not None
        documentation = pips.document_review(session, review, author, now)
    audit.record(
        session,
        message.organization_id,
        actor=author.email,
        action="record.created",
        subject_kind=token.kind,
        subject_id=token.subject_id,
        at=now,
        data={
            "record_id": record.id,
            "version": version,
            "source_sha256": message.sha256,
            "action_items": len(extraction.action_items),
            "rating": extraction.rating,
            **(
                {
                    "by_reviewer": documentation.by_reviewer,
                    "documented": documentation.documented,
                    "missing": [n for n, _ in documentation.missing],
                }
                if documentation is not None
                else {}
            ),
            **({"on_behalf_of": on_behalf_of.email} if on_behalf_of else {}),
            **(
                {"attributed_by_operator": True, "from": from_address}
                if message.attributed_to
                else {}
            ),
        },
    )
    return record, documentation


def _apply_commands(
    rt: Runtime,
    session: Session,
    token: ReplyToken,
    extraction: Extraction,
    author: Person,
    on_behalf_of: Person | None = None,
) -> list[str]:
    """Carry out #skip, #cancel, #done and #reschedule; return what was done, in words."""
    if token.kind != "occurrence" or not extraction.commands:
        return [f"#{c.name} ignored (not a check-in)" for c in extraction.commands]
    ctx = load_checkin(session, author.organization_id, token.subject_id)
    assert ctx is not None
    occ, now, done = ctx.occurrence, rt.now(), []
    for command in extraction.commands:
        if command.name in ("skip", "cancel"):
            occ.state = (
                OccurrenceState.SKIPPED if command.name == "skip" else OccurrenceState.CANCELLED
            )
            occ.updated_at = now
            _series_changed(rt, session, ctx.series)
            done.append(f"marked {occ.state}")
        elif command.name == "done" and command.argument.strip():
            continue  # "#done 2" closes an agenda item (_agenda_items), not the check-in
        elif command.name == "done":
            # Any record documents the check-in; #done also closes it as held.
            if occ.state in (OccurrenceState.PLANNED, OccurrenceState.INVITED):
                occ.state = OccurrenceState.HELD
                occ.updated_at = now
            done.append("marked documented and closed: no reminders will follow")
        elif command.name == "reschedule":
            done.append(_reschedule(rt, session, ctx.series, ctx.employee, command.argument))
        audit.record(
            session,
            author.organization_id,
            actor=author.email,
            action=f"command.{command.name}",
            subject_kind="occurrence",
            subject_id=occ.id,
            at=now,
            data={
                "argument": command.argument,
                "result": done[-1],
                **({"on_behalf_of": on_behalf_of.email} if on_behalf_of else {}),
            },
        )
    return done


def _agenda_items(
    rt: Runtime,
    session: Session,
    message: InboundMessage,
    token: ReplyToken,
    extraction: Extraction,
    author: Person,
    employee: Person,
    record_id: int,
) -> list[str]:
    """What a record does to the agenda: ``#done 2`` (or "Done: the export") closes open
    action items by their number on the manager's agenda or by text, ``#goal`` lines set the
    employee's goals. Returns what was done, in words, for the confirmation."""
    from automation.domain.agenda_replies import parse_closures
    from automation.services import agendas, goals

    now = rt.now()
    closures = parse_closures(extraction.body)
    done = (
        agendas.close_items(
            session,
            message.organization_id,
            token.subject_id,
            author,
            closures,
            now,
            source_message_id=message.id,
            record_id=record_id,
        )
        if closures.numbers or closures.texts
        else []  # most records close nothing: no queries for them
    )
    done += goals.apply_goal_command(
        session, message.organization_id, author, employee, extraction.body, now, message.id
    )
    return done


def _agenda_reply(
    rt: Runtime,
    session: Session,
    message: InboundMessage,
    parsed: ParsedEmail,
    token: ReplyToken,
    sender: str,
) -> str:
    """A reply to an agenda: its ``+`` lines (or its paragraphs) become topics of the
    check-in, or of the next one once the meeting has begun. Topics added after the agenda
    went out are sent as an update in its thread (one task per reply; the update carries
    every topic added by then)."""
    from automation.domain.agenda_replies import parse_topics
    from automation.services import agendas

    ctx = load_checkin(session, message.organization_id, token.subject_id)
    if ctx is None:
        return _quarantine(session, rt, message, "the check-in this agenda reply names is gone")
    people = {ctx.manager.email.lower(): ctx.manager, ctx.employee.email.lower(): ctx.employee}
    author = people.get(sender)
    if author is None:
        return _quarantine(
            session, rt, message, f"sender {sender} is not a participant of this check-in"
        )
    sent_at = parsed.date or rt.now().astimezone(zone(author.timezone))
    text = extract(parsed.text, [], sent_at, parsed.from_name).body
    topics = parse_topics(text)
    message.state = InboundState.RECORDED
    message.quarantine_reason = None
    message.processed_at = rt.now()
    _link(message, token)
    if not topics:
        return "agenda reply: no topics"
    added = agendas.add_topics(
        session, message.organization_id, ctx.occurrence, author, topics, rt.now(), message.id
    )
    if added.late and added.topic_ids:
        create_task(
            session,
            message.organization_id,
            "agenda_update",
            agenda_update_key(added.occurrence_id, message.id),
            added.occurrence_id,
            rt.now(),
            rt.now(),
        )
    return (
        f"agenda reply: {len(added.topic_ids)} topic(s) added to occurrence "
        f"{added.occurrence_id}" + (" (update queued)" if added.late and added.topic_ids else "")
    )


def _warnings(
    rt: Runtime,
    session: Session,
    message: InboundMessage,
    token: ReplyToken,
    extraction: Extraction,
    author: Person,
    manager: Person,
) -> list[str]:
    """``#warning`` lines: a written warning when the manager themself wrote them in a reply
    to a check-in prompt; from anyone else (the employee, a delegate) they change nothing."""
    drafts = parse_warnings(extraction.body)
    if not drafts:
        return []
    if token.kind != "occurrence" or author.id != manager.id:
        audit.record(
            session,
            message.organization_id,
            actor=author.email,
            action="command.warning_ignored",
            subject_kind=token.kind,
            subject_id=token.subject_id,
            at=rt.now(),
            data={"inbound_message_id": message.id, "count": len(drafts)},
        )
        return ["#warning ignored: only the manager can issue one, from a check-in reply"]
    ctx = load_checkin(session, message.organization_id, token.subject_id)
    assert ctx is not None
    return pips.warnings_from_reply(
        rt,
        session,
        drafts,
        occurrence=ctx.occurrence,
        employee=ctx.employee,
        manager=manager,
        message=message,
    )


def _acknowledge(
    rt: Runtime,
    session: Session,
    message: InboundMessage,
    parsed: ParsedEmail,
    token: ReplyToken,
    sender: str,
) -> str:
    """A reply to an acknowledgement request: only the person asked can acknowledge."""
    ack = session.get(Acknowledgement, token.subject_id)
    if ack is None or ack.organization_id != message.organization_id:
        return _quarantine(session, rt, message, "the acknowledgement this reply names is gone")
    person = session.get(Person, ack.person_id)
    if person is None or person.email.lower() != sender.lower():
        return _quarantine(
            session,
            rt,
            message,
            f"sender {sender} is not the person asked to acknowledge this "
            f"{ack.subject_kind.replace('_', ' ')}",
        )
    comment = extract(parsed.text, (), parsed.date or rt.now(), parsed.from_name).body
    result = pips.acknowledge(rt, session, ack, message, comment)
    message.state = InboundState.RECORDED
    message.quarantine_reason = None
    message.processed_at = rt.now()
    return result


def _series_changed(rt: Runtime, session: Session, series: CheckinSeries) -> None:
    series_changed(session, series, rt.now())


def _reschedule(
    rt: Runtime, session: Session, series: CheckinSeries, employee: Person, argument: str
) -> str:
    from automation.domain.cadence import localize, zone

    now = rt.now()
    upcoming = next_open_occurrence(session, series, now)
    if upcoming is None:
        return "reschedule not applied: no upcoming meeting in this series"
    tz = zone(employee.timezone)
    start_local = upcoming.start_at.astimezone(tz)
    target = parse_when(argument, now.astimezone(tz).replace(tzinfo=None), start_local.time())
    if target is None:
        return f"reschedule not applied: could not read a date or time in {argument!r}"
    length = upcoming.end_at - upcoming.start_at
    new_start = localize(target, tz).astimezone(dt.UTC)
    move_occurrence(session, upcoming, new_start, new_start + length, now)
    _series_changed(rt, session, series)
    return f"moved the next meeting to {when(new_start, employee.timezone)}"


def _confirm(
    rt: Runtime,
    session: Session,
    record: ConversationRecord,
    message: InboundMessage,
    parsed: ParsedEmail,
    author: Person,
    manager: Person,
    employee: Person,
    questions: list[str],
    extraction: Extraction,
    applied: list[str],
    token: ReplyToken,
    on_behalf_of: Person | None = None,
    *,
    missing: Sequence[tuple[int, str]] = (),
) -> None:
    """The confirmation of a record to its author, in the thread of their reply. For a PIP
    review's reviewer whose records leave required items unanswered, it names them (one email
    per record version: the key is the record's): the review stays undocumented until a reply
    answers them."""
    occ_ctx: dict[str, object]
    if token.kind == "occurrence":
        ctx = load_checkin(session, record.organization_id, token.subject_id)
        assert ctx is not None
        occ_ctx = ctx.occurrence_ctx(author.timezone)
    else:
        review = session.get(PipReview, token.subject_id)
        assert review is not None
        occ_ctx = {
            "title": f"PIP review: {review.name}",
            "when": when(review.due_at, author.timezone),
            "duration_minutes": 0,
        }
    answers = [
        {
            "number": n,
            "question": questions[n - 1] if 0 < n <= len(questions) else "",
            "answer": text,
        }
        for n, text in sorted(extraction.answers.items())
    ]
    queue_email(
        rt,
        session,
        organization_id=record.organization_id,
        key=f"confirmation:record:{record.id}",
        kind="confirmation",
        template="confirmation",
        # A delegate's notes are confirmed to the manager too: they were written in their name.
        to=[author, on_behalf_of] if on_behalf_of else [author],
        in_reply_to=parsed.message_id,
        occurrence_id=token.subject_id if token.kind == "occurrence" else None,
        pip_review_id=token.subject_id if token.kind == "pip_review" else None,
        reply_to=reply_to_for(rt, record.organization_id, token.kind, token.subject_id),
        context={
            "manager": person_ctx(manager),
            "employee": person_ctx(employee),
            "occurrence": occ_ctx,
            "record": {
                "version": record.version,
                "answers": answers,
                "rating": record.rating,
                "action_items": [
                    {"text": a.text, "owner": a.owner, "due": a.due.isoformat() if a.due else None}
                    for a in extraction.action_items
                ],
                "commands": applied,
                "notes": record.notes,
                "missing": [{"number": n, "question": q} for n, q in missing],
            },
        },
    )
