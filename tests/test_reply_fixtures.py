"""Real-client reply fixtures: raw messages as mail clients send them, with the expected parse.

Each ``tests/fixtures/replies/<client>-<lang>-<what>.eml`` is a reply to the follow-up prompt
as that client builds it (headers, MIME structure, charset, transfer encoding, attribution
line or Outlook header block in the client's language); ``<same>.expected.json`` holds what a
careful human would record from it. A key absent from the JSON is not checked.

One test per (fixture, field), so a failure names both:
``test_fixture_field[gmail-de-inline-answers]``.
"""

from __future__ import annotations

import email
import email.errors
import email.policy
import email.utils
import functools
import json
import re
from pathlib import Path

import pytest

from automation.replies import parse_reply

FIXTURES = Path(__file__).parent / "fixtures" / "replies"
EMLS = sorted(FIXTURES.glob("*.eml"))

QUESTIONS = [
    "What went well since your last check-in?",
    "What is getting in the way, and what support was agreed?",
    "Progress against goals and expectations",
    "Overall, how is it going? (rating 1-5)",
]
REQUIRED_CLIENTS = {
    "gmail", "outlook-desktop", "outlook-web", "apple-mail", "thunderbird", "yahoo", "proton",
    "ios-mail",
}  # fmt: skip
CLIENTS = REQUIRED_CLIENTS | {"exchange", "mta"}
LANGUAGES = {"en", "de", "fr", "es", "nl", "pt", "it", "sv", "pl", "ru", "ja", "zh"}
FIELDS = (
    "reply_text", "answers", "rating", "action_items", "commands", "auto_reply", "bounce",
)  # fmt: skip
META = {"client", "language", "questions"}
REPLY_ADDRESS = "checkin+1-o42-abcdefghijklmnopqrst@reply.example.com"
# Defects that mean the fixture itself was written wrong (not a quirk a client really has).
FATAL_DEFECTS = (
    email.errors.NoBoundaryInMultipartDefect,
    email.errors.StartBoundaryNotFoundDefect,
    email.errors.CloseBoundaryNotFoundDefect,
    email.errors.FirstHeaderLineIsContinuationDefect,
    email.errors.MisplacedEnvelopeHeaderDefect,
    email.errors.MissingHeaderBodySeparatorDefect,
    email.errors.MultipartInvariantViolationDefect,
    email.errors.InvalidMultipartContentTransferEncodingDefect,
    email.errors.InvalidBase64PaddingDefect,
    email.errors.InvalidBase64CharactersDefect,
    email.errors.InvalidBase64LengthDefect,
    email.errors.InvalidHeaderDefect,
    email.errors.NonASCIILocalPartDefect,
)


def _expected_path(eml: Path) -> Path:
    return eml.with_name(eml.stem + ".expected.json")


@functools.cache
def _expected(name: str) -> dict:
    return json.loads(_expected_path(FIXTURES / f"{name}.eml").read_text(encoding="utf-8"))


@functools.cache
def _parsed(name: str):
    raw = (FIXTURES / f"{name}.eml").read_bytes()
    return parse_reply(raw, _expected(name)["questions"])


def _ws(text: str | None) -> str:
    """Whitespace runs collapsed to one space, ends stripped."""
    return " ".join((text or "").split())


def _cases() -> list:
    cases = []
    for eml in EMLS:
        expected = json.loads(_expected_path(eml).read_text(encoding="utf-8"))
        cases += [
            pytest.param(eml.stem, field, id=f"{eml.stem}-{field}")
            for field in FIELDS
            if field in expected
        ]
    return cases


# --------------------------------------------------------------------------- the parse


