"""Mail through Microsoft Graph (Exchange Online): send with our own Message-ID, read the inbox.

Tokens and the HTTP session are the calendar adapter's (:class:`MsalTokens`, one MSAL app per
process; :class:`PinnedSession`); every call goes through the shared retry rules
(:func:`automation.adapters.http.send` / :class:`Retry`: 429 with Retry-After, 5xx, jittered
backoff). Every call asks ``Prefer: IdType="ImmutableId"``, so a message keeps its id when it
moves from Drafts to Sent Items or from the Inbox to Processed (learn.microsoft.com/graph/
outlook-immutable-id: "Immutable ID with sending mail").

Sending (:class:`GraphMailSender`)
    ``sendMail`` with JSON cannot carry Message-ID, In-Reply-To or Auto-Submitted (only ``X-``
    headers), so a message goes out as its own MIME, in two steps: ``POST
    /users/{mailbox}/messages`` with ``Content-Type: text/plain`` and the base64 MIME ("create
    message in MIME format") makes a draft in Drafts, then ``POST …/messages/{id}/send`` (202,
    asynchronous) submits it. Exchange keeps the MIME Message-ID as the draft's
    ``internetMessageId``, which is checked on every create: when Graph answers with another
    one, that one is returned as :attr:`SentMail.message_id` (replies will cite it), and the
    draft is tagged with a single-value extended property holding ours before it is sent, so
    the lookup below can still find it.

    Exactly once, with nothing stored outside Graph. ``already_sent`` asks ``GET
    /users/{mailbox}/messages?$filter=internetMessageId eq '<id>'`` over the whole mailbox
    (one request: it sees Drafts, Outbox while Exchange submits, and Sent Items):

    * a copy that is no longer a draft means an earlier attempt sent it: it is returned;
    * a draft of ours in Drafts means an attempt died between create and send: the lookup
      returns None and the ``send`` that follows sends *that* draft instead of creating one;
    * nothing: ``send`` creates and sends.

    Inside one ``send``, a create whose answer was lost (5xx or a timeout, so it may have
    happened) looks the draft up before posting again, and a ``send`` refused after such a
    retry (400: no longer a draft; 404) looks the message up before deciding: found sent is
    success, otherwise the task retries later rather than guessing. A draft deleted in
    Outlook before its send is created once more. A crash at any point therefore gives one
    sent message. The lookup by the extended property (when Graph replaced the Message-ID)
    costs one more request, made only until this process has seen Graph keep a Message-ID.

    A MIME over Graph's ~4 MB request limit gets 413, raised as
    :class:`PermanentProviderError` with the size. Recipients that the headers do not name
    (the envelope's only) are added as ``Bcc`` so Exchange delivers to them too.

    ``send_many``: one ``$batch`` of up to 20 lookups, one create per message (a MIME body
    cannot share a JSON batch without being base64-encoded a second time, and a batch is
    limited to ~4 MB as a whole), then one ``$batch`` of up to 20 sends, each result or error
    per message. Exchange Online accepts about 30 messages a minute per mailbox; the service's
    per-sender limit (``mail_per_minute``) defers the rest, so nothing here waits except for a
    429's Retry-After.

Reading (:class:`GraphMailInbox`)
    The cursor is the ``@odata.deltaLink`` of ``GET /users/{mailbox}/mailFolders/inbox/
    messages/delta?$select=id,receivedDateTime`` (pages of ``odata.maxpagesize`` = ``limit``;
    a page's ``@odata.nextLink`` is handed back as the cursor with ``more``). Each message that
    arrived is read raw with ``GET …/messages/{id}/$value`` (its key is the message id);
    ``@removed`` entries are ignored (a message moved to Processed shows up that way in the
    next round). A 410 or ``syncStateNotFound`` starts one fresh round (``full_resync``: it
    lists what is still in the inbox, i.e. not yet acknowledged); a second refusal raises
    instead of looping. ``ack`` moves the messages to a ``Processed`` folder under the
    mailbox root (found by displayName, created when missing), up to 20 moves per ``$batch``;
    a message already moved counts as done. A poll with no new mail is one request.

Tokens and secrets are never logged; errors carry the status and Graph's error code.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from typing import Any
from urllib.parse import quote, urlparse

import requests

from automation.adapters.graph import (
    BATCH_LIMIT,
    RESYNC_CODES,
    MsalTokens,
    PinnedSession,
    _Bearer,
    _code,
    _Counter,
    _json,
)
from automation.adapters.http import (
    Failure,
    ProviderCallFailed,
    Retry,
    chunks,
    failure_of,
    retry_from_settings,
    send,
)
from automation.errors import (
    ConfigError,
    ConfigProblem,
    PermanentProviderError,
    ProviderError,
    QuotaExhausted,
    TransientProviderError,
)
from automation.ports import InboxPage, OutgoingMail, SentMail

log = logging.getLogger("automation.graph_mail")

IMMUTABLE_IDS = 'IdType="ImmutableId"'
# Our Message-ID on a draft whose internetMessageId Graph replaced (this project's own GUID).
MESSAGE_ID_PROPERTY = "String {6d2f8a41-93c5-4b0e-a7d1-5e8c2f4b9a63} Name checkinMessageId"
LOOKUP_FIELDS = "id,internetMessageId,conversationId,isDraft,parentFolderId,createdDateTime"
REQUEST_LIMIT = 4 * 1024 * 1024  # Graph's documented ~4 MB per request (for the error text)
REFUSED_SEND = (400, 404, 409)  # answers to a send that need a look before deciding


def odata_string(value: str) -> str:
    """A string literal for an OData $filter: single quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def filter_param(expression: str) -> str:
    """``$filter=…`` percent-encoded as a whole (``+``, ``<``, ``>``, ``@``, ``=``, spaces)."""
    return "$filter=" + quote(expression, safe="")


