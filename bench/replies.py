"""Reply benchmarks: our trimmer against the public Python peers, and field extraction.

``replies.corpus``: ``automation.replies.extract_reply_text`` and each peer a user would pick
instead, run over the public reply corpus (``shared/corpora/replies``, 3 suites, 121 cases) in
one process:

* ``replies.exact.<suite|overall>.<peer>``: exact matches after collapsing whitespace, in %;
  value = ours, baseline = the peer, ratio = ours / peer.
* ``replies.f1.<suite|overall>.<peer>``: mean token F1 (multiset overlap of the whitespace-split
  words of expected and actual), in %.
* ``replies.speed.<peer>``: messages per second over the whole corpus, ours vs the peer.
* ``replies.missing.<peer>``: a peer that cannot be imported here (``pip install -e '.[bench]'``).
* ``replies.goal``: 1 when ours is >= 90% exact overall, strictly above every peer on every
  suite (or at 100% where a peer is too: the ceiling cannot be passed), and at least as fast as
  the fastest peer; else 0, the note saying what fails.

The peer ``untrimmed`` (the input returned as it is) is always there: it shows what trimming is
worth and keeps our own rows present when no real peer is installed. It is not a peer for the
goal. How each real peer is called, each in the way that scores best for it on this corpus:

* email-reply-parser: ``EmailReplyParser.parse_reply(text)``.
* mail-parser-reply: ``EmailReplyParser(languages=<every language it ships>).read(text)``, then
  ``replies[0].body`` (the latest reply without its headers, signature and disclaimers;
  ``parse_reply`` returns ``replies[0].content``, which keeps the signature).
* talon, rule-based only (no ``talon.init()``, which loads the ML classifiers):
  ``quotations.extract_from_plain(text)``, then ``bruteforce.extract_signature(...)[0]``.
* quotequail: ``unwrap(text)["text_top"]`` when it finds a reply or forward, else the expanded
  part of ``quote(text, quote_intro_line=True)``; quotequail does not strip signatures.

A peer that raises on a message scores that message as an empty output; errors are counted in
the notes. Throughput: every parser runs whole-corpus passes for about ``scale`` seconds in
total, in 3 interleaved rounds, and the best round counts (as timeit does).

``replies.fields``: ``automation.replies.parse_reply`` over the product's own fixtures,
``tests/fixtures/replies/<name>.eml`` with ``<name>.expected.json`` (every key optional:
``questions``, ``reply_text``, ``answers``, ``rating``, ``action_items``, ``commands``,
``auto_reply``, ``bounce``). ``replies.fields.<field>`` is the share of the fixtures giving that
field whose field came out right (value %, baseline 100%). ``reply_text`` and answers compare
whitespace-collapsed; an action item matches when the expected text is in the actual one (case
folded) and ``owner`` and ``due`` are equal; a command when ``name`` and ``argument`` are. Inside
an item, a key left out is not checked; an explicit null must be None.
"""

from __future__ import annotations

import json
import math
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpora" / "replies"
FIXTURES = ROOT / "tests" / "fixtures" / "replies"
GOAL_EXACT = 90.0
ROUNDS = 3
UNTRIMMED = "untrimmed"


# --------------------------------------------------------------------------- metrics


def normal(text: str | None) -> str:
    return " ".join((text or "").split())


