"""What the `automation` command shows a person at a terminal, and what it gives a script.

- :func:`progress`: a bar with count, total, rate and ETA on stderr for the long operations,
  only when stderr is a terminal, so logs, pipes and cron mail stay clean and stdout carries
  results alone. The services report through a plain ``(done, total)`` callback and know
  nothing of terminals. tqdm draws the bar (rate, ETA, resizing are its business).
- :func:`format_table` / :func:`print_table`: aligned columns under a header, numbers on the
  right, cells cut to the terminal's width with "…", control characters shown as "?" (a
  message's From or subject can carry escape sequences that would repaint the screen).
- :func:`print_json`: one JSON document: snake_case keys, ISO 8601 times (UTC), indented for
  a person, one line for a script.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import json
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

Progress = Callable[[int, int], None]  # (done, total): what a long operation reports
GAP = "  "  # between columns
# Invisible characters that change how the rest of a line reads (bidi overrides, the ones
# Trojan Source uses); zero-width joiners are left alone, emoji need them.
_KEEP_FORMAT = {"\u200c", "\u200d"}


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _columns(stream: Any) -> int | None:
    """The width the terminal behind ``stream`` reports (0 when it reports none); None when
    the stream has no file descriptor to ask (a test's fake terminal)."""
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return None


def _ignore(done: int, total: int) -> None:
    return None


@contextlib.contextmanager
def progress(
    description: str, unit: str, *, enabled: bool = True, stream: TextIO | None = None
) -> Iterator[Progress]:
    """A ``(done, total)`` callback that draws a bar on ``stream`` (default stderr) when it is a
    terminal and ``enabled``; otherwise one that does nothing. The bar appears at the first
    report with a total above zero and stays, finished, when the block ends."""
    stream = sys.stderr if stream is None else stream
    if not enabled or not is_terminal(stream):
        yield _ignore
        return
    bar: Any = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            if total <= 0:
                return
            from tqdm import tqdm

            sized = _columns(stream) != 0
            bar = tqdm(
                total=total,
                desc=description,
                unit=unit,
                file=stream,
                # Follow the terminal when it is resized; a pseudo-terminal that reports no
                # size at all (some CI runners, `script` without a terminal) gets 80x24,
                # where tqdm would draw nothing on a screen of zero rows.
                dynamic_ncols=sized,
                ncols=None if sized else 80,
                nrows=None if sized else 24,
                mininterval=0.2,
                smoothing=0.1,  # the ETA follows the recent rate, not the first second's
            )
        if total != bar.total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield report
    finally:
        if bar is not None:
            bar.close()


# --- tables ---------------------------------------------------------------------------------


def clean(text: str) -> str:
    """One line of visible text: line breaks and tabs become spaces, control and bidi
    characters a "?"."""
    out = []
    for ch in text:
        if ch in "\t\n\r\v\f":
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf") and ch not in _KEEP_FORMAT:
            out.append("?")
        else:
            out.append(ch)
    return "".join(out)


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: wide East Asian characters take two, combining
    marks none."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
        for ch in text
    )


def cell(value: Any) -> str:
    """How a value reads in a table: "-" for nothing, times in UTC to the minute."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dt.datetime):
        moment = value.astimezone(dt.UTC) if value.tzinfo else value
        return f"{moment:%Y-%m-%d %H:%M}"
    if isinstance(value, enum.Enum):
        value = value.value
    return clean(str(value))


def _cut(text: str, width: int) -> str:
    if display_width(text) <= width:
        return text
    if width <= 0:
        return ""
    out, used = [], 0
    for ch in text:
        w = display_width(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def _fit(natural: list[int], minimum: list[int], width: int) -> list[int]:
    """Narrow the widest columns, one column at a time, until the row fits ``width``."""
    widths = list(natural)
    excess = sum(widths) + len(GAP) * (len(widths) - 1) - width
    while excess > 0:
        candidates = [i for i, w in enumerate(widths) if w > minimum[i]]
        if not candidates:
            break  # a terminal narrower than the headers: the lines wrap
        widest = max(candidates, key=lambda i: widths[i])
        others = [widths[i] for i in candidates if i != widest]
        step = min(excess, widths[widest] - max(max(others, default=0), minimum[widest]) or 1)
        widths[widest] -= step
        excess -= step
    return widths


def format_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], *, width: int | None = None
) -> str:
    """Aligned columns under ``headers``; a column holding only whole numbers is aligned on
    the right. With ``width`` (the terminal's columns), the widest columns are cut with "…"
    until each line fits."""
    rows = [list(r) for r in rows]
    numeric = [
        all(isinstance(r[i], int) and not isinstance(r[i], bool) for r in rows if r[i] is not None)
        and any(r[i] is not None for r in rows)
        for i in range(len(headers))
    ]
    texts = [[cell(v) for v in r] for r in rows]
    natural = [
        max([display_width(h)] + [display_width(r[i]) for r in texts])
        for i, h in enumerate(headers)
    ]
    widths = natural
    if width is not None:
        minimum = [min(n, max(display_width(h), 6)) for n, h in zip(natural, headers, strict=True)]
        widths = _fit(natural, minimum, width)

    def line(values: Sequence[str]) -> str:
        parts = []
        for i, text in enumerate(values):
            text = _cut(text, widths[i])
            pad = " " * (widths[i] - display_width(text))
            parts.append(pad + text if numeric[i] else text + pad)
        return GAP.join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in texts)])


def terminal_width(stream: Any = None) -> int | None:
    """The terminal's columns when ``stream`` (default stdout) is one; None (no limit) for a
    pipe or a file, where cutting would only lose text."""
    import shutil

    stream = sys.stdout if stream is None else stream
    return shutil.get_terminal_size().columns if is_terminal(stream) else None


def print_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    empty: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Print a table on ``stream`` (default stdout); ``empty`` instead, if given and there
    are no rows."""
    stream = sys.stdout if stream is None else stream
    rows = list(rows)
    if not rows and empty is not None:
        print(empty, file=stream)
        return
    print(format_table(headers, rows, width=terminal_width(stream)), file=stream)


# --- JSON -----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        # Stored times are UTC; a naive one comes from a backend that dropped the zone.
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return aware.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(data: Any, *, indent: int | None = None) -> str:
    return json.dumps(data, default=_plain, indent=indent)


def print_json(data: Any, *, stream: TextIO | None = None) -> None:
    """One JSON document on ``stream`` (default stdout): indented on a terminal, on one line
    otherwise (for jq, or ``tail -n 1`` after other output)."""
    stream = sys.stdout if stream is None else stream
    print(to_json(data, indent=2 if is_terminal(stream) else None), file=stream)