@dataclass
class _Call:
    """One Graph call that may travel inside a ``$batch``; its outcome is kept per call."""

    method: str
    url: str  # relative to the base URL
    body: dict[str, Any] | None = None
    ok: tuple[int, ...] = ()
    tag: Any = None
    status: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    error: ProviderError | None = None
    attempts: int = 0
    ambiguous: bool = False  # an earlier attempt may have taken effect (5xx, no answer)

    @property
    def what(self) -> str:
        return f"Graph {self.method} {self.url.split('?')[0]}"


class _GraphMailbox:
    """What the sender and the inbox share: one mailbox, tokens, the session and the calls."""

    name = "graph"

    def __init__(
        self,
        base_url: str,
        tokens: Callable[[], str],
        mailbox: str,
        *,
        retry: Retry | None = None,
        session: requests.Session | None = None,
        batch_size: int = BATCH_LIMIT,
        timeout: float = 60.0,
        verify: bool | str = True,
    ):
        if not 1 <= batch_size <= BATCH_LIMIT:
            raise ValueError(f"graph batch size must be 1..{BATCH_LIMIT}, got {batch_size}")
        if "@" not in mailbox:
            raise ValueError(f"graph mailbox must be an address, got {mailbox!r}")
        self.base_url = base_url.rstrip("/")
        self.mailbox = mailbox.strip().lower()
        self.retry = retry or Retry()
        self.session = session or PinnedSession(verify, timeout)
        self.batch_size = batch_size
        self.timeout = timeout
        self._auth = _Bearer(tokens)
        self.requests = _Counter()  # every HTTP request made (token calls apart)

    @classmethod
    def _settings_kwargs(cls, settings: Any, setting: str) -> dict[str, Any]:
        missing = [
            name
            for name in ("graph_tenant_id", "graph_client_id", "graph_client_secret")
            if not getattr(settings, name)
        ]
        mailbox = settings.graph_mailbox or email.utils.parseaddr(settings.mail_from)[1]
        problems = [
            ConfigProblem(
                settings.source,
                name,
                f"missing: {setting} is graph",
                "set it from the Entra ID app registration (see README, Microsoft 365)",
            )
            for name in missing
        ]
        if "@" not in mailbox:
            problems.append(
                ConfigProblem(
                    settings.source,
                    "graph_mailbox",
                    f"no mailbox address: {setting} is graph and mail_from has no address",
                    "set graph_mailbox to the service mailbox, e.g. checkins@example.com",
                )
            )
        if problems:
            raise ConfigError(problems)
        tokens = MsalTokens(
            settings.graph_tenant_id,
            settings.graph_client_id,
            settings.graph_client_secret,
            settings.graph_authority_host,
        )
        return {
            "base_url": settings.graph_base_url,
            "tokens": tokens,
            "mailbox": mailbox,
            "retry": retry_from_settings(settings),
            "batch_size": max(1, min(settings.graph_batch_size, BATCH_LIMIT)),
        }

    # ------------------------------------------------------------------ plumbing

    @property
    def _user(self) -> str:
        return "/users/" + quote(self.mailbox, safe="@")

    def _message_url(self, message_id: str, suffix: str = "") -> str:
        return f"{self._user}/messages/{quote(message_id, safe='')}{suffix}"

    def _url(self, url: str) -> str:
        return url if url.startswith(("http://", "https://")) else self.base_url + url

    def _headers(self, prefer: str | None = None, content_type: str | None = None) -> dict:
        headers = {"Prefer": IMMUTABLE_IDS + (f", {prefer}" if prefer else "")}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _request(
        self,
        method: str,
        url: str,
        *,
        ok: Sequence[int] = (),
        body: dict[str, Any] | None = None,
        prefer: str | None = None,
        counter: _Counter | None = None,
        what: str = "",
    ) -> requests.Response:
        url = self._url(url)
        return send(
            self.session,
            self.retry,
            method,
            url,
            ok=ok,
            timeout=self.timeout,
            what=what or f"Graph {method} {urlparse(url).path}",
            auth=self._auth,
            headers=self._headers(prefer),
            json=body,
            hooks={"response": [self.requests] + ([counter] if counter else [])},
        )

    def _tracked(
        self,
        method: str,
        url: str,
        *,
        ok: Sequence[int] = (),
        data: bytes | None = None,
        content_type: str | None = None,
        before_retry: Callable[[], Any] | None = None,
        what: str,
    ) -> tuple[Any, bool]:
        """A call under the retry rules that remembers whether an attempt may have taken
        effect unanswered (5xx, a timeout). Then ``before_retry`` runs before each further
        attempt; what it returns (not None) is the result instead of posting again.
        Returns (response or that result, ambiguous)."""
        state = {"ambiguous": False, "attempts": 0}

        def call() -> Any:
            if state["attempts"] and state["ambiguous"] and before_retry is not None:
                found = before_retry()
                if found is not None:
                    return found
            state["attempts"] += 1
            try:
                response = self.session.request(
                    method,
                    self._url(url),
                    data=data,
                    headers=self._headers(content_type=content_type),
                    auth=self._auth,
                    timeout=self.timeout,
                    hooks={"response": [self.requests]},
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                state["ambiguous"] = True
                raise ProviderCallFailed(Failure(0, type(exc).__name__)) from exc
            if response.status_code < 400 or response.status_code in ok:
                return response
            if response.status_code >= 500:
                state["ambiguous"] = True
            raise ProviderCallFailed(failure_of(response), response)

        result = self.retry.run(call, what)
        return result, bool(state["ambiguous"])

    def _run(self, calls: Sequence[_Call]) -> None:
        """Run the calls, ``batch_size`` per ``$batch`` (a lone call goes directly). Each call
        keeps its own status, result or error; an inner 429/5xx goes again, with the others
        that were retried, after the longest wait they asked for."""
        pending = list(calls)
        while pending:
            later: list[_Call] = []
            waits: list[float] = []
            for group in chunks(pending, self.batch_size):
                if len(group) == 1:
                    self._run_one(group[0])
                else:
                    self._run_batch(group, later, waits)
            pending = later
            if pending:
                wait = max(waits)
                self.retry.retried(len(pending), wait, "graph")
                self.retry.sleep(wait)

    def _run_one(self, call: _Call) -> None:
        try:
            response = self._request(
                call.method, call.url, ok=call.ok, body=call.body, what=call.what
            )
        except ProviderError as exc:
            call.error = exc
            return
        call.status, call.result = response.status_code, _json(response)

    def _run_batch(self, group: Sequence[_Call], later: list[_Call], waits: list[float]) -> None:
        entries = []
        for i, call in enumerate(group):
            entry: dict[str, Any] = {
                "id": str(i),
                "method": call.method,
                "url": call.url,
                "headers": self._headers(content_type="application/json" if call.body else None),
            }
            if call.body is not None:
                entry["body"] = call.body
            entries.append(entry)
        try:
            response = self._request(
                "POST", "/$batch", body={"requests": entries}, what=f"Graph $batch of {len(group)}"
            )
        except ProviderError as exc:
            for call in group:
                call.error = exc
            return
        answers = {str(a.get("id")): a for a in _json(response).get("responses", [])}
        for i, call in enumerate(group):
            answer = answers.get(str(i), {"status": 0})
            status = int(answer.get("status") or 0)
            body = answer.get("body")
            if 0 < status < 400 or status in call.ok:
                call.status, call.result = status, body if isinstance(body, dict) else {}
                continue
            headers = {k.lower(): v for k, v in (answer.get("headers") or {}).items()}
            failure = Failure(status, _code(body), headers.get("retry-after"))
            if failure.quota:
                call.error = QuotaExhausted(f"{call.what}: quota ({failure.reason})")
            elif not failure.retryable:
                call.status = status
                call.error = PermanentProviderError(
                    f"{call.what}: HTTP {status} {failure.reason}".strip()
                )
            else:
                call.ambiguous = call.ambiguous or status == 0 or status >= 500
                call.attempts += 1
                if call.attempts >= self.retry.max_attempts:
                    call.error = TransientProviderError(
                        f"{call.what}: still failing after {call.attempts} attempts in $batch "
                        f"(HTTP {status} {failure.reason})".strip()
                    )
                else:
                    waits.append(self.retry.delay(call.attempts - 1, failure.retry_after))
                    later.append(call)


# --------------------------------------------------------------------------- sending


class GraphMailSender(_GraphMailbox):
    """MailSender on Microsoft Graph: MIME drafts sent from the service mailbox (application
    permissions Mail.Send and Mail.ReadWrite, limited to that mailbox)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Whether Graph kept the MIME Message-ID on the drafts this process created: None
        # until the first create; False once it replaced one (then drafts are tagged).
        self.keeps_message_ids: bool | None = None
        self._drafts_folder: str | None = None
        self._hints: dict[str, dict[str, Any]] = {}  # our Message-ID -> its unsent draft
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any) -> GraphMailSender:
        return cls(**cls._settings_kwargs(settings, "mail_transport"))

    # ------------------------------------------------------------------ lookups

    def _lookup_url(self, message_id: str) -> str:
        expression = f"internetMessageId eq {odata_string(message_id)}"
        return f"{self._user}/messages?{filter_param(expression)}&$select={LOOKUP_FIELDS}"

    def _marker_url(self, message_id: str) -> str:
        expression = (
            f"singleValueExtendedProperties/any(ep: ep/id eq {odata_string(MESSAGE_ID_PROPERTY)}"
            f" and ep/value eq {odata_string(message_id)})"
        )
        return f"{self._user}/messages?{filter_param(expression)}&$select={LOOKUP_FIELDS}"

    @property
    def _look_for_marker(self) -> bool:
        return self.keeps_message_ids is not True

    def _find(self, mail: OutgoingMail) -> list[dict[str, Any]]:
        """Every copy of this message in the mailbox (drafts, submitted, sent)."""
        what = f"Graph lookup of {mail.message_id}"
        items = _json(self._request("GET", self._lookup_url(mail.message_id), what=what))
        found = list(items.get("value", []))
        if not found and self._look_for_marker:
            tagged = self._request("GET", self._marker_url(mail.message_id), what=what)
            found = list(_json(tagged).get("value", []))
        return found

    def _drafts_folder_id(self) -> str:
        if self._drafts_folder is None:
            response = self._request(
                "GET", f"{self._user}/mailFolders/drafts?$select=id", what="Graph Drafts folder"
            )
            self._drafts_folder = str(_json(response).get("id", ""))
        return self._drafts_folder

    def _classify(
        self, mail: OutgoingMail, items: Sequence[dict[str, Any]]
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(a copy that went out, else an unsent draft of ours in Drafts)."""
        sent = [i for i in items if i.get("isDraft") is False]
        if sent:
            return sent[0], None
        drafts = [i for i in items if i.get("isDraft")]
        if drafts:
            folder = self._drafts_folder_id()
            drafts = sorted(
                (d for d in drafts if d.get("parentFolderId") == folder),
                key=lambda d: str(d.get("createdDateTime", "")),
            )
            if len(drafts) > 1:
                log.warning(
                    "%d drafts of %s in Drafts; sending the first", len(drafts), mail.message_id
                )
            if drafts:
                return None, drafts[0]
        return None, None

    @staticmethod
    def _sent(mail: OutgoingMail, item: dict[str, Any]) -> SentMail:
        return SentMail(
            message_id=item.get("internetMessageId") or mail.message_id,
            provider_id=item.get("id"),
            thread=item.get("conversationId"),
        )

    def already_sent(self, mail: OutgoingMail) -> SentMail | None:
        sent, draft = self._classify(mail, self._find(mail))
        with self._lock:
            if draft is not None and sent is None:
                self._hints[mail.message_id] = draft  # send() sends this one
            else:
                self._hints.pop(mail.message_id, None)
        if sent is not None:
            log.info("%s was sent by an earlier attempt", mail.message_id)
            return self._sent(mail, sent)
        return None

    # ------------------------------------------------------------------ sending

    def mime_of(self, mail: OutgoingMail) -> bytes:
        """What is uploaded: the message as it is, with ``Bcc`` added for envelope recipients
        its headers do not name (Graph takes the recipients from the MIME headers)."""
        headers = BytesHeaderParser().parsebytes(mail.raw)
        named = {
            address.lower()
            for _, address in email.utils.getaddresses(
                [str(v) for key in ("To", "Cc", "Bcc") for v in headers.get_all(key) or ()]
            )
        }
        missing = [r for r in mail.recipients if r.lower() not in named]
        if not missing:
            return mail.raw
        line_end = b"\r\n" if b"\r\n" in mail.raw[:2048] else b"\n"
        return b"Bcc: " + ", ".join(missing).encode() + line_end + mail.raw

    def _create(self, mail: OutgoingMail) -> dict[str, Any]:
        """The draft (or, found after a lost answer, the copy that already went out)."""
        mime = self.mime_of(mail)
        body = base64.b64encode(mime)

        def look_first() -> dict[str, Any] | None:
            sent, draft = self._classify(mail, self._find(mail))
            return sent or draft

        result, _ = self._tracked(
            "POST",
            f"{self._user}/messages",
            ok=(413,),
            data=body,
            content_type="text/plain",
            before_retry=look_first,
            what=f"Graph create draft of {mail.message_id}",
        )
        if isinstance(result, dict):
            return result
        if result.status_code == 413:
            raise PermanentProviderError(
                f"Graph refused {mail.message_id} as too large (HTTP 413): {len(mime)} bytes of "
                f"MIME, {len(body)} in base64; Graph takes about {REQUEST_LIMIT} bytes per request"
            )
        draft = _json(result)
        got = draft.get("internetMessageId")
        if not got:  # not in the answer: read it back
            response = self._request(
                "GET",
                self._message_url(draft["id"], "?$select=" + LOOKUP_FIELDS),
                what=f"Graph read back {mail.message_id}",
            )
            draft = {**draft, **_json(response)}
            got = draft.get("internetMessageId")
        if got and got != mail.message_id:
            if self.keeps_message_ids is not False:
                log.warning(
                    "Graph replaced the Message-ID %s with %s; drafts are tagged from now on",
                    mail.message_id,
                    got,
                )
            self.keeps_message_ids = False
            self._request(
                "PATCH",
                self._message_url(draft["id"]),
                body={
                    "singleValueExtendedProperties": [
                        {"id": MESSAGE_ID_PROPERTY, "value": mail.message_id}
                    ]
                },
                what=f"Graph tag draft of {mail.message_id}",
            )
        elif got == mail.message_id and self.keeps_message_ids is None:
            self.keeps_message_ids = True
        return draft

    def _after_refusal(
        self, mail: OutgoingMail, draft: dict[str, Any], status: int, code: str, ambiguous: bool
    ) -> SentMail | dict[str, Any] | None:
        """A send answered 400/404/409: the message may have gone out on an attempt whose
        answer was lost. Returns it sent, another draft to send, or None: create again."""
        sent, other = self._classify(mail, self._find(mail))
        if sent is not None:
            return self._sent(mail, sent)
        if ambiguous:
            raise TransientProviderError(
                f"Graph send of {mail.message_id}: HTTP {status} {code} after an unanswered "
                "attempt, and no sent copy yet; looking again later".strip()
            )
        if status == 404:
            if other is not None and other.get("id") != draft.get("id"):
                return other
            return None
        raise PermanentProviderError(f"Graph send of {mail.message_id}: HTTP {status} {code}")

    def _submit(self, mail: OutgoingMail, draft: dict[str, Any]) -> SentMail | dict | None:
        response, ambiguous = self._tracked(
            "POST",
            self._message_url(draft["id"], "/send"),
            ok=REFUSED_SEND,
            what=f"Graph send of {mail.message_id}",
        )
        if response.status_code < 300:
            return self._sent(mail, draft)
        return self._after_refusal(
            mail, draft, response.status_code, _code(_json(response)), ambiguous
        )

    def send(self, mail: OutgoingMail) -> SentMail:
        with self._lock:
            draft: dict[str, Any] | None = self._hints.pop(mail.message_id, None)
        for _ in range(3):  # a draft deleted under us is made again, a bounded number of times
            if draft is None:
                draft = self._create(mail)
                if draft.get("isDraft") is False:  # found sent after a lost create answer
                    return self._sent(mail, draft)
            outcome = self._submit(mail, draft)
            if isinstance(outcome, SentMail):
                return outcome
            draft = outcome  # another draft of ours, or None: create one
        raise TransientProviderError(f"Graph send of {mail.message_id}: the draft kept vanishing")

    def send_many(self, mails: Sequence[OutgoingMail]) -> list[SentMail | Exception]:
        results: list[SentMail | Exception | None] = [None] * len(mails)
        first: dict[str, int] = {}
        for i, mail in enumerate(mails):
            first.setdefault(mail.message_id, i)
        unique = sorted(first.values())
        # 1. Look every message up: sent already, a draft left, or nothing.
        lookups = [_Call("GET", self._lookup_url(mails[i].message_id), tag=i) for i in unique]
        self._run(lookups)
        empty = [c for c in lookups if c.error is None and not c.result.get("value")]
        if empty and self._look_for_marker:
            markers = [
                _Call("GET", self._marker_url(mails[c.tag].message_id), tag=c) for c in empty
            ]
            self._run(markers)
            for marker in markers:
                marker.tag.result, marker.tag.error = marker.result, marker.error
        drafts: dict[int, dict[str, Any]] = {}
        for call in lookups:
            i, mail = call.tag, mails[call.tag]
            try:
                if call.error is not None:
                    raise call.error
                sent, draft = self._classify(mail, call.result.get("value", []))
                if sent is not None:
                    results[i] = self._sent(mail, sent)
                    continue
                # 2. Create what has no draft yet: one request each.
                draft = draft or self._create(mail)
                if draft.get("isDraft") is False:
                    results[i] = self._sent(mail, draft)
                else:
                    drafts[i] = draft
            except ProviderError as exc:
                results[i] = exc
        # 3. Send the drafts, up to 20 per $batch.
        sends = [
            _Call("POST", self._message_url(d["id"], "/send"), ok=REFUSED_SEND, tag=i)
            for i, d in drafts.items()
        ]
        self._run(sends)
        for call in sends:
            i, mail = call.tag, mails[call.tag]
            try:
                if call.error is not None:
                    raise call.error
                if call.status < 300:
                    results[i] = self._sent(mail, drafts[i])
                    continue
                code = _code(call.result)
                outcome = self._after_refusal(mail, drafts[i], call.status, code, call.ambiguous)
                if isinstance(outcome, SentMail):
                    results[i] = outcome
                else:
                    with self._lock:
                        if outcome is not None:
                            self._hints[mail.message_id] = outcome
                    results[i] = self.send(mail)
            except ProviderError as exc:
                results[i] = exc
        out: list[SentMail | Exception] = []
        for mail in mails:
            result = results[first[mail.message_id]]
            assert result is not None
            out.append(result)
        return out


# --------------------------------------------------------------------------- reading


class GraphMailInbox(_GraphMailbox):
    """InboxReader on Microsoft Graph: the mailbox's Inbox through messages/delta."""

    def __init__(
        self,
        *args: Any,
        folder: str = "inbox",
        processed_folder: str = "Processed",
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.folder = folder
        self.processed_folder = processed_folder
        self._processed_id: str | None = None

    @classmethod
    def from_settings(cls, settings: Any) -> GraphMailInbox:
        return cls(**cls._settings_kwargs(settings, "mail_inbox"))

    def delta_url(self) -> str:
        return (
            f"{self.base_url}{self._user}/mailFolders/{quote(self.folder, safe='')}"
            "/messages/delta?$select=id,receivedDateTime"
        )

    def fetch(self, cursor: str | None, limit: int = 100) -> InboxPage:
        url = cursor or self.delta_url()
        resynced = False
        prefer = f"odata.maxpagesize={max(1, limit)}"
        what = f"Graph inbox delta of {self.mailbox}"
        while True:
            response = self._request("GET", url, ok=(400, 404, 410), prefer=prefer, what=what)
            if response.status_code >= 400:
                code = _code(_json(response))
                if response.status_code != 410 and code.lower() not in RESYNC_CODES:
                    raise PermanentProviderError(f"{what}: HTTP {response.status_code} {code}")
                if resynced:
                    raise TransientProviderError(
                        f"{what}: a fresh round was refused too (HTTP {response.status_code} "
                        f"{code})".strip()
                    )
                log.info(
                    "inbox delta state of %s refused (%s); one fresh round",
                    self.mailbox,
                    code or 410,
                )
                resynced, url = True, self.delta_url()
                continue
            page = _json(response)
            arrived: dict[str, str] = {}
            for item in page.get("value", []):
                if "@removed" in item or not item.get("id"):
                    continue  # moved out (acknowledged) or deleted: nothing to take in
                arrived.setdefault(item["id"], str(item.get("receivedDateTime") or ""))
            messages = []
            for key in sorted(arrived, key=lambda k: arrived[k]):  # oldest first
                raw = self._raw(key)
                if raw is not None:
                    messages.append((key, raw))
            next_link, delta_link = page.get("@odata.nextLink"), page.get("@odata.deltaLink")
            if next_link and not messages:
                url = next_link  # nothing to hand over from this page: read on
                continue
            if next_link:
                return InboxPage(messages, next_link, more=True, full_resync=resynced)
            if not delta_link:
                raise PermanentProviderError(f"{what}: a page with neither nextLink nor deltaLink")
            return InboxPage(messages, delta_link, more=False, full_resync=resynced)

    def _raw(self, key: str) -> bytes | None:
        """The message's MIME as Exchange holds it; None when it is gone already."""
        response = self._request(
            "GET", self._message_url(key, "/$value"), ok=(404,), what="Graph message $value"
        )
        return None if response.status_code == 404 else response.content

    def processed_folder_id(self) -> str:
        """The Processed folder under the mailbox root, created when missing."""
        if self._processed_id:
            return self._processed_id
        root = f"{self._user}/mailFolders/msgfolderroot/childFolders"
        lookup = (
            f"{root}?{filter_param(f'displayName eq {odata_string(self.processed_folder)}')}"
            "&$select=id,displayName"
        )
        what = f"Graph folder {self.processed_folder!r}"
        found = _json(self._request("GET", lookup, what=what)).get("value", [])
        if not found:
            created = self._request(
                "POST", root, body={"displayName": self.processed_folder}, ok=(409,), what=what
            )
            if created.status_code != 409:
                self._processed_id = str(_json(created)["id"])
                return self._processed_id
            found = _json(self._request("GET", lookup, what=what)).get("value", [])  # a race
            if not found:
                raise TransientProviderError(f"{what}: exists but cannot be found yet")
        self._processed_id = str(found[0]["id"])
        return self._processed_id

    def ack(self, keys: Sequence[str]) -> None:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return
        folder = self.processed_folder_id()
        moves = [self._move(k, folder) for k in keys]
        self._run(moves)
        missing = [c for c in moves if c.error is None and c.status == 404]
        if missing:
            # Gone from the inbox (taken by an earlier poll), or the folder was deleted.
            self._processed_id = None
            again = self.processed_folder_id()
            if again != folder:
                retry = [self._move(c.tag, again) for c in missing]
                self._run(retry)
                moves += retry
        errors = [c.error for c in moves if c.error is not None]
        if errors:
            raise errors[0]

    def _move(self, key: str, folder: str) -> _Call:
        return _Call(
            "POST",
            self._message_url(key, "/move"),
            body={"destinationId": folder},
            ok=(404,),
            tag=key,
        )