def token_f1(expected: str, actual: str) -> float:
    """F1 of the multiset overlap of whitespace-split words; two empty texts agree fully."""
    want, got = Counter(expected.split()), Counter(actual.split())
    if not want and not got:
        return 1.0
    overlap = sum((want & got).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(got.values()), overlap / sum(want.values())
    return 2 * precision * recall / (precision + recall)


def ratio(value: float, baseline: float) -> float:
    if baseline:
        return value / baseline
    return 1.0 if value == baseline else math.inf


# --------------------------------------------------------------------------- parsers


@dataclass
class Parser:
    name: str
    parse: Callable[[str], str] | None  # None: not installed
    missing: str = ""  # why it could not be loaded
    is_peer: bool = True


def _email_reply_parser() -> Callable[[str], str]:
    from email_reply_parser import EmailReplyParser

    return EmailReplyParser.parse_reply


def _mail_parser_reply() -> Callable[[str], str]:
    from mailparser_reply import EmailReplyParser
    from mailparser_reply.constants import MAIL_LANGUAGES

    parser = EmailReplyParser(languages=list(MAIL_LANGUAGES))

    def parse(text: str) -> str:
        replies = parser.read(text=text).replies
        return replies[0].body if replies else ""

    return parse


def _talon() -> Callable[[str], str]:
    from talon import quotations
    from talon.signature.bruteforce import extract_signature

    def parse(text: str) -> str:
        return extract_signature(quotations.extract_from_plain(text))[0]

    return parse


def _quotequail() -> Callable[[str], str]:
    import quotequail

    def parse(text: str) -> str:
        found = quotequail.unwrap(text)
        if found is None:
            return "\n".join(
                part for shown, part in quotequail.quote(text, quote_intro_line=True) if shown
            )
        return found.get("text_top", "")

    return parse


PEERS: dict[str, Callable[[], Callable[[str], str]]] = {
    "email-reply-parser": _email_reply_parser,
    "mail-parser-reply": _mail_parser_reply,
    "talon": _talon,
    "quotequail": _quotequail,
}


def load_peers() -> list[Parser]:
    parsers = [Parser(UNTRIMMED, lambda text: text, is_peer=False)]
    for name, load in PEERS.items():
        try:
            parsers.append(Parser(name, load()))
        except Exception as exc:  # ImportError, or a broken native dependency
            parsers.append(Parser(name, None, f"{type(exc).__name__}: {exc}"))
    return parsers


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Case:
    suite: str
    id: str
    text: str
    expected: str


def load_corpus(folder: Path = CORPUS) -> list[Case]:
    cases = []
    for suite in sorted(p for p in folder.iterdir() if p.is_dir()):
        for source in sorted(suite.glob("*.input.txt")):
            case = source.name.removesuffix(".input.txt")
            expected = suite / f"{case}.expected.txt"
            if expected.is_file():
                cases.append(
                    Case(
                        suite.name,
                        case,
                        source.read_text(encoding="utf-8"),
                        expected.read_text(encoding="utf-8"),
                    )
                )
    return cases


@dataclass
class Scores:
    exact: dict[str, list[str]] = field(default_factory=dict)  # suite -> ids matched (overall:
    # "suite/id")
    f1: dict[str, list[float]] = field(default_factory=dict)  # suite -> per-case F1
    errors: list[str] = field(default_factory=list)  # case ids that raised
    speed: float = 0.0  # messages per second


def score(parse: Callable[[str], str], cases: Sequence[Case]) -> Scores:
    result = Scores()
    for case in cases:
        try:
            out = parse(case.text)
        except Exception:
            out = ""
            result.errors.append(f"{case.suite}/{case.id}")
        got, want = normal(out if isinstance(out, str) else ""), normal(case.expected)
        for suite, case_id in ((case.suite, case.id), ("overall", f"{case.suite}/{case.id}")):
            result.exact.setdefault(suite, [])
            result.f1.setdefault(suite, []).append(token_f1(want, got))
            if got == want:
                result.exact[suite].append(case_id)
    return result


def _one_pass(parse: Callable[[str], str], texts: Sequence[str]) -> None:
    for text in texts:
        try:  # noqa: SIM105 - try costs nothing in the timed loop; contextlib.suppress does
            parse(text)
        except Exception:
            pass


def measure_speed(
    parsers: Sequence[tuple[str, Callable[[str], str]]], texts: Sequence[str], seconds: float
) -> dict[str, float]:
    """Messages per second of each parser: interleaved rounds, best round."""
    best = dict.fromkeys((name for name, _ in parsers), 0.0)
    per_round = seconds / ROUNDS
    for _ in range(ROUNDS):
        for name, parse in parsers:
            passes, t0 = 0, time.perf_counter()
            while True:
                _one_pass(parse, texts)
                passes += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= per_round:
                    break
            best[name] = max(best[name], passes * len(texts) / elapsed)
    return best


def _pct(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def _cases_note(ids: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" +{len(ids) - limit} more" if len(ids) > limit else "")


def corpus_rows(result_type: type, scale: float) -> list[Any]:
    from automation.replies import extract_reply_text

    R = result_type
    if not CORPUS.is_dir():
        return [R("replies.corpus.missing", 0.0, "", 0.0, 0.0, f"no reply corpus at {CORPUS}")]
    cases = load_corpus()
    if not cases:
        return [R("replies.corpus.missing", 0.0, "", 0.0, 0.0, f"no cases in {CORPUS}")]
    suites = sorted({c.suite for c in cases}) + ["overall"]
    counts = Counter(c.suite for c in cases)
    counts["overall"] = len(cases)
    parsers = load_peers()
    ours = score(extract_reply_text, cases)
    scored = {p.name: score(p.parse, cases) for p in parsers if p.parse is not None}
    timed = [("ours", extract_reply_text)] + [
        (p.name, p.parse) for p in parsers if p.parse is not None and p.is_peer
    ]
    speeds = measure_speed(timed, [c.text for c in cases], max(1.0 * scale, 1e-3))
    ours.speed = speeds["ours"]
    for name, s in scored.items():
        s.speed = speeds.get(name, 0.0)

    rows = []
    for p in parsers:
        if p.parse is None:
            rows.append(
                R(
                    f"replies.missing.{p.name}",
                    0.0,
                    "",
                    0.0,
                    0.0,
                    f"{p.name} not installed (pip install -e '.[bench]'): {p.missing}",
                )
            )
            continue
        peer = scored[p.name]
        err = f"; {p.name} raised on {len(peer.errors)}" if peer.errors else ""
        if peer.errors:
            err += f" ({_cases_note(peer.errors, 3)}), scored as empty"
        for suite in suites:
            n = counts[suite]
            a, b = len(ours.exact[suite]), len(peer.exact[suite])
            va, vb = _pct(a, n), _pct(b, n)
            lost = [c for c in peer.exact[suite] if c not in set(ours.exact[suite])]
            lost_note = f"; {p.name} only: {_cases_note(lost)}" if lost and p.is_peer else ""
            rows.append(
                R(
                    f"replies.exact.{suite}.{p.name}",
                    va,
                    "%",
                    vb,
                    ratio(va, vb),
                    f"ours {a}/{n} vs {p.name} {b}/{n}{lost_note}{err}",
                )
            )
        for suite in suites:
            fa = 100.0 * sum(ours.f1[suite]) / len(ours.f1[suite])
            fb = 100.0 * sum(peer.f1[suite]) / len(peer.f1[suite])
            rows.append(
                R(
                    f"replies.f1.{suite}.{p.name}",
                    fa,
                    "%",
                    fb,
                    ratio(fa, fb),
                    f"mean token F1 ours {fa / 100:.3f} vs {p.name} {fb / 100:.3f} "
                    f"over {counts[suite]}{err}",
                )
            )
        if p.is_peer:
            rows.append(
                R(
                    f"replies.speed.{p.name}",
                    ours.speed,
                    "/s",
                    peer.speed,
                    ratio(ours.speed, peer.speed),
                    f"msg/s ours {ours.speed:,.0f} vs {p.name} {peer.speed:,.0f} "
                    f"(best of {ROUNDS} rounds over {len(cases)} messages)",
                )
            )
    rows.append(_goal(R, parsers, ours, scored, suites, counts))
    return rows


def _goal(
    R: type,
    parsers: Sequence[Parser],
    ours: Scores,
    scored: dict[str, Scores],
    suites: Sequence[str],
    counts: Counter[str],
) -> Any:
    fails = []
    overall = _pct(len(ours.exact["overall"]), counts["overall"])
    if overall < GOAL_EXACT:
        fails.append(f"ours overall exact {overall:.1f}% < {GOAL_EXACT:.0f}%")
    missing = [p.name for p in parsers if p.is_peer and p.parse is None]
    if missing:
        fails.append(f"not installed, so not compared: {', '.join(missing)}")
    peers = [p.name for p in parsers if p.is_peer and p.parse is not None]
    for suite in suites[:-1]:
        n = counts[suite]
        a = len(ours.exact[suite])
        for name in peers:
            b = len(scored[name].exact[suite])
            # A tie at 100% is the ceiling: nothing can be above it, so it counts as ahead.
            if a < b or (a == b and a < n):
                fails.append(f"{suite}: ours {_pct(a, n):.1f}% not above {name} {_pct(b, n):.1f}%")
    if peers:
        fastest = max(peers, key=lambda name: scored[name].speed)
        top = scored[fastest].speed
        if ours.speed < top:
            fails.append(f"throughput ours {ours.speed:,.0f} < {fastest} {top:,.0f} msg/s")
    met = 0.0 if fails else 1.0
    note = "FAILS: " + "; ".join(fails) if fails else "met: every condition holds"
    return R("replies.goal", met, "", 1.0, met, note)


# --------------------------------------------------------------------------- fields

FIELDS = ("reply_text", "answers", "rating", "action_items", "commands", "auto_reply", "bounce")
# Keys that describe a fixture (which client wrote it, in which language) rather than a field.
DESCRIPTIVE_KEYS = {"client", "language", "note"}


def _iso(value: Any) -> str | None:
    return (
        None if value is None else str(value.isoformat() if hasattr(value, "isoformat") else value)
    )


def _item_matches(want: dict[str, Any], got: Any) -> bool:
    if "text" in want and normal(want["text"]).casefold() not in normal(got.text).casefold():
        return False
    if "owner" in want and (want["owner"] or None) != (got.owner or None):
        return False
    return not ("due" in want and want["due"] != _iso(got.due))


def _command_matches(want: dict[str, Any], got: Any) -> bool:
    if "name" in want and str(want["name"]).lower().lstrip("#") != got.name.lower():
        return False
    return not ("argument" in want and normal(want["argument"]) != normal(got.argument))


def _all_matched(
    want: Sequence[dict[str, Any]],
    got: Sequence[Any],
    matches: Callable[[dict[str, Any], Any], bool],
) -> bool:
    """Same count, and each expected entry matches a distinct actual one (in any order)."""
    if len(want) != len(got):
        return False
    left = list(got)
    for entry in want:
        hit = next((g for g in left if matches(entry, g)), None)
        if hit is None:
            return False
        left.remove(hit)
    return True


def field_correct(name: str, want: Any, r: Any) -> bool:
    ex = r.extraction
    if name == "reply_text":
        return normal(want) == normal(r.reply_text)
    if name == "answers":
        return {int(k): normal(v) for k, v in (want or {}).items()} == {
            int(k): normal(v) for k, v in ex.answers.items()
        }
    if name == "rating":
        return want == ex.rating
    if name == "action_items":
        return _all_matched(want or [], ex.action_items, _item_matches)
    if name == "commands":
        return _all_matched(want or [], ex.commands, _command_matches)
    return bool(want) == bool(getattr(r, name))  # auto_reply, bounce


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def fields_rows(result_type: type, scale: float, folder: Path = FIXTURES) -> list[Any]:
    from automation.replies import parse_reply

    R = result_type
    emls = sorted(folder.glob("*.eml")) if folder.is_dir() else []
    if not emls:
        return [
            R(
                "replies.fields.none",
                0.0,
                "",
                0.0,
                0.0,
                f"no fixtures yet: nothing matches {_shown(folder)}/*.eml",
            )
        ]
    right: dict[str, list[str]] = {f: [] for f in FIELDS}
    wrong: dict[str, list[str]] = {f: [] for f in FIELDS}
    problems: list[str] = []
    whole = checked = 0
    for eml in emls:
        expected_file = eml.with_suffix(".expected.json")
        if not expected_file.is_file():
            problems.append(f"{eml.stem}: no .expected.json")
            continue
        try:
            expected = json.loads(expected_file.read_text(encoding="utf-8"))
            if not isinstance(expected, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"{eml.stem}: bad expected.json ({exc})")
            continue
        checked += 1
        unknown = sorted(set(expected) - set(FIELDS) - {"questions"} - DESCRIPTIVE_KEYS)
        if unknown:
            problems.append(f"{eml.stem}: unknown keys {', '.join(unknown)}")
        try:
            result = parse_reply(eml.read_bytes(), list(expected.get("questions") or ()))
        except Exception:
            result, crash = None, traceback.format_exc(limit=1).strip().splitlines()[-1]
            problems.append(f"{eml.stem}: parse_reply raised {crash}")
        ok_all = True
        for name in FIELDS:
            if name not in expected:
                continue
            try:
                ok = result is not None and field_correct(name, expected[name], result)
            except Exception as exc:  # a fixture value of an unexpected shape
                ok = False
                problems.append(f"{eml.stem}: {name} not comparable ({type(exc).__name__})")
            (right if ok else wrong)[name].append(eml.stem)
            ok_all &= ok
        whole += ok_all
    rows = []
    for name in FIELDS:
        n = len(right[name]) + len(wrong[name])
        if not n:
            continue
        share = _pct(len(right[name]), n)
        note = f"{len(right[name])}/{n} fixtures right"
        if wrong[name]:
            note += f"; wrong: {_cases_note(wrong[name])}"
        rows.append(R(f"replies.fields.{name}", share, "%", 100.0, share / 100.0, note))
    share = _pct(whole, checked)
    note = f"{whole}/{checked} fixtures with every given field right"
    if problems:
        note += f"; problems: {'; '.join(problems[:5])}" + (
            f" +{len(problems) - 5} more" if len(problems) > 5 else ""
        )
    rows.append(R("replies.fields.all", share, "%", 100.0, share / 100.0, note))
    return rows


# --------------------------------------------------------------------------- registration


def register(benchmark: Callable[[str], Callable[[Any], Any]], result_type: type) -> None:
    """Add both benchmarks to bench/run.py's registry, building its Result rows."""

    @benchmark("replies.corpus")
    def replies_corpus(scale: float, folder: Path) -> list[Any]:
        """Trimming accuracy and throughput, ours vs each installed peer, on the public corpus."""
        return corpus_rows(result_type, scale)

    @benchmark("replies.fields")
    def replies_fields(scale: float, folder: Path) -> list[Any]:
        """Field accuracy of parse_reply on the product's own fixtures."""
        return fields_rows(result_type, scale)
