"""The client tells a personal access token from an API token by its shape alone (it does
not import edge.auth.pat, which loads Argon2): the two must agree."""

from __future__ import annotations

from edge.auth.pat import PAT_PATTERN, new_pat_token
from edge.auth.secrets import new_admin_token
from edge.client.session import _PAT_SHAPE, looks_like_pat


def test_the_client_pattern_is_the_pat_format() -> None:
    assert _PAT_SHAPE.pattern == rf"\A{PAT_PATTERN}\Z"


def test_pats_and_admin_tokens_are_told_apart() -> None:
    for _ in range(50):
        token = new_pat_token()
        assert looks_like_pat(token)
        assert not looks_like_pat(token + "x") and not looks_like_pat(" " + token)
        assert not looks_like_pat(new_admin_token())
