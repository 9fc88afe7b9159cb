"""automation.terminal: progress bars only on a terminal's stderr, tables cut to its width,
JSON with ISO times. The commands that use them are tested in test_cli.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json

from automation.terminal import (
    display_width,
    format_table,
    print_json,
    print_table,
    progress,
)


class FakeTerminal(io.StringIO):
    """A stream that says it is a terminal, as stderr does when a person runs the command."""

    def isatty(self) -> bool:
        return True


def test_the_bar_shows_count_total_rate_and_eta_on_a_terminal(capsys):
    stream = FakeTerminal()
    with progress("importing", "person", stream=stream) as report:
        for done in range(1, 4):
            report(done, 3)
    drawn = stream.getvalue()
    assert drawn.startswith("\rimporting:")
    assert "0/3" in drawn and "3/3 [" in drawn  # count of total
    assert "person/s]" in drawn  # the rate, in the operation's unit
    assert "<?," in drawn and "<00:00," in drawn  # the ETA: unknown first, then estimated
    assert drawn.endswith("\n")  # the finished bar stays, and what follows starts a line
    assert capsys.readouterr() == ("", "")  # nothing on the real stdout or stderr


def test_no_bar_off_a_terminal_when_disabled_or_with_nothing_to_do():
    piped = io.StringIO()  # a pipe, a log file, cron's mail: no terminal
    with progress("importing", "person", stream=piped) as report:
        report(1, 2)
        report(2, 2)
    assert piped.getvalue() == ""
    terminal = FakeTerminal()
    with progress("importing", "person", stream=terminal, enabled=False) as report:
        report(2, 2)
    assert terminal.getvalue() == ""  # --quiet / --no-progress
    with progress("syncing", "calendar", stream=terminal) as report:
        report(0, 0)  # no calendars: no empty bar
    assert terminal.getvalue() == ""


def test_a_total_learnt_late_moves_the_bar():
    stream = FakeTerminal()
    with progress("simulating", "day", stream=stream) as report:
        report(1, 7)
        report(14, 14)
    assert "14/14 [" in stream.getvalue()


def test_a_table_aligns_columns_under_the_header_and_numbers_on_the_right():
    when = dt.datetime(2026, 3, 2, 6, 0, 59, tzinfo=dt.UTC)
    text = format_table(
        ["id", "from", "received_at", "active", "reason"],
        [(7, "ana@acme.test", when, True, None), (1234, "x@y.test", None, False, "no token")],
    )
    assert text.splitlines() == [
        "  id  from           received_at       active  reason",
        "   7  ana@acme.test  2026-03-02 06:00  yes     -",
        "1234  x@y.test       -                 no      no token",
    ]


def test_a_table_is_cut_to_the_width_widest_columns_first():
    rows = [("boss@acme.test", "Bea Boss", "a reason that goes on and on " * 4)]
    text = format_table(["email", "name", "reason"], rows, width=50)
    header, line = text.splitlines()
    assert max(len(header), len(line)) <= 50
    assert line.startswith("boss@acme.test  Bea Boss  a reason that")  # short ones kept whole
    assert line.endswith("…")
    uncut = format_table(["email", "name", "reason"], rows)
    assert uncut.splitlines()[1].endswith("and on")


def test_wide_characters_and_control_characters_keep_the_columns_straight():
    rows = [("田中 健", "ok"), ("Ana\x1b[2J\u202e", "x\ny")]  # a screen clear, a bidi override
    lines = format_table(["name", "note"], rows).splitlines()
    assert lines[1] == "田中 健   ok"  # two columns per wide character
    assert lines[2] == "Ana?[2J?  x y"
    # The second column starts at the same place on the screen on both lines.
    assert display_width(lines[1][: lines[1].index("ok")]) == lines[2].index("x y") == 10
    cut = format_table(["name", "note"], [("田中田中田中田中", "ok")], width=14)
    assert all(display_width(line) <= 14 for line in cut.splitlines()) and "…" in cut


def test_print_table_cuts_only_on_a_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "30")
    rows = [("someone.with.a.long.address@example.com", "a long reason " * 5)]
    piped = io.StringIO()
    print_table(["from", "reason"], rows, stream=piped)
    assert "example.com" in piped.getvalue() and "…" not in piped.getvalue()
    terminal = FakeTerminal()
    print_table(["from", "reason"], rows, stream=terminal)
    assert all(len(line) <= 30 for line in terminal.getvalue().splitlines())
    empty = io.StringIO()
    print_table(["from", "reason"], [], empty="nothing here", stream=empty)
    assert empty.getvalue() == "nothing here\n"


@dataclasses.dataclass
class Row:
    id: int
    placed_at: dt.datetime
    due: dt.date | None


def test_json_has_iso_times_one_line_for_scripts_indented_for_people():
    naive = dt.datetime(2026, 3, 2, 6, 0)  # as a backend that drops the zone returns it
    data = [Row(1, dt.datetime(2026, 3, 2, 7, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))),
                dt.date(2026, 4, 1)), {"at": naive}]  # fmt: skip
    piped = io.StringIO()
    print_json(data, stream=piped)
    assert piped.getvalue().count("\n") == 1
    assert json.loads(piped.getvalue()) == [
        {"id": 1, "placed_at": "2026-03-02T06:00:00+00:00", "due": "2026-04-01"},
        {"at": "2026-03-02T06:00:00+00:00"},
    ]
    terminal = FakeTerminal()
    print_json(data, stream=terminal)
    assert terminal.getvalue().startswith("[\n  {\n")
    assert json.loads(terminal.getvalue()) == json.loads(piped.getvalue())