@pytest.mark.parametrize(("name", "field"), _cases())
def test_fixture_field(name: str, field: str) -> None:
    expected = _expected(name)[field]
    result = _parsed(name)
    where = f"{name}.eml: {field}"

    if field == "reply_text":
        assert _ws(result.reply_text) == _ws(expected), (
            f"{where} differs (whitespace collapsed)\n"
            f"  expected: {_ws(expected)!r}\n  actual:   {_ws(result.reply_text)!r}"
        )
    elif field == "answers":
        actual = {str(n): _ws(text) for n, text in result.extraction.answers.items()}
        want = {str(n): _ws(text) for n, text in expected.items()}
        diff = [
            f"  question {n}: expected {want.get(n)!r}, actual {actual.get(n)!r}"
            for n in sorted(set(want) | set(actual))
            if want.get(n) != actual.get(n)
        ]
        assert not diff, f"{where} differ\n" + "\n".join(diff)
    elif field == "rating":
        assert result.extraction.rating == expected, (
            f"{where}: expected {expected!r}, actual {result.extraction.rating!r}"
        )
    elif field == "action_items":
        _check_action_items(where, result.extraction.action_items, expected)
    elif field == "commands":
        actual = [(c.name, _ws(c.argument)) for c in result.extraction.commands]
        want = [(c["name"], _ws(c["argument"])) for c in expected]
        assert actual == want, f"{where}: expected {want!r}, actual {actual!r}"
    elif field in ("auto_reply", "bounce"):
        actual = getattr(result, field)
        assert actual is expected, f"{where}: expected {expected!r}, actual {actual!r}"
    else:  # pragma: no cover - _cases only yields FIELDS
        pytest.fail(f"{where}: no check for this field")


def _check_action_items(where: str, actual_items, expected: list[dict]) -> None:
    """Same count and order; the expected text contained in the actual one (whitespace
    collapsed, case-insensitive); owner and due compared when the fixture gives them."""
    summary = [
        (item.text, item.owner, item.due.isoformat() if item.due else None) for item in actual_items
    ]
    assert len(actual_items) == len(expected), (
        f"{where}: expected {len(expected)} item(s) {[e['text'] for e in expected]!r}, "
        f"actual {len(actual_items)}: {summary!r}"
    )
    problems = []
    for i, (item, want) in enumerate(zip(actual_items, expected, strict=True), start=1):
        if _ws(want["text"]).casefold() not in _ws(item.text).casefold():
            problems.append(f"  item {i} text: expected {want['text']!r} in {item.text!r}")
        if "owner" in want and item.owner != want["owner"]:
            problems.append(f"  item {i} owner: expected {want['owner']!r}, actual {item.owner!r}")
        if "due" in want:
            due = item.due.isoformat() if item.due else None
            if due != want["due"]:
                problems.append(f"  item {i} due: expected {want['due']!r}, actual {due!r}")
    assert not problems, f"{where} differ\n" + "\n".join(problems)


# --------------------------------------------------------------------------- the fixtures


def test_fixtures_exist_in_pairs() -> None:
    jsons = {p.name.removesuffix(".expected.json") for p in FIXTURES.glob("*.expected.json")}
    emls = {p.stem for p in EMLS}
    assert len(emls) >= 40, f"only {len(emls)} fixtures in {FIXTURES}"
    assert emls - jsons == set(), f"fixtures without .expected.json: {sorted(emls - jsons)}"
    assert jsons - emls == set(), f".expected.json without .eml: {sorted(jsons - emls)}"


@pytest.mark.parametrize("eml", EMLS, ids=lambda p: p.stem)
def test_expected_json_is_well_formed(eml: Path) -> None:
    expected = json.loads(_expected_path(eml).read_text(encoding="utf-8"))
    name = eml.stem
    unknown = set(expected) - META - set(FIELDS)
    assert not unknown, f"{name}.expected.json: unknown keys {sorted(unknown)}"
    assert expected.get("client") in CLIENTS, (
        f"{name}.expected.json: client {expected.get('client')!r}"
    )
    assert expected.get("language") in LANGUAGES, (
        f"{name}.expected.json: language {expected.get('language')!r}"
    )
    assert expected.get("questions") == QUESTIONS, f"{name}.expected.json: questions"
    assert name.startswith(f"{expected['client']}-{expected['language']}-"), (
        f"{name}: the file name must be <client>-<language>-<what>"
    )
    for item in expected.get("action_items", []):
        assert set(item) <= {"text", "owner", "due"} and "text" in item, f"{name}: {item!r}"
        if item.get("due"):
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", item["due"]), f"{name}: due {item['due']!r}"
    for command in expected.get("commands", []):
        assert set(command) == {"name", "argument"}, f"{name}: command {command!r}"
    if "rating" in expected:
        assert expected["rating"] is None or 1 <= expected["rating"] <= 5, f"{name}: rating"


