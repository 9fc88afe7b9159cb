"""Exceptions raised by the service.

    AutomationError
    ├── ConfigError            a settings, cadence or template file is wrong
    ├── ImportRejected         a people CSV has bad rows; nothing was applied
    └── ProviderError          a calendar or mail provider failed
        ├── TransientProviderError   worth retrying (timeouts, 429, 5xx)
        └── PermanentProviderError   retrying cannot help (4xx, bad credentials)

Expected no-ops ("already sent", "already documented") are not exceptions: services return
a short reason string instead.
"""

from __future__ import annotations

from dataclasses import dataclass


class AutomationError(Exception):
    """Base class of every error this package raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with one configuration file."""

    file: str
    field: str
    problem: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.file}: {self.field}: {self.problem}"
        return f"{text} (fix: {self.fix})" if self.fix else text


class ConfigError(AutomationError):
    """One or more configuration problems, each naming the file, the field and the fix."""

    def __init__(self, problems: list[ConfigProblem] | ConfigProblem):
        self.problems = problems if isinstance(problems, list) else [problems]
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class RowProblem:
    """One thing wrong with one row of an imported file."""

    row: int
    field: str
    problem: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.field}: {self.problem}"


class ImportRejected(AutomationError):
    """The file had problems; nothing was applied."""

    def __init__(self, file: str, problems: list[RowProblem]):
        self.file = file
        self.problems = problems
        lines = [f"{file}: {len(problems)} problem(s); nothing was imported"]
        lines += [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


class ProviderError(AutomationError):
    """A provider call failed."""


class TransientProviderError(ProviderError):
    """Retrying later may succeed."""


class QuotaExhausted(TransientProviderError):
    """A provider's daily or per-project quota is used up (403 ``dailyLimitExceeded``,
    ``quotaExceeded``): hours away. The task waits ``retry_after_seconds`` without counting
    a failed attempt, so a long outage does not push work into the failed jobs."""

    def __init__(self, message: str, retry_after_seconds: float = 3600.0):
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class PermanentProviderError(ProviderError):
    """Retrying cannot succeed without a change of data or configuration."""
