"""Redirect URI rules: what may be registered (https, loopback http; no fragment, user info
or private-use scheme) and what may be used (exact, but any port on loopback, RFC 8252)."""

from __future__ import annotations

import pytest

from edge.oauth.errors import InvalidRedirectUri
from edge.oauth.records import ClientRecord
from edge.oauth.redirects import MAX_URI_LENGTH, redirect_allowed, validate_redirect_uri


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.example.com/callback",
        "https://app.example.com:8443/cb?x=1",
        "http://127.0.0.1/callback",
        "http://127.0.0.1:53682/callback",
        "http://[::1]:8080/cb",
        "http://localhost:3000/oauth/callback",
        "https://127.0.0.1/cb",
    ],
)
def test_registrable(uri: str) -> None:
    assert validate_redirect_uri(uri) == uri


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("http://app.example.com/callback", "loopback"),
        ("http://127.0.0.2/cb", "loopback"),
        ("http://10.0.0.1/cb", "loopback"),
        ("com.example.app:/oauth2redirect", "private-use"),
        ("cursor://anysphere.cursor-retrieval/oauth/callback", "private-use"),
        ("javascript:alert(1)", "private-use"),
        ("ftp://example.com/cb", "https"),
        ("https://app.example.com/cb#frag", "fragment"),
        ("https://app.example.com/cb#", "fragment"),
        ("https://user:pw@app.example.com/cb", "user information"),
        ("https://user@app.example.com/cb", "user information"),
        ("http://evil.com@127.0.0.1/cb", "user information"),
        ("/callback", "https"),
        ("https:///cb", "host"),
        ("https://app.example.com:99999/cb", "port"),
        ("https://app.example.com/c b", "ASCII"),
        ("https://app.example.com/\u00e9", "ASCII"),
        ("https://app.example.com\\@evil.com/", "ASCII"),
        ("", "non-empty"),
        ("https://a.example/" + "x" * MAX_URI_LENGTH, "at most"),
    ],
)
def test_refused(uri: str, says: str) -> None:
    with pytest.raises(InvalidRedirectUri) as caught:
        validate_redirect_uri(uri)
    assert says in caught.value.public_message
    assert caught.value.code == "invalid_redirect_uri"


def test_not_a_string_refused() -> None:
    for value in (None, 5, ["https://a.example/cb"]):
        with pytest.raises(InvalidRedirectUri):
            validate_redirect_uri(value)


def client(*uris: str) -> ClientRecord:
    return ClientRecord(client_id="edge_x", redirect_uris=uris)


def test_exact_match_only() -> None:
    c = client("https://app.example.com/callback", "https://app.example.com/cb?a=1")
    assert redirect_allowed(c, "https://app.example.com/callback")
    assert redirect_allowed(c, "https://app.example.com/cb?a=1")
    for other in (
        "https://app.example.com/callback/",
        "https://app.example.com/Callback",
        "https://APP.example.com/callback",
        "https://app.example.com:443/callback",
        "https://app.example.com/callback?x=1",
        "https://app.example.com/cb?a=2",
        "https://app.example.com/cb?a=1&a=1",
        "https://app.example.com/callback#x",
        "http://app.example.com/callback",
        "https://app.example.com.evil.com/callback",
        "https://app.example.com:8443/callback",  # only loopback http may change its port
    ):
        assert not redirect_allowed(c, other), other


def test_loopback_any_port() -> None:
    c = client("http://127.0.0.1/callback", "http://[::1]:1234/cb?x=1", "http://localhost:9/cb")
    assert redirect_allowed(c, "http://127.0.0.1:53682/callback")
    assert redirect_allowed(c, "http://127.0.0.1/callback")
    assert redirect_allowed(c, "http://[::1]:4321/cb?x=1")
    assert redirect_allowed(c, "http://[::1]/cb?x=1")
    assert redirect_allowed(c, "http://localhost:3000/cb")
    for other in (
        "http://127.0.0.1:53682/callback/",  # path exact
        "http://127.0.0.1:53682/other",
        "http://[::1]:4321/cb?x=2",  # query exact
        "http://[::1]:4321/cb",
        "http://localhost:53682/callback",  # the host as registered (not another loopback)
        "http://127.0.0.1:53682/cb",
        "https://127.0.0.1:53682/callback",  # http only: an https URI is exact
        "http://127.0.0.1:53682/callback#f",
        "http://x@127.0.0.1:53682/callback",
        "http://127.0.0.1:99999/callback",
        "http://127.0.0.1:abc/callback",
        "http://127.0.0.2:53682/callback",
    ):
        assert not redirect_allowed(c, other), other


def test_https_loopback_is_exact() -> None:
    c = client("https://127.0.0.1:8443/cb")
    assert redirect_allowed(c, "https://127.0.0.1:8443/cb")
    assert not redirect_allowed(c, "https://127.0.0.1:9443/cb")
