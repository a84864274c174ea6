"""Admin tokens, base58, stored hashes and the auth errors."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.auth.pat import PAT_REGEX, new_pat_token
from edge.auth.secrets import (
    ADMIN_TOKEN_PATTERN,
    BASE58_ALPHABET,
    AuthFailed,
    AuthFailure,
    AuthOverloaded,
    b58decode_fixed,
    b58encode_fixed,
    b58width,
    is_token_hash,
    looks_like_admin_token,
    new_admin_token,
    same_hash,
    token_hash,
)
from edge.errors import EdgeError


def test_base58_alphabet_is_bitcoins() -> None:
    assert len(BASE58_ALPHABET) == 58 == len(set(BASE58_ALPHABET))
    assert not set("0OIl") & set(BASE58_ALPHABET)
    assert BASE58_ALPHABET == "".join(sorted(BASE58_ALPHABET))  # ASCII order, like Bitcoin


def test_base58_widths() -> None:
    assert b58width(32) == 44
    assert b58width(24) == 33
    assert b58width(1) == 2
    assert 58**44 > 2**256 > 58**43


@given(st.binary(min_size=0, max_size=40))
def test_base58_fixed_roundtrip(data: bytes) -> None:
    text = b58encode_fixed(data)
    assert len(text) == b58width(len(data))
    assert set(text) <= set(BASE58_ALPHABET)
    assert b58decode_fixed(text, len(data)) == data


def test_base58_known_values() -> None:
    # Bitcoin's encoding of b"hello world" (no leading zero bytes, so no fixed-width padding).
    assert b58encode_fixed(b"hello world", 15) == "StV1DL6CwTryKyV"
    assert b58encode_fixed(b"\x00\x00", 3) == "111"
    assert b58encode_fixed(b"\x00\x3a", 3) == "121"
    with pytest.raises(ValueError):
        b58encode_fixed(b"\xff" * 4, 2)


def test_base58_decode_rejects_bad_input() -> None:
    assert b58decode_fixed("0", 1) is None
    assert b58decode_fixed("abcO", 4) is None
    assert b58decode_fixed("I", 1) is None
    assert b58decode_fixed("l", 1) is None
    assert b58decode_fixed("zz", 1) is None  # 57*58+57 = 3363 > 255: overflow
    assert b58decode_fixed("5Q", 1) == bytes([4 * 58 + 23])


def test_new_admin_token_format() -> None:
    tokens = {new_admin_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert len(token) == 49
        assert re.fullmatch(ADMIN_TOKEN_PATTERN, token)
        assert looks_like_admin_token(token)
        raw = b58decode_fixed(token[5:], 32)
        assert raw is not None and b58encode_fixed(raw) == token[5:]
    # 256 random bits: the decoded values use the full range, not a narrower one.
    assert max(int.from_bytes(b58decode_fixed(t[5:], 32) or b"", "big") for t in tokens) > 2**250


@pytest.mark.parametrize(
    "value",
    [
        "",
        "edge_",
        "edge_" + "a" * 43,
        "edge_" + "a" * 45,
        "Edge_" + "a" * 44,
        "edge-" + "a" * 44,
        "edge_" + "a" * 43 + "0",
        "edge_" + "a" * 43 + "O",
        "edge_" + "a" * 43 + "I",
        "edge_" + "a" * 43 + "l",
        "edge_" + "a" * 43 + "_",
        "edge_" + "a" * 43 + "-",
        "edge_" + "a" * 44 + "\n",
        " edge_" + "a" * 44,
        "edge_" + "a" * 43 + "\u0661",  # a non-ASCII digit that \d would accept
    ],
)
def test_looks_like_admin_token_rejects(value: str) -> None:
    assert not looks_like_admin_token(value)


def test_admin_tokens_and_pats_are_disjoint() -> None:
    for _ in range(100):
        assert not PAT_REGEX.match(new_admin_token())
        assert not looks_like_admin_token(new_pat_token())


def test_token_hash() -> None:
    token = new_admin_token()
    stored = token_hash(token)
    assert stored == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert is_token_hash(stored)
    assert token not in stored
    assert token_hash(token) == stored
    assert token_hash(new_admin_token()) != stored
    assert not is_token_hash(stored.upper())
    assert not is_token_hash(stored[:-1])
    assert not is_token_hash("sha512:" + stored[7:])


def test_same_hash() -> None:
    a = token_hash(new_admin_token())
    b = token_hash(new_admin_token())
    assert same_hash(a, a)
    assert same_hash(a, str(a))
    assert not same_hash(a, b)
    assert not same_hash(a, a[:-1])
    assert not same_hash(a, "")
    assert not same_hash(a, a[:-1] + "\u00e9")  # non-ASCII: unequal, no TypeError


def test_auth_failed_is_a_generic_401() -> None:
    token = new_admin_token()
    messages = set()
    for reason in AuthFailure:
        err = AuthFailed(reason)
        assert isinstance(err, EdgeError)
        assert err.status == 401
        assert err.reason is reason
        assert not err.close_connection
        messages.add(err.public_message)
        for text in (str(err), repr(err), err.public_message, str(err.args)):
            assert token not in text
        assert reason.value in str(err)  # the reason is for the log
        assert reason.value not in err.public_message  # and never for the client
    assert messages == {"authentication required"}
    assert AuthFailed.www_authenticate.startswith("Bearer ")


def test_auth_overloaded_is_503() -> None:
    err = AuthOverloaded()
    assert err.status == 503
    assert isinstance(err, EdgeError)
    assert "queue" not in err.public_message
