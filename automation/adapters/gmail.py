"""Gmail (v1) through google-api-python-client: sending, finding an earlier send, the inbox.

Calls. One mailbox (``gmail_user``, else the ``mail_from`` address), one discovery-built
service, credentials from :func:`automation.adapters.google.credentials_from_file` (a
service account impersonating the mailbox through domain-wide delegation, or an OAuth
authorized-user file) asked for the Gmail scopes. Every HTTP request goes through the
shared :class:`~automation.adapters.http.Retry` (429, 5xx and rate-limit 403 retried with
Retry-After; 403 ``dailyLimitExceeded`` parks the task). Gets of many messages go out as
Google batch requests of ``batch_size`` (≤ 100; Gmail advises ≤ 50); a part that answers
429/5xx is sent again in a later batch after the wait ``Retry.delay`` gives.

Sending. ``users.messages.send`` with the raw MIME untouched (base64url) and the provider
thread of the message it follows. Gmail may replace our Message-ID (gauteh/lieer#198), so
the stored headers are read back (``messages.get``, metadata) and the Message-ID Gmail kept
is what :class:`~automation.ports.SentMail` reports. ``send_many`` sends one by one: each
send costs 100 quota units however it travels, so a batch saves HTTP round trips only,
while an answer lost with a batch would leave up to 50 sends in doubt at once, and
Workspace caps sending far below what sequential requests can reach anyway.

A send is in doubt when its answer is lost (connection reset, timeout, 5xx): Google may
have taken it. Before sending it again the adapter looks for it among the newest messages
of the SENT label (a label listing, which shows a send at once, where search lags by
seconds), then as below; a 429 or 403 is a refusal and is simply retried.

Finding an earlier send (``already_sent``). Gmail search cannot see arbitrary headers (an
``X-…`` header of ours would not help) and, once Gmail rewrote the Message-ID, neither can
``rfc822msgid:`` find ours. So:

1. ``rfc822msgid:<ours>`` (Gmail kept our id): a hit is checked by its Message-ID header.
2. Otherwise ``in:sent to:<first recipient> after:<our Date − 1 day>`` (spam and trash
   included), every candidate's headers read (batched) and compared with ours: Date,
   Subject, To, Cc, Reply-To, In-Reply-To, References and Content-Type. The outbox makes
   the multipart boundary from the Message-ID, so Content-Type alone tells two messages of
   ours apart; the rest guards mail built elsewhere. ``after:`` rather than
   ``newer_than:``: a send deferred by the sending limits for days is still found.

Residual risk: a copy permanently deleted from Sent (not just trashed), a copy whose
compared headers Gmail changed, or one the search index does not show yet (it lags by
seconds; a crashed worker's task comes back after its lease, minutes later) is not found,
and the message goes out a second time. The lookup errs towards a duplicate, never towards
a lost message: a false match would need all compared headers, the boundary included, to
be equal. It costs two searches and a batched read of the candidates (this recipient's
mail since the Date) on every send, because the port does not say whether an earlier
attempt happened.

Reading (``GmailInbox``). The cursor is a historyId. Without one: a full sync, the
profile's historyId taken first, then ``messages.list(labelIds=INBOX)`` (the label index,
not search, so a message that has just arrived is not missed), oldest first, raw bodies by
batched gets, skipping messages that already carry the processed label. With one:
``history.list`` (messageAdded on INBOX) from it, page by page; the new cursor is the
response's historyId, or, when ``limit`` stops the page early, the id of the last history
record taken, so the next call resumes exactly there. A 404 (or 400) on the cursor means
one full sync, reported as ``full_resync``, never a loop. ``ack`` adds the processed label
(created once) and removes INBOX with ``batchModify`` (≤ 1000 ids a call). ``watch`` and
``stop`` manage the Pub/Sub push (``users.watch``; renew daily, it lapses after 7 days).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import email.errors
import email.parser
import email.policy
import email.utils
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from email.header import decode_header, make_header
from typing import Any

import google.auth.exceptions
import google_auth_httplib2
import httplib2
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
from googleapiclient.discovery import build
from googleapiclient.errors import BatchError, HttpError
from googleapiclient.http import BatchHttpRequest, HttpRequest

from automation.adapters.google import (
    SETUP_ERRORS,
    Counters,
    credentials_from_file,
    failure_of,
)
from automation.adapters.http import (
    Failure,
    ProviderCallFailed,
    Retry,
    chunks,
    retry_from_settings,
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

log = logging.getLogger("automation.gmail")

# gmail.modify covers reading, labelling, history and watch; gmail.send is listed as well so
# that what the admin authorises reads as what the service does.
SCOPES = (
    "https://www.googleapis.com/auth/gmail.send",
    "https://www.googleapis.com/auth/gmail.modify",
)
GOOGLE_ROOT = "https://gmail.googleapis.com"
MAX_BATCH = 100  # calls per batch request (Gmail's ceiling; it advises 50)
MAX_MODIFY = 1000  # ids per batchModify
LIST_PAGE = 500  # messages.list and history.list maxResults ceiling
INBOX = "INBOX"
PROCESSED_LABEL = "Processed"
# What the fallback lookup compares (see the module docstring).
FINGERPRINT = (
    "Date",
    "Subject",
    "To",
    "Cc",
    "Reply-To",
    "In-Reply-To",
    "References",
    "Content-Type",
)
SETUP_HINT = (
    "Google refused a token for the mailbox {who} ({error}). With a service account, grant it "
    "domain-wide delegation for the scopes " + ", ".join(SCOPES) + " in the Google Workspace "
    "Admin console (Security > API controls > Domain-wide delegation, using the service "
    "account's client id), and check that {who} is a user of that domain. With an OAuth "
    "authorized-user file, sign in again with those scopes to make a new one."
)

Credentials = Any  # google.auth.credentials.Credentials
CredentialsFactory = Callable[[str], Credentials]


# --------------------------------------------------------------------------- set-up


def endpoints(api_endpoint: str) -> tuple[str | None, str]:
    """(api_endpoint for the client, batch URI) from the configured endpoint, a root
    (``http://host:port/``) or one that already ends in ``gmail/v1``. The library derives
    the batch URI from the discovery document and would ignore ``api_endpoint``."""
    if not api_endpoint:
        return None, GOOGLE_ROOT + "/batch/gmail/v1"
    root = api_endpoint.rstrip("/").removesuffix("/gmail/v1")
    return root + "/", root + "/batch/gmail/v1"


def gmail_credentials(
    path: str, token_uri: str = "", source: str = "settings", scopes: Sequence[str] = SCOPES
) -> CredentialsFactory:
    """A factory mailbox -> credentials for the Gmail scopes, from the same key file as the
    calendar (see :func:`~automation.adapters.google.credentials_from_file`)."""
    if not path:
        raise ConfigError(
            ConfigProblem(
                source,
                "google_credentials_file",
                "empty while mail_transport or mail_inbox is gmail",
                "the path of a service-account key with domain-wide delegation for "
                + ", ".join(scopes)
                + ", or an OAuth authorized-user file",
            )
        )
    factory = credentials_from_file(path, token_uri, source)

    def make(user: str) -> Credentials:
        return _rescoped(factory(user), scopes)

    return make


def _rescoped(creds: Credentials, scopes: Sequence[str]) -> Credentials:
    if isinstance(creds, service_account.Credentials):
        return creds.with_scopes(list(scopes))
    if isinstance(creds, user_credentials.Credentials):
        # credentials_from_file asks for the Calendar scope on refresh, which a Gmail consent
        # does not cover; without scopes the refresh gets what the user consented to.
        return user_credentials.Credentials(
            None,
            refresh_token=creds.refresh_token,
            token_uri=creds.token_uri,
            client_id=creds.client_id,
            client_secret=creds.client_secret,
            quota_project_id=creds.quota_project_id,
        )
    return creds


def mailbox_of(settings: Any) -> str:
    user = settings.gmail_user or email.utils.parseaddr(settings.mail_from)[1]
    if not user or "@" not in user:
        raise ConfigError(
            ConfigProblem(
                getattr(settings, "source", "settings"),
                "gmail_user",
                "empty, and mail_from has no address",
                "the Gmail (Workspace) address to send from and read",
            )
        )
    return user.lower()


def _auth_error(exc: google.auth.exceptions.RefreshError, who: str) -> Exception:
    """Token endpoint refusals: setup problems are permanent, the rest retried."""
    data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    code = str(data.get("error") or "")
    if not code:
        code = next((e for e in SETUP_ERRORS if e in str(exc.args[0] if exc.args else "")), "")
    if code in SETUP_ERRORS:
        return PermanentProviderError(SETUP_HINT.format(who=who, error=code))
    if exc.retryable:
        return ProviderCallFailed(Failure(0, "token endpoint unavailable"))
    return PermanentProviderError(f"Google token request for {who} failed ({code or 'error'})")


# --------------------------------------------------------------------------- the client


class GmailApi:
    """One mailbox's Gmail service: credentials, per-thread transport, retries, batches."""

    def __init__(
        self,
        user: str,
        credentials: CredentialsFactory,
        *,
        endpoint: str = "",
        retry: Retry | None = None,
        batch_size: int = 50,
        timeout: float = 60.0,
    ):
        self.user = user.lower()
        self._credentials = credentials
        self._api_endpoint, self.batch_uri = endpoints(endpoint)
        self.retry = retry or Retry()
        self.batch_size = max(1, min(batch_size, MAX_BATCH))
        self.timeout = timeout
        self.counters = Counters()
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._service: Any = None
        self._creds: Credentials = None
        self._resources: dict[str, Any] = {}
        self._local = threading.local()

    @classmethod
    def from_settings(cls, settings: Any) -> GmailApi:
        source = getattr(settings, "source", "settings")
        return cls(
            mailbox_of(settings),
            gmail_credentials(settings.google_credentials_file, settings.google_token_uri, source),
            endpoint=settings.gmail_api_endpoint,
            retry=retry_from_settings(settings),
            batch_size=getattr(settings, "google_batch_size", 50),
        )

    def resource(self, name: str) -> Any:
        """``users()``, ``users().messages()``, ``…history()``, ``…labels()``, made once."""
        with self._lock:
            if self._service is None:
                self._creds = self._credentials(self.user)
                options = {"api_endpoint": self._api_endpoint} if self._api_endpoint else None
                self._service = build(
                    "gmail",
                    "v1",
                    credentials=self._creds,
                    static_discovery=True,
                    cache_discovery=False,
                    client_options=options,
                )
            found = self._resources.get(name)
            if found is None:
                users = self._resources.setdefault("users", self._service.users())
                found = users if name == "users" else getattr(users, name)()
                self._resources[name] = found
            return found

    def _http(self) -> google_auth_httplib2.AuthorizedHttp:
        """This thread's authorized transport (httplib2 is not thread-safe)."""
        self.resource("users")
        http = getattr(self._local, "http", None)
        if http is None:
            http = self._local.http = google_auth_httplib2.AuthorizedHttp(
                self._creds, http=httplib2.Http(timeout=self.timeout)
            )
        return http

    def _fresh_token(self) -> None:
        """A valid access token before a call (batch parts carry the token they were
        serialized with); one refresh at a time."""
        http = self._http()
        with self._refresh_lock:
            if not self._creds.valid:
                with self._translated():
                    self._creds.refresh(google_auth_httplib2.Request(http.http))

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """Library and transport exceptions as the retry rules see them."""
        try:
            yield
        except HttpError as exc:
            raise ProviderCallFailed(
                failure_of(int(exc.resp.status), exc.content, exc.resp), exc
            ) from exc
        except google.auth.exceptions.RefreshError as exc:
            raise _auth_error(exc, self.user) from exc
        except (
            google.auth.exceptions.TransportError,
            httplib2.HttpLib2Error,
            OSError,  # connection refused or reset, timeouts
            BatchError,
        ) as exc:
            raise ProviderCallFailed(Failure(0, type(exc).__name__)) from exc

    def call(self, request: HttpRequest) -> Any:
        """One attempt of one call; failures as :class:`ProviderCallFailed`."""
        self._fresh_token()
        self.counters.add(1, 1)
        with self._translated():
            return request.execute(http=self._http())

    def execute(self, request: HttpRequest, what: str, ok: Sequence[int] = ()) -> Any:
        """One call under the retry rules; a status in ``ok`` returns None."""

        def attempt() -> Any:
            try:
                return self.call(request)
            except ProviderCallFailed as exc:
                if exc.failure.status in ok:
                    return None
                raise

        return self.retry.run(attempt, what)

    def get_many(self, ids: Sequence[str], what: str, **params: Any) -> dict[str, Any]:
        """``messages.get`` for each id (batched when more than one): id -> the message,
        or None when it no longer exists."""
        messages = self.resource("messages")
        out: dict[str, Any] = {}
        pending = list(dict.fromkeys(ids))
        attempt = 0
        while pending:
            if len(pending) == 1:
                gid = pending[0]
                request = messages.get(userId=self.user, id=gid, **params)
                out[gid] = self.execute(request, what, ok=(404,))
                return out
            answers: dict[str, Any] = {}
            for chunk in chunks(pending, self.batch_size):
                answers.update(self._batch(chunk, what, params))
            again: list[str] = []
            wait = 0.0
            for gid in pending:
                answer = answers[gid]
                if not isinstance(answer, Failure):
                    out[gid] = answer
                elif answer.status == 404:
                    out[gid] = None
                elif answer.retryable and attempt + 1 < self.retry.max_attempts:
                    again.append(gid)
                    wait = max(wait, self.retry.delay(attempt, answer.retry_after))
                elif answer.quota:
                    raise QuotaExhausted(
                        f"{what}: HTTP {answer.status} {answer.reason} for {gid}".strip()
                    )
                elif answer.retryable:
                    raise TransientProviderError(
                        f"{what}: HTTP {answer.status} {answer.reason} for {gid}".strip()
                    )
                else:
                    raise PermanentProviderError(
                        f"{what}: HTTP {answer.status} {answer.reason} for {gid}".strip()
                    )
            if again:
                log.info("Gmail: %d gets asked to wait; again in %.1f s", len(again), wait)
                self.retry.retried(1, wait, "gmail")
                self.retry.sleep(wait)
                attempt += 1
            pending = again
        return out

    def _batch(
        self, ids: Sequence[str], what: str, params: Mapping[str, Any]
    ) -> dict[str, Any | Failure]:
        outcome: dict[str, Any] = {}

        def answered(request_id: str, response: Any, exception: Exception | None) -> None:
            if exception is None:
                outcome[request_id] = response
            elif isinstance(exception, HttpError):
                outcome[request_id] = failure_of(
                    int(exception.resp.status), exception.content, exception.resp
                )
            else:
                outcome[request_id] = Failure(0, type(exception).__name__)

        messages = self.resource("messages")

        def attempt() -> None:
            self._fresh_token()
            outcome.clear()
            batch = BatchHttpRequest(callback=answered, batch_uri=self.batch_uri)
            for i, gid in enumerate(ids):
                batch.add(messages.get(userId=self.user, id=gid, **params), request_id=str(i))
            self.counters.add(1, len(ids))
            with self._translated():
                batch.execute(http=self._http())

        self.retry.run(attempt, f"{what} (batch of {len(ids)})")
        missing = Failure(0, "no answer in batch")
        return {gid: outcome.get(str(i), missing) for i, gid in enumerate(ids)}

    def list_ids(self, what: str, cap: int | None = None, **params: Any) -> list[str]:
        """``messages.list`` through every page (newest first), at most ``cap`` ids."""
        messages = self.resource("messages")
        out: list[str] = []
        page = None
        while True:
            size = LIST_PAGE if cap is None else max(1, min(LIST_PAGE, cap - len(out)))
            request = messages.list(userId=self.user, maxResults=size, pageToken=page, **params)
            body = self.execute(request, what) or {}
            out += [m["id"] for m in body.get("messages", ())]
            page = body.get("nextPageToken")
            if not page or (cap is not None and len(out) >= cap):
                return out


# --------------------------------------------------------------------------- headers


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def unb64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise PermanentProviderError(
            f"Gmail sent a raw message that is not base64url: {exc}"
        ) from exc


def _header_block(raw: bytes) -> list[tuple[str, str]]:
    cut = min((i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0), default=len(raw))
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        raw[:cut] + b"\r\n\r\n"
    )
    return [(name, str(value)) for name, value in parsed.items()]


