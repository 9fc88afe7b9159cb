"""Loading HR configuration from ``config/``: cadences, PIP plans, and the whole-tree check."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automation.domain.cadence import Cadence, LadderStep, parse_cadence
from automation.emails import check_templates, template_names
from automation.errors import ConfigError, ConfigProblem
from automation.settings import Settings, load_settings


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            ConfigProblem(
                str(path), "(file)", f"not valid TOML: {exc}", "correct the syntax at that line"
            )
        ) from None
    except OSError as exc:
        raise ConfigError(ConfigProblem(str(path), "(file)", f"cannot read: {exc}")) from None


def load_cadences(settings: Settings) -> list[Cadence]:
    """Every ``config/cadences/*.toml``, validated; all problems of all files in one error."""
    folder = settings.config_dir / "cadences"
    templates = template_names(settings.templates_dir)
    cadences: list[Cadence] = []
    problems: list[ConfigProblem] = []
    seen: dict[str, str] = {}
    for path in sorted(folder.glob("*.toml")):
        try:
            cadence = parse_cadence(read_toml(path), str(path), templates)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if cadence.name in seen:
            problems.append(
                ConfigProblem(
                    str(path),
                    "name",
                    f"{cadence.name!r} is already used by {seen[cadence.name]}",
                    "give each cadence its own name",
                )
            )
        seen[cadence.name] = str(path)
        cadences.append(cadence)
    if problems:
        raise ConfigError(problems)
    return cadences


@dataclass(frozen=True)
class PipPlan:
    """A PIP to start, as described in a ``pips.toml`` file."""

    employee: str
    title: str
    start_offset_days: int
    duration_days: int
    reviews: tuple[tuple[str, int], ...]  # (name, days after start)
    ladder: tuple[LadderStep, ...]


def load_pip_plans(path: Path, templates: list[str] | None = None) -> list[PipPlan]:
    if not path.exists():
        return []
    data = read_toml(path)
    plans: list[PipPlan] = []
    problems: list[ConfigProblem] = []
    for i, item in enumerate(data.get("pip", [])):
        where = f"pip[{i}]"
        try:
            # The ladder is validated by the same rules as a cadence's.
            fake = {
                "name": "pip",
                "schedule": {"frequency": "weekly"},
                "followup": {"questions": ["-"]},
                "escalation": item.get("escalation", []),
            }
            ladder = parse_cadence(fake, str(path), templates or ()).ladder
        except ConfigError as exc:
            problems.extend(
                ConfigProblem(p.file, f"{where}.{p.field}", p.problem, p.fix) for p in exc.problems
            )
            continue
        reviews = []
        for j, review in enumerate(item.get("reviews", [])):
            if (
                not isinstance(review, dict)
                or not isinstance(review.get("after_days"), int)
                or not isinstance(review.get("name"), str)
            ):
                problems.append(
                    ConfigProblem(
                        str(path),
                        f"{where}.reviews[{j}]",
                        'expected { name = "…", after_days = N }',
                    )
                )
                continue
            reviews.append((review["name"], review["after_days"]))
        for key in ("employee", "title"):
            if not isinstance(item.get(key), str):
                problems.append(ConfigProblem(str(path), f"{where}.{key}", "missing or not text"))
        duration = item.get("duration_days", 30)
        if not isinstance(duration, int) or duration <= 0:
            problems.append(
                ConfigProblem(
                    str(path),
                    f"{where}.duration_days",
                    "expected a positive whole number",
                    "e.g. 30, 60, 90",
                )
            )
        if problems:
            continue
        plans.append(
            PipPlan(
                item["employee"].lower(),
                item["title"],
                int(item.get("start_offset_days", 0)),
                duration,
                tuple(reviews),
                ladder,
            )
        )
    if problems:
        raise ConfigError(problems)
    return plans


# --- delegates ----------------------------------------------------------------------------

DELEGATES_FILE = "delegates.toml"
_ADDRESS = re.compile(r"^[^@\s<>(),;:\"]+@[^@\s<>(),;:\"]+\.[^@\s<>(),;:\"]+$")
_DELEGATE_EXAMPLE = '[[delegate]]\nfor = "manager@example.com"\ndelegate = "assistant@example.com"'

Delegates = dict[str, frozenset[str]]  # manager's address -> addresses that may write for them


def load_delegates(settings: Settings) -> Delegates:
    """``config/delegates.toml``: who may document a manager's check-ins on their behalf.

    A missing file means no delegates. Each ``[[delegate]]`` names the manager (``for``) and
    the delegate's address; a manager may have several delegates. Addresses are compared in
    lower case. Every problem in the file is reported at once.
    """
    path = settings.config_dir / DELEGATES_FILE
    if not path.exists():
        return {}
    data = read_toml(path)
    problems: list[ConfigProblem] = []
    file = str(path)
    for key in data:
        if key != "delegate":
            problems.append(
                ConfigProblem(
                    file, key, "unknown key", f"only [[delegate]] tables, e.g. {_DELEGATE_EXAMPLE}"
                )
            )
    entries = data.get("delegate", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        problems.append(
            ConfigProblem(
                file,
                "delegate",
                "expected an array of tables ([[delegate]])",
                f"write each as {_DELEGATE_EXAMPLE}",
            )
        )
        raise ConfigError(problems)
    out: dict[str, set[str]] = {}
    for i, entry in enumerate(entries):
        where = f"delegate[{i}]"
        addresses: dict[str, str] = {}
        for key in entry:
            if key not in ("for", "delegate"):
                problems.append(
                    ConfigProblem(
                        file, f"{where}.{key}", "unknown key", "each entry has `for` and `delegate`"
                    )
                )
        for key, role in (("for", "the manager's"), ("delegate", "the delegate's")):
            value = entry.get(key)
            if value is None:
                problems.append(
                    ConfigProblem(
                        file,
                        f"{where}.{key}",
                        "missing",
                        f'add {key} = "…" with {role} email address',
                    )
                )
            elif not isinstance(value, str) or not _ADDRESS.match(value.strip()):
                problems.append(
                    ConfigProblem(
                        file,
                        f"{where}.{key}",
                        f"expected an email address, got {value!r}",
                        'a bare address, e.g. "assistant@example.com"',
                    )
                )
            else:
                addresses[key] = value.strip().lower()
        if len(addresses) == 2:
            if addresses["for"] == addresses["delegate"]:
                problems.append(
                    ConfigProblem(
                        file,
                        f"{where}.delegate",
                        f"{addresses['for']} cannot be their own delegate",
                        "name another person, or remove the entry",
                    )
                )
                continue
            out.setdefault(addresses["for"], set()).add(addresses["delegate"])
    if problems:
        raise ConfigError(problems)
    return {manager: frozenset(found) for manager, found in out.items()}


def check_all(config_file: Path | None = None) -> tuple[Settings | None, list[ConfigProblem]]:
    """Validate settings, every cadence and every template; never stops at the first problem."""
    problems: list[ConfigProblem] = []
    try:
        settings = load_settings(config_file)
    except ConfigError as exc:
        return None, exc.problems
    if not (settings.config_dir / "cadences").is_dir():
        problems.append(
            ConfigProblem(
                str(settings.config_dir / "cadences"),
                "(folder)",
                "missing",
                "create it with at least one cadence .toml",
            )
        )
    else:
        try:
            load_cadences(settings)
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.extend(check_templates(settings.templates_dir))
    try:
        load_delegates(settings)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        load_pip_plans(
            settings.config_dir / "example" / "pips.toml", template_names(settings.templates_dir)
        )
    except ConfigError as exc:
        problems.extend(exc.problems)
    return settings, problems