@pytest.mark.parametrize("eml", EMLS, ids=lambda p: p.stem)
def test_fixture_is_well_formed_mime(eml: Path) -> None:
    """Parses without structural defects, has the headers every reply has, and every text
    part decodes with the charset it declares (the wrong-label fixture's bytes are UTF-8
    under an ISO-8859-1 label, which still decodes: that is the point of it)."""
    name = eml.stem
    raw = eml.read_bytes()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    for header in ("From", "To", "Subject", "Date", "MIME-Version"):
        assert msg[header] is not None, f"{name}.eml: missing {header}"
    assert msg["Message-ID"] is not None, f"{name}.eml: missing Message-ID"
    assert email.utils.parsedate_to_datetime(str(msg["Date"])).tzinfo, f"{name}.eml: Date"
    assert REPLY_ADDRESS in str(msg["To"]).lower(), f"{name}.eml: To is not the reply address"
    expected = _expected(name)
    if expected["client"] != "mta":
        assert "<9f2c4e6a8b0d1f3e5a7c9e1b@example.com>" in str(msg["In-Reply-To"]), (
            f"{name}.eml: In-Reply-To is not the prompt's Message-ID"
        )
    for key, value in msg.items():
        bad = [d for d in getattr(value, "defects", ()) if isinstance(d, FATAL_DEFECTS)]
        assert not bad, f"{name}.eml: header {key}: {bad}"
    texts = 0
    for part in msg.walk():
        bad = [d for d in part.defects if isinstance(d, FATAL_DEFECTS)]
        assert not bad, f"{name}.eml: {part.get_content_type()} part: {bad}"
        if part.get_content_maintype() == "multipart":
            boundary = part.get_boundary()
            assert boundary, f"{name}.eml: multipart without boundary"
            closed = f"--{boundary}--".encode() in raw
            assert closed, f"{name}.eml: boundary {boundary!r} is never closed"
            assert part.get_payload(), f"{name}.eml: empty multipart"
        # (the header blocks of a message/delivery-status default to text/plain: not text)
        if "Content-Type" in part and part.get_content_type() in ("text/plain", "text/html"):
            charset = part.get_content_charset()
            assert charset, f"{name}.eml: {part.get_content_type()} without charset"
            payload = part.get_payload(decode=True)
            try:
                payload.decode(charset)
            except (UnicodeDecodeError, LookupError) as exc:
                pytest.fail(f"{name}.eml: {part.get_content_type()} is not valid {charset}: {exc}")
            texts += 1
    assert texts, f"{name}.eml: no text part"
    if msg.get_content_type() == "multipart/alternative":
        kinds = [p.get_content_type() for p in msg.get_payload()]
        assert kinds == ["text/plain", "text/html"], f"{name}.eml: alternative parts {kinds}"


def test_fixture_set_covers_clients_and_languages() -> None:
    found = [_expected(p.stem) for p in EMLS]
    clients = {e["client"] for e in found}
    languages = {e["language"] for e in found}
    missing_clients = sorted(REQUIRED_CLIENTS - clients)
    missing_languages = sorted(LANGUAGES - languages)
    assert not missing_clients, f"clients without a fixture: {missing_clients}"
    assert not missing_languages, f"languages without a fixture: {missing_languages}"
    assert any(e.get("auto_reply") for e in found), "no auto-reply fixture"
    assert any(e.get("bounce") for e in found), "no bounce fixture"