def headers_of(message: Mapping[str, Any]) -> dict[str, str]:
    """A Gmail message resource's top-level headers (first of each name, lower-case keys)."""
    out: dict[str, str] = {}
    for item in (message.get("payload") or {}).get("headers", ()):
        out.setdefault(str(item.get("name", "")).lower(), str(item.get("value", "")))
    return out


def _ids(value: str) -> list[str]:
    return [i.lower() for i in re.findall(r"<([^<>]+)>", value)] or [value.strip().lower()]


def normalized(name: str, value: str) -> str:
    """A header value as the comparison sees it: unfolded, RFC 2047 decoded, whitespace
    collapsed; addresses, dates and message ids in a canonical form."""
    text = re.sub(r"\r?\n(?=[ \t])", "", value)
    with contextlib.suppress(ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        text = str(make_header(decode_header(text)))
    text = " ".join(text.split())
    name = name.lower()
    if name in ("to", "cc", "reply-to", "from"):
        return ",".join(sorted(a.lower() for _, a in email.utils.getaddresses([text]) if a))
    if name == "date":
        try:
            return str(int(email.utils.parsedate_to_datetime(text).timestamp()))
        except (TypeError, ValueError, IndexError):
            return text
    if name in ("in-reply-to", "references", "message-id"):
        return " ".join(_ids(text))
    if name == "content-type":
        return text.lower()
    return text


def _same_id(a: str | None, b: str | None) -> bool:
    return bool(a and b) and normalized("message-id", a or "") == normalized("message-id", b or "")


# --------------------------------------------------------------------------- sending


class GmailSender:
    """MailSender over ``users.messages.send``."""

    name = "gmail"

    def __init__(
        self,
        api: GmailApi,
        *,
        lookup_slack: dt.timedelta = dt.timedelta(days=1),
        max_candidates: int = 1000,
        recent_depth: int = 25,
    ):
        self.api = api
        self.lookup_slack = lookup_slack
        self.max_candidates = max_candidates
        self.recent_depth = recent_depth

    @classmethod
    def from_settings(cls, settings: Any) -> GmailSender:
        return cls(GmailApi.from_settings(settings))

    @property
    def user(self) -> str:
        return self.api.user

    def send(self, mail: OutgoingMail) -> SentMail:
        answer = self._submit(mail)
        if isinstance(answer, SentMail):  # a send in doubt that had gone through
            return answer
        return self._read_back(str(answer["id"]), answer.get("threadId"), mail)

    def send_many(self, mails: Sequence[OutgoingMail]) -> list[SentMail | Exception]:
        """One after another (see the module docstring for why not a batch)."""
        out: list[SentMail | Exception] = []
        for mail in mails:
            try:
                out.append(self.send(mail))
            except ProviderError as exc:
                out.append(exc)
        return out

    def _submit(self, mail: OutgoingMail) -> dict[str, Any] | SentMail:
        """``messages.send`` under the retry rules. After an answer that may hide a send
        (5xx, connection lost) the next attempt looks for it first. A thread Gmail does
        not know (404) is dropped and the message starts a thread of its own."""
        messages = self.api.resource("messages")
        thread = mail.thread
        in_doubt = False

        def attempt() -> dict[str, Any] | SentMail:
            nonlocal thread, in_doubt
            if in_doubt:
                earlier = self.recent_copy(mail) or self.already_sent(mail)
                if earlier is not None:
                    log.info("Gmail: %s had gone through before the error", mail.message_id)
                    return earlier
            while True:
                body: dict[str, Any] = {"raw": b64url(mail.raw)}
                if thread:
                    body["threadId"] = thread
                try:
                    return dict(self.api.call(messages.send(userId=self.user, body=body)))
                except ProviderCallFailed as exc:
                    status = exc.failure.status
                    if status == 404 and thread:
                        log.warning(
                            "Gmail: no thread %s; %s starts its own", thread, mail.message_id
                        )
                        thread = None
                        continue
                    if status == 0 or status >= 500:
                        in_doubt = True
                    raise

        return self.api.retry.run(attempt, "Gmail messages.send")

    def _read_back(self, gid: str, thread: str | None, mail: OutgoingMail) -> SentMail:
        """The Message-ID Gmail stored, which may not be ours."""
        request = self.api.resource("messages").get(
            userId=self.user, id=gid, format="metadata", metadataHeaders=["Message-ID"]
        )
        message = self.api.execute(request, "Gmail messages.get") or {}
        stored = headers_of(message).get("message-id")
        if stored and not _same_id(stored, mail.message_id):
            log.info("Gmail rewrote %s as %s", mail.message_id, stored)
        return SentMail(
            message_id=(stored or mail.message_id).strip(),
            provider_id=gid,
            thread=message.get("threadId") or thread,
        )

    def already_sent(self, mail: OutgoingMail) -> SentMail | None:
        """The earlier copy in the mailbox, by Message-ID, else by headers (see above)."""
        ours = mail.message_id.strip()
        query = f"rfc822msgid:{ours.strip('<>')}"
        for gid, message in self._candidates(self._search(query), ["Message-ID"]):
            if _same_id(headers_of(message).get("message-id"), ours):
                return self._found(mail, gid, message)
        query, prints = self._fallback(mail)
        if query is None:
            return None
        ids = self._search(query)
        return self._best(mail, prints, self._candidates(ids, ["Message-ID", *FINGERPRINT]))

    def recent_copy(self, mail: OutgoingMail) -> SentMail | None:
        """The copy among the newest ``recent_depth`` of the SENT label. That is the label
        index, not search, so a send that went through a moment ago is in it: what a send in
        doubt needs, seconds after the answer got lost."""
        _, prints = self._fallback(mail)
        ids = self.api.list_ids("Gmail messages.list", cap=self.recent_depth, labelIds=["SENT"])
        found = self._candidates(ids, ["Message-ID", *FINGERPRINT])
        for gid, message in found:
            if _same_id(headers_of(message).get("message-id"), mail.message_id):
                return self._found(mail, gid, message)
        return self._best(mail, prints, found) if prints else None

    def _search(self, query: str) -> list[str]:
        ids = self.api.list_ids(
            "Gmail messages.list", cap=self.max_candidates, q=query, includeSpamTrash=True
        )
        if len(ids) >= self.max_candidates:
            log.warning("Gmail: lookup %r stopped at %d candidates", query, len(ids))
        return ids

    def _candidates(
        self, ids: Sequence[str], headers: list[str]
    ) -> list[tuple[str, dict[str, Any]]]:
        got = self.api.get_many(
            ids, "Gmail messages.get", format="metadata", metadataHeaders=headers
        )
        return [(gid, got[gid]) for gid in ids if got.get(gid)]

    def _best(
        self,
        mail: OutgoingMail,
        prints: Mapping[str, str],
        candidates: Sequence[tuple[str, dict[str, Any]]],
    ) -> SentMail | None:
        matches = [(g, m) for g, m in candidates if self._matches(headers_of(m), prints)]
        if not matches:
            return None
        if len(matches) > 1:
            log.warning("Gmail: %d sent copies of %s", len(matches), mail.message_id)
        gid, message = matches[-1]  # newest first: the last is the first sent
        return self._found(mail, gid, message)

    @staticmethod
    def _found(mail: OutgoingMail, gid: str, message: Mapping[str, Any]) -> SentMail:
        stored = (headers_of(message).get("message-id") or mail.message_id).strip()
        log.info("Gmail: %s was sent before, stored as %s (%s)", mail.message_id, stored, gid)
        return SentMail(stored, gid, message.get("threadId"))

    def _fallback(self, mail: OutgoingMail) -> tuple[str | None, dict[str, str]]:
        """The search for candidates and the headers they must share with ours."""
        fields: dict[str, str] = {}
        for name, value in _header_block(mail.raw):
            fields.setdefault(name.lower(), value)
        prints = {
            h.lower(): normalized(h, fields[h.lower()]) for h in FINGERPRINT if h.lower() in fields
        }
        if "date" not in prints and "subject" not in prints:
            return None, {}  # nothing to tell it from another message
        terms = ["in:sent"]
        recipient = (mail.recipients or ("",))[0].strip().lower()
        if re.fullmatch(r"[^\s\"(){}<>]+@[^\s\"(){}<>]+", recipient):
            terms.append(f"to:{recipient}")
        try:
            date = email.utils.parsedate_to_datetime(fields["date"])
            if date.tzinfo is None:
                date = date.replace(tzinfo=dt.UTC)
            terms.append(f"after:{int((date - self.lookup_slack).timestamp())}")
        except (KeyError, TypeError, ValueError, IndexError):
            terms.append("newer_than:30d")
        return " ".join(terms), prints

    @staticmethod
    def _matches(theirs: Mapping[str, str], prints: Mapping[str, str]) -> bool:
        return all(
            name in theirs and normalized(name, theirs[name]) == value
            for name, value in prints.items()
        )


# --------------------------------------------------------------------------- reading


class _CursorRefused(Exception):
    """404 (or 400) on startHistoryId: the caller runs one full sync."""


class GmailInbox:
    """InboxReader over history.list, with a full sync when there is no usable cursor."""

    name = "gmail"

    def __init__(self, api: GmailApi, *, processed_label: str = PROCESSED_LABEL, topic: str = ""):
        self.api = api
        self.mailbox = api.user
        self.processed_label = processed_label
        self.topic = topic
        self._label: str | None = None
        self._label_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any) -> GmailInbox:
        return cls(GmailApi.from_settings(settings), topic=settings.gmail_pubsub_topic)

    @property
    def user(self) -> str:
        return self.api.user

    # ------------------------------------------------------------------ fetch

    def fetch(self, cursor: str | None, limit: int = 100) -> InboxPage:
        limit = max(1, limit)
        if cursor:
            try:
                return self._since(cursor, limit)
            except _CursorRefused:
                log.info("Gmail: historyId %s refused for %s; full sync", cursor, self.user)
                return self._full(limit, resync=True)
        return self._full(limit, resync=False)

    def _since(self, cursor: str, limit: int) -> InboxPage:
        history = self.api.resource("history")
        taken: list[str] = []
        seen: set[str] = set()
        last_record = cursor
        latest: str | None = None
        more = False
        page = None
        while not more:
            request = history.list(
                userId=self.user,
                startHistoryId=cursor,
                historyTypes=["messageAdded"],
                labelId=INBOX,
                maxResults=LIST_PAGE,
                pageToken=page,
            )

            def attempt(request: HttpRequest = request, first: bool = page is None) -> Any:
                try:
                    return self.api.call(request)
                except ProviderCallFailed as exc:
                    if first and exc.failure.status in (400, 404):
                        raise _CursorRefused from exc
                    raise

            body = self.api.retry.run(attempt, "Gmail history.list") or {}
            for record in body.get("history", ()):
                ids = [
                    str(added["message"]["id"])
                    for added in record.get("messagesAdded", ())
                    if added.get("message", {}).get("id")
                ]
                ids = [i for i in dict.fromkeys(ids) if i not in seen]
                if not ids:
                    continue
                if len(taken) >= limit:
                    more = True
                    break
                taken += ids
                seen.update(ids)
                last_record = str(record["id"])
            page = body.get("nextPageToken")
            if not more and not page:
                latest = str(body.get("historyId") or "") or None
                break
        messages = self._raw(taken)
        new_cursor = last_record if more else (latest or last_record)
        return InboxPage(messages, new_cursor, more=more)

    def _full(self, limit: int, resync: bool) -> InboxPage:
        profile = self.api.execute(
            self.api.resource("users").getProfile(userId=self.user), "Gmail users.getProfile"
        )
        start = str(profile["historyId"])  # before listing: whatever comes later is history
        ids = self.api.list_ids("Gmail messages.list", labelIds=[INBOX])
        ids.reverse()  # oldest first
        kept: list[tuple[str, bytes]] = []
        done = 0
        while done < len(ids) and len(kept) < limit:
            chunk = ids[done : done + max(1, min(self.api.batch_size, limit - len(kept)))]
            kept += self._raw(chunk)
            done += len(chunk)
        more = done < len(ids)
        # While more pages are waiting there is no cursor: the next call lists the inbox
        # again, and what this page stored is acked (out of INBOX) by then.
        return InboxPage(kept, None if more else start, more=more, full_resync=resync)

    def _raw(self, ids: Sequence[str]) -> list[tuple[str, bytes]]:
        """(id, raw bytes) of the messages still there and not processed yet, in order."""
        if not ids:
            return []
        got = self.api.get_many(ids, "Gmail messages.get", format="raw")
        processed = self._label_id(create=False)
        out = []
        for gid in ids:
            message = got.get(gid)
            if not message:
                continue  # deleted in between
            if processed and processed in message.get("labelIds", ()):
                continue  # stored and acked before
            out.append((gid, unb64url(str(message["raw"]))))
        return out

    # ------------------------------------------------------------------ ack

    def ack(self, keys: Sequence[str]) -> None:
        ids = list(dict.fromkeys(keys))
        if not ids:
            return
        messages = self.api.resource("messages")
        for chunk in chunks(ids, MAX_MODIFY):
            for attempt in range(2):
                change = {"addLabelIds": [self._label_id(create=True)], "removeLabelIds": [INBOX]}
                body = {"ids": list(chunk), **change}
                request = messages.batchModify(userId=self.user, body=body)
                if (
                    self.api.execute(request, "Gmail messages.batchModify", ok=(400, 404))
                    is not None
                ):
                    break
                if attempt == 0:
                    # Refused: the label was deleted (a stale id), or a message was. Look
                    # the label up again (made anew if need be) and try once more.
                    self._label = None
                    continue
                # Still refused: a message is gone meanwhile; label the rest one by one.
                for gid in chunk:
                    self.api.execute(
                        messages.modify(userId=self.user, id=gid, body=change),
                        "Gmail messages.modify",
                        ok=(404,),
                    )

    def _label_id(self, create: bool) -> str | None:
        """The processed label's id (made on first use when ``create``), cached."""
        if self._label is not None:
            return self._label
        with self._label_lock:
            if self._label is not None:
                return self._label
            labels = self.api.resource("labels")
            for attempt in range(2):
                found = self._find_label()
                if found or not create:
                    self._label = found
                    return found
                body = {
                    "name": self.processed_label,
                    "labelListVisibility": "labelShow",
                    "messageListVisibility": "show",
                }
                made = self.api.execute(
                    labels.create(userId=self.user, body=body), "Gmail labels.create", ok=(409,)
                )
                if made is not None:
                    self._label = str(made["id"])
                    return self._label
                log.info("Gmail: label %s exists already (try %d)", self.processed_label, attempt)
            raise PermanentProviderError(
                f"Gmail: label {self.processed_label!r} can be neither found nor created"
            )

    def _find_label(self) -> str | None:
        body = self.api.execute(
            self.api.resource("labels").list(userId=self.user), "Gmail labels.list"
        )
        wanted = self.processed_label.lower()
        for label in (body or {}).get("labels", ()):
            if str(label.get("name", "")).lower() == wanted:
                return str(label["id"])
        return None

    # ------------------------------------------------------------------ push

    def watch(self, topic: str | None = None) -> dt.datetime:
        """Publish INBOX changes to the Pub/Sub topic; returns when that stops (renew
        daily). The notices only say "look": the poll reads the history."""
        topic = topic or self.topic
        if not topic:
            raise ConfigError(
                ConfigProblem(
                    "settings",
                    "gmail_pubsub_topic",
                    "empty",
                    "projects/<project>/topics/<topic>, with publish granted to "
                    "gmail-api-push@system.gserviceaccount.com",
                )
            )
        body = {"topicName": topic, "labelIds": [INBOX], "labelFilterBehavior": "include"}
        answer = self.api.execute(
            self.api.resource("users").watch(userId=self.user, body=body), "Gmail users.watch"
        )
        return dt.datetime.fromtimestamp(int(answer["expiration"]) / 1000, dt.UTC)

    def stop(self) -> None:
        self.api.execute(self.api.resource("users").stop(userId=self.user), "Gmail users.stop")
