"""Signed reply addresses: only the service can mint one, and edits are caught."""

from __future__ import annotations

import pytest

from automation.domain.tokens import ForgedToken, ReplyToken, find_token, reply_address

KEY = b"k" * 32


def test_round_trip_and_case_insensitivity():
    token = ReplyToken(7, "occurrence", 1234)
    address = reply_address(KEY, token, "checkin", "reply.example.com")
    assert address.startswith("checkin+7-o1234-") and address.endswith("@reply.example.com")
    assert find_token(KEY, ["Someone <x@y.z>", address]) == token
    assert find_token(KEY, [address.upper()]) == token  # some MTAs change case


@pytest.mark.parametrize(
    "edit",
    [
        lambda a: a.replace("-o1234-", "-o1235-"),  # another check-in
        lambda a: a.replace("+7-", "+8-"),  # another organization
        lambda a: a.replace("-o1234-", "-r1234-"),  # another kind
        lambda a: a[:-25] + ("a" if a[-25] != "a" else "b") + a[-24:],  # one signature letter
    ],
)
def test_edited_addresses_are_forged(edit):
    address = reply_address(KEY, ReplyToken(7, "occurrence", 1234), "checkin", "r.example")
    with pytest.raises(ForgedToken):
        find_token(KEY, [edit(address)])


def test_another_key_does_not_verify_and_plain_addresses_have_no_token():
    address = reply_address(KEY, ReplyToken(1, "pip_review", 5), "checkin", "r.example")
    with pytest.raises(ForgedToken):
        find_token(b"other key", [address])
    assert find_token(KEY, ["boss@example.com", "checkin@reply.example.com"]) is None
