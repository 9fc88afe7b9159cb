"""Provider HTTP, in one place: retries, backoff, Retry-After, batching sizes and counting.

Every provider adapter (Google through google-api-python-client, Graph and CalDAV through
requests) sends its calls through :class:`Retry`, so the rules live here once:

* retried: 429, 500, 502, 503, 504, and 403 whose reason is a rate limit
  (``rateLimitExceeded``, ``userRateLimitExceeded``: Google's way of saying 429);
* not retried here: 403 ``quotaExceeded`` (a daily quota: hours away, so the task is parked
  with a long delay by raising :class:`TransientProviderError`), other 4xx (permanent);
* the wait is jittered exponential backoff (``base * 2**attempt``, capped, times a random
  factor in [0.5, 1]), but never shorter than the server's ``Retry-After`` (seconds or an
  HTTP date), so a server asking for 7 s gets at least 7 s;
* after ``max_attempts`` the error goes up as :class:`TransientProviderError`, and the task
  layer retries the whole task later (its own backoff), so nothing is dropped.

The google-api-python-client default is ``num_retries=0`` and it ignores Retry-After, which
is why Google calls are wrapped here too rather than relying on the library.

Metrics (:mod:`automation.observability`) are counted here too, so every adapter is covered:
each attempt by provider and status class, rate-limit answers, and retries with the seconds
waited. The provider comes from the call's description ("Google events.list", "Graph $batch
of 20", "CalDAV PUT …") unless :attr:`Retry.provider` names it. Adapters that retry batch
items themselves report them with :meth:`Retry.retried`.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests

from automation import observability
from automation.errors import PermanentProviderError, QuotaExhausted, TransientProviderError

log = logging.getLogger("automation.http")

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
QUOTA_REASONS = frozenset({"quotaExceeded", "dailyLimitExceeded"})
QUOTA_PARK_SECONDS = 3600.0


@dataclass(frozen=True)
class Failure:
    """What went wrong with one call, as the retry rules need to see it."""

    status: int  # HTTP status; 0 for a connection error or timeout
    reason: str = ""  # provider's error reason (Google ``errors[0].reason``, Graph ``code``)
    retry_after: str | None = None  # the raw Retry-After header
    message: str = ""

    @property
    def retryable(self) -> bool:
        if self.status == 0 or self.status in RETRYABLE_STATUS:
            return True
        return self.status == 403 and self.reason in RATE_LIMIT_REASONS

    @property
    def quota(self) -> bool:
        return self.status == 403 and self.reason in QUOTA_REASONS


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return max((when - now).total_seconds(), 0.0)


class ProviderCallFailed(Exception):
    """Raised by a call wrapper to hand a :class:`Failure` to :meth:`Retry.run`."""

    def __init__(self, failure: Failure, response: Any = None):
        super().__init__(f"HTTP {failure.status} {failure.reason} {failure.message}".strip())
        self.failure = failure
        self.response = response


@dataclass
class Retry:
    """Run a call, retrying what is worth retrying, waiting as the server asks."""

    max_attempts: int = 6
    base_seconds: float = 0.5
    max_backoff_seconds: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    # Counters for benchmarks, tests and metrics: calls made, retries, seconds waited.
    calls: int = 0
    retries: int = 0
    waited: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # The metrics' provider label; empty: taken from the first word of each call's ``what``.
    provider: str = ""
    _last_provider: str = field(default="other", repr=False)

    def retried(self, count: int, waited: float, provider: str = "") -> None:
        """Count ``count`` retries after ``waited`` seconds, here and in the metrics; adapters
        that retry the items of a batch themselves report them through this too."""
        with self._lock:
            self.retries += count
            self.waited += waited
        name = provider or self.provider or self._last_provider
        observability.provider_retries(name, count, waited=waited)

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Wait before retry number ``attempt`` (0-based): jittered, at least Retry-After."""
        backoff = min(self.max_backoff_seconds, self.base_seconds * 2**attempt)
        backoff *= self.rng.uniform(0.5, 1.0)
        asked = parse_retry_after(retry_after)
        return max(backoff, asked) if asked is not None else backoff

    def count(self, n: int = 1) -> None:
        with self._lock:
            self.calls += n

    def run(self, call: Callable[[], T], what: str = "provider call") -> T:
        """``call`` raises :class:`ProviderCallFailed` on an HTTP error; everything else is
        the caller's. Returns the call's result or raises a ProviderError."""
        provider = self.provider or observability.provider_of(what)
        self._last_provider = provider
        attempt = 0
        while True:
            self.count()
            try:
                result = call()
            except ProviderCallFailed as exc:
                failure = exc.failure
            else:
                status = getattr(result, "status_code", 200)
                observability.provider_call(provider, status if isinstance(status, int) else 200)
                return result
            observability.provider_call(
                provider,
                failure.status,
                rate_limited=failure.status == 429
                or (failure.status == 403 and failure.reason in RATE_LIMIT_REASONS),
            )
            if failure.quota:
                raise QuotaExhausted(
                    f"{what}: quota exhausted ({failure.reason}); parked for "
                    f"{QUOTA_PARK_SECONDS:.0f} s",
                    QUOTA_PARK_SECONDS,
                )
            if not failure.retryable:
                raise PermanentProviderError(
                    f"{what}: HTTP {failure.status} {failure.reason} {failure.message}".strip()
                )
            if attempt + 1 >= self.max_attempts:
                raise TransientProviderError(
                    f"{what}: still failing after {self.max_attempts} attempts "
                    f"(HTTP {failure.status} {failure.reason})".strip()
                )
            wait = self.delay(attempt, failure.retry_after)
            log.info(
                "%s: HTTP %s %s, retry %d in %.1f s",
                what,
                failure.status,
                failure.reason,
                attempt + 1,
                wait,
            )
            self.retried(1, wait, provider)
            self.sleep(wait)
            attempt += 1


def retry_from_settings(settings: Any, **kwargs: Any) -> Retry:
    return Retry(
        max_attempts=settings.http_max_attempts,
        max_backoff_seconds=float(settings.http_max_backoff_seconds),
        **kwargs,
    )


def _reason_of(response: requests.Response) -> str:
    """Google: ``error.errors[0].reason`` (or ``error.status``); Graph: ``error.code``."""
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ""
    errors = error.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("reason", ""))
    return str(error.get("code") or error.get("status") or "")


def failure_of(response: requests.Response) -> Failure:
    return Failure(
        status=response.status_code,
        reason=_reason_of(response),
        retry_after=response.headers.get("Retry-After"),
        message=response.text[:200] if response.status_code >= 500 else "",
    )


def send(
    session: requests.Session,
    retry: Retry,
    method: str,
    url: str,
    *,
    ok: Sequence[int] = (),
    timeout: float = 30.0,
    what: str = "",
    **kwargs: Any,
) -> requests.Response:
    """One requests call under the retry rules. Statuses below 400 and those in ``ok`` (e.g.
    404 on a delete, 412 for the caller to handle) are returned; the rest raise."""

    def call() -> requests.Response:
        try:
            response = session.request(method, url, timeout=timeout, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ProviderCallFailed(Failure(0, type(exc).__name__)) from exc
        if response.status_code < 400 or response.status_code in ok:
            return response
        raise ProviderCallFailed(failure_of(response), response)

    return retry.run(call, what or f"{method} {url.split('?')[0]}")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``size`` (a batch request's limit)."""
    if size <= 0:
        raise ValueError("batch size must be positive")
    for i in range(0, len(items), size):
        yield items[i : i + size]
